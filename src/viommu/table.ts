// The vIOMMU's translation state in shared memory: which domain each endpoint is attached to, and each
// domain's mappings (IOVA range → guest-physical, read/write permission). The virtio-iommu device
// (main thread) is the only writer; dataplane threads read it directly — translating an address is a
// lookup here, not a message to anybody.
//
// Consistency without locks: a sequence counter (odd while the writer is changing the table) that a
// reader samples before and after its lookup, retrying if it moved. Readers also publish, per thread,
// the generation they work under (`enter`) and that they hold no translation (`idle`): an UNMAP is
// complete only once every thread has moved past it (`quiescent`), so no thread can still use a
// mapping the guest was told is gone.
//
// Layout (one SharedArrayBuffer):
//   Int32 words: [0] sequence, [1] mapping count, [2] faults, [3] reader threads, [4..4+THREADS) their
//   generations (0 = idle)
//   Int32 endpoint → domain table at ENDPOINTS_AT: ENDPOINT_NONE, ENDPOINT_BYPASS or a domain id
//   Float64 mappings at MAPPINGS_AT, sorted by (domain, start): domain, start, end (inclusive), phys, flags
//   Float64 fault ring at FAULTS_AT: endpoint, address, flags, generation (the last FAULT_RING faults)
//   Int32 fault stamps at STAMPS_AT: fault number + 1 once that fault's entry is complete (a reader
//   that saw the count move must not read the slot before the writer has filled it: it would report
//   the fault FAULT_RING faults older, an address the guest may long have unmapped)

import type { DmaTranslator } from '../virtio/dma.js';
import { quiescentSync, quiescentAsync, type ReaderWords, type SlowWait, type StuckPolicy } from './quiescence.js';

export { sayWaitIsSlow, stuckThreadMs, type SlowWait, type StuckPolicy } from './quiescence.js';

export const MAP_READ = 1;
export const MAP_WRITE = 2;
export const MAP_MMIO = 4;

export const ENDPOINT_NONE = -1;
export const ENDPOINT_BYPASS = -2;

export const MAX_THREADS = 64;
export const MAX_ENDPOINTS = 65536;
export const MAX_MAPPINGS = 65536;
const FAULT_RING = 64;
const MAP_WORDS = 5;

const SEQ = 0;
const COUNT = 1;
const FAULTS = 2;
const THREAD_COUNT = 3;
const THREADS_AT = 4;
// (rounded up to 8 bytes: the mapping array after the endpoint table is Float64)
const ENDPOINTS_AT = 8 * Math.ceil((THREADS_AT + MAX_THREADS) / 2);
const MAPPINGS_AT = ENDPOINTS_AT + 4 * MAX_ENDPOINTS;
const FAULTS_AT = MAPPINGS_AT + 8 * MAP_WORDS * MAX_MAPPINGS;
const FAULT_WORDS = 4;
const STAMPS_AT = FAULTS_AT + 8 * FAULT_WORDS * FAULT_RING;
const TOTAL = STAMPS_AT + 4 * FAULT_RING;

/** IOVAs are kept exact as doubles: the device advertises this input range (48 bits, as x86 page tables) */
export const INPUT_END = 2 ** 48 - 1;

export type Access = typeof MAP_READ | typeof MAP_WRITE;

export interface Fault {
  endpoint: number;
  address: number;
  /** MAP_READ or MAP_WRITE: what was attempted */
  access: number;
  /** the table's generation the failed lookup saw (a later change may have answered it) */
  generation: number;
}

class Views {
  readonly i32: Int32Array;
  readonly endpoints: Int32Array;
  readonly maps: Float64Array;
  readonly faults: Float64Array;
  readonly stamps: Int32Array;
  constructor(readonly buffer: SharedArrayBuffer) {
    this.i32 = new Int32Array(buffer, 0, THREADS_AT + MAX_THREADS);
    this.endpoints = new Int32Array(buffer, ENDPOINTS_AT, MAX_ENDPOINTS);
    this.maps = new Float64Array(buffer, MAPPINGS_AT, MAP_WORDS * MAX_MAPPINGS);
    this.faults = new Float64Array(buffer, FAULTS_AT, FAULT_WORDS * FAULT_RING);
    this.stamps = new Int32Array(buffer, STAMPS_AT, FAULT_RING);
  }

