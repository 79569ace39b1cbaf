// virtio-net end to end: the test guest's own virtio driver, tsvmm's device and dataplane thread, a
// real tap in a namespace this test creates and deletes, and frames checked byte for byte on the host.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { NetNs, runVm, pkt, lastJson, stats } from './helpers/netns.js';
import { TEST_GUEST, guestResult, haveKvm, which } from './helpers/env.js';

const GUEST_MAC = '52:54:00:75:76:00';
const HOST_MAC = '02:00:00:00:00:02';

/** The test pattern frame (the guest's fill_frame, pkt.py's frame). */
function patternFrame(seq: number, size: number, src: string, dst: string): Buffer {
  const f = Buffer.alloc(size);
  Buffer.from(dst.replace(/:/g, ''), 'hex').copy(f, 0);
  Buffer.from(src.replace(/:/g, ''), 'hex').copy(f, 6);
  f.writeUInt16BE(0x88b5, 12);
  f.writeUInt32LE(0x53565354, 14);
  f.writeUInt32LE(seq, 18);
  f.writeUInt32LE(size, 22);
  for (let i = 26; i < size; i++) f[i] = (seq + i) & 0xff;
  return f;
}

describe.runIf(haveKvm() && which('ip') && which('python3'))('virtio-net with the tap driver', () => {
  let ns: NetNs;
  beforeAll(() => {
    ns = new NetNs('net');
    ns.addTap('tap0');
  });
  afterAll(() => ns?.delete());

  it('delivers guest frames to the host byte-identical', async () => {
    const count = 2000;
    const size = 1000;
    const cap = pkt(ns, ['capture', 'tap0', String(count), '30']);
    await cap.waitFor('READY');
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-tx count=${count} size=${size} dst=${HOST_MAC}`]);
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-tx', sent: count, ok: true, mac: GUEST_MAC });
    const c = lastJson((await cap.done).stdout);
    const h = createHash('sha256');
    for (let s = 0; s < count; s++) h.update(patternFrame(s, size, GUEST_MAC, HOST_MAC));
    expect(c).toMatchObject({ frames: count, bad: 0, in_order: true, first: 0, last: count - 1, sizes: [size], sha256: h.digest('hex') });
    const st = stats(r.stderr).net[0];
    expect(st.pairs[0].tx.packets).toBe(count);
    expect(st.pairs[0].tx.bytes).toBe(count * size);
    expect(st.pairs[0].tx.drops).toBe(0);
    expect(r.code).toBe(0);
  });

  it('delivers host frames to the guest, verified there', async () => {
    const count = 2000;
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-rx count=${count}`]);
    await vm.waitFor('NET-RX-READY');
    const send = await pkt(ns, ['send', 'tap0', String(count), '1400', HOST_MAC, GUEST_MAC]).done;
    expect(lastJson(send.stdout)).toEqual({ sent: count });
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-rx', received: count, bad: 0, out_of_order: 0, first_seq: 0, last_seq: count - 1, bytes: count * 1400, ok: true });
    expect(stats(r.stderr).net[0].pairs[0].rx.packets).toBeGreaterThanOrEqual(count);
  });
});
