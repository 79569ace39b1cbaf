// virtio-net's VLAN filtering (VIRTIO_NET_F_CTRL_VLAN), notification coalescing (VIRTIO_NET_F_NOTF_COAL,
// VQ_NOTF_COAL) and UDP segmentation offload (HOST_USO, GUEST_USO4/6) without KVM: the control commands
// through the device, the RX filter's table and the dataplane's drops, the coalescing logic's counts.
import { describe, it, expect } from 'vitest';
import { STATUS } from '../src/virtio/device.js';
import { VirtioNet, parseMac } from '../src/virtio-net/device.js';
import { F, bit, has, netFeatureOffer, netDataplaneFeatures } from '../src/virtio-net/features.js';
import { MAX_GSO_FRAME, parseTxHeader, writeRxHeader } from '../src/virtio-net/net-header.js';
import { RxFilter } from '../src/virtio-net/rx-filter.js';
import { NO_OFFLOADS, META, META_WORDS, META_NEEDS_CSUM, GSO_UDP_L4, GSO_ECN, type NetDriver, type Offloads } from '../src/drivers/api.js';
import type { VmFd } from '../src/vmm/kvm.js';
import type { GuestMemory } from '../src/vmm/memory.js';
import { SplitQueue } from '../src/virtio/split-queue.js';
import { STAT, STAT_WORDS } from '../src/dataplane/stats.js';
import { txPolicy } from '../src/virtio-net/features.js';
import { CoalesceWords, Coalescer, coalesceCommand } from '../src/virtio-net/coalesce.js';
import { serveControlQueue } from '../src/virtio-net/control.js';
import { native, EFD_NONBLOCK } from '../src/native.js';
import { prepare, type NetHandlerConfig } from '../src/virtio-net/queue-handler.js';
import { RateLimitWords } from '../src/dataplane/rate-limit-shared.js';
import { fileURLToPath } from 'node:url';
import { onPciBar } from './helpers/pci-bar.js';
import { TestMemory, TestDriver } from './helpers/virtq-driver.js';
import { capsOnlyDriver, FrameQueue } from './helpers/fake-drivers.js';
import { newPair } from './helpers/net-pair-rig.js';

const tick = () => new Promise((res) => setImmediate(res));
const MAC = '52:54:00:12:34:56';

/** A virtio-net device on the transport with a driver of capabilities only, and a guest that negotiates `feats` (no queues). */
async function live(feats: bigint, offloads: Partial<Offloads> = {}, onGuestOffloads: NetDriver['setGuestOffloads'] = () => undefined) {
  const mem = new TestMemory(1 << 20);
  const vm = { ioeventfd: () => {}, irqfd: () => {} } as unknown as VmFd;
  const memory = { buffer: mem.buffer, table: mem.view.table } as unknown as GuestMemory;
  const drv = capsOnlyDriver({ queuePairs: 2, offloads, onGuestOffloads });
  const net = new VirtioNet(memory, { driver: drv, mac: parseMac(MAC), queuePairs: 2 });
  const { w, offered } = onPciBar(net, vm);
  w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER, 1);
  w(0x08, 0);
  w(0x0c, Number(feats & 0xffffffffn));
  w(0x08, 1);
  w(0x0c, 1 | Number(feats >> 32n)); // VERSION_1
  w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK, 1);
  w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK, 1);
  await tick();
  return { net, offered };
}

const le16 = (v: number) => new Uint8Array([v & 0xff, v >> 8]);

/** A frame to `dst` (at least 60 bytes), tagged with 802.1Q VLAN `vid` unless undefined. */
function frame(dst: string, vid?: number, tpid = 0x8100): Uint8Array {
  const f = new Uint8Array(64);
  f.set(dst.split(':').map((x) => parseInt(x, 16)));
  f.set(parseMac('02:00:00:00:00:01'), 6);
  if (vid === undefined) {
    f.set([0x08, 0x00], 12);
  } else {
    f.set([tpid >> 8, tpid & 0xff, 0x20 | (vid >> 8), vid & 0xff, 0x08, 0x00], 12);
  }
  return f;
}

