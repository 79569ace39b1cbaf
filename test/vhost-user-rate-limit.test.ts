// The rate limiter under a real frontend: DPDK's testpmd (virtio-user) against tsvmm's vhost-user
// backend run in this process (its setRateLimit called while traffic runs) with the null driver. A
// counting test: frames and bytes the backend let through are compared with the tokens its buckets
// granted over the measured interval (size + burst + elapsed · rate), not with a timing threshold.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { CLI, which } from './helpers/env.js';
import { NetNs, runInNs, stats, type Running } from './helpers/netns.js';
import { createDriver } from '../src/drivers/registry.js';
import { VhostUserBackend } from '../src/vhost-user/backend.js';
import { VhostUserServer } from '../src/vhost-user/server.js';
import { TX_BATCH } from '../src/virtio-net/net-pair.js';
import type { NetRateLimits } from '../src/dataplane/rate-limit.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function testpmdStats(out: string): { rx: number; tx: number } {
  const m = /Accumulated forward statistics[\s\S]*?RX-packets:\s*(\d+)[\s\S]*?TX-packets:\s*(\d+)/.exec(out);
  if (!m) throw new Error(`no testpmd statistics in:\n${out.slice(-1500)}`);
  return { rx: Number(m[1]), tx: Number(m[2]) };
}

/** testpmd's txonly frames: 64 bytes */
const FRAME = 64;

