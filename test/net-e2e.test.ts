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

  it('runs the same guest driver unmodified against QEMU\'s virtio-net-pci (tap, vhost=off)', async () => {
    ns.exec('ip', 'tuntap', 'add', 'tapq', 'mode', 'tap', 'vnet_hdr');
    ns.exec('sysctl', '-qw', 'net.ipv6.conf.tapq.disable_ipv6=1');
    ns.exec('ip', 'link', 'set', 'tapq', 'up');
    const qemu = (cmdline: string) =>
      ns.spawn(['qemu-system-x86_64', '-accel', 'kvm', '-machine', 'q35', '-cpu', 'host,-arch-capabilities', '-m', '128', '-nographic', '-no-reboot', '-monitor', 'none',
        '-serial', 'stdio', '-device', 'isa-debug-exit,iobase=0xf4,iosize=4', '-kernel', TEST_GUEST, '-append', cmdline,
        '-netdev', 'tap,id=n0,ifname=tapq,script=no,downscript=no,vhost=off', '-device', `virtio-net-pci,netdev=n0,mac=${GUEST_MAC},disable-legacy=on`]);
    const collect = (p: ReturnType<typeof ns.spawn>) => {
      let out = '';
      p.stdout!.on('data', (d: Buffer) => (out += d.toString('latin1')));
      return { out: () => out, done: new Promise<number | null>((r) => p.on('close', r)) };
    };
    // guest → host
    const cap = pkt(ns, ['capture', 'tapq', '300', '60']);
    await cap.waitFor('READY');
    const tx = collect(qemu(`mode=net-tx count=300 size=600 dst=${HOST_MAC}`));
    expect(await tx.done).toBe(1);
    expect(guestResult(tx.out()), tx.out()).toMatchObject({ mode: 'net-tx', sent: 300, ok: true, mac: GUEST_MAC });
    expect(lastJson((await cap.done).stdout)).toMatchObject({ frames: 300, bad: 0, in_order: true, sizes: [600] });
    // host → guest
    const rxp = qemu('mode=net-rx count=300');
    const rx = collect(rxp);
    for (let i = 0; i < 600 && !rx.out().includes('NET-RX-READY'); i++) await new Promise((r) => setTimeout(r, 100));
    await pkt(ns, ['send', 'tapq', '300', '1200', HOST_MAC, GUEST_MAC]).done;
    expect(await rx.done).toBe(1);
    expect(guestResult(rx.out()), rx.out()).toMatchObject({ mode: 'net-rx', received: 300, bad: 0, out_of_order: 0, ok: true });
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
