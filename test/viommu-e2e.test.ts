// The vIOMMU end to end: tsvmm --viommu, the test guest's virtio-iommu driver and its net driver with
// VIRTIO_F_ACCESS_PLATFORM, a tap in a namespace this test creates and deletes. Static mappings (all
// of RAM once) and strict ones (each buffer mapped before the device gets it and unmapped once it is
// back — an UNMAP a burst, while traffic flows), frames checked byte for byte; a buffer the guest
// forgot to map is refused (a fault, the device needs a reset), never read.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { NetNs, runVm, pkt, captured, stats, patternFrame } from './helpers/netns.js';
import { TEST_GUEST, guestResult, haveKvm, which } from './helpers/env.js';

const GUEST_MAC = '52:54:00:75:76:00';
const HOST_MAC = '02:00:00:00:00:02';

interface IommuStats {
  iommu: { requests: Record<string, number>; faults: number };
}

describe.runIf(haveKvm() && which('ip') && which('python3'))('virtio-iommu with the test guest', () => {
  let ns: NetNs;
  beforeAll(() => {
    ns = new NetNs('iommu');
    ns.addTap('tap0');
  });
  afterAll(() => ns?.delete());

  it.each([
    ['static', 2000],
    ['strict', 2000],
  ])('delivers guest frames through %s mappings byte-identical', async (policy, count) => {
    const size = 1000;
    const cap = pkt(ns, ['capture', 'tap0', String(count), '300']);
    await cap.waitFor('READY');
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--viommu', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-tx count=${count} size=${size} dst=${HOST_MAC} iommu=${policy}`]).done;
    const g = guestResult(r.stdout);
    expect(g, r.stdout + r.stderr).toMatchObject({ sent: count, iommu_failures: 0, ok: true });
    // the device negotiated ACCESS_PLATFORM: it went through the IOMMU, not around it
    const st = stats(r.stderr) as unknown as IommuStats & { net: Array<{ broken: string | null }> };
    expect(st.net[0].broken).toBeNull();
    expect(st.iommu.faults).toBe(0);
    expect(st.iommu.requests['1']).toBe(1); // ATTACH
    if (policy === 'static') expect(st.iommu.requests['3']).toBe(1); // one MAP of all RAM
    else {
      // a MAP and an UNMAP per frame (plus the rings' MAPs)
      expect(st.iommu.requests['3']).toBeGreaterThanOrEqual(count);
      expect(st.iommu.requests['4']).toBe(count);
    }
    const c = await captured(cap);
    const h = createHash('sha256');
    for (let s = 0; s < count; s++) h.update(patternFrame(s, size, GUEST_MAC, HOST_MAC));
    expect(c).toMatchObject({ frames: count, bad: 0, in_order: true, sha256: h.digest('hex') });
  });

  it('delivers host frames into strictly mapped receive buffers, verified in the guest', async () => {
    const count = 1000;
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--viommu', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-rx count=${count} iommu=strict`]);
    await vm.waitFor('NET-RX-READY');
    await pkt(ns, ['send', 'tap0', String(count), '1400', HOST_MAC, GUEST_MAC]).done;
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ received: count, bad: 0, out_of_order: 0, iommu_failures: 0, ok: true });
    const st = stats(r.stderr) as unknown as IommuStats;
    expect(st.iommu.faults).toBe(0);
    expect(st.iommu.requests['4']).toBeGreaterThanOrEqual(count);
  });

  it('refuses a buffer the guest never mapped: a fault, DEVICE_NEEDS_RESET, nothing sent', async () => {
    const cap = pkt(ns, ['capture', 'tap0', '1', '300']);
    await cap.waitFor('READY');
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--viommu', '--stats', '--net', 'tap,ifname=tap0', '--timeout', '30', '--cmdline', `mode=net-tx count=50 size=200 dst=${HOST_MAC} iommu=strict iommu_forget=1`]).done;
    const g = guestResult(r.stdout)!;
    expect(g.sent, r.stdout).toBe(0);
    expect((g.status as number) & 0x40).toBe(0x40);
    const st = stats(r.stderr) as unknown as IommuStats & { net: Array<{ broken: string | null; pairs: Array<{ tx: { packets: number } }> }> };
    expect(st.net[0].broken).toBe('IOMMU fault');
    expect(st.iommu.faults).toBe(1);
    expect(st.net[0].pairs[0].tx.packets).toBe(0);
    expect(await captured(cap)).toMatchObject({ frames: 0 });
  });

  it('without --viommu the guest finds no IOMMU and says so', async () => {
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-tx count=1 iommu=strict`]).done;
    expect(guestResult(r.stdout)).toMatchObject({ error: 'no virtio-iommu device', ok: false });
  });
});
