// virtio-net device model (main thread): configuration space, features offered from what the driver
// can honour, what the control commands change (control.ts; the ring in control-queue.ts), the host's
// controls (link, announce, rate limits) and the device's saved state. The dataplane threads it runs
// when the guest driver is ready are net-threads.ts's.
import type { GuestMemory } from '../vmm/memory.js';
import type { RingState } from '../virtio/virtqueue.js';
import { type Activation, type ActiveQueue, type VirtioDevice } from '../virtio/device.js';
import { writeSync } from 'node:fs';
import type { NetDriver } from '../drivers/api.js';
import { RxFilter } from './rx-filter.js';
import { netControl, guestOffloads, GUEST_OFFLOAD_MASK, type ControlReply, type NetControlTarget } from './control.js';
import { NetControlQueue } from './control-queue.js';
import { CoalesceWords } from './coalesce.js';
import { formatMac } from './mac.js';
import { NetConfigSpace, NET_CONFIG_SIZE } from './config-space.js';

export { parseMac, formatMac } from './mac.js';
import { newStatsBuffer, readStats, type QueueStats } from '../dataplane/stats.js';
import { F, bit, has, netFeatureOffer, queueFeatures } from './features.js';
import { parseNetRateLimits, type NetRateLimits } from '../dataplane/rate-limit.js';
import { RateLimitWords } from '../dataplane/rate-limit-shared.js';
import type { IommuTable } from '../viommu/table.js';
import type { DirtyLogArea } from '../virtio/dirty-log.js';
import { StateError, u64Bytes, type Fields, type StateValue } from '../state/fields.js';
import { readNetState, saveRateLimits, saveRss } from './state.js';
import { RssWords, RSS_OFF } from './rss-state.js';
import { NetThreads, type NetStart } from './net-threads.js';

export const VIRTIO_ID_NET = 1;
/** TSVMM_DEBUG_CTRL=1: one stderr line per RSS or hash command refused, with why */
const DEBUG_CTRL = !!process.env.TSVMM_DEBUG_CTRL;
export { NET_STATUS_LINK_UP, SPEED_UNKNOWN } from './config-space.js';

export interface NetDeviceOptions {
  driver: NetDriver;
  mac: Uint8Array;
  /** queue pairs offered (≤ the driver's) */
  queuePairs: number;
  /** dataplane threads (queue pairs are spread over them); default one per pair */
  threads?: number;
  queueSize?: number;
  busyPollUs?: number;
  /** offer packed rings (VIRTIO_F_RING_PACKED) besides split ones (default true) */
  packed?: boolean;
  /** offer mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF; default true) */
  mergeable?: boolean;
  /** the MTU offered (VIRTIO_NET_F_MTU), at most the driver's; default the driver's (the wire's) */
  mtu?: number;
  /** the link speed in Mb/s and duplex shown to the guest (VIRTIO_NET_F_SPEED_DUPLEX); default unknown */
  speed?: number;
  duplex?: 'full' | 'half';
  /** offer VIRTIO_NET_F_HASH_REPORT and, with several pairs, VIRTIO_NET_F_RSS (default true) */
  rss?: boolean;
  /** rate limits from the start (setRateLimit changes them later) */
  rateLimit?: NetRateLimits;
  /** behind the vIOMMU: its table and this device's endpoint id (PCI requester id) */
  iommu?: { table: IommuTable; endpoint: number };
}

