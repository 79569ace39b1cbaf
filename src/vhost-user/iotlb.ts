// The frontend's IOTLB (VIRTIO_F_ACCESS_PLATFORM over vhost-user): IOVA → guest-physical with
// permissions, held in the same shared table the vIOMMU uses, which the dataplane threads read
// directly. A miss they record is sent to the frontend (a backend request, IOTLB_MSG MISS), and the
// queue that missed waits for the UPDATE; an INVALIDATE is answered only once no thread still holds a
// translation of the range.
import { native } from '../native.js';
import { IommuTable, IommuReader, INPUT_END, MAP_READ, MAP_WRITE, sayWaitIsSlow, stuckThreadMs } from '../viommu/table.js';
import type { FrontendMemory } from './memory.js';
import * as P from './protocol.js';

/** the IOTLB's single domain and endpoint in the translation table */
const IOTLB_DOMAIN = 0;
/** IOTLB changes remembered to recognise stale misses (more than a ring's worth in flight) */
const CHANGES_KEPT = 1024;
/** a question to the frontend unanswered this long is asked again */
const ASK_AGAIN_MS = 100;
/** how often misses are looked for without a thread's signal */
const SWEEP_MS = 50;

/** IOTLB traffic: misses asked, updates and invalidations received */
export interface IotlbCounts {
  misses: number;
  updates: number;
  invalidations: number;
}

interface Change {
  start: number;
  end: number;
  generation: number;
}

/** Did an IOTLB change after `generation` touch `iova`? (`changes` is oldest first) */
function changedSince(changes: Change[], iova: number, generation: number): boolean {
  for (let i = changes.length - 1; i >= 0 && changes[i].generation > generation; i--) {
    if (changes[i].start <= iova && changes[i].end >= iova) return true;
  }
  return false;
}

const debug = process.env.TSVMM_DEBUG_IOTLB ? (s: string) => process.stderr.write(`IOTLB ${s}\n`) : undefined;

export class Iotlb {
  readonly table = new IommuTable();
  readonly reader: IommuReader;
  /** each pair's thread slot in the table */
  readonly slots: number[];
  private missesSeen = 0;
  private readonly timer: NodeJS.Timeout;
  /** pages asked about and when, until answered */
  private readonly asked = new Map<number, number>();
  /** the latest UPDATE/INVALIDATE ranges and the table generation after each (oldest first) */
  private readonly changes: Change[] = [];
  private readonly slowInvalidation = sayWaitIsSlow('vhost-user IOTLB invalidation');