describe('VLAN filtering (VIRTIO_NET_F_CTRL_VLAN)', () => {
  it('is offered, and a driver that negotiated it adds and deletes ids below 4096; anything else is refused', async () => {
    const { net, offered } = await live(bit(F.CTRL_VQ) | bit(F.CTRL_RX) | bit(F.CTRL_VLAN));
    expect(has(offered(), F.CTRL_VLAN)).toBe(true);
    expect(net.control(2, 0, le16(5))).toBe(0);
    expect(net.control(2, 0, le16(4095))).toBe(0);
    expect([net.filter.hasVlan(5), net.filter.hasVlan(4095), net.filter.hasVlan(7)]).toEqual([true, true, false]);
    expect(net.control(2, 1, le16(5))).toBe(0);
    expect(net.filter.hasVlan(5)).toBe(false);
    // an id of 13 bits or more, a short or long body, a command that is none
    expect(net.control(2, 0, le16(4096))).toBe(1);
    expect(net.control(2, 0, le16(0xffff))).toBe(1);
    expect(net.control(2, 0, new Uint8Array([5]))).toBe(1);
    expect(net.control(2, 0, new Uint8Array([5, 0, 0]))).toBe(1);
    expect(net.control(2, 2, le16(5))).toBe(1);
    expect(net.filter.hasVlan(0)).toBe(false);
  });

  it('refuses the commands from a driver that did not negotiate it, and then filters no tagged frame', async () => {
    const { net } = await live(bit(F.CTRL_VQ) | bit(F.CTRL_RX));
    expect(net.control(2, 0, le16(5))).toBe(1);
    net.filter.setMode(0, false); // promiscuous off
    expect(net.filter.accepts(frame(MAC, 7), 0, 64)).toBe(true);
  });

  it('delivers tagged frames only for ids the guest added (and untagged ones, and priority tags); promiscuous takes all', async () => {
    const { net } = await live(bit(F.CTRL_VQ) | bit(F.CTRL_RX) | bit(F.CTRL_VLAN));
    const f = net.filter;
    expect(net.control(0, 0, new Uint8Array([0]))).toBe(0); // promiscuous off
    expect(net.control(2, 0, le16(5))).toBe(0);
    expect(f.accepts(frame(MAC), 0, 64)).toBe(true);
    expect(f.accepts(frame(MAC, 5), 0, 64)).toBe(true);
    expect(f.accepts(frame(MAC, 7), 0, 64)).toBe(false);
    expect(f.accepts(frame('ff:ff:ff:ff:ff:ff', 7), 0, 64)).toBe(false);
    expect(f.accepts(frame(MAC, 0), 0, 64)).toBe(true); // 802.1p priority only
    expect(f.accepts(frame(MAC, 7, 0x88a8), 0, 64)).toBe(true); // an S-tag: not a C-tag the guest filters
    // (the tag is looked at where it lies in the bytes given; the MAC alone decides otherwise)
    expect(f.accepts(frame(MAC, 7), 0, 14)).toBe(true);
    expect(net.control(2, 1, le16(5))).toBe(0);
    expect(f.accepts(frame(MAC, 5), 0, 64)).toBe(false);
    expect(net.control(0, 0, new Uint8Array([1]))).toBe(0); // promiscuous: everything
    expect(f.accepts(frame(MAC, 7), 0, 64)).toBe(true);
  });

  it('starts with an empty table after a device reset, and keeps the table in the saved filter bytes', () => {
    const f = new RxFilter();
    f.reset(parseMac(MAC));
    f.setMode(0, false);
    f.setVlanFiltering(true);
    f.setVlan(300, true);
    const saved = f.save();
    const g = new RxFilter();
    expect(g.restore(saved)).toBeUndefined();
    expect([g.hasVlan(300), g.accepts(frame(MAC, 300), 0, 64), g.accepts(frame(MAC, 301), 0, 64)]).toEqual([true, true, false]);
    const bad = saved.slice();
    bad[9 * 4] = 2; // the VLAN-filtering word is 0 or 1
    expect(g.restore(bad)).toMatch(/word 9 is 2/);
    f.reset(parseMac(MAC));
    f.setMode(0, false);
    f.setVlanFiltering(true);
    expect([f.hasVlan(300), f.accepts(frame(MAC, 300), 0, 64)]).toEqual([false, false]);
  });
});