export class VirtioNet implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_NET;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly configSize = NET_CONFIG_SIZE;
  readonly filter = new RxFilter();
  readonly stats: SharedArrayBuffer;
  /** the rate limits the dataplane threads read (each queue pair has its own buckets) */
  private readonly rateLimits = new RateLimitWords();
  /** notification coalescing's parameters per RX and TX queue, which the dataplane threads read */
  readonly coalesce: CoalesceWords;
  /** the RSS / hash-report state the control queue sets and the dataplane threads read */
  readonly rss = new RssWords();
  private readonly config: NetConfigSpace;
  private readonly threads: NetThreads;
  private readonly ctrl: NetControlQueue;
  private active?: Activation;
  private activePairs = 1;
  /** the receive offloads the driver has on now (feature bits) */
  private offloads = 0n;
  /** a restored device's pairs and offloads, taken by the activation that follows */
  private restored?: { pairs: number; offloads: bigint };
  /** a dirty-page log every device write into guest memory is marked in (Vm.enableDirtyLog) */
  private dirtyLog?: DirtyLogArea;

  constructor(
    memory: GuestMemory,
    private readonly opts: NetDeviceOptions,
  ) {
    const pairs = opts.queuePairs;
    this.numQueues = 2 * pairs + 1;
    this.maxQueueSize = opts.queueSize ?? 256;
    let f = netFeatureOffer(opts.driver.caps, pairs, { packed: opts.packed ?? true, mergeable: opts.mergeable });
    f |= bit(F.MAC) | bit(F.STATUS) | bit(F.MTU) | bit(F.CTRL_VQ) | bit(F.CTRL_RX) | bit(F.CTRL_VLAN) | bit(F.CTRL_MAC_ADDR) | bit(F.SPEED_DUPLEX) | bit(F.GUEST_ANNOUNCE);
    // interrupts held back per the driver's coalescing parameters (ethtool -C), for all queues or each
    f |= bit(F.NOTF_COAL) | bit(F.VQ_NOTF_COAL);
    // the guest may turn the receive offloads it negotiated off and on again (ethtool -K eth0 rx-gro-hw)
    if (has(f, F.GUEST_CSUM)) f |= bit(F.CTRL_GUEST_OFFLOADS);
    // hashes in the receive header, and with several pairs RSS steering (rss-rx.ts)
    if (opts.rss ?? true) {
      f |= bit(F.HASH_REPORT);
      if (pairs > 1) f |= bit(F.RSS);
    }
    // behind the vIOMMU the driver must know its addresses are translated
    if (opts.iommu) f |= bit(F.ACCESS_PLATFORM);
    this.features = f;
    this.config = new NetConfigSpace({ mac: opts.mac, pairs, mtu: this.mtu, speed: opts.speed, duplex: opts.duplex, rss: has(f, F.HASH_REPORT) });
    this.filter.reset(opts.mac);
    if (opts.rateLimit) this.rateLimits.set(parseNetRateLimits(opts.rateLimit));
    this.stats = newStatsBuffer(2 * pairs);
    this.coalesce = new CoalesceWords(2 * pairs);
    const name = formatMac(opts.mac);
    const needsReset = (reason: string) => this.active?.needsReset(reason);
    this.threads = new NetThreads({ memory, driver: opts.driver, queuePairs: pairs, threads: opts.threads, busyPollUs: opts.busyPollUs, stats: this.stats, iommu: opts.iommu, name, needsReset, startWith: () => this.startWith() });
    this.ctrl = new NetControlQueue(memory, opts.iommu, (cls, cmd, data, reply) => this.control(cls, cmd, data, reply));
    this.controlTarget = this.newControlTarget();
  }

  private readonly controlTarget: NetControlTarget;

  /** the driver negotiated ACCESS_PLATFORM: every address it gives us is an IOVA */
  private get translated(): boolean {
    return !!this.opts.iommu && !!this.active && has(this.active.features, F.ACCESS_PLATFORM);
  }

  /** the link state the guest sees (VIRTIO_NET_S_LINK_UP); the device starts with its link up */
  get linkUp(): boolean {
    return this.config.linkUp;
  }

  /**
   * Set the link up or down as the guest sees it (its carrier): the status in the configuration space
   * and a configuration-change interrupt. While it is down no frame reaches the guest (dropped as
   * filtered, as QEMU drops a down link's frames); what the guest still sends goes out.
   */
  setLink(up: boolean): void {
    if (up === this.linkUp) return;
    this.config.setLinkUp(up);
    this.filter.setLinkDown(!up);
    this.active?.configChanged();
  }

  /**
   * Ask the guest to announce itself on the network (after a restore or a migration: the wire it is on
   * may be another one, whose switches do not know its MAC yet): VIRTIO_NET_S_ANNOUNCE set and a
   * configuration-change interrupt; the driver sends its gratuitous ARP / unsolicited NA and acks
   * (VIRTIO_NET_CTRL_ANNOUNCE_ACK), which clears the bit. False, and nothing done, when the driver did
   * not negotiate VIRTIO_NET_F_GUEST_ANNOUNCE (or is not running).
   */
  announce(): boolean {
    if (!this.active || !has(this.active.features, F.GUEST_ANNOUNCE)) return false;
    this.config.setAnnounce(true);
    this.active.configChanged();
    return true;
  }

  /** announce() asked, and the driver has not acked it yet */
  get announcing(): boolean {
    return this.config.announcing;
  }

  /**
   * Set the rate limits of each queue pair (token buckets per direction, for bytes and for frames;
   * rate-limit.ts): a direction given is replaced (`{}` removes its limits), one absent stays. Running
   * threads take them on their next pass, with full buckets. Throws (one line) on a malformed limit.
   */
  setRateLimit(limits: NetRateLimits): void {
    this.rateLimits.set(parseNetRateLimits(limits));
    // (a thread asleep until tokens return, or with no timeout, looks now)
    this.threads.wake();
  }

  /** the rate limits in force */
  get rateLimit(): NetRateLimits {
    return this.rateLimits.get();
  }

  /** the MTU offered to the guest (its config space's mtu) */
  get mtu(): number {
    return this.opts.mtu ?? this.opts.driver.caps.mtu;
  }

  get mac(): Uint8Array {
    return this.config.mac;
  }

  /** most dataplane threads this device ran at once (for tests and reports) */
  get threadsStarted(): number {
    return this.threads.started;
  }

  /**
   * Mark every write the dataplane makes into guest memory (used rings, received frames) in `log`
   * from now on (KVM's dirty log sees only the vCPUs' writes); undefined stops. Running threads
   * restart to take it, rings where they stood; resolves once they log.
   */
  async setDirtyLog(log: DirtyLogArea | undefined): Promise<void> {
    this.dirtyLog = log;
    this.ctrl.setDirtyLog(log);
    if (!this.active) return;
    await this.threads.restart();
  }

  /** Hold the dataplane threads off the rings (guest memory stays as it is) until resume(). */
  pause(): Promise<void> {
    return this.threads.pause();
  }

  /** busy-poll spins of the device's dataplane threads (busyPollUs) */
  get busyPollSpins(): number {
    return this.threads.busyPollSpins;
  }

  resume(): void {
    this.threads.resume();
  }

  /** Counters of queue pair `pair` (rx, tx), live while traffic runs. */
  queueStats(pair: number): { rx: QueueStats; tx: QueueStats } {
    return { rx: readStats(this.stats, 2 * pair), tx: readStats(this.stats, 2 * pair + 1) };
  }

  readConfig(offset: number, size: number): number {
    return this.config.read(offset, size);
  }

  writeConfig(): void {
    // read-only for VERSION_1 drivers (the MAC changes through the control queue)
  }

  private get ctrlIndex(): number {
    return this.numQueues - 1;
  }

  kickedByExit(queue: number): boolean {
    return queue === this.ctrlIndex;
  }

  async activate(a: Activation): Promise<void> {
    // Synchronous part first: a driver may notify the control queue right after DRIVER_OK, and that
    // vCPU exit can reach us before any awaited step below.
    this.active = a;
    const features = a.features;
    const ctrlQueue = has(features, F.CTRL_VQ) ? a.queues.find((q) => q.index === this.ctrlIndex) : undefined;
    const bad = this.ctrl.activate(this.translated, ctrlQueue, queueFeatures(features), this.maxQueueSize, a.needsReset);
    if (bad) return a.needsReset(bad);
    // the VLAN table starts empty (reset cleared it; a restored one is kept) and filters only if negotiated
    this.filter.setVlanFiltering(has(features, F.CTRL_VLAN));
    // until the driver sets the number of pairs (MQ), only the first is used (§5.1.6.5.5)
    this.setGuestOffloads(this.restored ? this.restored.offloads & features : features);
    this.activePairs = this.restored?.pairs ?? 1;
    this.restored = undefined;
    // (a reset or a change of pairs waits for this start: the threads take changes in order)
    await this.threads.start(false);
  }

  /** What the threads start with now (net-threads.ts). */
  private startWith(): NetStart | undefined {
    const a = this.active;
    if (!a) return undefined;
    return {
      activation: a,
      pairs: this.activePairs,
      words: { filter: this.filter.buffer, rateLimits: this.rateLimits.buffer, coalesce: this.coalesce.buffer, rss: this.rss.buffer },
      mtu: this.mtu,
      dirtyLog: this.dirtyLog,
      translated: this.translated,
      ringLogGpa: (q: ActiveQueue) => this.ctrl.ringLogGpa(q),
    };
  }

  // ---- control queue (control.ts), handled on the vCPU exit of its notification

  kick(queue: number): void {
    if (queue === this.ctrlIndex) this.ctrl.kick((reason) => this.active?.needsReset(reason));
  }

  /** What the driver may hand the guest on receive: the offloads among `bits` (feature bit positions). */
  private setGuestOffloads(bits: bigint): void {
    this.offloads = guestOffloads(bits);
    this.opts.driver.setGuestOffloads({
      rxCsum: has(bits, F.GUEST_CSUM),
      rxTso4: has(bits, F.GUEST_TSO4),
      rxTso6: has(bits, F.GUEST_TSO6),
      rxTsoEcn: has(bits, F.GUEST_ECN),
      rxUso4: has(bits, F.GUEST_USO4),
      rxUso6: has(bits, F.GUEST_USO6),
    });
  }

  /** control commands answered since the device was made (acked or refused) */
  controlCommands = 0;

  /** One control command; returns the ack byte (and what it answers in `reply`). */
  control(cls: number, cmd: number, data: Uint8Array, reply: ControlReply = {}): number {
    this.controlCommands++;
    return netControl(this.controlTarget, cls, cmd, data, reply);
  }

  /** What the control commands change: the MAC, the RX filter, the receive offloads, the pairs in use. */
  private newControlTarget(): NetControlTarget {
    return {
      negotiated: () => this.active?.features ?? 0n,
      queuePairs: this.opts.queuePairs,
      filter: this.filter,
      setMac: (mac) => {
        this.config.setMac(mac);
        this.filter.setMac(mac);
      },
      setGuestOffloads: (bits) => this.setGuestOffloads(bits),
      announced: () => this.config.setAnnounce(false),
      coalesce: {
        words: this.coalesce,
        perQueue: () => has(this.active?.features ?? 0n, F.VQ_NOTF_COAL),
        enabled: (index) => index < this.ctrlIndex && !!this.active?.queues.some((q) => q.index === index),
      },
      setRss: (c) => this.rss.set(c),
      refused: DEBUG_CTRL ? (why) => writeSync(2, `tsvmm: net ${formatMac(this.opts.mac)}: control command refused: ${why}\n`) : undefined,
      setPairs: (n) => {
        if (n === this.activePairs) return;
        this.activePairs = n;
        // the threads restart with the new set of pairs; ring positions carry over
        void this.threads.restart();
      },
    };
  }

  // ---- device state (src/vmm/state/)

  /** Stop the threads (each ring's position kept) until unquiesce(). */
  quiesce(): Promise<void> {
    return this.threads.stop();
  }

  unquiesce(): Promise<void> {
    return this.threads.start(true);
  }

  /** Where live queue `index` stands (the control queue's here; the others' where their thread stopped). */
  ringState(index: number): RingState | undefined {
    if (index === this.ctrlIndex) return this.ctrl.ringState;
    return this.threads.ringState(index) ?? this.active?.queues.find((q) => q.index === index)?.start;
  }

  /** The configuration space (MAC, link), the RX filter with its MAC and VLAN tables, the pairs in use, the receive offloads on, the coalescing parameters, RSS, the rate limits. */
  saveState(): StateValue {
    return { config: this.config.bytes.slice(), filter: this.filter.save(), activePairs: this.activePairs, offloads: u64Bytes(this.offloads), coalesce: this.coalesce.save(), rss: saveRss(this.rss.get()), rateLimits: saveRateLimits(this.rateLimits.get()) };
  }

  restoreState(f: Fields): void {
    const s = readNetState(f, { config: this.config.bytes, queuePairs: this.opts.queuePairs, offloads: GUEST_OFFLOAD_MASK });
    const bad = this.filter.restore(s.filter);
    if (bad) throw new StateError(`${f.path}.filter: ${bad}`);
    this.config.bytes.set(s.config);
    this.filter.setLinkDown(!this.linkUp);
    this.coalesce.restore(s.coalesce);
    this.rss.set(s.rss);
    this.rateLimits.set(s.rateLimits);
    this.restored = { pairs: s.pairs, offloads: s.offloads };
  }

  /** dataplane threads ended because they kept an UNMAP or a stop waiting past the stuck-thread limit */
  get stuckThreads(): number {
    return this.threads.stuck;
  }

  /**
   * The vIOMMU has waited `ms` for the thread with quiescence `slot` to leave the old mappings: if it
   * is one of ours, every thread of this device is ended and the device needs a reset (net-threads.ts).
   * Resolves once they have exited.
   */
  endStuckThread(slot: number, ms: number): Promise<void> {
    return this.threads.endStuckThread(slot, ms);
  }

  async reset(): Promise<void> {
    await this.threads.stop();
    this.active = undefined;
    this.ctrl.reset();
    this.activePairs = 1;
    this.config.setMac(this.opts.mac);
    this.config.setAnnounce(false);
    this.filter.reset(this.opts.mac);
    this.coalesce.clear();
    this.rss.set(RSS_OFF);
  }
}
