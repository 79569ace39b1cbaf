// Target "rng": the virtqueue (split or packed) and virtio-rng's queue handler (RngHandler) driven by a
// scripted guest driver on a freshly placed request ring, with random features, buffer layouts and
// budgets, and (in hostile cases) device-readable buffers, wild addresses and a driver that corrupts
// its own ring.
//
// Invariants, every case: no exception escapes; nothing is written outside the buffers and ring the
// guest gave (guards around RAM, a snapshot diff inside it); a pass takes no more than its budget. For
// a well-behaved driver also: the ring never breaks; every used entry names a chain in flight and
// claims all its writable bytes (up to RNG_REQUEST_MAX) and no more; every chain comes back.
import fc from 'fast-check';
import { createQueue } from '../../virtio/queues.js';
import { RngHandler, RNG_REQUEST_MAX } from '../../virtio-rng/queue-handler.js';
import { STAT_WORDS } from '../../dataplane/stats.js';
import { ScriptedMemory, ScriptedRing, RAM_A, RAM_B, GPA_B, type Desc, type DriverRing } from '../guest.js';
import { ScriptedPackedRing } from '../guest-packed.js';
import { check, type FuzzTarget } from '../target.js';

const sizes = fc.array(fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 2000 })), { minLength: 1, maxLength: 4 });

const opArb = fc.oneof(
  { weight: 5, arbitrary: fc.record({ k: fc.constant('add' as const), sizes, indirect: fc.boolean() }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('process' as const), budget: fc.integer({ min: 1, max: 80 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('readable' as const), sizes, indirect: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('poke' as const), where: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('jump' as const), by: fc.integer({ min: 1, max: 0xffff }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('wild' as const), bufs: fc.array(fc.record({ addr: fc.integer({ min: 0, max: 0x10000 }), len: fc.integer({ min: 0, max: 0x10000 }), write: fc.boolean() }), { minLength: 1, maxLength: 4 }), indirect: fc.boolean() }) },
);

export const rngCase = fc.record({
  packed: fc.boolean(),
  /** added to a packed ring's size (packed sizes need not be powers of two) */
  skew: fc.nat(3),
  eventIdx: fc.boolean(),
  indirect: fc.boolean(),
  inOrder: fc.boolean(),
  /** log2 of the ring's size */
  log: fc.integer({ min: 0, max: 6 }),
  hostile: fc.boolean(),
  ops: fc.array(opArb, { maxLength: 16 }),
});
export type RngCase = typeof rngCase extends fc.Arbitrary<infer T> ? T : never;

export class RngTarget implements FuzzTarget {
  readonly name = 'rng';
  readonly about = 'a scripted driver on a fresh virtio-rng request ring with random features, buffers and budgets';
  readonly weight = 2;
  readonly counts = { cases: 0, rings: 0, packedRings: 0, passes: 0, requests: 0, bytes: 0, ringsBroken: 0 };
  private readonly m = new ScriptedMemory();

  property(): fc.IRawProperty<[RngCase]> {
    return fc.property(rngCase, (c) => this.run(c));
  }

  run(c: RngCase): void {
    const m = this.m;
    m.reset();
    this.counts.cases++;
    this.counts.rings++;
    if (c.packed) this.counts.packedRings++;
    const ring: DriverRing = c.packed ? new ScriptedPackedRing(m, (1 << c.log) + c.skew, 0, c.eventIdx, c.inOrder) : new ScriptedRing(m, 1 << c.log, 0, c.eventIdx, c.inOrder);
    const q = createQueue(m.view, { size: ring.size, desc: ring.desc, avail: ring.avail, used: ring.used }, { eventIdx: c.eventIdx, indirect: c.indirect, packed: c.packed }, 32768);
    check(typeof q !== 'string', () => `a well-placed ring refused: ${q}`);
    const stats = new Float64Array(STAT_WORDS);
    const h = new RngHandler({ mem: m.view, memory: m.buffer, queues: [q], indices: [0], callFds: [-1], stats: [stats], init: undefined });
    let nextA = ring.end;
    let nextB = GPA_B;
    const take = (len: number): number | undefined => {
      if (nextA + len <= RAM_A) return (nextA += len) - len;
      if (nextB + len <= GPA_B + RAM_B) return (nextB += len) - len;
      return undefined;
    };
    const add = (bufs: Desc[] | undefined, indirect: boolean) => {
      // (a chain, indirect or not, is no longer than the queue: §2.7.5.3.1)
      if (!bufs || bufs.length > ring.size) return;
      const table = indirect && c.indirect ? take(16 * bufs.length + 16) : undefined;
      ring.add(bufs, table === undefined ? undefined : table + ((16 - (table % 16)) % 16));
    };
    const place = (lens: number[], write: boolean): Desc[] | undefined => {
      const out: Desc[] = [];
      for (const len of lens) {
        const addr = take(len);
        if (addr === undefined) return undefined;
        out.push({ addr, len, write });
      }
      return out;
    };
    const pass = (budget: number) => {
      m.clearWritable();
      ring.allowFromTable();
      m.snapshot();
      const before = stats[0];
      const done = h.process(budget);
      this.counts.passes++;
      check(done <= budget && stats[0] - before === done, () => `a pass with budget ${budget} used ${done} requests (counted ${stats[0] - before})`);
      const bad = m.diff();
      check(!bad, () => bad!);
      if (!c.hostile) this.checkUsed(ring, q.broken);
    };
    for (const op of c.ops) {
      if (op.k === 'add') add(place(op.sizes, true), op.indirect);
      else if (op.k === 'process') pass(op.budget);
      else if (c.hostile) {
        if (op.k === 'readable') add(place(op.sizes, false), op.indirect);
        else if (op.k === 'poke') ring.poke(op.where, op.value);
        else if (op.k === 'jump') ring.jumpAvail(op.by);
        else ring.add(op.bufs, op.indirect ? op.bufs[0].addr & ~15 : undefined);
      }
    }
    // the end of a session: every request made comes back
    pass(1 << 20);
    if (!c.hostile) check(ring.inFlight.size === 0, () => `${ring.inFlight.size} requests never came back`);
    this.counts.requests += stats[0];
    this.counts.bytes += stats[1];
    if (q.broken) this.counts.ringsBroken++;
  }

  /** Each used entry: a chain in flight (reclaim checks), with all its writable bytes up to the cap. */
  private checkUsed(ring: DriverRing, broken: string | undefined): void {
    check(!broken, () => `a well-behaved driver's ring broke: ${broken}`);
    for (const u of ring.reclaim()) {
      const want = Math.min(u.chain.writableBytes, RNG_REQUEST_MAX);
      check(u.len === want, () => `a request with ${u.chain.writableBytes} writable bytes was used with ${u.len}, not ${want}`);
    }
    check(!ring.bad, () => `${ring.bad}`);
  }
}
