// Nanoseconds per packet of the net engine (NetQueuePair) with the null driver, in process, no KVM and
// no thread: a ring of one-descriptor chains in a SharedArrayBuffer, the engine moving a ring's worth
// of packets per call, TX and RX (RX also with MRG_RXBUF: rx-mrg), split and packed rings; next to
// bench/ring-micro.c, a C loop doing the same ring work on the same layout in the same memory (built
// here with gcc -O2, loaded as an addon, so both run in this process). tinybench times both,
// alternating task order round by round.
// The driver side (buffers made available again) is the C one for both, so the difference is the
// device side. The guest asks for no interrupts (as a polling driver does): no system call is timed.
// --base DIR adds the engine of another build (DIR/dist, e.g. the last release's) to the same rounds,
// so that a change is measured against what it changes on the same machine at the same moment.
// --js-only times the engine alone (no C loop, no base, no floor): what `npm run bench:profile` profiles.
// On split rings a third task, `floor`, is the C loop's work written as one flat JavaScript function
// (bench/ring-floor.mjs): no layer between ring and copy, so engine/floor is what the layers cost and
// floor/C what JavaScript costs for the same work.
//
//   node bench/engine-micro.mjs [--json] [--rounds N] [--ms MS] [--sizes 64,1514] [--ring 256] [--base DIR] [--js-only]
//                               [--layouts split,packed] [--kinds tx,rx,rx-mrg] (the rows to time)
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Bench } from 'tinybench';
import { ROOT, cliArgs, buildC, median, spread, alternate } from './lib.mjs';

const { json, num, list, str, has, log } = cliArgs();
const jsOnly = has('--js-only');
const rounds = num('--rounds', 3);
const ms = num('--ms', 1000);
const sizes = list('--sizes', ['64', '1514']).map(Number);
const RING = num('--ring', 256);
const layouts = list('--layouts', ['split', 'packed']);
const kinds = list('--kinds', ['tx', 'rx', 'rx-mrg']);

/** The engine's modules of the build at `root` (this one, or --base). */
async function engineOf(root) {
  const dist = (p) => import(join(root, 'dist', p));
  return {
    ...(await dist('vmm/memory.js')),
    ...(await dist('virtio/dma.js')),
    ...(await dist('virtio/queues.js')),
    ...(await dist('virtio-net/net-pair.js')),
    ...(await dist('virtio-net/rx-filter.js')),
    ...(await dist('dataplane/stats.js')),
    ...(await dist('virtio-net/features.js')),
    nullDriver: await dist('drivers/null/index.js'),
  };
}
const here = await engineOf(ROOT);
const baseDir = str('--base');
const base = baseDir === undefined ? undefined : await engineOf(baseDir);
const { STAT } = here;
const { native, EFD_NONBLOCK } = await import(join(ROOT, 'dist', 'native.js'));
const ringC = createRequire(import.meta.url)(buildC('ring-micro', ['-shared', '-fPIC', '-I/usr/include/node'], 'ring-micro.node'));

const MEM = 8 << 20;
const BUF = 2048;
const [F_WRITE, P_AVAIL, P_USED] = [2, 1 << 7, 1 << 15];
const HDR = 12;

/**
 * One ring of `RING` one-descriptor chains at `base` (descriptors, then the driver area, the device
 * area and the buffers), made available once: `cfg` as ring-micro.c reads it, `state` its counters.
 */
