// The virtio-iommu device model through its request queue, the way a guest driver drives it (a test
// driver on plain memory): ATTACH/DETACH/MAP/UNMAP/PROBE with the spec's statuses, domains and bypass,
// and the effect on what a device behind it (a virtqueue translating through the shared table) may do.
import { describe, it, expect } from 'vitest';
import { VirtioIommu, T, S, PROBE_SIZE, IOMMU_F } from '../src/viommu/device.js';
import { IommuReader, MAP_READ, MAP_WRITE } from '../src/viommu/table.js';
import { SplitQueue } from '../src/virtio/split-queue.js';
import { guestView } from '../src/virtio/dma.js';
import { TestDriver, TestMemory } from './helpers/virtq-driver.js';
import { iommuRequests } from './helpers/iommu-requests.js';

const NET = 0x18; // endpoint: 00:03.0
const FEATURES = (1n << 32n) | (1n << BigInt(IOMMU_F.MAP_UNMAP)) | (1n << BigInt(IOMMU_F.PROBE)) | (1n << BigInt(IOMMU_F.BYPASS_CONFIG));

async function setup() {
  const mem = new TestMemory(1 << 20, 0);
  const dev = new VirtioIommu({ buffer: mem.buffer, table: mem.view.table }, { endpoints: [NET] });
  const rq = new TestDriver(mem, 64);
  const eq = new TestDriver(mem, 16);
  const resets: string[] = [];
  await dev.activate({
    features: FEATURES,
    queues: [{ index: 0, ...rq.cfg, kickFd: -1, callFd: -1 }, { index: 1, ...eq.cfg, kickFd: -1, callFd: -1 }],
    needsReset: (r) => resets.push(r),
    configChanged: () => {},
  });
  const req = iommuRequests(mem, rq, () => dev.kick(0));
  const { send, map, unmap } = req;
  const attach = (domain: number, endpoint = NET, flags = 0) => req.attach(domain, endpoint, flags);
  const detach = (domain: number, endpoint = NET) => req.detach(domain, endpoint);
  const reader = new IommuReader(dev.table.buffer, NET, dev.table.newThreadSlot());
  return { mem, dev, eq, resets, send, attach, detach, map, unmap, reader };
}