  /** Index of the first mapping of `domain` ending at or after `addr` (binary search). */
  lowerBound(domain: number, addr: number, count: number): number {
    const m = this.maps;
    let lo = 0;
    let hi = count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const d = m[mid * MAP_WORDS];
      if (d < domain || (d === domain && m[mid * MAP_WORDS + 2] < addr)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** The writer's side: the virtio-iommu device (its request thread, or the main thread). */
export class IommuTable {
  readonly buffer: SharedArrayBuffer;
  private readonly v: Views;
  /** the reader threads' generation words, for the quiescence waits */
  private readonly readerWords: ReaderWords;

  /** A new, empty table; or (`buffer`) the writer's handle on one made elsewhere, for another thread. */
  constructor(buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(TOTAL);
    this.v = new Views(this.buffer);
    this.readerWords = { i32: this.v.i32, at: THREADS_AT, count: () => this.threads };
    if (!buffer) this.clear();
  }

  /** No endpoint attached, no mapping (device reset). */
  clear(): void {
    this.begin();
    this.v.endpoints.fill(ENDPOINT_NONE);
    Atomics.store(this.v.i32, COUNT, 0);
    this.end();
    // generations start at 2 (above the first change): a thread slot of 0 means "idle"
    if (Atomics.load(this.v.i32, SEQ) < 2) Atomics.store(this.v.i32, SEQ, 2);
  }

  private get threads(): number {
    return Atomics.load(this.v.i32, THREAD_COUNT);
  }

  private begin(): void {
    Atomics.add(this.v.i32, SEQ, 1);
  }

  private end(): void {
    Atomics.add(this.v.i32, SEQ, 1);
  }

  get generation(): number {
    return Atomics.load(this.v.i32, SEQ);
  }

  get count(): number {
    return Atomics.load(this.v.i32, COUNT);
  }

  /** A slot for one more reader thread (its quiescence is tracked there). */
  newThreadSlot(): number {
    const n = Atomics.add(this.v.i32, THREAD_COUNT, 1);
    if (n >= MAX_THREADS) throw new Error('too many dataplane threads for the vIOMMU');
    return n;
  }

  endpointDomain(endpoint: number): number {
    return this.v.endpoints[endpoint];
  }

  /** Attach (domain ≥ 0), put in bypass (ENDPOINT_BYPASS) or detach (ENDPOINT_NONE) an endpoint. */
  setEndpoint(endpoint: number, domain: number): void {
    this.begin();
    this.v.endpoints[endpoint] = domain;
    this.end();
  }

  /** Endpoints attached to `domain`. */
  endpointsOf(domain: number): number[] {
    const out: number[] = [];
    this.v.endpoints.forEach((d, e) => d === domain && out.push(e));
    return out;
  }

  /** Add [start, end] → phys. False when it overlaps an existing mapping of the domain, or the table is full. */
  map(domain: number, start: number, end: number, phys: number, flags: number): boolean {
    const n = this.count;
    if (n >= MAX_MAPPINGS) return false;
    const m = this.v.maps;
    const i = this.v.lowerBound(domain, start, n);
    if (i < n && m[i * MAP_WORDS] === domain && m[i * MAP_WORDS + 1] <= end) return false;
    this.begin();
    m.copyWithin((i + 1) * MAP_WORDS, i * MAP_WORDS, n * MAP_WORDS);
    m[i * MAP_WORDS] = domain;
    m[i * MAP_WORDS + 1] = start;
    m[i * MAP_WORDS + 2] = end;
    m[i * MAP_WORDS + 3] = phys;
    m[i * MAP_WORDS + 4] = flags;
    Atomics.store(this.v.i32, COUNT, n + 1);
    this.end();
    return true;
  }

  /**
   * Remove the mappings of `domain` wholly inside [start, end] (virtio-iommu: a mapping may not be
   * split). Returns how many went, or -1 when a mapping straddles the range's edge (nothing removed).
   */
  unmap(domain: number, start: number, end: number): number {
    const [first, last] = this.overlapping(domain, start, end);
    const m = this.v.maps;
    if (last > first && (m[first * MAP_WORDS + 1] < start || m[(last - 1) * MAP_WORDS + 2] > end)) return -1;
    return this.remove(first, last);
  }

  /**
   * Remove every mapping of `domain` that overlaps [start, end], whole (an IOTLB invalidation: cached
   * entries go, they are not split). Returns how many went.
   */
  invalidate(domain: number, start: number, end: number): number {
    const [first, last] = this.overlapping(domain, start, end);
    return this.remove(first, last);
  }

  /** The index range of `domain`'s mappings that overlap [start, end]. */
  private overlapping(domain: number, start: number, end: number): [number, number] {
    const n = this.count;
    const m = this.v.maps;
    const first = this.v.lowerBound(domain, start, n);
    let last = first;
    while (last < n && m[last * MAP_WORDS] === domain && m[last * MAP_WORDS + 1] <= end) last++;
    return [first, last];
  }

  /** Remove mappings [first, last) (one change for the readers). */
  private remove(first: number, last: number): number {
    if (last === first) return 0;
    const n = this.count;
    this.begin();
    this.v.maps.copyWithin(first * MAP_WORDS, last * MAP_WORDS, n * MAP_WORDS);
    Atomics.store(this.v.i32, COUNT, n - (last - first));
    this.end();
    return last - first;
  }

  /** Every mapping, in table order: domain, start, end (inclusive), phys, flags for each (a copy). */
  allMappings(): Float64Array {
    return this.v.maps.slice(0, this.count * MAP_WORDS);
  }

  /** Drop every mapping of `domain` (the domain is gone). */
  dropDomain(domain: number): void {
    this.unmap(domain, 0, INPUT_END);
  }

  /**
   * Returns once every reader thread is idle or works under a generation at least `generation`: no
   * translation made before it can still be in use (quiescence.ts: how, and why with no time limit
   * unless a thread is stuck).
   */
  quiescentSync(generation: number, onSlow?: SlowWait, slowMs = 1000, stuck?: StuckPolicy): void {
    quiescentSync(this.readerWords, generation, onSlow, slowMs, stuck);
  }

  /** quiescentSync without blocking the event loop, giving up after `limitMs` (quiescence.ts). */
  quiescentAsync(generation: number, limitMs: number, onSlow?: SlowWait, slowMs = 1000): Promise<number[]> {
    return quiescentAsync(this.readerWords, generation, limitMs, onSlow, slowMs);
  }

  /** Faults recorded since the start. */
  get faultCount(): number {
    return Atomics.load(this.v.i32, FAULTS);
  }

  /**
   * The faults numbered `from` on that are complete, in order, and the number to continue from next
   * time. A fault whose entry is still being written ends the list (it comes next time); faults the
   * ring has already overwritten (more than FAULT_RING behind) are skipped.
   */
  faultsSince(from: number): { next: number; faults: Fault[] } {
    const total = Atomics.load(this.v.i32, FAULTS);
    const faults: Fault[] = [];
    let k = Math.max(from, total - FAULT_RING);
    for (; k < total; k++) {
      const slot = k % FAULT_RING;
      const stamp = (k + 1) | 0;
      const s1 = Atomics.load(this.v.stamps, slot);
      if (s1 !== stamp) {
        if (s1 - stamp > 0) continue; // overwritten by a later fault
        break; // not written yet
      }
      const f = slot * FAULT_WORDS;
      const w = this.v.faults;
      const fault = { endpoint: w[f], address: w[f + 1], access: w[f + 2], generation: w[f + 3] };
      if (Atomics.load(this.v.stamps, slot) === stamp) faults.push(fault);
    }
    return { next: k, faults };
  }
}

/**
 * The thread that used `slot` of the table in `buffer` has exited (it was ended: it could not mark
 * itself idle): it holds no translation. A quiescence wait for it ends.
 */
export function releaseThreadSlot(buffer: SharedArrayBuffer, slot: number): void {
  const i32 = new Int32Array(buffer, 0, THREADS_AT + MAX_THREADS);
  Atomics.store(i32, THREADS_AT + slot, 0);
  Atomics.notify(i32, THREADS_AT + slot);
}

/** Where a translation lands: `gpa`, and how many bytes from the IOVA the mapping covers contiguously. */
export interface Hit {
  gpa: number;
  len: number;
}

/**
 * A reader thread's view for one endpoint: translate() an IOVA range piece by piece, with a one-entry
 * cache valid while the table's sequence has not moved.
 */
export class IommuReader implements DmaTranslator {
  private readonly v: Views;
  private cacheSeq = -1;
  private cDomain = -1;
  private cStart = 0;
  private cEnd = -1;
  private cPhys = 0;
  private cFlags = 0;
  /** set by translate(): the guest-physical address and the contiguous length from it */
  readonly hit: Hit = { gpa: 0, len: 0 };

  constructor(
    buffer: SharedArrayBuffer,
    readonly endpoint: number,
    private readonly slot: number,
  ) {
    this.v = new Views(buffer);
  }

  private entered = 0;

  /**
   * A dataplane pass begins: publish the generation we work under. True when the mappings changed
   * since the last pass (what was translated once, like ring addresses, must be translated again).
   */
  enter(): boolean {
    // mid-change (odd): every lookup we complete will see the change's result, the next generation.
    // Published, the generation is read once more: a change that ended between our read and our store
    // may have found this slot idle and completed (its writer did not wait for us); working under the
    // generation before it, we would keep the rings' old translations (`moved` false). Rare: retry.
    let s: number;
    let g: number;
    do {
      s = Atomics.load(this.v.i32, SEQ);
      g = s + (s & 1);
      Atomics.store(this.v.i32, THREADS_AT + this.slot, g);
    } while (Atomics.load(this.v.i32, SEQ) !== s);
    const moved = g !== this.entered;
    this.entered = g;
    // an UNMAP may be waiting for us to move past its generation (quiescentSync): wake it now rather
    // than at its wait's timeout (only when the table moved: nobody waits otherwise)
    if (moved) Atomics.notify(this.v.i32, THREADS_AT + this.slot);
    return moved;
  }

  /** The thread holds no translation (it is about to sleep). */
  idle(): void {
    Atomics.store(this.v.i32, THREADS_AT + this.slot, 0);
    // a writer waits for us only after changing the table past what we entered under (notify is not
    // free: it takes the engine's waiter-list lock, and this runs before every sleep)
    if (Atomics.load(this.v.i32, SEQ) > this.entered) Atomics.notify(this.v.i32, THREADS_AT + this.slot);
  }

  /**
   * Translate the first piece of [iova, iova+len) for `access`: on success `hit` holds the
   * guest-physical address and how many bytes of the range one mapping covers (≤ len), and true is
   * returned. False: no mapping, or one without the permission: a fault, recorded (unless
   * `recordFault` is false: a question, not an access).
   */
  translate(iova: number, len: number, access: Access, recordFault = true): boolean {
    for (;;) {
      const s1 = Atomics.load(this.v.i32, SEQ);
      if (s1 & 1) continue;
      const r = this.lookup(iova, len, access, s1);
      if (Atomics.load(this.v.i32, SEQ) === s1) {
        if (!r && recordFault) this.fault(iova, access, s1);
        return r;
      }
    }
  }

  private lookup(iova: number, len: number, access: Access, seq: number): boolean {
    const domain = this.v.endpoints[this.endpoint];
    if (domain === ENDPOINT_BYPASS) {
      this.hit.gpa = iova;
      this.hit.len = len;
      return true;
    }
    if (domain < 0) return false;
    if (!(seq === this.cacheSeq && domain === this.cDomain && iova >= this.cStart && iova <= this.cEnd)) {
      const n = Atomics.load(this.v.i32, COUNT);
      const i = this.v.lowerBound(domain, iova, n);
      const m = this.v.maps;
      if (i >= n || m[i * MAP_WORDS] !== domain || m[i * MAP_WORDS + 1] > iova) return false;
      this.cacheSeq = seq;
      this.cDomain = domain;
      this.cStart = m[i * MAP_WORDS + 1];
      this.cEnd = m[i * MAP_WORDS + 2];
      this.cPhys = m[i * MAP_WORDS + 3];
      this.cFlags = m[i * MAP_WORDS + 4];
    }
    if (!(this.cFlags & access)) return false;
    this.hit.gpa = this.cPhys + (iova - this.cStart);
    this.hit.len = Math.min(len, this.cEnd - iova + 1);
    return true;
  }

  private fault(iova: number, access: Access, generation: number): void {
    const k = Atomics.add(this.v.i32, FAULTS, 1);
    const slot = k % FAULT_RING;
    Atomics.store(this.v.stamps, slot, 0);
    const f = slot * FAULT_WORDS;
    this.v.faults[f] = this.endpoint;
    this.v.faults[f + 1] = iova;
    this.v.faults[f + 2] = access;
    this.v.faults[f + 3] = generation;
    // (a sequentially consistent store: the entry's writes are visible to whoever loads the stamp)
    Atomics.store(this.v.stamps, slot, (k + 1) | 0);
  }
}
