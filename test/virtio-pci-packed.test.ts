// tsvmm's virtio-net over the virtio-pci transport with either ring layout, without KVM: a driver
// negotiates VIRTIO_F_RING_PACKED (or not) through the common configuration registers, places its
// control queue (for packed: descriptor ring, driver and device event suppression), and the control
// queue — served on this thread through the Virtqueue interface — answers a command. Sizes and
// placements each layout refuses end in DEVICE_NEEDS_RESET, never in an exception.
import { describe, it, expect } from 'vitest';
import { NOTIFY_OFF, NOTIFY_MULTIPLIER } from '../src/vmm/devices/virtio-pci.js';
import { STATUS } from '../src/virtio/device.js';
import { VirtioNet, parseMac } from '../src/virtio-net/device.js';
import { F, bit } from '../src/virtio-net/features.js';
import type { VmFd } from '../src/vmm/kvm.js';
import type { GuestMemory } from '../src/vmm/memory.js';
import { onPciBar } from './helpers/pci-bar.js';
import { TestMemory, TestDriver } from './helpers/virtq-driver.js';
import { PackedTestDriver } from './helpers/packed-driver.js';
import { capsOnlyDriver } from './helpers/fake-drivers.js';

const CTRL_Q = 2; // one queue pair: rx 0, tx 1, control 2
const NEW_MAC = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
const tick = () => new Promise((res) => setImmediate(res));

const driver = capsOnlyDriver();

function setup(opts: { packed?: boolean } = {}) {
  const mem = new TestMemory(1 << 20);
  const vm = { ioeventfd: () => {}, irqfd: () => {} } as unknown as VmFd;
  const memory = { buffer: mem.buffer, table: mem.view.table } as unknown as GuestMemory;
  const net = new VirtioNet(memory, { driver, mac: parseMac('52:54:00:12:34:56'), queuePairs: 1, packed: opts.packed });
  const { pci, r, w, offered } = onPciBar(net, vm);
  /** Negotiate `features`; FEATURES_OK as the device left it. */
  const negotiate = (features: bigint): boolean => {
    w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER, 1);
    w(0x08, 0);
    w(0x0c, Number(features & 0xffffffffn));
    w(0x08, 1);
    w(0x0c, Number(features >> 32n));
    w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK, 1);
    return (r(0x14, 1) & STATUS.FEATURES_OK) !== 0;
  };
  /** Program the control queue (queue_desc, queue_driver, queue_device, size), enable it, DRIVER_OK. */
  const goLive = async (q: { size: number; desc: number; avail: number; used: number }) => {
    w(0x16, CTRL_Q, 2);
    w(0x18, q.size, 2);
    w(0x20, q.desc);
    w(0x24, 0);
    w(0x28, q.avail);
    w(0x2c, 0);
    w(0x30, q.used);
    w(0x34, 0);
    w(0x1c, 1, 2);
    w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK, 1);
    await tick();
  };
  /** A CTRL_MAC_ADDR_SET command's buffers: class/command, the address, the ack byte. */
  const macCommand = () => {
    const cmd = mem.alloc(8);
    mem.bytes(cmd, 8).set([1, 1, ...NEW_MAC]);
    const ack = mem.alloc(1);
    mem.bytes(ack, 1)[0] = 0xff;
    return { ack, bufs: [{ addr: cmd, len: 2 }, { addr: cmd + 2, len: 6 }, { addr: ack, len: 1, write: true }] };
  };
  const notify = () => w(NOTIFY_OFF + NOTIFY_MULTIPLIER * CTRL_Q, CTRL_Q, 2);
  return { mem, net, pci, r, w, offered, negotiate, goLive, macCommand, notify };
}

const WANT = bit(F.VERSION_1) | bit(F.CTRL_VQ) | bit(F.CTRL_MAC_ADDR) | bit(F.EVENT_IDX) | bit(F.INDIRECT_DESC);