function pair(o: { mergeable?: boolean; filter?: RxFilter } = {}) {
  return pairWith(o);
}

function pairWith(o: { mergeable?: boolean; filter?: RxFilter; rxCallFd?: number; rxCoalesce?: Coalescer; eventIdx?: boolean } = {}) {
  const mem = new TestMemory(4 << 20);
  const rx = new TestDriver(mem, 64, o.eventIdx);
  const tx = new TestDriver(mem, 64, o.eventIdx);
  const driver = new FrameQueue();
  const { rxq, txq, pair: p, rxStats, txStats } = newPair(mem, rx, tx, driver, { eventIdx: o.eventIdx }, { mergeable: o.mergeable ?? false, rxCallFd: o.rxCallFd ?? -1, filter: o.filter ?? new RxFilter(), rxCoalesce: o.rxCoalesce });
  return { mem, rx, tx, rxq, txq, driver, pair: p, rxStats, txStats };
}

describe('VLAN filtering in the dataplane', () => {
  for (const mergeable of [false, true]) {
    it(`drops frames of a VLAN the guest did not add, counted as filtered, and delivers the others (${mergeable ? 'with' : 'without'} MRG_RXBUF)`, () => {
      const filter = new RxFilter();
      filter.reset(parseMac(MAC));
      filter.setMode(0, false);
      filter.setVlanFiltering(true);
      filter.setVlan(5, true);
      const t = pair({ mergeable, filter });
      for (let i = 0; i < 8; i++) t.rx.add([{ addr: t.mem.alloc(2048), len: 2048, write: true }]);
      t.driver.frames.push(frame(MAC, 5), frame(MAC, 7), frame(MAC), frame(MAC, 7), frame(MAC, 5));
      expect(t.pair.processRx(16)).toBe(3);
      expect(t.rxStats[STAT.DROPS_FILTERED]).toBe(2);
      expect(t.rxStats[STAT.PACKETS]).toBe(3);
      const used = t.rx.takeUsed();
      expect(used.length).toBe(3);
    });
  }
});

