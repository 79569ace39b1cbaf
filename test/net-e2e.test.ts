// virtio-net end to end: the test guest's own virtio driver, tsvmm's device and dataplane thread, a
// real tap in a namespace this test creates and deletes, and frames checked byte for byte on the host.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetNs, runVm, runInNs, pkt, captured, lastJson, stats, patternFrame } from './helpers/netns.js';
import { ROOT, TEST_GUEST, guestResult, haveKvm, which } from './helpers/env.js';

const GUEST_MAC = '52:54:00:75:76:00';
const HOST_MAC = '02:00:00:00:00:02';
/**
 * the tap driver's queues go through io_uring: the run does not turn it off, and the kernel offers it
 * (kernel.io_uring_disabled: 0 to all, 1 to privileged processes as the tests are, 2 to none)
 */
const URING = process.env.TSVMM_IO_URING !== '0' && !(existsSync('/proc/sys/kernel/io_uring_disabled') && readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8').trim() === '2');

describe.runIf(haveKvm() && which('ip') && which('python3'))('virtio-net with the tap driver', () => {
  let ns: NetNs;
  beforeAll(() => {
    ns = new NetNs('net');
    ns.addTap('tap0');
  });
  afterAll(() => ns?.delete());

  it(`delivers guest frames to the host byte-identical (the tap queue ${URING ? 'through io_uring' : 'through writev'})`, async () => {
    const count = 2000;
    const size = 1000;
    const cap = pkt(ns, ['capture', 'tap0', String(count), '300']);
    await cap.waitFor('READY');
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-tx count=${count} size=${size} dst=${HOST_MAC}`]);
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-tx', sent: count, ok: true, mac: GUEST_MAC });
    const c = await captured(cap);
    const h = createHash('sha256');
    for (let s = 0; s < count; s++) h.update(patternFrame(s, size, GUEST_MAC, HOST_MAC));
    expect(c).toMatchObject({ frames: count, bad: 0, in_order: true, first: 0, last: count - 1, sizes: [size], sha256: h.digest('hex') });
    const st = stats(r.stderr).net[0];
    expect(st.pairs[0].tx.packets).toBe(count);
    expect(st.pairs[0].tx.bytes).toBe(count * size);
    expect(st.pairs[0].tx.drops).toBe(0);
    expect((st as { driver?: unknown }).driver).toMatchObject(URING ? { uringQueues: 1, uringFallbacks: 0 } : { uringQueues: 0, uringFallbacks: 1 });
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
    const cap = pkt(ns, ['capture', 'tapq', '300', '300']);
    await cap.waitFor('READY');
    const tx = collect(qemu(`mode=net-tx count=300 size=600 dst=${HOST_MAC}`));
    expect(await tx.done).toBe(1);
    expect(guestResult(tx.out()), tx.out()).toMatchObject({ mode: 'net-tx', sent: 300, ok: true, mac: GUEST_MAC });
    expect(await captured(cap)).toMatchObject({ frames: 300, bad: 0, in_order: true, sizes: [600] });
    // host → guest
    const rxp = qemu('mode=net-rx count=300');
    const rx = collect(rxp);
    for (let i = 0; i < 600 && !rx.out().includes('NET-RX-READY'); i++) await new Promise((r) => setTimeout(r, 100));
    await pkt(ns, ['send', 'tapq', '300', '1200', HOST_MAC, GUEST_MAC]).done;
    expect(await rx.done).toBe(1);
    expect(guestResult(rx.out()), rx.out()).toMatchObject({ mode: 'net-rx', received: 300, bad: 0, out_of_order: 0, ok: true });
  });

  it(`delivers host frames to the guest, verified there (received in batches ${URING ? 'through io_uring' : 'through readv'})`, async () => {
    const count = 2000;
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-rx count=${count}`]);
    await vm.waitFor('NET-RX-READY');
    const send = await pkt(ns, ['send', 'tap0', String(count), '1400', HOST_MAC, GUEST_MAC]).done;
    expect(lastJson(send.stdout)).toEqual({ sent: count });
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-rx', received: count, bad: 0, out_of_order: 0, first_seq: 0, last_seq: count - 1, bytes: count * 1400, ok: true });
    const st = stats(r.stderr).net[0];
    expect(st.pairs[0].rx.packets).toBeGreaterThanOrEqual(count);
    // without MRG_RXBUF (the test guest's default) the dataplane offers the driver batches of chains
    const driver = (st as { driver?: { uringRxFrames: number } }).driver!;
    if (URING) expect(driver.uringRxFrames).toBeGreaterThan(0);
    else expect(driver.uringRxFrames).toBe(0);
  });

  it('interrupts the guest through its MSI-X vector (irqfd + GSI route), suppressed per EVENT_IDX', async () => {
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', 'mode=net-rx count=1000 irq=1']);
    await vm.waitFor('NET-RX-READY');
    await pkt(ns, ['send', 'tap0', '1000', '500', HOST_MAC, GUEST_MAC]).done;
    const r = await vm.done;
    const g = guestResult(r.stdout);
    expect(g, r.stdout + r.stderr).toMatchObject({ received: 1000, bad: 0, ok: true });
    const signalled = stats(r.stderr).net[0].pairs[0].rx.interrupts;
    // every interrupt the dataplane raised reached the guest's handler, and EVENT_IDX kept them fewer
    // than the frames. (With irq=1 the guest waits for an interrupt whenever its ring is empty, so the
    // first frames at least come through one; a guest that polled could take every batch before the
    // dataplane looked at used_event, and then none is owed.)
    expect(signalled).toBeGreaterThan(0);
    // (the last one may land after the guest printed its count)
    expect(g!.irqs as number).toBeLessThanOrEqual(signalled);
    expect(g!.irqs as number).toBeGreaterThanOrEqual(signalled - 1);
    expect(signalled).toBeLessThan(1000);
  });

  it('forwards frames back with swapped MACs (macswap mode)', async () => {
    const cap = pkt(ns, ['capture', 'tap0', '500', '300']);
    await cap.waitFor('READY');
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--net', 'tap,ifname=tap0', '--cmdline', 'mode=net-macswap count=500']);
    await vm.waitFor('NET-RX-READY');
    await pkt(ns, ['send', 'tap0', '500', '300', HOST_MAC, GUEST_MAC]).done;
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ forwarded: 500, ok: true });
    const h = createHash('sha256');
    for (let s = 0; s < 500; s++) h.update(patternFrame(s, 300, GUEST_MAC, HOST_MAC));
    expect(await captured(cap)).toMatchObject({ frames: 500, bad: 0, in_order: true, dsts: [HOST_MAC], sha256: h.digest('hex') });
  });

  it('answers every ping-pong round trip through a host reflector', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsvmm-reflect-'));
    const bin = join(dir, 'reflect');
    execFileSync('gcc', ['-O2', '-o', bin, join(ROOT, 'bench', 'reflect.c')]);
    const refl = runInNs(ns, [bin, 'tap0', '1000', '30']);
    await refl.waitFor('READY');
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-pingpong count=1000 size=60 dst=${HOST_MAC}`]).done;
    const g = guestResult(r.stdout);
    expect(g, r.stdout + r.stderr).toMatchObject({ answered: 1000, ok: true });
    expect(g!.p50_cycles as number).toBeGreaterThan(0);
    expect(lastJson((await refl.done).stdout)).toEqual({ reflected: 1000 });
    rmSync(dir, { recursive: true });
  });

  it('busy-polls when asked (busy-poll=USEC) and still delivers everything both ways', async () => {
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0,busy-poll=200', '--cmdline', 'mode=net-rx count=1000']);
    await vm.waitFor('NET-RX-READY');
    await pkt(ns, ['send', 'tap0', '1000', '800', HOST_MAC, GUEST_MAC]).done;
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ received: 1000, bad: 0, ok: true });
    const tx = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0,busy-poll=200', '--cmdline', `mode=net-tx count=1000 size=800 dst=${HOST_MAC}`]).done;
    expect(stats(tx.stderr).net[0].pairs[0].tx).toMatchObject({ packets: 1000, drops: 0 });
  });

  it('carries mergeable receive buffers: a 1514-byte frame spread over 512-byte buffers', async () => {
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--net', 'tap,ifname=tap0', '--cmdline', 'mode=net-rx count=300 mrg=1 rxbuf=512']);
    await vm.waitFor('NET-RX-READY');
    await pkt(ns, ['send', 'tap0', '300', '1514', HOST_MAC, GUEST_MAC]).done;
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ received: 300, bad: 0, out_of_order: 0, max_buffers: 3, bytes: 300 * 1514, ok: true });
  });

  it('writes the header into receive chains that split it across descriptors (any layout)', async () => {
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', 'mode=net-rx count=200 rxsplit=1']);
    await vm.waitFor('NET-RX-READY');
    await pkt(ns, ['send', 'tap0', '200', '1400', HOST_MAC, GUEST_MAC]).done;
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ received: 200, bad: 0, ok: true });
    expect(stats(r.stderr).net[0].broken).toBeNull();
  });

  it('runs two queue pairs on two dataplane threads at once', async () => {
    const count = 4000;
    const cap = pkt(ns, ['capture', 'tap0', String(count), '300']);
    await cap.waitFor('READY');
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0,queues=2', '--cmdline', `mode=net-tx count=${count} size=400 pairs=2 dst=${HOST_MAC}`]).done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ pairs: 2, acks: 1, nacks: 0, sent: count, ok: true });
    const st = stats(r.stderr).net[0];
    expect(st.threads).toBe(2);
    expect(st.pairs.map((p) => p.tx.packets)).toEqual([count / 2, count / 2]);
    const c = await captured(cap);
    // each pair keeps its own order; together every frame arrives intact
    expect(c).toMatchObject({ frames: count, bad: 0, sizes: [400] });
  });

  it('applies the control queue: promiscuous off and a new MAC address filter what the guest receives', async () => {
    const newMac = '02:aa:bb:cc:dd:ee';
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-rx count=100 promisc=0 setmac=${newMac}`]);
    await vm.waitFor('NET-RX-READY');
    // frames to the old address (700 bytes) must be dropped, frames to the new one (900 bytes) arrive
    await pkt(ns, ['send', 'tap0', '100', '700', HOST_MAC, GUEST_MAC]).done;
    await pkt(ns, ['send', 'tap0', '100', '900', HOST_MAC, newMac]).done;
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ acks: 2, nacks: 0, received: 100, bad: 0, bytes: 100 * 900, ok: true });
    expect(stats(r.stderr).net[0].pairs[0].rx.drops).toBeGreaterThanOrEqual(100);
  });

  it('receives everything while promiscuous (the reset state)', async () => {
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--net', 'tap,ifname=tap0', '--cmdline', 'mode=net-rx count=100']);
    await vm.waitFor('NET-RX-READY');
    await pkt(ns, ['send', 'tap0', '100', '300', HOST_MAC, '02:12:34:56:78:9a']).done;
    const r = await vm.done;
    expect(guestResult(r.stdout)).toMatchObject({ received: 100, ok: true });
  });

  it.each([
    [1, 'descriptor chain too long'],
    [2, 'buffer outside guest memory'],
    [3, 'buffer outside guest memory'],
    [4, 'nested indirect table'],
    [5, 'bad indirect table size'],
    [6, 'available index jumped'],
  ])('survives a hostile guest (case %i: %s): the device needs a reset, the VMM runs on', async (kind, reason) => {
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-tx hostile=${kind}`]).done;
    // the guest saw DEVICE_NEEDS_RESET (0x40) and then powered off normally: the VMM stayed up
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ hostile: kind, ok: true });
    expect((guestResult(r.stdout)!.status as number) & 0x40).toBe(0x40);
    expect(stats(r.stderr).net[0].broken).toBe(reason);
    expect(r.code).toBe(0);
  });

  it('loads a driver plugin from a module path (examples/drivers/null-driver.mjs)', async () => {
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', `${ROOT}/examples/drivers/null-driver.mjs`, '--cmdline', 'mode=net-tx count=500 size=200']).done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ sent: 500, ok: true });
    // no offloads declared: none offered (CSUM is feature bit 0)
    expect((guestResult(r.stdout)!.features_lo as number) & 1).toBe(0);
    expect(stats(r.stderr).net[0].pairs[0].tx).toMatchObject({ packets: 500, bytes: 500 * 200, drops: 0 });
  });

  it('names what is wrong with a --net that cannot work', async () => {
    const bad = async (spec: string) => (await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--net', spec]).done).stderr.trim();
    expect(await bad('frobnic,ifname=x')).toMatch(/^tsvmm: --net: unknown driver "frobnic"/);
    expect(await bad('tap')).toBe('tsvmm: --net tap: ifname=NAME is required');
    expect(await bad('tap,ifname=this-name-is-too-long')).toMatch(/not a valid interface name/);
    expect(await bad('tap,ifname=tap0,queues=x')).toMatch(/queues=x is not a whole number/);
    expect(await bad('tap,ifname=tap0,mac=01:00:00:00:00:01')).toMatch(/multicast/);
    expect(await bad('./nonexistent-driver.mjs')).toMatch(/cannot load driver module/);
  });

  it('sends a 64 KiB TSO frame that leaves as MSS-sized segments with valid checksums', async () => {
    // the tap's namespace routes the guest's frame to a second namespace over a veth without
    // segmentation offload, so the host kernel segments it in software
    const far = new NetNs('far');
    try {
      ns.exec('ip', 'tuntap', 'add', 'tapt', 'mode', 'tap', 'multi_queue', 'vnet_hdr');
      ns.exec('ip', 'addr', 'add', '10.99.0.1/24', 'dev', 'tapt');
      ns.exec('ip', 'link', 'set', 'tapt', 'up');
      ns.exec('ip', 'link', 'add', 'vA', 'type', 'veth', 'peer', 'name', 'vB', 'netns', far.name);
      ns.exec('ip', 'addr', 'add', '10.99.1.1/24', 'dev', 'vA');
      ns.exec('ip', 'link', 'set', 'vA', 'up');
      far.exec('ip', 'addr', 'add', '10.99.1.2/24', 'dev', 'vB');
      far.exec('ip', 'link', 'set', 'vB', 'up');
      ns.exec('sysctl', '-qw', 'net.ipv4.ip_forward=1');
      ns.exec('sysctl', '-qw', 'net.ipv4.conf.all.rp_filter=0');
      ns.exec('sysctl', '-qw', 'net.ipv4.conf.tapt.rp_filter=0');
      ns.exec('ethtool', '-K', 'vA', 'tso', 'off', 'gso', 'off', 'tx', 'off');
      const tapMac = ns.exec('cat', '/sys/class/net/tapt/address').trim();
      const payload = 65495;
      const check = pkt(far, ['tcpcheck', 'vB', '46', '30', String(payload)]);
      await check.waitFor('READY');
      const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'tap,ifname=tapt', '--cmdline', `mode=net-tso count=1 payload=${payload} mss=1448 dst=${tapMac} sip=10.99.0.2 dip=10.99.1.2`]).done;
      const g = guestResult(r.stdout);
      expect(g, r.stdout + r.stderr).toMatchObject({ mode: 'net-tso', sent: 1, ok: true });
      // CSUM (bit 0) and HOST_TSO4 (bit 11) were offered by the tap driver and negotiated
      expect((g!.features_lo as number) & 0x801).toBe(0x801);
      expect(stats(r.stderr).net[0].pairs[0].tx).toMatchObject({ packets: 1, bytes: 14 + 20 + 20 + payload, drops: 0 });
      expect(lastJson((await check.done).stdout)).toEqual({ segments: 46, bytes: payload, max_payload: 1448, bad_ip_csum: 0, bad_tcp_csum: 0, bad_payload: 0 });
    } finally {
      far.delete();
    }
  });
});
