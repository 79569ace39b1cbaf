// Notification coalescing (VIRTIO_NET_F_NOTF_COAL, VIRTIO_NET_F_VQ_NOTF_COAL; virtio 1.3 §5.1.6.5.9):
// the driver sets, per RX or TX queue, at most how many packets (max_packets) and how long (max_usecs)
// the device may hold a used-buffer notification back. Both non-zero: the interrupt goes once that many
// packets were used, or that long after the first one not yet signalled, whichever comes first (and
// only if the driver did not suppress it: EVENT_IDX or the flag, as without coalescing). Either zero:
// after every packet, which is how the device behaves without the feature.
//
// CoalesceWords carries the parameters from the control queue (main thread) to the dataplane threads;
// a Coalescer is one queue's count and timer on its thread; CoalesceControl is the commands' view.

/** words before the per-queue parameters: a version bumped by every change */
const W_VERSION = 0;
const HEAD = 1;

export interface CoalesceParams {
  maxPackets: number;
  maxUsecs: number;
}

/** Per-queue parameters in shared memory (u32 each, as the commands carry them), with a version. */
export class CoalesceWords {
  readonly words: Uint32Array;
  constructor(
    /** queues of the device it covers (RX and TX; queue i's parameters are at HEAD + 2i) */
    readonly queues: number,
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(4 * (HEAD + 2 * queues)),
  ) {
    this.words = new Uint32Array(buffer);
  }

  get version(): number {
    return Atomics.load(this.words, W_VERSION);
  }

  get(queue: number): CoalesceParams {
    const w = this.words;
    return { maxPackets: Atomics.load(w, HEAD + 2 * queue), maxUsecs: Atomics.load(w, HEAD + 2 * queue + 1) };
  }

  /** Set queue `queue`'s parameters (a number outside 0..2^32-1 is the caller's mistake: validated before). */
  set(queue: number, p: CoalesceParams): void {
    Atomics.store(this.words, HEAD + 2 * queue, p.maxPackets);
    Atomics.store(this.words, HEAD + 2 * queue + 1, p.maxUsecs);
    Atomics.add(this.words, W_VERSION, 1);
  }

  /** Every queue's parameters, as the commands carry them (le32 max_packets, le32 max_usecs per queue), for saved device state. */
  save(): Uint8Array {
    const out = new Uint8Array(8 * this.queues);
    const d = new DataView(out.buffer);
    for (let q = 0; q < this.queues; q++) {
      const p = this.get(q);
      d.setUint32(8 * q, p.maxPackets, true);
      d.setUint32(8 * q + 4, p.maxUsecs, true);
    }
    return out;
  }

  /** Take what save() made (its length checked by the caller: 8 bytes per queue). */
  restore(saved: Uint8Array): void {
    const d = new DataView(saved.buffer, saved.byteOffset, saved.byteLength);
    for (let q = 0; q < this.queues; q++) this.set(q, readCoal(d, 8 * q));
  }

  /** Every queue's parameters 0 (device reset, §5.1.6.5.9.2). */
  clear(): void {
    for (let i = HEAD; i < this.words.length; i++) Atomics.store(this.words, i, 0);
    Atomics.add(this.words, W_VERSION, 1);
  }
}

/**
 * One queue's coalescing on its dataplane thread: the packets used since its last notification, when
 * the first of them was, and whether the guest asked to hear of them. Whether it asked is the ring's
 * answer (EVENT_IDX's crossing, or the flag) taken as the entries are published, as without
 * coalescing: asked later, the window would take in an event index the driver set after it had seen
 * those entries itself, and interrupt it for nothing. signal() (net-rx.ts) goes through note(); the
 * queue handler sends what is owed once its time has come, and sleeps no longer than that.
 */
export class Coalescer {
  private maxPackets = 0;
  /** max_usecs, in ms (performance.now()'s unit) */
  private maxMs = 0;
  /** packets used since the last notification (or since the conditions were last met) */
  private pending = 0;
  /** the ring asked for a notification for some of them */
  private owed = false;
  /** when the first of them was used (performance.now() ms) */
  private since = 0;
  /** the words' version this queue's parameters were read at */
  private version = -1;

  constructor(
    private readonly words: CoalesceWords,
    private readonly queue: number,
  ) {}

  /** coalescing is on: both parameters non-zero */
  get on(): boolean {
    return this.maxPackets > 0 && this.maxMs > 0;
  }