describe('notification coalescing: the count and the timer (Coalescer)', () => {
  const words = (maxPackets: number, maxUsecs: number) => {
    const w = new CoalesceWords(4);
    w.set(0, { maxPackets, maxUsecs });
    return w;
  };

  it('notifies whenever the ring asks with either parameter 0 (as without the feature)', () => {
    for (const [p, u] of [[0, 0], [0, 100], [32, 0]]) {
      const c = new Coalescer(words(p, u), 0);
      c.update(0);
      expect([c.on, c.note(1, true), c.note(5, false), c.note(1, true), c.holding, c.dueIn(0)]).toEqual([false, true, false, true, false, -1]);
    }
  });

  it('holds until max_packets were used, then notifies if the ring asked for any of them, and counts again from zero', () => {
    const c = new Coalescer(words(4, 100_000), 0);
    c.update(0);
    expect([c.note(1, true), c.note(2, false), c.note(0, false)]).toEqual([false, false, false]);
    expect(c.holding).toBe(true);
    expect(c.note(1, false)).toBe(true); // the fourth: owed since the first
    expect(c.holding).toBe(false);
    expect(c.dueIn(performance.now())).toBe(-1);
    // the guest suppressed them all (NAPI polling): the count is reached, nothing is sent, it starts again
    expect([c.note(2, false), c.note(2, false), c.holding]).toEqual([false, false, false]);
    expect(c.note(9, true)).toBe(true); // a batch past the count goes at once
    expect(c.note(1, false)).toBe(false);
  });

  it('makes a held notification due max_usecs after the first packet held, and releases what is owed then', () => {
    const c = new Coalescer(words(64, 2000), 0);
    c.update(0);
    const before = performance.now();
    expect(c.note(1, true)).toBe(false);
    const after = performance.now();
    const due = c.dueIn(after);
    expect(due).toBeGreaterThan(0);
    expect(due).toBeLessThanOrEqual(2 + (after - before));
    expect(c.note(1, false)).toBe(false); // (the timer runs from the first)
    expect(c.dueIn(after + 2)).toBe(0);
    expect(c.release()).toBe(true);
    expect(c.dueIn(after + 2)).toBe(-1);
    c.note(3, false);
    expect(c.release()).toBe(false); // held, but the ring asked for none
  });

  it('takes new parameters: what is held is released at once when they are met by it, or coalescing is off', () => {
    const w = words(16, 100_000);
    const c = new Coalescer(w, 0);
    c.update(0);
    c.note(1, true);
    for (let i = 0; i < 9; i++) c.note(1, false);
    expect(c.update(0)).toBe(false); // unchanged
    w.set(0, { maxPackets: 12, maxUsecs: 100_000 });
    expect(c.update(0)).toBe(false); // 10 < 12
    w.set(0, { maxPackets: 8, maxUsecs: 100_000 }); // §5.1.6.5.9.1's example: 10 held, now 8
    expect(c.update(0)).toBe(true);
    expect(c.release()).toBe(true);
    c.note(1, true);
    w.set(0, { maxPackets: 0, maxUsecs: 0 });
    expect(c.update(0)).toBe(true);
    expect(c.release()).toBe(true);
    expect(c.note(1, true)).toBe(true);
    // another queue's change leaves this one's parameters
    w.set(1, { maxPackets: 5, maxUsecs: 5 });
    expect(c.update(0)).toBe(false);
    expect(c.on).toBe(false);
  });
});

