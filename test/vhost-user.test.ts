// tsvmm's dataplane behind the vhost-user front door, driven by a third-party driver: DPDK's testpmd
// with its virtio-user PMD (the frontend owns the rings and the memory), and tsvmm's tap driver on the
// other side, in a namespace this test creates and deletes.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { CLI, ROOT, which } from './helpers/env.js';
import { NetNs, runInNs, stats, type Running } from './helpers/netns.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Frames a tap in `ns` has taken from its writer (0 while it does not exist). */
function tapTook(ns: NetNs, tap: string): number {
  try {
    return JSON.parse(execFileSync('ip', ['-n', ns.name, '-j', '-s', 'link', 'show', tap], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))[0].stats64.rx.packets;
  } catch {
    return 0;
  }
}

/** Until the tap has taken `n` frames (or 60 s: a loaded host is slow, not wrong). */
async function untilTapTook(ns: NetNs, tap: string, n: number): Promise<void> {
  for (const end = Date.now() + 60_000; Date.now() < end && tapTook(ns, tap) < n; ) await sleep(100);
}

function testpmdStats(out: string): { rx: number; tx: number; txDropped: number } {
  const m = /Accumulated forward statistics[\s\S]*?RX-packets:\s*(\d+)[\s\S]*?TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)/.exec(out);
  if (!m) throw new Error(`no testpmd statistics in:\n${out.slice(-1500)}`);
  return { rx: Number(m[1]), tx: Number(m[2]), txDropped: Number(m[3]) };
}

