// virtio-net's VLAN filtering (VIRTIO_NET_F_CTRL_VLAN), notification coalescing (VIRTIO_NET_F_NOTF_COAL,
// VQ_NOTF_COAL) and UDP segmentation offload (HOST_USO, GUEST_USO4/6) without KVM: the control commands
// through the device, the RX filter's table and the dataplane's drops, the coalescing logic's counts.
import { describe, it, expect } from 'vitest';
import { STATUS } from '../src/virtio/device.js';
import { VirtioNet, parseMac } from '../src/virtio-net/device.js';
import { F, bit, has } from '../src/virtio-net/features.js';
import { RxFilter } from '../src/virtio-net/rx-filter.js';
import { NO_OFFLOADS, type NetDriver, type Offloads } from '../src/drivers/api.js';
import type { VmFd } from '../src/vmm/kvm.js';
import type { GuestMemory } from '../src/vmm/memory.js';
import { SplitQueue } from '../src/virtio/split-queue.js';
import { NetQueuePair } from '../src/virtio-net/net-pair.js';
import { STAT, STAT_WORDS } from '../src/dataplane/stats.js';
import { txPolicy } from '../src/virtio-net/features.js';
import type { DriverQueue, PacketBatch } from '../src/drivers/api.js';
import { onPciBar } from './helpers/pci-bar.js';
import { TestMemory, TestDriver, receiveFrame } from './helpers/virtq-driver.js';

const tick = () => new Promise((res) => setImmediate(res));
const MAC = '52:54:00:12:34:56';

/** A virtio-net device on the transport with a driver of capabilities only, and a guest that negotiates `feats` (no queues). */
async function live(feats: bigint, offloads: Partial<Offloads> = {}) {
  const mem = new TestMemory(1 << 20);
  const vm = { ioeventfd: () => {}, irqfd: () => {} } as unknown as VmFd;
  const memory = { buffer: mem.buffer, table: mem.view.table } as unknown as GuestMemory;
  const drv: NetDriver = {
    name: 'caps-only',
    caps: { queuePairs: 2, mtu: 1500, offloads: { ...NO_OFFLOADS, ...offloads } },
    module: '/nonexistent.mjs',
    queueInit: () => undefined,
    setGuestOffloads: () => undefined,
    close: () => undefined,
  };
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

/** Receives the frames queued in `frames`, one per call. */
class QueueDriver implements DriverQueue {
  readonly pollFd = -1;
  readonly drops = 0;
  readonly frames: Uint8Array[] = [];
  transmit(): number {
    return 0;
  }
  receive(b: PacketBatch, mem: SharedArrayBuffer): number {
    const f = this.frames.shift();
    return f ? receiveFrame(b, mem, f) : 0;
  }
  close(): void {}
}

function pair(o: { mergeable?: boolean; filter?: RxFilter } = {}) {
  const mem = new TestMemory(4 << 20);
  const rx = new TestDriver(mem, 64);
  const tx = new TestDriver(mem, 64);
  const feats = { eventIdx: false, indirect: true };
  const rxq = SplitQueue.create(mem.view, rx.cfg, feats, 32768);
  const txq = SplitQueue.create(mem.view, tx.cfg, feats, 32768);
  if (typeof rxq === 'string' || typeof txq === 'string') throw new Error(String(rxq));
  const driver = new QueueDriver();
  const rxStats = new Float64Array(STAT_WORDS);
  const txStats = new Float64Array(STAT_WORDS);
  const p = new NetQueuePair(mem.view, mem.buffer, rxq, txq, driver, {
    mergeable: o.mergeable ?? false,
    maxRxFrame: 1514,
    txPolicy: txPolicy(0n),
    rxCallFd: -1,
    txCallFd: -1,
    rxStats,
    txStats,
    filter: o.filter ?? new RxFilter(),
  });
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
