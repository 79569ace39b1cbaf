// virtio-net's queue handler (src/dataplane/handler.ts): one RX/TX pair per unit, served by NetQueuePair
// with the device's driver queue. Loaded by path on each dataplane thread; imports the driver's module.
import { pathToFileURL } from 'node:url';
import { EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, type HandlerContext, type OpenHandler, type QueueHandler } from '../dataplane/handler.js';
import type { DriverModule } from '../drivers/api.js';
import { NetQueuePair } from './net-pair.js';
import { RxFilter } from './rx-filter.js';
import type { TxPolicy } from './net-header.js';
import { RateLimitWords } from '../dataplane/rate-limit-shared.js';
import { CoalesceWords, Coalescer } from './coalesce.js';
import { native, ONE } from '../native.js';
import { STAT } from '../dataplane/stats.js';
import type { SteerOptions } from './rss-rx.js';

/** The net threads' configuration (structured-cloneable), from the negotiated features (dataplane.ts). */
export interface NetHandlerConfig {
  /** the driver's module, as the thread imports it (compiled JavaScript) */
  driverModule: string;
  mergeable: boolean;
  maxRxFrame: number;
  txPolicy: TxPolicy;
  /** the control queue's RX filter words (rx-filter.ts) */
  filter: SharedArrayBuffer;
  /** the device's rate limits (rate-limit-shared.ts) */
  rateLimit: SharedArrayBuffer;
  /** the device's notification coalescing parameters (coalesce.ts); absent: none (vhost-user, whose frontend has the control queue) */
  coalesce?: SharedArrayBuffer;
  /** RSS or hash reports negotiated: what every pair's steering shares (rss-rx.ts; `pair` is each unit's) */
  steer?: Omit<SteerOptions, 'pair'>;
}

/** A net unit's own data: its pair's index and its driver queue's init (the driver's queueInit(pair)). */
export interface NetUnitInit {
  pair: number;
  driver: unknown;
}

/** how long a TX queue whose driver would block, and has no fd to say when it can take more, waits (ms) */
const BLOCKED_RETRY_MS = 1;

export async function prepare(config: unknown): Promise<OpenHandler> {
  const c = config as NetHandlerConfig;
  const driverMod = (await import(pathToFileURL(c.driverModule).href)) as DriverModule;
  const filter = new RxFilter(c.filter);
  const limits = new RateLimitWords(c.rateLimit);
  const coalesce = c.coalesce && new CoalesceWords(new Uint32Array(c.coalesce).length >> 1, c.coalesce);
  return (ctx) => new NetHandler(ctx, c, driverMod, filter, limits, coalesce);
}

/** A unit's queues are [rx, tx]; its init a NetUnitInit. */
class NetHandler implements QueueHandler {
  readonly pair: NetQueuePair;
  readonly fds: readonly number[];
  /**
   * The driver's fd is watched for readable only while the RX ring has buffers (otherwise a
   * level-triggered readable fd would wake us for frames we cannot place), and for writable only while
   * TX waits for the driver to take more (a writable fd almost always is).
   */
  private rxArmed = true;
  /** TX waits for a driver without an fd: try it again after the thread's next wait */
  private blindRetry = false;
  /** each queue's notification coalescing ([rx, tx]; empty where the device has none: vhost-user) */
  private readonly coal: Coalescer[];
  private readonly ctx: HandlerContext;

  /** with steering: this pair's wake eventfd (other pairs handed it frames) */
  private readonly wakeFd: number;
  private readonly counter = new BigUint64Array(1);

  constructor(ctx: HandlerContext, c: NetHandlerConfig, driverMod: DriverModule, filter: RxFilter, rateLimits: RateLimitWords, coalesce: CoalesceWords | undefined) {
    const [rxq, txq] = ctx.queues;
    const init = ctx.init as NetUnitInit;
    this.ctx = ctx;
    this.coal = coalesce ? ctx.indices.map((index) => new Coalescer(coalesce, index)) : [];
    this.pair = new NetQueuePair(ctx.mem, ctx.memory, rxq, txq, driverMod.openQueue(init.driver), {
      mergeable: c.mergeable,
      maxRxFrame: c.maxRxFrame,
      txPolicy: c.txPolicy,
      rxCallFd: ctx.callFds[0],
      txCallFd: ctx.callFds[1],
      rxStats: ctx.stats[0],
      txStats: ctx.stats[1],
      filter,
      log: ctx.log,
      rateLimits,
      rxCoalesce: this.coal[0],
      txCoalesce: this.coal[1],
      steer: c.steer && { ...c.steer, pair: init.pair },
    });
    this.pair.updateLimits();
    this.updateCoalescing(performance.now());
    this.wakeFd = c.steer ? c.steer.wakeFds[init.pair] : -1;
    this.fds = [this.pair.driver.pollFd, this.wakeFd];
  }