describe.runIf(!!which('dpdk-testpmd') && !!which('ip'))('vhost-user backend with DPDK testpmd (virtio-user)', () => {
  let ns: NetNs;
  let dir: string;
  let pktgen: string;
  beforeAll(() => {
    ns = new NetNs('vu');
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-vu-'));
    pktgen = join(dir, 'pktgen');
    execFileSync('gcc', ['-O2', '-o', pktgen, join(ROOT, 'bench', 'pktgen.c')]);
  });
  const spawned: Running[] = [];
  afterAll(() => {
    for (const r of spawned) r.proc.kill('SIGKILL');
    ns?.delete();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Start the backend and wait for its socket. */
  async function backend(sock: string, net: string): Promise<Running> {
    const b = runInNs(ns, [process.execPath, CLI, 'vhost-user', '--socket', sock, '--net', net, '--stats']);
    spawned.push(b);
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
    expect(existsSync(sock), b.stderr()).toBe(true);
    return b;
  }

  let runs = 0;

  /** testpmd with virtio-user for `seconds`, then Enter (it stops and prints its statistics). */
  async function testpmd(vdev: string, appArgs: string[], seconds: number, during?: () => Promise<void>): Promise<{ code: number | null; out: string }> {
    // stdbuf: testpmd buffers its output when it is not on a terminal; a file prefix per run: EAL locks it
    const t = runInNs(ns, ['stdbuf', '-oL', 'dpdk-testpmd', '--no-huge', '-m', '512', '--no-pci', `--file-prefix=tsvmm${process.pid}-${++runs}`, `--vdev=${vdev}`, '--', '--total-num-mbufs=16384', '--auto-start', ...appArgs]);
    spawned.push(t);
    await t.waitFor('Press enter to exit', 60_000);
    await during?.();
    await sleep(seconds * 1000);
    t.proc.stdin!.write('\n');
    const r = await t.done;
    return { code: r.code, out: r.stdout + r.stderr };
  }

  /** The ring layout the backend announced for the connection(s) its stderr tells of. */
  const layoutOf = (stderr: string) => (/vhost-user: packed rings/.test(stderr) ? 'packed' : 'split');

  // every combination the issue names for packed rings (IN_ORDER is not offered: a frontend asking
  // for it negotiates it away), and the split ones kept from before
  it.each([
    ['mrg_rxbuf=1,in_order=0', 'queues=1,mrg_rxbuf=1,in_order=0', 1],
    ['mrg_rxbuf=0,in_order=1', 'queues=1,mrg_rxbuf=0,in_order=1', 1],
    ['queues=2', 'queues=2', 2],
    ['packed_vq=1,mrg_rxbuf=0,in_order=0', 'queues=1,packed_vq=1,mrg_rxbuf=0,in_order=0', 1],
    ['packed_vq=1,mrg_rxbuf=1,in_order=0', 'queues=1,packed_vq=1,mrg_rxbuf=1,in_order=0', 1],
    ['packed_vq=1,mrg_rxbuf=0,in_order=1', 'queues=1,packed_vq=1,mrg_rxbuf=0,in_order=1', 1],
    ['packed_vq=1,mrg_rxbuf=1,in_order=1', 'queues=1,packed_vq=1,mrg_rxbuf=1,in_order=1', 1],
    ['packed_vq=1,queues=2', 'queues=2,packed_vq=1', 2],
  ])('carries testpmd txonly traffic to the tap (%s), every frame counted on both sides', async (_name, opts, queues) => {
    const sock = join(dir, `tx-${queues}-${Math.random().toString(36).slice(2)}.sock`);
    const tap = `tapvu${queues}`;
    const b = await backend(sock, `tap,ifname=${tap}${queues > 1 ? `,queues=${queues}` : ''}`);
    const t = await testpmd(`net_virtio_user0,path=${sock},${opts}`, ['--forward-mode=txonly', ...(queues > 1 ? [`--rxq=${queues}`, `--txq=${queues}`] : [])], 2);
    expect(t.code, t.out.slice(-1500)).toBe(0);
    const sent = testpmdStats(t.out).tx;
    expect(sent).toBeGreaterThan(1000);
    await sleep(300);
    const tapRx = Number(/RX:\s+bytes\s+packets[^\n]*\n\s*(\d+)\s+(\d+)/.exec(ns.exec('ip', '-s', 'link', 'show', tap))![2]);
    b.proc.kill('SIGINT');
    const r = await b.done;
    const st = stats(r.stderr) as unknown as { vhostUser: { connections: number; errors: string[]; pairs: Array<{ tx: { packets: number; drops: number } }> } };
    const vu = st.vhostUser;
    expect(vu.errors).toEqual([]);
    expect(vu.connections).toBe(1);
    const taken = vu.pairs.reduce((s, p) => s + p.tx.packets, 0);
    // every frame testpmd put on its rings went through tsvmm to the tap
    expect(taken).toBe(sent);
    expect(tapRx).toBeGreaterThanOrEqual(sent);
    if (queues > 1) for (const p of vu.pairs) expect(p.tx.packets).toBeGreaterThan(0);
    expect(layoutOf(r.stderr)).toBe(opts.includes('packed_vq=1') ? 'packed' : 'split');
  });

  it.each(['mrg_rxbuf=1', 'mrg_rxbuf=0', 'packed_vq=1,mrg_rxbuf=1', 'packed_vq=1,mrg_rxbuf=0'])('delivers frames from the tap to testpmd rxonly (%s)', async (opts) => {
    const sock = join(dir, `rx-${Math.random().toString(36).slice(2)}.sock`);
    const b = await backend(sock, 'tap,ifname=tapvur');
    ns.exec('sysctl', '-qw', 'net.ipv6.conf.tapvur.disable_ipv6=1');
    const t = await testpmd(`net_virtio_user0,path=${sock},queues=1,${opts}`, ['--forward-mode=rxonly'], 1, async () => {
      ns.exec(pktgen, 'tapvur', '20000', '60', '02:00:00:00:00:02', '52:54:00:75:76:00');
    });
    expect(t.code).toBe(0);
    const got = testpmdStats(t.out).rx;
    b.proc.kill('SIGINT');
    const r = await b.done;
    const st = stats(r.stderr) as unknown as { vhostUser: { pairs: Array<{ rx: { packets: number } }> } };
    // more than a ring's worth: the ring went round (how many of the 20000 the tap's own queue kept
    // depends on the machine's load, not on tsvmm)
    expect(got).toBeGreaterThan(256);
    // tsvmm counts what it put on the ring, testpmd what it took off before it stopped: they differ by
    // at most what was still on the ring (one ring of 256)
    const put = st.vhostUser.pairs[0].rx.packets;
    expect(put).toBeGreaterThanOrEqual(got);
    expect(put - got).toBeLessThanOrEqual(256);
    expect(layoutOf(r.stderr)).toBe(opts.includes('packed_vq=1') ? 'packed' : 'split');
  });

  it.each(['split', 'packed'])('forwards in testpmd io mode: tap → tsvmm → testpmd → tsvmm → tap, every frame counted (%s)', async (layout) => {
    const sock = join(dir, `io-${layout}.sock`);
    const tap = `tapvio${layout[0]}`;
    const b = await backend(sock, `tap,ifname=${tap}`);
    ns.exec('sysctl', '-qw', `net.ipv6.conf.${tap}.disable_ipv6=1`);
    // the tap keeps all 20000 frames however late the backend gets the CPU (its default queue of 1000
    // made the count depend on the machine's load)
    ns.exec('ip', 'link', 'set', tap, 'txqueuelen', '25000');
    const vdev = `net_virtio_user0,path=${sock},queues=1${layout === 'packed' ? ',packed_vq=1' : ''}`;
    const t = await testpmd(vdev, ['--forward-mode=io', '--port-topology=loop'], 1, async () => {
      ns.exec(pktgen, tap, '20000', '60', '02:00:00:00:00:02', '52:54:00:75:76:00');
    });
    expect(t.code, t.out.slice(-1500)).toBe(0);
    const pmd = testpmdStats(t.out);
    await sleep(300);
    // (the tap goes with the backend: its count first)
    const tapRx = tapTook(ns, tap);
    b.proc.kill('SIGINT');
    const r = await b.done;
    const vu = (stats(r.stderr) as unknown as { vhostUser: { errors: string[]; pairs: Array<{ rx: { packets: number }; tx: { packets: number } }> } }).vhostUser;
    expect(vu.errors).toEqual([]);
    expect(layoutOf(r.stderr)).toBe(layout);
    expect(pmd.rx).toBeGreaterThan(1000);
    // testpmd sent on what it received, but for what its TX ring (tsvmm's TX queue, full) refused
    expect(pmd.tx + pmd.txDropped).toBe(pmd.rx);
    expect(pmd.tx).toBeGreaterThan(500);
    // every frame testpmd took came from tsvmm's RX ring; tsvmm put at most a ring (256) and a burst (32)
    // more on it than testpmd counted (frames left on the ring, and in hand, when forwarding stopped);
    // every frame testpmd sent back tsvmm took from its TX ring
    const p = vu.pairs[0];
    expect(p.rx.packets).toBeGreaterThanOrEqual(pmd.rx);
    expect(p.rx.packets - pmd.rx).toBeLessThanOrEqual(256 + 32);
    expect(p.tx.packets).toBe(pmd.tx);
    expect(tapRx).toBeGreaterThanOrEqual(pmd.tx);
  });

  it('serves the null driver: testpmd transmits into it and receives the frames it generates', async () => {
    const sock = join(dir, 'null.sock');
    const b = await backend(sock, 'null,size=128');
    const t = await testpmd(`net_virtio_user0,path=${sock},queues=1`, ['--forward-mode=rxonly'], 1);
    b.proc.kill('SIGINT');
    const r = await b.done;
    const st = (stats(r.stderr) as unknown as { vhostUser: { pairs: Array<{ rx: { packets: number; bytes: number } }> } }).vhostUser.pairs[0].rx;
    const got = testpmdStats(t.out).rx;
    expect(got).toBeGreaterThan(1000);
    expect(st.packets).toBeGreaterThanOrEqual(got);
    expect(st.bytes).toBe(st.packets * 128);
  });

  it('with packed=off answers a packed-ring request by negotiating it away, and keeps serving the next frontend', async () => {
    const sock = join(dir, 'packed.sock');
    const b = await backend(sock, 'tap,ifname=tapvup,packed=off');
    // RING_PACKED is not offered: virtio-user must settle for a split ring or give up cleanly
    const first = await testpmd(`net_virtio_user0,path=${sock},queues=1,packed_vq=1`, ['--forward-mode=txonly'], 1);
    const second = await testpmd(`net_virtio_user0,path=${sock},queues=1`, ['--forward-mode=txonly'], 1);
    expect(second.code, second.out.slice(-1500)).toBe(0);
    expect(testpmdStats(second.out).tx).toBeGreaterThan(1000);
    b.proc.kill('SIGINT');
    const r = await b.done;
    expect(r.code).toBe(130);
    const vu = (stats(r.stderr) as unknown as { vhostUser: { connections: number } }).vhostUser;
    expect(vu.connections).toBe(2);
    expect(layoutOf(r.stderr)).toBe('split');
    expect(first.out).not.toMatch(/Segmentation fault/);
  });

  it('reconnects: the backend (client mode) restarts while testpmd (server mode) keeps running, and traffic resumes', { timeout: 180_000 }, async () => {
    const sock = join(dir, 'reconnect.sock');
    const t = runInNs(ns, ['stdbuf', '-oL', 'dpdk-testpmd', '--no-huge', '-m', '512', '--no-pci', `--file-prefix=tsvmm${process.pid}-${++runs}`,
      `--vdev=net_virtio_user0,path=${sock},queues=1,server=1`, '--', '--total-num-mbufs=16384', '--auto-start', '--forward-mode=txonly']);
    spawned.push(t);
    for (let i = 0; i < 200 && !existsSync(sock); i++) await sleep(50);
    const first = runInNs(ns, [process.execPath, CLI, 'vhost-user', '--client', '--socket', sock, '--net', 'tap,ifname=tapvrc', '--stats']);
    spawned.push(first);
    await untilTapTook(ns, 'tapvrc', 2000);
    first.proc.kill('SIGTERM');
    const r1 = await first.done;
    const took1 = tapTook(ns, 'tapvrc'); // (0 if the tap went with the first backend)
    const taken1 = (stats(r1.stderr) as unknown as { vhostUser: { pairs: Array<{ tx: { packets: number } }> } }).vhostUser.pairs[0].tx.packets;
    expect(taken1, r1.stderr).toBeGreaterThan(1000);
    // a new backend process: the rings' positions come back from the frontend (SET_VRING_BASE)
    const second = runInNs(ns, [process.execPath, CLI, 'vhost-user', '--client', '--socket', sock, '--net', 'tap,ifname=tapvrc', '--stats']);
    spawned.push(second);
    await untilTapTook(ns, 'tapvrc', took1 + 2000);
    second.proc.kill('SIGTERM');
    const r2 = await second.done;
    const vu2 = (stats(r2.stderr) as unknown as { vhostUser: { errors: string[]; pairs: Array<{ tx: { packets: number } }> } }).vhostUser;
    expect(vu2.errors).toEqual([]);
    expect(vu2.pairs[0].tx.packets, r2.stderr).toBeGreaterThan(1000);
    t.proc.stdin!.write('\n');
    const tp = await t.done;
    expect(tp.stdout + tp.stderr).toMatch(/reconnection succeeds/);
    // everything testpmd sent went through one backend or the other, except what it queued after the
    // second one left (at most one ring of 256): nothing lost or taken twice across the restart
    const lost = testpmdStats(tp.stdout + tp.stderr).tx - (taken1 + vu2.pairs[0].tx.packets);
    expect(lost).toBeGreaterThanOrEqual(0);
    expect(lost).toBeLessThanOrEqual(256);
  });
});