function layRing(u8, base, packed, rx, size) {
  const dv = new DataView(u8.buffer);
  const desc = base;
  const avail = desc + 16 * RING;
  const used = avail + 0x1000;
  const bufs = used + 0x1000 + 8 * RING;
  for (let i = 0; i < RING; i++) {
    const at = bufs + i * BUF;
    u8.fill(0, at, at + BUF);
    if (!rx) for (let k = HDR + 14; k < HDR + size; k++) u8[at + k] = k & 0xff;
    dv.setBigUint64(desc + 16 * i, BigInt(at), true);
    dv.setUint32(desc + 16 * i + 8, rx ? BUF : HDR + size, true);
    if (packed) {
      dv.setUint16(desc + 16 * i + 12, i, true);
      dv.setUint16(desc + 16 * i + 14, P_AVAIL | (rx ? F_WRITE : 0), true);
    } else {
      dv.setUint16(desc + 16 * i + 12, rx ? F_WRITE : 0, true);
      dv.setUint16(avail + 4 + 2 * i, i, true);
    }
  }
  // no interrupts: split VRING_AVAIL_F_NO_INTERRUPT; packed driver event flags DISABLE
  dv.setUint16(avail, packed ? 0 : 1, true);
  dv.setUint16(avail + 2, packed ? 1 : RING, true);
  const cfg = new Float64Array([desc, avail, used, RING, size, rx ? 1 : 0, packed ? 1 : 0]);
  // device: avail 0, used 0, wrap 1; driver (packed): slot 0, wrap 0 (the first wrap is made available)
  const state = new Uint32Array([0, 0, 1, 0, 0, 0]);
  return { cfg, state, bufs, qcfg: { size: RING, desc, avail, used } };
}