describe('virtio-net over virtio-pci, packed and split rings', () => {
  it('offers RING_PACKED; a driver taking it gets its control queue served on a packed ring of any size', async () => {
    const t = setup();
    expect(t.offered() & bit(F.RING_PACKED)).toBe(bit(F.RING_PACKED));
    expect(t.negotiate(WANT | bit(F.RING_PACKED))).toBe(true);
    // 100: no power of two, which only a packed ring may have
    const ring = new PackedTestDriver(t.mem, 100, true);
    await t.goLive(ring.cfg);
    expect(t.r(0x14, 1) & STATUS.NEEDS_RESET).toBe(0);
    // the queue asked for kicks at its next descriptor (EVENT_IDX: flags DESC, off_wrap = 0 | wrap)
    expect(ring.deviceEvent).toEqual({ flags: 2, offWrap: 0x8000 });
    const c = t.macCommand();
    const id = ring.add(c.bufs);
    t.notify();
    expect(ring.takeUsed()).toEqual([{ id, len: 1 }]);
    expect(t.mem.bytes(c.ack, 1)[0]).toBe(0); // VIRTIO_NET_OK
    expect([...t.net.mac]).toEqual(NEW_MAC);
    // the next command, from an indirect table
    const c2 = t.macCommand();
    const id2 = ring.addIndirect(c2.bufs);
    t.notify();
    expect(ring.takeUsed()).toEqual([{ id: id2, len: 1 }]);
    expect(t.mem.bytes(c2.ack, 1)[0]).toBe(0);
    expect(ring.deviceEvent).toEqual({ flags: 2, offWrap: 0x8000 | 4 });
    expect(t.pci.brokenReason).toBeUndefined();
  });

  it('serves a split control queue when the driver leaves RING_PACKED out', async () => {
    const t = setup();
    expect(t.negotiate(WANT)).toBe(true);
    const ring = new TestDriver(t.mem, 64, true);
    await t.goLive(ring.cfg);
    const c = t.macCommand();
    const head = ring.add(c.bufs);
    t.notify();
    expect(ring.takeUsed()).toEqual([{ id: head, len: 1 }]);
    expect([...t.net.mac]).toEqual(NEW_MAC);
  });

  it('packed=off: RING_PACKED is not offered, and a driver that sets it anyway is refused FEATURES_OK', () => {
    const t = setup({ packed: false });
    expect(t.offered() & bit(F.RING_PACKED)).toBe(0n);
    expect(t.negotiate(WANT | bit(F.RING_PACKED))).toBe(false);
  });

  it.each([
    ['a split ring of a size no power of two', false, { size: 100 }, 'bad queue size'],
    ['a packed descriptor ring not 16-byte aligned', true, { descShift: 8 }, 'ring misaligned'],
    ['a packed event suppression area not 4-byte aligned', true, { usedShift: 2 }, 'ring misaligned'],
    ['a packed ring reaching past guest memory', true, { desc: (1 << 20) - 16 * 32 }, 'ring outside guest memory'],
    ['a packed ring of size 0', true, { size: 0 }, 'bad queue size'],
  ])('%s: DEVICE_NEEDS_RESET, the reason named', async (_name, packed, bad: { size?: number; descShift?: number; usedShift?: number; desc?: number }, reason) => {
    const t = setup();
    expect(t.negotiate(WANT | (packed ? bit(F.RING_PACKED) : 0n))).toBe(true);
    const size = bad.size ?? 64;
    const cfg = packed ? new PackedTestDriver(t.mem, 64).cfg : new TestDriver(t.mem, 64).cfg;
    await t.goLive({ size, desc: (bad.desc ?? cfg.desc) + (bad.descShift ?? 0), avail: cfg.avail, used: cfg.used + (bad.usedShift ?? 0) });
    expect(t.r(0x14, 1) & STATUS.NEEDS_RESET).toBe(STATUS.NEEDS_RESET);
    expect(t.pci.brokenReason).toBe(`control queue: ${reason}`);
    // a notification now is ignored, not an exception
    t.notify();
  });
});