  /** something is held: packets counted or a notification owed */
  get holding(): boolean {
    return this.pending > 0 || this.owed;
  }

  /**
   * Take parameters changed since the last look. Returns true when the conditions are met for what is
   * held under the new ones (the count reached, the time passed, or coalescing off; §5.1.6.5.9.1,
   * "Notifications When Coalescing Parameters Change"): the caller releases it now.
   */
  update(now: number): boolean {
    const w = this.words;
    if (w.version === this.version) return false;
    this.version = w.version;
    const p = w.get(this.queue);
    this.maxPackets = p.maxPackets;
    this.maxMs = p.maxUsecs / 1000;
    return this.holding && (!this.on || this.pending >= this.maxPackets || now >= this.since + this.maxMs);
  }

  /**
   * `n` more packets were used and published; `asked`: the ring wants a notification for them. Returns
   * true when it goes now: at once with coalescing off; else once max_packets were used, if the ring
   * asked for any of them (the count then starts again, notified or not).
   */
  note(n: number, asked: boolean): boolean {
    if (!this.on) return asked;
    if (n === 0 && !asked) return false;
    if (!this.holding) this.since = performance.now();
    this.pending += n;
    this.owed ||= asked;
    return this.pending >= this.maxPackets ? this.release() : false;
  }

  /** ms until the time condition is met (0: now), or -1 when nothing is held. */
  dueIn(now: number): number {
    if (!this.holding) return -1;
    return Math.max(0, this.since + this.maxMs - now);
  }

  /** The conditions are met (its time came, or the thread stops): the count starts again. Returns whether a notification is owed. */
  release(): boolean {
    const owed = this.owed;
    this.pending = 0;
    this.owed = false;
    return owed;
  }
}

/** One le32 pair of struct virtio_net_ctrl_coal (max_packets, then max_usecs). */
function readCoal(d: DataView, at: number): CoalesceParams {
  return { maxPackets: d.getUint32(at, true), maxUsecs: d.getUint32(at + 4, true) };
}

const NOTF_COAL_TX_SET = 0;
const NOTF_COAL_RX_SET = 1;
const NOTF_COAL_VQ_SET = 2;
const NOTF_COAL_VQ_GET = 3;

/** What VIRTIO_NET_CTRL_NOTF_COAL's commands need from the device besides the words. */
export interface CoalesceTarget {
  words: CoalesceWords;
  /** the driver negotiated VQ_NOTF_COAL (VQ_SET and VQ_GET) */
  perQueue(): boolean;
  /** queue `index` is an RX or TX queue the driver enabled */
  enabled(index: number): boolean;
}

/**
 * A VIRTIO_NET_CTRL_NOTF_COAL command (class 6): TX_SET and RX_SET set every TX (odd) or RX (even)
 * queue, VQ_SET one enabled queue, VQ_GET answers one's parameters in `reply`. Returns true when done,
 * false for a command to refuse (malformed, unknown, a queue that is not an enabled RX or TX queue).
 */
export function coalesceCommand(t: CoalesceTarget, cmd: number, data: Uint8Array, reply: { bytes?: Uint8Array }): boolean {
  const d = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (cmd === NOTF_COAL_TX_SET || cmd === NOTF_COAL_RX_SET) {
    if (data.length !== 8) return false;
    const p = readCoal(d, 0);
    for (let q = cmd === NOTF_COAL_TX_SET ? 1 : 0; q < t.words.queues; q += 2) t.words.set(q, p);
    return true;
  }
  if ((cmd === NOTF_COAL_VQ_SET || cmd === NOTF_COAL_VQ_GET) && t.perQueue()) {
    // struct virtio_net_ctrl_coal_vq: le16 vq_index, le16 reserved (ignored), then the parameters for
    // VQ_SET; VQ_GET's driver part ends after reserved, the parameters come back in the reply
    if (data.length !== (cmd === NOTF_COAL_VQ_SET ? 12 : 4)) return false;
    const q = d.getUint16(0, true);
    if (q >= t.words.queues || !t.enabled(q)) return false;
    if (cmd === NOTF_COAL_VQ_SET) {
      t.words.set(q, readCoal(d, 4));
      return true;
    }
    const p = t.words.get(q);
    const out = new Uint8Array(8);
    const o = new DataView(out.buffer);
    o.setUint32(0, p.maxPackets, true);
    o.setUint32(4, p.maxUsecs, true);
    reply.bytes = out;
    return true;
  }
  return false;
}
