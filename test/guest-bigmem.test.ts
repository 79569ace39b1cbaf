// Guest memory over 4 GiB for tsvmm's own VMs: the test guest with --mem 6G and --mem 64G (a sparse
// memfd: only touched pages cost anything) puts its virtio-net buffers above 4 GiB (highbufs=N: at N
// GiB) and moves frames both ways through a tap in a namespace this test creates and deletes, checked
// byte for byte on the host and verified in the guest.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { NetNs, runVm, pkt, captured, lastJson, stats, patternFrame } from './helpers/netns.js';
import { TEST_GUEST, guestResult, haveKvm, which } from './helpers/env.js';

const GUEST_MAC = '52:54:00:75:76:00';
const HOST_MAC = '02:00:00:00:00:02';

describe.runIf(haveKvm() && which('ip') && which('python3'))('guest memory over 4 GiB', () => {
  let ns: NetNs;
  beforeAll(() => {
    ns = new NetNs('bigmem');
    ns.addTap('tap0');
  });
  afterAll(() => ns?.delete());

  // 6G: RAM at [0, 3 GiB) and [4 GiB, 7 GiB); 64G: [4 GiB, 65 GiB) above the hole
  for (const [mem, gib] of [['6G', 5], ['64G', 60]] as const) {
    it(`--mem ${mem}: frames from buffers at ${gib} GiB reach the host byte-identical`, async () => {
      const count = 500;
      const size = 1000;
      const cap = pkt(ns, ['capture', 'tap0', String(count), '300']);
      await cap.waitFor('READY');
      const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', mem, '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-tx count=${count} size=${size} dst=${HOST_MAC} highbufs=${gib}`]);
      const r = await vm.done;
      expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-tx', sent: count, highbufs: gib, ok: true });
      const h = createHash('sha256');
      for (let s = 0; s < count; s++) h.update(patternFrame(s, size, GUEST_MAC, HOST_MAC));
      expect(await captured(cap)).toMatchObject({ frames: count, bad: 0, in_order: true, sizes: [size], sha256: h.digest('hex') });
      expect(stats(r.stderr).net[0].pairs[0].tx).toMatchObject({ packets: count, bytes: count * size, drops: 0 });
      expect(r.code).toBe(0);
    });

    it(`--mem ${mem}: host frames land in buffers at ${gib} GiB, verified in the guest`, async () => {
      const count = 500;
      const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', mem, '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-rx count=${count} highbufs=${gib}`]);
      await vm.waitFor('NET-RX-READY');
      expect(lastJson((await pkt(ns, ['send', 'tap0', String(count), '1400', HOST_MAC, GUEST_MAC]).done).stdout)).toEqual({ sent: count });
      const r = await vm.done;
      expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-rx', received: count, highbufs: gib, bad: 0, out_of_order: 0, bytes: count * 1400, ok: true });
      expect(r.code).toBe(0);
    });
  }
});