describe('notification coalescing: the control commands (VIRTIO_NET_F_NOTF_COAL, VQ_NOTF_COAL)', () => {
  const coal = (maxPackets: number, maxUsecs: number) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setUint32(0, maxPackets, true);
    new DataView(b.buffer).setUint32(4, maxUsecs, true);
    return b;
  };
  const vq = (index: number, params?: Uint8Array) => {
    const b = new Uint8Array(params ? 12 : 4);
    b.set(le16(index));
    b.set([0xaa, 0xbb], 2); // reserved: ignored
    if (params) b.set(params, 4);
    return b;
  };

  it('are offered; TX_SET sets every TX queue, RX_SET every RX queue; VQ_SET one and VQ_GET answers it', async () => {
    const { net, offered } = await live(bit(F.CTRL_VQ) | bit(F.NOTF_COAL) | bit(F.VQ_NOTF_COAL) | bit(F.MQ));
    expect([has(offered(), F.NOTF_COAL), has(offered(), F.VQ_NOTF_COAL)]).toEqual([true, true]);
    expect(net.control(6, 0, coal(1, 0))).toBe(0); // Linux's TX default with napi_tx
    expect(net.control(6, 1, coal(32, 100))).toBe(0); // ethtool -C eth0 rx-frames 32 rx-usecs 100
    expect([0, 1, 2, 3].map((q) => net.coalesce.get(q))).toEqual([
      { maxPackets: 32, maxUsecs: 100 },
      { maxPackets: 1, maxUsecs: 0 },
      { maxPackets: 32, maxUsecs: 100 },
      { maxPackets: 1, maxUsecs: 0 },
    ]);
    // (the queues of this device that the driver enabled: none here, as live() enables none)
    expect(net.control(6, 2, vq(2, coal(8, 50)))).toBe(1);
  });

  it('refuse what is malformed, a queue that is not an enabled RX or TX queue, and per-queue commands without VQ_NOTF_COAL', async () => {
    const { net } = await live(bit(F.CTRL_VQ) | bit(F.NOTF_COAL));
    expect(net.control(6, 1, coal(32, 100).subarray(0, 7))).toBe(1);
    expect(net.control(6, 1, new Uint8Array(9))).toBe(1);
    expect(net.control(6, 2, vq(0, coal(8, 50)))).toBe(1); // VQ_NOTF_COAL not negotiated
    expect(net.control(6, 3, vq(0))).toBe(1);
    expect(net.control(6, 4, coal(1, 1))).toBe(1); // no such command
    expect(net.coalesce.get(0)).toEqual({ maxPackets: 0, maxUsecs: 0 });
    const without = await live(bit(F.CTRL_VQ));
    expect(without.net.control(6, 1, coal(32, 100))).toBe(1);
  });

  it('VQ_SET and VQ_GET name an enabled queue, the last command wins (§5.1.6.5.9 example), and a reset clears them all', () => {
    const words = new CoalesceWords(4);
    const enabled = new Set([0, 1, 2, 3]);
    const t = { words, perQueue: () => true, enabled: (i: number) => enabled.has(i) };
    const reply: { bytes?: Uint8Array } = {};
    const set = (cmd: number, data: Uint8Array) => coalesceCommand(t, cmd, data, reply);
    expect(set(1, coal(10, 10))).toBe(true); // RX_SET: 0 and 2
    expect(set(2, vq(0, coal(20, 20)))).toBe(true); // VQ_SET 0
    expect(set(3, vq(0))).toBe(true);
    expect(Array.from(reply.bytes!)).toEqual(Array.from(coal(20, 20)));
    expect(set(3, vq(2))).toBe(true);
    expect(Array.from(reply.bytes!)).toEqual(Array.from(coal(10, 10)));
    expect(set(2, vq(1, coal(30, 30)))).toBe(true);
    expect(set(0, coal(40, 40))).toBe(true); // TX_SET overrides VQ_SET of 1
    expect(set(3, vq(1))).toBe(true);
    expect(Array.from(reply.bytes!)).toEqual(Array.from(coal(40, 40)));
    // the control queue (4 here), past the device's queues, or not enabled
    expect(set(3, vq(4))).toBe(false);
    expect(set(2, vq(0xffff, coal(1, 1)))).toBe(false);
    enabled.delete(3);
    expect(set(2, vq(3, coal(1, 1)))).toBe(false);
    expect(set(2, vq(0, coal(1, 1)).subarray(0, 11))).toBe(false);
    expect(set(3, new Uint8Array(5))).toBe(false);
    words.clear();
    expect([0, 1, 2, 3].map((q) => words.get(q).maxPackets)).toEqual([0, 0, 0, 0]);
  });

  it('VQ_GET answers through the control ring: the parameters in the writable buffer before the ack', () => {
    const mem = new TestMemory(1 << 20);
    const ctrl = new TestDriver(mem, 16);
    const q = SplitQueue.create(mem.view, ctrl.cfg, { eventIdx: false, indirect: false }, 256);
    if (typeof q === 'string') throw new Error(q);
    const words = new CoalesceWords(2);
    words.set(1, { maxPackets: 7, maxUsecs: 9 });
    const t = { words, perQueue: () => true, enabled: () => true };
    const handle = (cls: number, cmd: number, data: Uint8Array, reply: { bytes?: Uint8Array }) => (cls === 6 && coalesceCommand(t, cmd, data, reply) ? 0 : 1);
    const cmdAt = mem.alloc(6);
    mem.bytes(cmdAt, 6).set([6, 3, ...vq(1)]);
    const out = mem.alloc(8);
    const ack = mem.alloc(1);
    mem.bytes(ack, 1)[0] = 0xee;
    const id = ctrl.add([{ addr: cmdAt, len: 6 }, { addr: out, len: 8, write: true }, { addr: ack, len: 1, write: true }]);
    // a chain with room for the ack only: no reply fits, an error
    const cmd2 = mem.alloc(6);
    mem.bytes(cmd2, 6).set([6, 3, ...vq(1)]);
    const ack2 = mem.alloc(1);
    const id2 = ctrl.add([{ addr: cmd2, len: 6 }, { addr: ack2, len: 1, write: true }]);
    serveControlQueue(q, mem.view.bytes, undefined, handle);
    expect(ctrl.takeUsed()).toEqual([{ id, len: 9 }, { id: id2, len: 1 }]);
    expect(Array.from(mem.bytes(out, 8))).toEqual(Array.from(coal(7, 9)));
    expect([mem.bytes(ack, 1)[0], mem.bytes(ack2, 1)[0]]).toEqual([0, 1]);
  });
});

