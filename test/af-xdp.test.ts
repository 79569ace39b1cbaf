// The AF_XDP driver: a second backend through the same driver API, with no virtio code touched. A veth
// pair in a namespace this test creates and deletes: tsvmm's AF_XDP sockets on vx0, the test's packet
// tool on vx1; frames checked byte for byte, two queue pairs, the XDP program's lifetime (gone after
// stop and after the VMM is killed), the errors a user can cause, and the vhost-user front door with
// DPDK's virtio-user driver on top of it.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetNs, runVm, runInNs, pkt, captured, lastJson, stats, patternFrame, PKT, type Running } from './helpers/netns.js';
import { CLI, TEST_GUEST, guestResult, haveKvm, which } from './helpers/env.js';

const GUEST_MAC = '52:54:00:75:76:00';
const HOST_MAC = '02:00:00:00:00:02';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.runIf(haveKvm() && which('ip') && which('python3'))('AF_XDP driver on a veth pair', () => {
  let ns: NetNs;
  const spawned: Running[] = [];
  beforeAll(() => {
    ns = new NetNs('xdp');
    // vx0/vx1: one queue each (an AF_XDP socket sees only its own queue's frames: with more queues
    // than sockets, frames hashed to the others bypass tsvmm); mq0/mq1: two queues
    ns.exec('ip', 'link', 'add', 'vx0', 'type', 'veth', 'peer', 'name', 'vx1');
    ns.exec('ip', 'link', 'add', 'mq0', 'numtxqueues', '2', 'numrxqueues', '2', 'type', 'veth', 'peer', 'name', 'mq1', 'numtxqueues', '2', 'numrxqueues', '2');
    for (const i of ['vx0', 'vx1', 'mq0', 'mq1']) {
      ns.exec('sysctl', '-qw', `net.ipv6.conf.${i}.disable_ipv6=1`);
      ns.exec('ip', 'link', 'set', i, 'up');
    }
  });
  afterAll(() => {
    for (const r of spawned) r.proc.kill('SIGKILL');
    ns?.delete();
  });

  /** an XDP program on the interface, as `ip link` reports it */
  const xdpAttached = (ifc: string) => /\bxdp/.test(ns.exec('ip', 'link', 'show', ifc));
  const net = (extra = '') => `af-xdp,ifname=vx0${extra}`;

  it('delivers guest frames to the wire byte-identical, in copy mode with the program attached', async () => {
    const count = 2000;
    const size = 1000;
    const cap = pkt(ns, ['capture', 'vx1', String(count), '300']);
    await cap.waitFor('READY');
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', net(), '--cmdline', `mode=net-tx count=${count} size=${size} dst=${HOST_MAC}`]).done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-tx', sent: count, ok: true });
    // veth has no zero-copy AF_XDP: auto falls back to copy mode, and says so
    expect(r.stderr).toMatch(/af-xdp vx0: 1 AF_XDP socket, copy mode, XDP (native|generic)/);
    const c = await captured(cap);
    const h = createHash('sha256');
    for (let s = 0; s < count; s++) h.update(patternFrame(s, size, GUEST_MAC, HOST_MAC));
    expect(c).toMatchObject({ frames: count, bad: 0, in_order: true, sizes: [size], sha256: h.digest('hex') });
    expect(stats(r.stderr).net[0].pairs[0].tx).toMatchObject({ packets: count, bytes: count * size, drops: 0 });
    expect(r.code).toBe(0);
    expect(xdpAttached('vx0')).toBe(false);
  });

  it('delivers wire frames to the guest, verified there', async () => {
    const count = 2000;
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', net(), '--cmdline', `mode=net-rx count=${count}`]);
    spawned.push(vm);
    await vm.waitFor('NET-RX-READY');
    expect(xdpAttached('vx0')).toBe(true);
    const send = await pkt(ns, ['send', 'vx1', String(count), '1400', HOST_MAC, GUEST_MAC]).done;
    expect(lastJson(send.stdout)).toEqual({ sent: count });
    const r = await vm.done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-rx', received: count, bad: 0, out_of_order: 0, bytes: count * 1400, ok: true });
    expect(xdpAttached('vx0')).toBe(false);
  });

  it('runs two queue pairs: a socket per interface queue, traffic on both (with socket busy polling)', async () => {
    const count = 2000;
    const cap = pkt(ns, ['capture', 'mq1', String(count), '300']);
    await cap.waitFor('READY');
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--stats', '--net', 'af-xdp,ifname=mq0,queues=2,busy-poll=50', '--cmdline', `mode=net-tx count=${count} size=400 pairs=2 dst=${HOST_MAC}`]).done;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ pairs: 2, sent: count, ok: true });
    expect(r.stderr).toMatch(/2 AF_XDP sockets/);
    expect(stats(r.stderr).net[0].pairs.map((p) => p.tx.packets)).toEqual([count / 2, count / 2]);
    expect(await captured(cap)).toMatchObject({ frames: count, bad: 0, sizes: [400] });
  });

  it('leaves no XDP program behind when the VMM is killed', async () => {
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--net', net(), '--cmdline', 'mode=net-rx count=1']);
    spawned.push(vm);
    await vm.waitFor('NET-RX-READY');
    expect(xdpAttached('vx0')).toBe(true);
    vm.proc.kill('SIGKILL');
    await vm.done;
    // (the kernel detaches a bpf_link's program when its last fd closes: at process exit)
    for (let i = 0; i < 50 && xdpAttached('vx0'); i++) await sleep(100);
    expect(xdpAttached('vx0')).toBe(false);
    // and the next start finds the interface free
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--net', net(), '--cmdline', `mode=net-tx count=10 size=100 dst=${HOST_MAC}`]).done;
    expect(r.code, r.stderr).toBe(0);
  });

  it.each([
    ['an interface that does not exist', 'af-xdp,ifname=nope0', /there is no interface nope0 in this network namespace/],
    ['zero-copy on an interface without it', 'af-xdp,ifname=vx0,mode=zerocopy', /vx0: its driver does not support zero-copy AF_XDP .*use mode=copy or mode=auto/],
    ['more queues than the interface has', 'af-xdp,ifname=mq0,queues=3', /mq0 has 2 receive queues, not 3/],
    ['a mode that does not exist', 'af-xdp,ifname=vx0,mode=fast', /mode=fast is not copy, zerocopy or auto/],
    ['no interface named', 'af-xdp', /ifname=NAME is required/],
  ])('refuses %s with one clear line', async (_what, arg, msg) => {
    const r = await runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--net', arg, '--cmdline', 'mode=hello']).done;
    expect(r.code).not.toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(msg);
    expect(xdpAttached('vx0')).toBe(false);
    expect(xdpAttached('mq0')).toBe(false);
  });

  it('refuses without privileges (CAP_BPF/CAP_NET_ADMIN), with one clear line', async () => {
    if (!which('setpriv')) return;
    const r = await runInNs(ns, ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', process.execPath, CLI, 'vhost-user', '--socket', '/tmp/never.sock', '--net', net()]).done;
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/no permission to load an XDP program: run as root or with CAP_BPF and CAP_NET_ADMIN/);
  });

  describe.runIf(!!which('dpdk-testpmd'))('behind the vhost-user front door (DPDK virtio-user)', () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), 'tsvmm-xdpvu-'));
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('carries testpmd txonly frames on two queue pairs to the wire, every frame counted', async () => {
      const sock = join(dir, 'tx.sock');
      const b = runInNs(ns, [process.execPath, CLI, 'vhost-user', '--socket', sock, '--net', 'af-xdp,ifname=mq0,queues=2', '--stats']);
      spawned.push(b);
      for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
      const rxBefore = Number(ns.exec('cat', '/sys/class/net/mq1/statistics/rx_packets'));
      const t = runInNs(ns, ['stdbuf', '-oL', 'dpdk-testpmd', '--no-huge', '-m', '512', '--no-pci', `--file-prefix=tsvmmxdp${process.pid}`, `--vdev=net_virtio_user0,path=${sock},queues=2`, '--',
        '--total-num-mbufs=16384', '--auto-start', '--forward-mode=txonly', '--rxq=2', '--txq=2', '--txpkts=200']);
      spawned.push(t);
      await t.waitFor('Press enter to exit', 60_000);
      await sleep(2000);
      t.proc.stdin!.write('\n');
      const out = (await t.done).stdout;
      const sent = Number(/Accumulated forward statistics[\s\S]*?TX-packets:\s*(\d+)/.exec(out)![1]);
      expect(sent).toBeGreaterThan(1000);
      await sleep(500);
      b.proc.kill('SIGINT');
      const st = stats((await b.done).stderr) as unknown as { vhostUser: { errors: string[]; pairs: Array<{ tx: { packets: number; drops: number } }> } };
      expect(st.vhostUser.errors).toEqual([]);
      const viaXdp = st.vhostUser.pairs.map((p) => p.tx.packets);
      // both pairs carried traffic; what the dataplane handed to AF_XDP reached vx1 (or was counted dropped)
      expect(viaXdp.every((n) => n > 0)).toBe(true);
      const drops = st.vhostUser.pairs.reduce((s, p) => s + p.tx.drops, 0);
      expect(viaXdp[0] + viaXdp[1] + drops).toBe(sent);
      const arrived = Number(ns.exec('cat', '/sys/class/net/mq1/statistics/rx_packets')) - rxBefore;
      expect(arrived).toBeGreaterThanOrEqual(viaXdp[0] + viaXdp[1]);
    });

    it('receives on both queue pairs: frames steered to each interface queue reach testpmd rxonly', async () => {
      const sock = join(dir, 'rx.sock');
      const b = runInNs(ns, [process.execPath, CLI, 'vhost-user', '--socket', sock, '--net', 'af-xdp,ifname=mq0,queues=2', '--stats']);
      spawned.push(b);
      for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
      const t = runInNs(ns, ['stdbuf', '-oL', 'dpdk-testpmd', '--no-huge', '-m', '512', '--no-pci', `--file-prefix=tsvmmxdprx${process.pid}`, `--vdev=net_virtio_user0,path=${sock},queues=2`, '--',
        '--total-num-mbufs=16384', '--auto-start', '--forward-mode=rxonly', '--rxq=2', '--txq=2']);
      spawned.push(t);
      await t.waitFor('Press enter to exit', 60_000);
      // XPS: what the sender on CPU n transmits leaves mq1 on queue n, and arrives on mq0's queue n
      ns.exec('sh', '-c', 'echo 1 > /sys/class/net/mq1/queues/tx-0/xps_cpus && echo 2 > /sys/class/net/mq1/queues/tx-1/xps_cpus');
      for (const cpu of ['0', '1']) await runInNs(ns, ['taskset', '-c', cpu, 'python3', PKT, 'send', 'mq1', '500', '300', HOST_MAC, 'ff:ff:ff:ff:ff:ff']).done;
      await sleep(1000);
      t.proc.stdin!.write('\n');
      const out = (await t.done).stdout;
      const got = Number(/Accumulated forward statistics[\s\S]*?RX-packets:\s*(\d+)/.exec(out)![1]);
      b.proc.kill('SIGINT');
      const st = stats((await b.done).stderr) as unknown as { vhostUser: { errors: string[]; pairs: Array<{ rx: { packets: number } }> } };
      expect(st.vhostUser.errors).toEqual([]);
      const perPair = st.vhostUser.pairs.map((p) => p.rx.packets);
      expect(perPair.every((n) => n > 0), JSON.stringify(perPair)).toBe(true);
      expect(perPair[0] + perPair[1]).toBe(1000);
      expect(got).toBe(1000);
    });
  });
});