describe('virtio-iommu device', () => {
  it('reports its geometry in config space', async () => {
    const { dev } = await setup();
    expect(dev.deviceType).toBe(23);
    expect(dev.readConfig(0, 4)).toBe(0xfffff000); // page_size_mask low word: 4 KiB and up
    expect(dev.readConfig(16, 4)).toBe(0xffffffff); // input_range.end low word (48 bits)
    expect(dev.readConfig(20, 4)).toBe(0xffff);
    expect(dev.readConfig(28, 4)).toBe(0xffff); // domain_range.end
    expect(dev.readConfig(32, 4)).toBe(PROBE_SIZE);
  });

  it('ATTACH, MAP, DMA through the mapping, UNMAP, and the DMA faults', async () => {
    const { attach, map, unmap, reader } = await setup();
    expect((await attach(5)).status).toBe(S.OK);
    expect((await map(5, 0x10000, 0x1ffff, 0x40000, MAP_READ | MAP_WRITE)).status).toBe(S.OK);
    expect(reader.translate(0x10100, 64, MAP_WRITE)).toBe(true);
    expect(reader.hit.gpa).toBe(0x40100);
    expect((await unmap(5, 0x10000, 0x1ffff)).status).toBe(S.OK);
    expect(reader.translate(0x10100, 64, MAP_READ)).toBe(false);
  });

  it('answers with the spec\'s statuses: unknown endpoint, bad domain, overlap, split, misaligned, bypass domain', async () => {
    const { attach, detach, map, unmap, send } = await setup();
    expect((await attach(1, 0x99)).status).toBe(S.NOENT);
    expect((await attach(1 << 20)).status).toBe(S.RANGE);
    expect((await map(1, 0, 0xfff, 0, MAP_READ)).status).toBe(S.NOENT); // domain not attached yet
    expect((await attach(1)).status).toBe(S.OK);
    expect((await map(1, 0x1000, 0x2fff, 0x80000, MAP_READ)).status).toBe(S.OK);
    expect((await map(1, 0x2000, 0x2fff, 0x90000, MAP_READ)).status).toBe(S.INVAL); // overlap
    expect((await map(1, 0x5000, 0x5800, 0x90000, MAP_READ)).status).toBe(S.RANGE); // not page-granular
    expect((await map(1, 0x5000, 0x5fff, 0x90000, 4)).status).toBe(S.INVAL); // MMIO flag: not offered
    expect((await unmap(1, 0x1000, 0x1fff)).status).toBe(S.RANGE); // would split a mapping
    expect((await unmap(1, 0x0, 0xffff)).status).toBe(S.OK);
    expect((await detach(2)).status).toBe(S.INVAL); // not attached there
    expect((await detach(1)).status).toBe(S.OK);
    expect((await attach(3, NET, 1)).status).toBe(S.OK); // a bypass domain (BYPASS_CONFIG negotiated)
    expect((await map(3, 0x1000, 0x1fff, 0x1000, MAP_READ)).status).toBe(S.INVAL); // no mappings in it
    expect((await send(0x7f, () => {}, 8)).status).toBe(S.UNSUPP);
  });

  it('bypass domains pass DMA through; detaching stops all DMA (bypass config off)', async () => {
    const { attach, detach, reader } = await setup();
    await attach(3, NET, 1);
    expect(reader.translate(0x12345, 8, MAP_WRITE)).toBe(true);
    expect(reader.hit.gpa).toBe(0x12345);
    await detach(3);
    expect(reader.translate(0x12345, 8, MAP_WRITE)).toBe(false);
  });

  it('drops a domain\'s mappings when its last endpoint leaves', async () => {
    const { attach, detach, map, dev } = await setup();
    await attach(7);
    await map(7, 0x1000, 0x1fff, 0x1000, MAP_READ);
    expect(dev.table.count).toBe(1);
    await detach(7);
    expect(dev.table.count).toBe(0);
  });

  it('PROBE reports the MSI doorbell window as reserved', async () => {
    const { send } = await setup();
    const r = await send(T.PROBE, (v) => v.setUint32(4, NET, true), 72, PROBE_SIZE + 4);
    expect(r.status).toBe(S.OK);
    const v = new DataView(r.reply.buffer);
    expect([v.getUint16(0, true), v.getUint16(2, true), v.getUint8(4)]).toEqual([1, 20, 1]); // RESV_MEM, MSI
    expect([Number(v.getBigUint64(8, true)), Number(v.getBigUint64(16, true))]).toEqual([0xfee00000, 0xfeefffff]);
  });

  it('reports a device\'s faults on the event queue', async () => {
    const { attach, eq, mem, dev, reader } = await setup();
    await attach(1);
    const buf = mem.alloc(64);
    eq.add([{ addr: buf, len: 64, write: true }]);
    expect(reader.translate(0xdead000, 4, MAP_WRITE)).toBe(false);
    dev.reportFaults();
    const u = eq.takeUsed();
    expect(u).toHaveLength(1);
    const v = new DataView(mem.buffer, buf, 24);
    expect(v.getUint8(0)).toBe(2); // FAULT_R_MAPPING
    expect(v.getUint32(4, true)).toBe(0x100 | 2); // address valid, write
    expect(v.getUint32(8, true)).toBe(NET);
    expect(Number(v.getBigUint64(16, true))).toBe(0xdead000);
  });

  it('a net virtqueue behind it: a buffer mapped in two pieces is read where the guest put it', async () => {
    const { attach, map, mem, reader } = await setup();
    await attach(1);
    const drv = new TestDriver(mem, 8);
    // the ring, identity-mapped; a 2-page buffer at IOVA 0x800000 whose pages lie apart in RAM
    const ringLo = Math.floor(drv.cfg.desc / 4096) * 4096;
    await map(1, ringLo, ringLo + 0x3fff, ringLo, MAP_READ | MAP_WRITE);
    await map(1, 0x800000, 0x800fff, 0xa0000, MAP_READ);
    await map(1, 0x801000, 0x801fff, 0x90000, MAP_READ);
    const q = SplitQueue.create(guestView(mem.buffer, mem.view.table, reader), drv.cfg, { eventIdx: false, indirect: false }, 256);
    if (typeof q === 'string') throw new Error(q);
    drv.add([{ addr: 0x800f00, len: 0x200 }]);
    expect(q.pop()).toBe(true);
    expect([...q.chain.offsets.subarray(0, q.chain.count)]).toEqual([0xa0f00, 0x90000]);
    expect([...q.chain.lens.subarray(0, q.chain.count)]).toEqual([0x100, 0x100]);
  });
});
