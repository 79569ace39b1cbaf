// Target "iommu": the virtio-iommu request parser and handler (IommuRequests.drain) on a fresh request
// ring: ATTACH, DETACH, MAP, UNMAP, PROBE and unknown requests, with fields in and out of range, cut
// short or padded, over random buffers; in hostile cases a driver that corrupts its ring.
//
// Invariants: no exception escapes; nothing written outside the buffers and ring the guest gave; every
// request completes with all its writable bytes and a status the spec defines, in the last-but-three
// byte; an unknown type is UNSUPP, a known one cut short INVAL, an endpoint not behind the IOMMU NOENT.
// The coupling to the request code is this file only.
import fc from 'fast-check';
import { SplitQueue } from '../../virtio/split-queue.js';
import { IommuRequests, STATE, T, S, PROBE_SIZE } from '../../viommu/requests.js';
import { IommuTable } from '../../viommu/table.js';
import { ScriptedMemory, ScriptedRing, cutInto, RAM_A, GPA_B, RAM_B } from '../guest.js';
import { check, type FuzzTarget } from '../target.js';

const REQ_LEN: Record<number, number> = { [T.ATTACH]: 20, [T.DETACH]: 20, [T.MAP]: 36, [T.UNMAP]: 28, [T.PROBE]: 72 };
const ENDPOINTS = [8, 16];

const u32 = fc.oneof(fc.nat(3), fc.constantFrom(...ENDPOINTS), fc.integer({ min: 0, max: 0xffffffff }));
const addr = fc.oneof(fc.nat(16).map((p) => p * 4096), fc.nat(16).map((p) => p * 4096 - 1), fc.constant(2 ** 53), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map(Number));
const request = fc.record({
  type: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 1, max: 5 }) }, { weight: 1, arbitrary: fc.nat(255) }),
  a: u32,
  b: u32,
  start: addr,
  end: addr,
  phys: addr,
  flags: fc.oneof(fc.nat(3), fc.nat(255)),
  /** readable bytes: the request's own length, or other */
  len: fc.oneof({ weight: 6, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 140 }) }),
  /** writable bytes: what the type needs, or other */
  reply: fc.oneof({ weight: 6, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat(600) }),
  cuts: fc.array(fc.nat(80), { maxLength: 2 }),
});

const opArb = fc.oneof(
  { weight: 5, arbitrary: fc.record({ k: fc.constant('req' as const), r: request }) },
  { weight: 2, arbitrary: fc.constant({ k: 'drain' as const }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('poke' as const), where: fc.nat(), value: fc.nat(255) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('jump' as const), by: fc.integer({ min: 1, max: 0xffff }) }) },
);

export const iommuCase = fc.record({
  sizeLog: fc.integer({ min: 0, max: 6 }),
  eventIdx: fc.boolean(),
  indirect: fc.boolean(),
  bypass: fc.boolean(),
  bypassConfig: fc.boolean(),
  hostile: fc.boolean(),
  ops: fc.array(opArb, { maxLength: 12 }),
});
export type IommuCase = typeof iommuCase extends fc.Arbitrary<infer T> ? T : never;

export class IommuTarget implements FuzzTarget {
  readonly name = 'iommu';
  readonly about = 'virtio-iommu requests of every type, in and out of range, over random buffers';
  readonly weight = 1;
  readonly counts = { cases: 0, rings: 0, requests: 0, ok: 0 };
  private readonly m = new ScriptedMemory();
  private readonly table = new IommuTable();
  private readonly state = new Int32Array(new SharedArrayBuffer(4 * STATE.WORDS));

  property(): fc.IRawProperty<[IommuCase]> {
    return fc.property(iommuCase, (c) => this.run(c));
  }