describe.runIf(!!which('dpdk-testpmd') && !!which('ip'))('rate limits under DPDK testpmd (virtio-user)', () => {
  let ns: NetNs;
  let dir: string;
  const spawned: Running[] = [];
  beforeAll(() => {
    ns = new NetNs('rl');
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-rl-'));
  });
  afterAll(() => {
    for (const r of spawned) r.proc.kill('SIGKILL');
    ns?.delete();
    rmSync(dir, { recursive: true, force: true });
  });

  let runs = 0;

  async function start(driverOptions: Record<string, string>, rateLimit: NetRateLimits) {
    const sock = join(dir, `rl${++runs}.sock`);
    const driver = await createDriver('null', driverOptions);
    const backend = new VhostUserBackend(driver, { queuePairs: 1, rateLimit });
    const server = new VhostUserServer(backend, { path: sock });
    const serving = server.run();
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
    expect(existsSync(sock)).toBe(true);
    return { sock, driver, backend, server, serving };
  }

  function testpmd(sock: string, mode: string): Running {
    const t = runInNs(ns, ['stdbuf', '-oL', 'dpdk-testpmd', '--no-huge', '-m', '512', '--no-pci', `--file-prefix=tsvmmrl${process.pid}-${runs}`, `--vdev=net_virtio_user0,path=${sock},queues=1`, '--', '--total-num-mbufs=16384', '--auto-start', `--forward-mode=${mode}`]);
    spawned.push(t);
    return t;
  }

  /** Counters of the one pair, with the time they were read. */
  const sample = (b: VhostUserBackend, dir: 'rx' | 'tx') => ({ ...b.queueStats(0)[dir], t: performance.now() });

  it('holds txonly traffic to N frames/s and then B bytes/s, set while it runs; removing the limit restores the flow; nothing is lost', { timeout: 120_000 }, async () => {
    // 2000 frames/s; a bucket of half a second's tokens, so that a thread held off the CPU for less
    // than that (this machine's vCPUs are paused now and then) loses no tokens
    const FPS = 2000;
    const ops = { size: FPS / 2, refillTimeMs: 500 };
    const tStart = performance.now();
    const s = await start({ size: '128', rx: '0' }, { tx: { ops } });
    const t = testpmd(s.sock, 'txonly');
    await t.waitFor('Press enter to exit', 60_000);
    await sleep(500);
    const a = sample(s.backend, 'tx');
    const cpu0 = process.cpuUsage();
    await sleep(2500);
    const cpu = process.cpuUsage(cpu0);
    const b = sample(s.backend, 'tx');
    // the dataplane thread sleeps while it waits for tokens (this process: ~4 % of a core here, where
    // a thread spinning until they return would take the whole of one)
    expect((cpu.user + cpu.system) / 1000).toBeLessThan(0.25 * (b.t - a.t));
    // never more than the bucket and what it refilled since the limit was there (before testpmd came)
    expect(b.packets).toBeLessThanOrEqual(ops.size + ((b.t - tStart) * FPS) / 1000);
    // and while testpmd kept its ring full, at least half the tokens the interval granted: the limiter
    // does not starve the flow. (Not closer to all of them: a loaded run here passed 85 %, its
    // threads and testpmd's held off the CPU longer than the bucket holds; the ceiling above is the
    // limit's own check.)
    const framesGranted = ((b.t - a.t) * FPS) / 1000;
    expect(b.packets - a.packets).toBeGreaterThanOrEqual(0.5 * framesGranted);
    expect(b.rateLimited).toBeGreaterThan(0);
    expect(b.drops).toBe(0);

    // B bytes/s in place of the frame limit (a direction given is replaced whole): 1000 frames' worth
    const BPS = 1000 * FRAME;
    const bandwidth = { size: BPS / 2, refillTimeMs: 500 };
    s.backend.setRateLimit({ tx: { bandwidth } });
    await sleep(500);
    const c = sample(s.backend, 'tx');
    await sleep(2500);
    const d = sample(s.backend, 'tx');
    const bytesGranted = ((d.t - c.t) * BPS) / 1000;
    // (a batch whose tokens were taken before c was read may be counted after it)
    expect(d.bytes - c.bytes).toBeLessThanOrEqual(bandwidth.size + bytesGranted + TX_BATCH * FRAME);
    expect(d.bytes - c.bytes).toBeGreaterThanOrEqual(0.5 * bytesGranted);
    expect(d.bytes - d.packets * FRAME).toBe(b.bytes - b.packets * FRAME);

    // no limit: the frames flow at whatever rate the backend and testpmd reach, far above the limit
    s.backend.setRateLimit({ tx: {} });
    await sleep(300);
    const e = sample(s.backend, 'tx');
    await sleep(1000);
    const f = sample(s.backend, 'tx');
    expect(((f.packets - e.packets) * 1000) / (f.t - e.t)).toBeGreaterThan((3 * BPS) / FRAME);

    t.proc.stdin!.write('\n');
    const r = await t.done;
    expect(r.code, r.stdout.slice(-1500)).toBe(0);
    await sleep(300);
    // every frame testpmd put on its ring was taken, none dropped
    const sent = testpmdStats(r.stdout + r.stderr).tx;
    const end = s.backend.queueStats(0).tx;
    expect(end.packets).toBe(sent);
    expect(end.drops).toBe(0);
    expect(s.backend.errors).toEqual([]);
    s.server.stop();
    await s.serving;
    s.driver.close();
  });

  it('holds frames towards testpmd rxonly to N frames/s, and removing the limit restores the flow', { timeout: 120_000 }, async () => {
    const FPS = 2000;
    const ops = { size: FPS / 2, refillTimeMs: 500 };
    const tStart = performance.now();
    const s = await start({ size: '128' }, { rx: { ops } });
    const t = testpmd(s.sock, 'rxonly');
    await t.waitFor('Press enter to exit', 60_000);
    await sleep(500);
    const a = sample(s.backend, 'rx');
    await sleep(2500);
    const b = sample(s.backend, 'rx');
    expect(b.packets).toBeLessThanOrEqual(ops.size + ((b.t - tStart) * FPS) / 1000);
    // (at least half the granted tokens used: see the TX case above)
    expect(b.packets - a.packets).toBeGreaterThanOrEqual((0.5 * (b.t - a.t) * FPS) / 1000);
    expect(b.rateLimited).toBeGreaterThan(0);

    s.backend.setRateLimit({ rx: {} });
    await sleep(300);
    const c = sample(s.backend, 'rx');
    await sleep(1000);
    const d = sample(s.backend, 'rx');
    expect(((d.packets - c.packets) * 1000) / (d.t - c.t)).toBeGreaterThan(3 * FPS);

    t.proc.stdin!.write('\n');
    const r = await t.done;
    expect(r.code, r.stdout.slice(-1500)).toBe(0);
    // testpmd counted what it took off the ring: never more than tsvmm put there
    expect(testpmdStats(r.stdout + r.stderr).rx).toBeLessThanOrEqual(s.backend.queueStats(0).rx.packets);
    expect(testpmdStats(r.stdout + r.stderr).rx).toBeGreaterThan(b.packets);
    expect(s.backend.errors).toEqual([]);
    s.server.stop();
    await s.serving;
    s.driver.close();
  });

  it('takes a limit from tsvmm vhost-user --net (tx-frames=SIZE/MS) and reports it in --stats', { timeout: 120_000 }, async () => {
    const sock = join(dir, `cli${++runs}.sock`);
    const tStart = performance.now();
    // 1000 frames/s
    const b = runInNs(ns, [process.execPath, CLI, 'vhost-user', '--socket', sock, '--net', 'null,rx=0,tx-frames=500/500', '--stats']);
    spawned.push(b);
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
    expect(existsSync(sock), b.stderr()).toBe(true);
    const t = testpmd(sock, 'txonly');
    await t.waitFor('Press enter to exit', 60_000);
    await sleep(2000);
    t.proc.stdin!.write('\n');
    const r = await t.done;
    await sleep(300);
    b.proc.kill('SIGINT');
    const end = performance.now();
    const st = (stats((await b.done).stderr) as unknown as { vhostUser: { pairs: Array<{ tx: { packets: number; drops: number; rateLimited: number } }> } }).vhostUser.pairs[0].tx;
    expect(st.packets).toBeLessThanOrEqual(500 + (end - tStart));
    expect(st.rateLimited).toBeGreaterThan(0);
    // testpmd left with its ring full of frames still waiting for tokens (a ring of 256): the rest
    // reached the backend
    const sent = testpmdStats(r.stdout + r.stderr).tx;
    expect(st.packets).toBeLessThanOrEqual(sent);
    expect(sent - st.packets).toBeLessThanOrEqual(256);
    expect(st.drops).toBe(0);
  });
});