  /**
   * `channel`: the descriptor misses are sent on (SET_BACKEND_REQ_FD; -1 while there is none);
   * `counts`: where traffic is counted (the backend's, over its life).
   */
  constructor(
    pairs: number,
    private readonly channel: () => number,
    private readonly counts: IotlbCounts,
  ) {
    this.table.setEndpoint(0, IOTLB_DOMAIN);
    this.reader = new IommuReader(this.table.buffer, 0, this.table.newThreadSlot());
    this.slots = Array.from({ length: pairs }, () => this.table.newThreadSlot());
    // misses the dataplane threads record go to the frontend when they signal the backend's eventfd;
    // a slow look now and then catches anything else
    this.timer = setInterval(() => this.sendMisses(), SWEEP_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /**
   * UPDATE: the frontend's virtual range becomes guest-physical pieces; INVALIDATE: entries go. True
   * when done, or why the message is refused. `endStuck(pair)`: a pair's thread kept an invalidation
   * waiting past the stuck-thread limit; end it (false: not a thread the backend runs).
   */
  async message(msg: P.IotlbMsg, memory: FrontendMemory | undefined, endStuck: (pair: number, limitMs: number) => Promise<boolean>): Promise<true | string> {
    debug?.(`${msg.type === P.IOTLB.UPDATE ? 'UPDATE' : msg.type === P.IOTLB.INVALIDATE ? 'INVAL' : msg.type} iova=${msg.iova.toString(16)} size=${msg.size.toString(16)} perm=${msg.perm}`);
    if (msg.size <= 0) return 'empty range';
    const last = msg.last ?? BigInt(msg.iova) + BigInt(msg.size) - 1n;
    // the table holds IOVAs up to INPUT_END: an update beyond is refused; an invalidation reaching
    // beyond (QEMU's intel-iommu turns a guest's device-TLB "flush all" into one for 2^64 - 1 bytes)
    // covers what the table can hold
    if (msg.type === P.IOTLB.UPDATE && last > BigInt(INPUT_END)) return 'range out of bounds';
    if (msg.iova > INPUT_END) return true;
    const end = Number(last > BigInt(INPUT_END) ? BigInt(INPUT_END) : last);
    // (whatever we asked about in this range is answered, or to be asked afresh)
    for (const page of this.asked.keys()) if (page * 4096 <= end && page * 4096 + 4095 >= msg.iova) this.asked.delete(page);
    let problem: string | undefined;
    if (msg.type === P.IOTLB.UPDATE) problem = this.update(msg, end, memory);
    else if (msg.type === P.IOTLB.INVALIDATE) await this.invalidate(msg.iova, end, endStuck);
    else problem = `message type ${msg.type}`;
    if (problem) return problem;
    if (msg.type === P.IOTLB.UPDATE) this.counts.updates++;
    else this.counts.invalidations++;
    this.changes.push({ start: msg.iova, end, generation: this.table.generation });
    if (this.changes.length > CHANGES_KEPT) this.changes.splice(0, this.changes.length - CHANGES_KEPT);
    return true;
  }

  /** Map [msg.iova, end]: one table entry per frontend memory region the range crosses. */
  private update(msg: P.IotlbMsg, end: number, memory: FrontendMemory | undefined): string | undefined {
    if (!memory) return 'update before the memory table';
    const perm = msg.perm & (MAP_READ | MAP_WRITE);
    this.table.invalidate(IOTLB_DOMAIN, msg.iova, end);
    for (let done = 0; done < msg.size; ) {
      const at = msg.uaddr + done;
      const region = memory.regions.find((r) => at >= r.uaddr && at < r.uaddr + r.size);
      if (!region) return 'update outside the frontend memory';
      const n = Math.min(msg.size - done, region.uaddr + region.size - at);
      const [start, last, gpa] = [msg.iova + done, msg.iova + done + n - 1, region.gpa + (at - region.uaddr)];
      // the table is a cache of the frontend's IOTLB: full (a frontend that never invalidates), it is
      // emptied and refills by misses — nothing it held was revoked, so no thread need wait
      if (!this.table.map(IOTLB_DOMAIN, start, last, gpa, perm)) {
        this.table.dropDomain(IOTLB_DOMAIN);
        if (!this.table.map(IOTLB_DOMAIN, start, last, gpa, perm)) return 'update the table cannot hold';
      }
      done += n;
    }
    return undefined;
  }

  /**
   * Unmap [iova, end]. The frontend may reuse the range once we answer: no thread may still hold a
   * translation of it. A thread that keeps us waiting past the limit is stuck (in its driver): it is
   * ended, and once it has exited it holds nothing.
   */
  private async invalidate(iova: number, end: number, endStuck: (pair: number, limitMs: number) => Promise<boolean>): Promise<void> {
    this.table.invalidate(IOTLB_DOMAIN, iova, end);
    const limit = stuckThreadMs();
    const behind = await this.table.quiescentAsync(this.table.generation, limit, this.slowInvalidation);
    for (const slot of behind) {
      // (not a thread of ours to end: wait for it as long as it takes)
      if (!(await endStuck(this.slots.indexOf(slot), limit))) this.table.quiescentSync(this.table.generation, this.slowInvalidation);
    }
  }

  /** Ask the frontend for the translations the dataplane threads (or `extra`, a ring) missed. */
  sendMisses(extra: Array<{ iova: number; access: number }> = []): void {
    const fd = this.channel();
    if (fd < 0) return;
    const { next, faults: fresh } = this.table.faultsSince(this.missesSeen);
    this.missesSeen = next;
    const now = Date.now();
    for (const f of [...fresh.map((x) => ({ iova: x.address, access: x.access, generation: x.generation })), ...extra.map((x) => ({ ...x, generation: this.table.generation }))]) {
      // one question per page until it is answered: a thread retrying (woken by another update) must
      // not repeat it — by the time a repeat arrives the guest may have unmapped the page, and the
      // frontend would report a translation fault. Unanswered for a while: ask again.
      const page = Math.floor(f.iova / 4096);
      if (now - (this.asked.get(page) ?? -Infinity) < ASK_AGAIN_MS) continue;
      // a fault recorded before an update or invalidation of its page and read after it is stale: the
      // thread has retried since (or will), and asking now could reach the frontend after the guest
      // unmapped the page (a translation failure there)
      if (changedSince(this.changes, f.iova, f.generation)) continue;
      if (this.reader.translate(f.iova, 1, f.access === MAP_WRITE ? MAP_WRITE : MAP_READ, false)) continue;
      this.asked.set(page, now);
      debug?.(`MISS iova=${f.iova.toString(16)} access=${f.access}`);
      this.counts.misses++;
      native.sendmsg(fd, P.encodeIotlbRequest({ iova: f.iova, size: 0, uaddr: 0, perm: f.access === MAP_WRITE ? 2 : 1, type: P.IOTLB.MISS }));
    }
  }
}
