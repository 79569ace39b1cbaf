// virtio-rng's queue handler (src/dataplane/handler.ts): its one request queue (virtio 1.x §5.4). Each
// chain the driver makes available is device-writable buffers; the device fills them with random bytes
// from the kernel's CSPRNG (node:crypto, seeded by getrandom; it never blocks) and uses the chain with
// the count written. The queue does the ring checks; this adds the device's own rule: a request holds
// no device-readable buffer (§5.4.6.1), else the queue is broken (DEVICE_NEEDS_RESET).
import { randomFillSync } from 'node:crypto';
import type { HandlerContext, OpenHandler, QueueHandler } from '../dataplane/handler.js';
import type { DirtyLog } from '../virtio/dirty-log.js';
import type { Virtqueue } from '../virtio/virtqueue.js';
import { STAT } from '../dataplane/stats.js';
import { native, ONE } from '../native.js';

/**
 * Bytes one request gets at most: the device may use less than the buffers (§5.4.6.2), and a guest
 * asking for megabytes in one chain must not hold the thread; Linux asks for 64 bytes at a time.
 */
export const RNG_REQUEST_MAX = 64 * 1024;
/** bytes per pass at most (with PASS_BUDGET requests), so an entropy-hungry guest cannot starve the others */
export const RNG_PASS_MAX = 256 * 1024;

export function prepare(): OpenHandler {
  return (ctx) => new RngHandler(ctx);
}

/** A unit is the device's one request queue; it has no init. */
export class RngHandler implements QueueHandler {
  readonly fds: readonly number[] = [];
  private readonly q: Virtqueue;
  private readonly callFd: number;
  private readonly stats: Float64Array;
  private readonly log: DirtyLog | undefined;
  private readonly memory: SharedArrayBuffer;
  private readonly scratch = new Uint8Array(RNG_REQUEST_MAX);

  constructor(ctx: HandlerContext) {
    this.q = ctx.queues[0];
    this.callFd = ctx.callFds[0];
    this.stats = ctx.stats[0];
    this.log = ctx.log;
    this.memory = ctx.memory;
  }

  events(): number {
    return 0;
  }

  onEvent(): void {}

  beforeWait(polling: boolean): number {
    if (!polling) this.q.setKicks(true);
    return this.q.pending(1) > 0 ? 0 : -1;
  }

  /** Fill up to `budget` requests (and RNG_PASS_MAX bytes); returns the requests used. */
  process(budget: number): number {
    const q = this.q;
    let done = 0;
    let bytes = 0;
    while (done < budget && bytes < RNG_PASS_MAX && q.pop()) {
      const c = q.chain;
      if (c.readable > 0) {
        q.markBroken('device-readable entropy buffer');
        break;
      }
      const n = this.fill(c.offsets, c.lens, c.count);
      q.addUsed(c.head, n);
      done++;
      bytes += n;
    }
    if (done === 0) return 0;
    q.flush();
    const st = this.stats;
    st[STAT.PACKETS] += done;
    st[STAT.BYTES] += bytes;
    st[STAT.BATCHES]++;
    if (this.callFd >= 0 && q.needsInterrupt()) {
      native.write(this.callFd, ONE);
      st[STAT.INTERRUPTS]++;
    }
    return done;
  }

  /** Random bytes into the chain's buffers, in order, up to RNG_REQUEST_MAX; returns how many. */
  private fill(offsets: Float64Array, lens: Uint32Array, count: number): number {
    let total = 0;
    for (let i = 0; i < count && total < RNG_REQUEST_MAX; i++) total += Math.min(lens[i], RNG_REQUEST_MAX - total);
    if (total === 0) return 0;
    randomFillSync(this.scratch, 0, total);
    let at = 0;
    for (let i = 0; i < count && at < total; i++) {
      const n = Math.min(lens[i], total - at);
      if (n === 0) continue;
      native.copy(this.memory, offsets[i], this.scratch, at, n);
      this.log?.markOffset(offsets[i], n);
      at += n;
    }
    return total;
  }

  close(): void {}
}