  run(c: IommuCase): void {
    const m = this.m;
    m.reset();
    this.table.clear();
    this.state.fill(0);
    this.state[STATE.BYPASS] = c.bypass ? 1 : 0;
    this.state[STATE.BYPASS_CONFIG] = c.bypassConfig ? 1 : 0;
    this.counts.cases++;
    this.counts.rings++;
    const reqs = new IommuRequests(this.table, ENDPOINTS, this.state);
    const ring = new ScriptedRing(m, 1 << c.sizeLog, 0, c.eventIdx, false);
    const q = SplitQueue.create(m.view, { size: ring.size, desc: ring.desc, avail: ring.avail, used: ring.used }, { eventIdx: c.eventIdx, indirect: c.indirect }, 32768);
    check(typeof q !== 'string', () => `a well-placed ring refused: ${q}`);
    let placeA = ring.end;
    let placeB = GPA_B;
    const place = (len: number): number | undefined => {
      if (placeA + len <= RAM_A) return (placeA += len) - len;
      if (placeB + len <= GPA_B + RAM_B) return (placeB += len) - len;
      return undefined;
    };
    /** what each request in flight must come back with: its writable bytes, and the status if known */
    const expect = new Map<number, { writable: number; status?: number }>();
    for (const op of c.ops) {
      if (op.k === 'req') {
        const r = op.r;
        const body = new Uint8Array(Math.max(REQ_LEN[r.type] ?? 20, 40));
        const v = new DataView(body.buffer);
        body[0] = r.type;
        v.setUint32(4, r.a, true);
        v.setUint32(8, r.type === T.MAP || r.type === T.UNMAP ? r.start % 2 ** 32 : r.b, true);
        if (r.type === T.MAP || r.type === T.UNMAP) {
          v.setUint32(12, Math.floor(r.start / 2 ** 32) >>> 0, true);
          v.setBigUint64(16, BigInt(Math.min(r.end, 2 ** 64 - 1)) & 0xffffffffffffffffn, true);
          if (r.type === T.MAP) v.setBigUint64(24, BigInt(Math.min(r.phys, 2 ** 64 - 1)) & 0xffffffffffffffffn, true);
          if (r.type === T.MAP) v.setUint32(32, r.flags, true);
        } else v.setUint32(12, r.flags, true);
        const len = Math.min(r.len ?? REQ_LEN[r.type] ?? 20, body.length);
        const writable = r.reply ?? (r.type === T.PROBE ? PROBE_SIZE + 4 : 4);
        if (!c.hostile && (r.len !== null || r.reply !== null)) continue;
        const bufs = [];
        let at = 0;
        for (const n of cutInto(len, r.cuts)) {
          const a = place(n);
          if (a === undefined) break;
          m.u8.set(body.subarray(at, at + n), m.off(a, n));
          bufs.push({ addr: a, len: n, write: false });
          at += n;
        }
        const w = place(writable);
        if (at < len || w === undefined || bufs.length + 1 > ring.size) continue;
        bufs.push({ addr: w, len: writable, write: true });
        if (!ring.add(bufs)) continue;
        const head = [...ring.inFlight.keys()].pop()!;
        let status: number | undefined;
        if (len >= 4 && len <= 128 && writable >= 4) {
          if (REQ_LEN[r.type] === undefined) status = S.UNSUPP;
          else if (len < REQ_LEN[r.type] || (r.type === T.PROBE && writable < PROBE_SIZE + 4)) status = S.INVAL;
          else if ((r.type === T.ATTACH || r.type === T.DETACH || r.type === T.PROBE) && !ENDPOINTS.includes(r.type === T.PROBE ? r.a : r.b)) status = S.NOENT;
        }
        expect.set(head, { writable: len >= 4 && len <= 128 && writable >= 4 ? writable : 0, status });
      } else if (op.k === 'drain') {
        m.clearWritable();
        ring.allowFromTable();
        m.snapshot();
        reqs.drain(q, m.view.bytes);
        const bad = m.diff();
        check(!bad, () => bad!);
        if (!c.hostile) this.checkReplies(ring, q, expect);
      } else if (c.hostile) {
        if (op.k === 'poke') ring.poke(op.where, op.value);
        else ring.jumpAvail(op.by);
      }
    }
  }

  private checkReplies(ring: ScriptedRing, q: SplitQueue, expect: Map<number, { writable: number; status?: number }>): void {
    check(!q.broken, () => `a well-behaved driver's request queue broke: ${q.broken}`);
    const used = ring.reclaim();
    check(!ring.bad, () => `request queue: ${ring.bad}`);
    for (const u of used) {
      this.counts.requests++;
      const want = expect.get(u.chain.head);
      expect.delete(u.chain.head);
      if (!want) continue;
      check(u.len === want.writable, () => `request ${u.chain.head}: used length ${u.len}, its writable bytes ${want.writable}`);
      if (want.writable === 0) continue;
      const w = u.chain.bufs[u.chain.bufs.length - 1];
      const status = this.m.u8[this.m.off(w.addr + w.len - 4)];
      check(status <= S.NOMEM, () => `request ${u.chain.head}: status ${status} is none the spec defines`);
      check(want.status === undefined || status === want.status, () => `request ${u.chain.head}: status ${status}, expected ${want.status}`);
      if (status === S.OK) this.counts.ok++;
    }
  }
}