describe('notification coalescing in the dataplane: interrupts per frame', () => {
  /** Frames delivered in bursts of `burst` with coalescing `params` (or none): [frames, interrupts] */
  function run(params: { maxPackets: number; maxUsecs: number } | undefined, bursts: number, burst: number): [number, number] {
    const call = native.eventfd(0, EFD_NONBLOCK);
    try {
      const words = new CoalesceWords(2);
      if (params) words.set(0, params);
      const rxCoalesce = new Coalescer(words, 0);
      rxCoalesce.update(0);
      const filter = new RxFilter();
      filter.reset(parseMac(MAC));
      const t = pairWith({ rxCallFd: call, rxCoalesce, filter });
      for (let b = 0; b < bursts; b++) {
        for (let i = 0; i < burst; i++) t.rx.add([{ addr: t.mem.alloc(2048), len: 2048, write: true }]);
        for (let i = 0; i < burst; i++) t.driver.frames.push(frame(MAC));
        t.pair.processRx(256);
        t.rx.takeUsed();
      }
      const n = new BigUint64Array(1);
      const signalled = native.read(call, n) === 8 ? Number(n[0]) : 0;
      expect(signalled).toBe(t.rxStats[STAT.INTERRUPTS]);
      return [t.rxStats[STAT.PACKETS], t.rxStats[STAT.INTERRUPTS]];
    } finally {
      native.close(call);
    }
  }

  it('asks the ring (EVENT_IDX) as entries are published: an event index the guest set after it saw them brings no interrupt', () => {
    const call = native.eventfd(0, EFD_NONBLOCK);
    try {
      const words = new CoalesceWords(2);
      words.set(0, { maxPackets: 4, maxUsecs: 10_000_000 });
      const rxCoalesce = new Coalescer(words, 0);
      rxCoalesce.update(0);
      const filter = new RxFilter();
      filter.reset(parseMac(MAC));
      const t = pairWith({ rxCallFd: call, rxCoalesce, filter, eventIdx: true });
      const deliver = (n: number) => {
        for (let i = 0; i < n; i++) t.rx.add([{ addr: t.mem.alloc(2048), len: 2048, write: true }]);
        for (let i = 0; i < n; i++) t.driver.frames.push(frame(MAC));
        t.pair.processRx(256);
      };
      t.rx.usedEvent = 0x8000; // the guest polls: no interrupt wanted
      deliver(2);
      // it took the first, asked to hear of the next (used_event 1), and sees the second by itself
      t.rx.usedEvent = 1;
      deliver(2); // the count (4) is reached: nothing it asked for was published since
      expect(t.rxStats[STAT.INTERRUPTS]).toBe(0);
      t.rx.usedEvent = 4;
      deliver(4);
      expect([t.rxStats[STAT.PACKETS], t.rxStats[STAT.INTERRUPTS]]).toEqual([8, 1]);
    } finally {
      native.close(call);
    }
  });

  it('interrupts once per delivery without coalescing, and once per max_packets frames with it', () => {
    expect(run(undefined, 16, 4)).toEqual([64, 16]);
    // rx-frames 32, rx-usecs far off: the count decides
    expect(run({ maxPackets: 32, maxUsecs: 10_000_000 }, 16, 4)).toEqual([64, 2]);
    expect(run({ maxPackets: 8, maxUsecs: 10_000_000 }, 16, 4)).toEqual([64, 8]);
  });
});