  events(k: number): number {
    if (k === 1) return EPOLLIN;
    return (this.rxArmed ? EPOLLIN : 0) | (this.pair.txBlocked ? EPOLLOUT : 0);
  }

  onEvent(k: number, events: number): void {
    // (the frames themselves are looked for in every pass: the eventfd only wakes the thread)
    if (k === 1) return void native.read(this.wakeFd, this.counter);
    // the driver can take packets again (or its fd failed: transmit finds out and says so)
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) this.pair.txBlocked = false;
  }

  beforeWait(polling: boolean): number {
    const p = this.pair;
    // a direction waiting for its rate limit's tokens is left alone until they return: the thread
    // sleeps that long (its chains wait in the ring, the driver keeps its frames)
    const limitWait = p.limitWaitMs();
    const txWaits = p.txBlocked || (limitWait > 0 && p.txThrottled);
    const rxWaits = limitWait > 0 && p.rxThrottled;
    if (!polling) {
      // (a queue waiting for its driver or its tokens is not looked at: its kicks would only wake us)
      p.txq.setKicks(!txWaits);
      p.rxq.setKicks(!rxWaits, p.starved);
    }
    // kicks re-enabled: look once more, the guest may have added buffers before it saw the request
    // (a starved RX ring refilled in that window would otherwise wait for a kick that never comes).
    // Counting stops just past what matters: a packed ring counts by walking its descriptors.
    let pending = limitWait === 0 || (!txWaits && p.txq.pending(1) > 0);
    const seen = p.starved ? p.starvedPending : 0;
    if (!rxWaits && p.rxq.pending(seen + 1) > seen) {
      this.rxArmed = true;
      // a driver without an fd (one that generates frames) cannot wake us: receive buffers are work
      // now, unless it just had nothing to give — else a ring refilled in that window, or left
      // pending by the thread before a restart (whose kick that thread took), waits for a kick that
      // never comes
      if (p.driver.pollFd < 0 && !p.dry) pending = true;
    }
    if (rxWaits) this.rxArmed = false;
    // frames other pairs handed over wait for this ring's buffers (a starved ring waits for its kick)
    if (!rxWaits && !p.starved && p.handedOver) pending = true;
    this.blindRetry = p.txBlocked && p.driver.pollFd < 0;
    // interrupts held back whose time has come go now; the next one due bounds the sleep
    const coalWait = this.coal.length > 0 ? this.fireDue(performance.now()) : -1;
    if (pending) return 0;
    // (epoll's timeout is whole ms: rounded up, a wait never ends a token short)
    const tokens = limitWait > 0 ? Math.ceil(limitWait) : -1;
    const wait = this.blindRetry ? (tokens > 0 && tokens < BLOCKED_RETRY_MS ? tokens : BLOCKED_RETRY_MS) : tokens;
    return coalWait >= 0 && (wait < 0 || coalWait < wait) ? coalWait : wait;
  }

  /** Queue k's (0: rx, 1: tx) held notification goes now: an interrupt if its ring asked for one. */
  private fire(k: number): void {
    const fd = this.ctx.callFds[k];
    // (what was published since the last look is asked about too)
    const asked = fd >= 0 && this.ctx.queues[k].needsInterrupt();
    if (this.coal[k].release() || asked) {
      native.write(fd, ONE);
      this.ctx.stats[k][STAT.INTERRUPTS]++;
    }
  }

  /**
   * Fire the held interrupts whose time has come; returns the ms until the next one is due (rounded up
   * to epoll's whole ms: it never comes early, it may come up to a ms late) or -1 when none is held.
   */
  private fireDue(now: number): number {
    let next = -1;
    for (let k = 0; k < this.coal.length; k++) {
      const due = this.coal[k].dueIn(now);
      if (due < 0) continue;
      if (due === 0) {
        this.fire(k);
        continue;
      }
      const ms = Math.ceil(due);
      if (next < 0 || ms < next) next = ms;
    }
    return next;
  }

  /** Take coalescing parameters the driver changed; a queue whose conditions are met by the change is interrupted now. */
  private updateCoalescing(now: number): void {
    for (let k = 0; k < this.coal.length; k++) if (this.coal[k].update(now)) this.fire(k);
  }

  process(budget: number): number {
    const p = this.pair;
    p.updateLimits();
    if (this.coal.length > 0) this.updateCoalescing(performance.now());
    if (this.blindRetry) {
      p.txBlocked = false;
      this.blindRetry = false;
    }
    const work = p.processTx(budget) + p.processRx(budget);
    this.rxArmed = !p.starved && !p.rxThrottled;
    return work;
  }

  get ownFds(): readonly number[] {
    return this.pair.driver.ownFds ?? [];
  }

  close(): void {
    // nothing held back outlives the thread (a restart or stop would leave the guest waiting)
    for (let k = 0; k < this.coal.length; k++) if (this.coal[k].holding) this.fire(k);
    this.pair.driver.close();
  }
}