/** The engine (of build `e`) over one TX ring and one RX ring in `mem`, the same rings laid out for the C loop. */
function setup(packed, size, e = here, mergeable = false) {
  const { MemoryTable, guestView, createQueue, NetQueuePair, RxFilter, STAT_WORDS, txPolicy, nullDriver } = e;
  const buffer = new SharedArrayBuffer(MEM);
  const u8 = new Uint8Array(buffer);
  const view = guestView(buffer, new MemoryTable([{ gpa: 0, size: MEM, offset: 0 }]));
  const feats = { eventIdx: false, indirect: false, packed };
  const rings = { rx: layRing(u8, 0x10000, packed, true, size), tx: layRing(u8, 0x10000 + (3 << 20), packed, false, size) };
  const rxq = createQueue(view, rings.rx.qcfg, feats, 32768);
  const txq = createQueue(view, rings.tx.qcfg, feats, 32768);
  if (typeof rxq === 'string' || typeof txq === 'string') throw new Error(`queue: ${rxq} ${txq}`);
  const driver = nullDriver.openQueue({ size, rx: true, loop: false });
  const filter = new RxFilter();
  filter.reset(new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
  const fds = [native.eventfd(0, EFD_NONBLOCK), native.eventfd(0, EFD_NONBLOCK)];
  const stats = { rx: new Float64Array(STAT_WORDS), tx: new Float64Array(STAT_WORDS) };
  const pair = new NetQueuePair(view, buffer, rxq, txq, driver, {
    mergeable,
    maxRxFrame: 1514,
    txPolicy: txPolicy(0n),
    rxCallFd: fds[0],
    txCallFd: fds[1],
    rxStats: stats.rx,
    txStats: stats.tx,
    filter,
  });
  return { u8, buffer, rings, pair, rxq, txq, stats, close: () => fds.forEach((fd) => native.close(fd)) };
}

/**
 * A ring's worth of packets through `process` (the engine or the C loop), then the driver makes them
 * available again. Throws when a pass moves nothing: a figure must be of packets that moved.
 */
function turn(s, ring, process) {
  let done = 0;
  while (done < RING) {
    const n = process(RING - done);
    if (n === 0) throw new Error(`nothing moved after ${done} packets (broken: rx ${s.rxq.broken}, tx ${s.txq.broken})`);
    done += n;
  }
  ringC.driver(s.u8, ring.cfg, ring.state, RING);
}

const results = {};
for (const layout of layouts) {
  for (const size of sizes) {
    // rx-mrg: receive with MRG_RXBUF negotiated (as virtio-user and Linux guests do), same buffers
    for (const kind of kinds) {
      const dir = kind === 'tx' ? 'tx' : 'rx';
      const mrg = kind === 'rx-mrg';
      const key = `${kind} ${size}B ${layout}`;
      // separate memory for the engine and the C loop: each keeps its own ring indices
      const js = setup(layout === 'packed', size, here, mrg);
      const c = setup(layout === 'packed', size);
      const old = base && setup(layout === 'packed', size, base, mrg);
      // the floor: split rings, the C loop's work (its RX is without MRG_RXBUF's bookkeeping)
      const fl = !jsOnly && layout === 'split' && kind !== 'rx-mrg' ? setup(false, size) : undefined;
      // (a module instance of its own per row: closures of one function literal share their feedback and
      // optimized code, which then cannot take the ring's constants as constants, as one dataplane
      // thread's code for its one ring can; that costs about 2x, BENCHMARKS.md)
      const floor = fl && (await import(`./ring-floor.mjs?${key}`)).floorDevice(fl.buffer, native.plainView(fl.buffer), fl.rings[dir].cfg, native.copyv);
      const engine = (x) => (dir === 'tx' ? (n) => x.pair.processTx(n) : (n) => x.pair.processRx(n));
      const ring = c.rings[dir];
      const tasks = {
        js: () => turn(js, js.rings[dir], engine(js)),
        ...(jsOnly ? {} : { c: () => turn(c, ring, (n) => ringC.device(c.u8, ring.cfg, ring.state, n)) }),
        ...(old && !jsOnly ? { base: () => turn(old, old.rings[dir], engine(old)) } : {}),
        ...(fl ? { floor: () => turn(fl, fl.rings[dir], (n) => floor(fl.rings[dir].state, n)) } : {}),
      };
      const ns = { js: [], c: [], base: [], floor: [] };
      for (let r = 0; r < rounds; r++) {
        const bench = new Bench({ time: ms, warmupTime: Math.min(ms, 200) });
        for (const name of alternate(Object.keys(tasks), r)) bench.add(name, tasks[name]);
        await bench.run();
        for (const t of bench.tasks) ns[t.name].push((t.result.latency.mean * 1e6) / RING);
      }
      // every packet the engine took was a whole one: none dropped, none interrupted for
      const st = js.stats[dir];
      if (st[STAT.DROPS] !== 0 || st[STAT.INTERRUPTS] !== 0 || st[STAT.PACKETS] === 0) throw new Error(`${key}: engine counters ${[...st]}`);
      // both wrote whole frames with a header (num_buffers 1) into the receive buffers
      if (dir === 'rx') {
        for (const [who, x] of jsOnly ? [['engine', js]] : [['engine', js], ['C loop', c], ...(fl ? [['floor', fl]] : [])]) {
          const at = x.rings.rx.bufs + (RING - 1) * BUF;
          if (x.u8[at + 10] !== 1 || x.u8[at + HDR] !== 0xff || x.u8[at + HDR + size - 1] !== ((size - 1) & 0xff)) throw new Error(`${key}: the ${who} wrote no frame`);
        }
      }
      js.close();
      c.close();
      old?.close();
      fl?.close();
      if (jsOnly) {
        results[key] = { jsNsPerPacket: ns.js };
        log(`${key}: JS ${spread(ns.js, 1)} ns/pkt`);
        continue;
      }
      const ratio = median(ns.js) / median(ns.c);
      const floorOf = fl ? { floorNsPerPacket: ns.floor, floorRatio: median(ns.floor) / median(ns.c) } : {};
      results[key] = { jsNsPerPacket: ns.js, cNsPerPacket: ns.c, ratio, ...floorOf, ...(old ? { baseNsPerPacket: ns.base, baseRatio: median(ns.base) / median(ns.c) } : {}) };
      const was = old && ns.base.length ? ` | base ${spread(ns.base, 1)} ns/pkt, JS/base ${(median(ns.js) / median(ns.base)).toFixed(2)}` : '';
      const fls = fl ? ` | floor ${spread(ns.floor, 1)} ns/pkt, floor/C ${floorOf.floorRatio.toFixed(2)}` : '';
      log(`${key}: JS ${spread(ns.js, 1)} ns/pkt | C ${spread(ns.c, 1)} ns/pkt | JS/C ${ratio.toFixed(2)}${fls}${was}`);
    }
  }
}
if (json) process.stdout.write(JSON.stringify({ ring: RING, rounds, ms, ...(baseDir ? { base: baseDir } : {}), results }, null, 2) + '\n');