describe('notification coalescing on a dataplane thread (the net queue handler)', () => {
  it('fires a held interrupt once its time has passed, when the parameters turn it off, and when the handler closes', async () => {
    const mem = new TestMemory(4 << 20);
    const rx = new TestDriver(mem, 64);
    const tx = new TestDriver(mem, 64);
    const feats = { eventIdx: false, indirect: true };
    const rxq = SplitQueue.create(mem.view, rx.cfg, feats, 32768);
    const txq = SplitQueue.create(mem.view, tx.cfg, feats, 32768);
    if (typeof rxq === 'string' || typeof txq === 'string') throw new Error(String(rxq));
    const filter = new RxFilter();
    filter.reset(parseMac(MAC));
    const words = new CoalesceWords(2);
    words.set(0, { maxPackets: 64, maxUsecs: 1000 });
    const config: NetHandlerConfig = {
      driverModule: fileURLToPath(new URL('../src/drivers/null/index.ts', import.meta.url)),
      mergeable: false,
      maxRxFrame: 1514,
      txPolicy: txPolicy(0n),
      filter: filter.buffer,
      rateLimit: new RateLimitWords().buffer,
      coalesce: words.buffer,
    };
    const calls = [native.eventfd(0, EFD_NONBLOCK), native.eventfd(0, EFD_NONBLOCK)];
    const stats = [new Float64Array(STAT_WORDS), new Float64Array(STAT_WORDS)];
    try {
      const open = await prepare(config);
      const h = open({ mem: mem.view, memory: mem.buffer, queues: [rxq, txq], indices: [0, 1], callFds: calls, stats, init: { pair: 0, driver: { size: 64, rx: true, loop: false } } });
      const post = (n: number) => {
        for (let i = 0; i < n; i++) rx.add([{ addr: mem.alloc(2048), len: 2048, write: true }]);
      };
      post(8);
      h.process(256);
      expect([stats[0][STAT.PACKETS], stats[0][STAT.INTERRUPTS]]).toEqual([8, 0]);
      // (within the ms the held interrupt is due in, nothing: the thread would sleep that long)
      await new Promise((r) => setTimeout(r, 5));
      h.beforeWait(false);
      expect(stats[0][STAT.INTERRUPTS]).toBe(1);
      post(8);
      h.process(256);
      expect(stats[0][STAT.INTERRUPTS]).toBe(1);
      words.set(0, { maxPackets: 0, maxUsecs: 0 });
      h.process(256);
      expect(stats[0][STAT.INTERRUPTS]).toBe(2);
      words.set(0, { maxPackets: 64, maxUsecs: 10_000_000 });
      post(8);
      h.process(256);
      expect([stats[0][STAT.PACKETS], stats[0][STAT.INTERRUPTS]]).toEqual([24, 2]);
      h.close();
      expect(stats[0][STAT.INTERRUPTS]).toBe(3);
      const n = new BigUint64Array(1);
      expect(native.read(calls[0], n)).toBe(8);
      expect(Number(n[0])).toBe(3);
    } finally {
      calls.forEach((fd) => native.close(fd));
    }
  });
});

describe('UDP segmentation offload (HOST_USO, GUEST_USO4/6)', () => {
  const USO: Partial<Offloads> = { txCsum: true, rxCsum: true, txUso: true, rxUso4: true, rxUso6: true };
  const hdr = (flags: number, gso: number, gsoSize: number) => {
    const h = new Uint8Array(12);
    h[0] = flags;
    h[1] = gso;
    h.set(le16(42), 2);
    h.set(le16(gsoSize), 4);
    h.set(le16(34), 6);
    h.set(le16(6), 8);
    return new DataView(h.buffer);
  };

  it('is offered only over a driver that segments and delivers UDP GSO packets, with checksums', () => {
    const f = netFeatureOffer({ offloads: { ...NO_OFFLOADS, ...USO } }, 1);
    expect([has(f, F.HOST_USO), has(f, F.GUEST_USO4), has(f, F.GUEST_USO6)]).toEqual([true, true, true]);
    const none = netFeatureOffer({ offloads: { ...NO_OFFLOADS, txCsum: true, rxCsum: true } }, 1);
    expect([has(none, F.HOST_USO), has(none, F.GUEST_USO4), has(none, F.GUEST_USO6)]).toEqual([false, false, false]);
    const noCsum = netFeatureOffer({ offloads: { ...NO_OFFLOADS, txUso: true, rxUso4: true, rxUso6: true } }, 1);
    expect([has(noCsum, F.HOST_USO), has(noCsum, F.GUEST_USO4), has(noCsum, F.GUEST_USO6)]).toEqual([false, false, false]);
    // a guest taking UDP GSO frames (and no TSO) posts buffers for the largest GSO frame
    expect(netDataplaneFeatures(bit(F.VERSION_1) | bit(F.GUEST_CSUM) | bit(F.GUEST_USO4), 1500).maxRxFrame).toBe(MAX_GSO_FRAME);
  });

  it('takes a UDP GSO packet (GSO_UDP_L4) from a guest that negotiated HOST_USO, and refuses it otherwise, with ECN or without a checksum to complete', () => {
    const meta = new Int32Array(META_WORDS);
    const uso = txPolicy(bit(F.CSUM) | bit(F.HOST_USO) | bit(F.HOST_ECN) | bit(F.HOST_TSO4));
    expect(parseTxHeader(hdr(1, GSO_UDP_L4, 1000), 0, 4042, uso, meta, 0)).toBe(true);
    expect([meta[META.GSO_TYPE], meta[META.GSO_SIZE], meta[META.FLAGS], meta[META.CSUM_START], meta[META.CSUM_OFFSET]]).toEqual([GSO_UDP_L4, 1000, META_NEEDS_CSUM, 34, 6]);
    expect(parseTxHeader(hdr(1, GSO_UDP_L4, 1000), 0, 4042, txPolicy(bit(F.CSUM) | bit(F.HOST_TSO4)), meta, 0)).toBe(false);
    expect(parseTxHeader(hdr(1, GSO_UDP_L4 | GSO_ECN, 1000), 0, 4042, uso, meta, 0)).toBe(false);
    expect(parseTxHeader(hdr(0, GSO_UDP_L4, 1000), 0, 4042, uso, meta, 0)).toBe(false);
    expect(parseTxHeader(hdr(1, GSO_UDP_L4, 0), 0, 4042, uso, meta, 0)).toBe(false);
  });

  it('hands the guest a UDP GSO frame as GSO_UDP_L4 with its segment size', () => {
    const meta = new Int32Array(META_WORDS);
    meta[META.FLAGS] = META_NEEDS_CSUM;
    meta[META.GSO_TYPE] = GSO_UDP_L4;
    meta[META.GSO_SIZE] = 1000;
    meta[META.HDR_LEN] = 42;
    meta[META.CSUM_START] = 34;
    meta[META.CSUM_OFFSET] = 6;
    const h = new Uint8Array(12);
    writeRxHeader(new DataView(h.buffer), 0, meta, 0, 1);
    expect(Array.from(h)).toEqual([1, GSO_UDP_L4, 42, 0, 0xe8, 3, 34, 0, 6, 0, 1, 0]);
  });

  it('lets the guest turn UDP GSO frames off and on (CTRL_GUEST_OFFLOADS), passed to the driver', async () => {
    const calls: unknown[] = [];
    const rx = bit(F.GUEST_CSUM) | bit(F.GUEST_USO4) | bit(F.GUEST_USO6);
    const { net } = await live(bit(F.CTRL_VQ) | bit(F.CTRL_GUEST_OFFLOADS) | rx, USO, (g) => calls.push(g));
    expect(calls.at(-1)).toEqual({ rxCsum: true, rxTso4: false, rxTso6: false, rxTsoEcn: false, rxUso4: true, rxUso6: true });
    const u64 = (v: bigint) => new Uint8Array(new BigUint64Array([v]).buffer);
    expect(net.control(5, 0, u64(bit(F.GUEST_CSUM)))).toBe(0);
    expect(calls.at(-1)).toEqual({ rxCsum: true, rxTso4: false, rxTso6: false, rxTsoEcn: false, rxUso4: false, rxUso6: false });
    expect(net.control(5, 0, u64(rx))).toBe(0);
    expect(calls.at(-1)).toMatchObject({ rxUso4: true, rxUso6: true });
  });
});
