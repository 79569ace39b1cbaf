// tsvmm vhost-user --api-socket under DPDK testpmd's virtio-user in txonly mode: the metrics move while
// traffic runs, stand still while the backend is paused (two readings equal), move again after the
// resume, and at the end every frame testpmd put on its rings is counted received, over the API and in
// --stats. The null driver takes the frames (no interface needed; the namespace holds the processes).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { CLI, which } from './helpers/env.js';
import { NetNs, runInNs, stats, type Running } from './helpers/netns.js';
import { ctlSend } from '../src/api/ctl.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function testpmdStats(out: string): { tx: number } {
  const m = /Accumulated forward statistics[\s\S]*?TX-packets:\s*(\d+)/.exec(out);
  if (!m) throw new Error(`no testpmd statistics in:\n${out.slice(-1500)}`);
  return { tx: Number(m[1]) };
}

describe.runIf(!!which('dpdk-testpmd') && !!which('ip'))('vhost-user backend controlled over its API socket (testpmd txonly)', () => {
  let ns: NetNs;
  let dir: string;
  const spawned: Running[] = [];
  beforeAll(() => {
    ns = new NetNs('vuapi');
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-vuapi-'));
  });
  afterAll(() => {
    for (const r of spawned) r.proc.kill('SIGKILL');
    ns?.delete();
    rmSync(dir, { recursive: true, force: true });
  });

  it('metrics move with traffic, stand still while paused, move again after resume; nothing lost', async () => {
    const sock = join(dir, 'vu.sock');
    const apiSock = join(dir, 'api.sock');
    const b = runInNs(ns, [process.execPath, CLI, 'vhost-user', '--socket', sock, '--net', 'null,rx=0', '--api-socket', apiSock, '--stats']);
    spawned.push(b);
    for (let i = 0; i < 200 && !(existsSync(sock) && existsSync(apiSock)); i++) await sleep(50);
    expect(existsSync(apiSock), b.stderr()).toBe(true);
    expect(statSync(apiSock).mode & 0o777).toBe(0o600);

    const txFrames = async () => {
      const r = await ctlSend(apiSock, { method: 'GET', path: '/metrics' });
      expect(r.status, r.body).toBe(200);
      return (JSON.parse(r.body) as { devices: Array<{ queues: Array<{ queue: string; frames: number }> }> }).devices[0].queues.find((q) => q.queue === 'tx0')!.frames;
    };
    const state = async () => (JSON.parse((await ctlSend(apiSock, { method: 'GET', path: '/vm' })).body) as { state: string }).state;
    /** until the tx counter exceeds `n` (a loaded host is slow, not wrong) */
    const moving = async (n: number) => {
      for (const end = Date.now() + 30_000; Date.now() < end; await sleep(50)) if ((await txFrames()) > n) return;
    };

    const t = runInNs(ns, ['stdbuf', '-oL', 'dpdk-testpmd', '--no-huge', '-m', '512', '--no-pci', `--file-prefix=tsvmm-api${process.pid}`, `--vdev=net_virtio_user0,path=${sock},queues=1`, '--', '--total-num-mbufs=16384', '--auto-start', '--forward-mode=txonly']);
    spawned.push(t);
    await t.waitFor('Press enter to exit', 60_000);

    // running: the counter moves
    await moving(0);
    const m1 = await txFrames();
    await moving(m1);
    expect(await txFrames()).toBeGreaterThan(m1);

    // paused (through the CLI client): two readings a while apart are equal
    execFileSync(process.execPath, [CLI, 'ctl', '--api-socket', apiSock, 'pause']);
    expect(await state()).toBe('paused');
    const p1 = await txFrames();
    await sleep(1000);
    const p2 = await txFrames();
    expect(p2).toBe(p1);

    // resumed: it moves again
    expect((await ctlSend(apiSock, { method: 'PUT', path: '/vm/resume' })).status).toBe(204);
    expect(await state()).toBe('running');
    await moving(p2);
    expect(await txFrames()).toBeGreaterThan(p2);

    // a limit set over the API (tsvmm ctl: 20 000 frames/s, a bucket of 20 000 refilled in a second)
    // holds: over a window, no more frames than the tokens the bucket can have granted (full at the
    // start, plus its refill over the window); the queue says it waited for tokens
    const RATE = 20_000;
    execFileSync(process.execPath, [CLI, 'ctl', '--api-socket', apiSock, 'net', '0', 'limit', `tx-ops=${RATE}`]);
    const limited = async () => ((await ctlSend(apiSock, { method: 'GET', path: '/metrics' })).body);
    const t0 = Date.now();
    const l0 = await txFrames();
    await sleep(1500);
    const l1 = await txFrames();
    const secs = (Date.now() - t0) / 1000;
    expect(l1 - l0).toBeLessThanOrEqual(RATE + RATE * (secs + 0.1));
    expect(JSON.parse(await limited()).devices[0].queues.find((q: { queue: string }) => q.queue === 'tx0').rateLimited).toBeGreaterThan(0);
    execFileSync(process.execPath, [CLI, 'ctl', '--api-socket', apiSock, 'net', '0', 'limit', 'tx-ops=off']);
    const u0 = await txFrames();
    const u0t = Date.now();
    await sleep(1000);
    // (unlimited, testpmd's txonly goes far above the limit)
    expect((await txFrames()) - u0).toBeGreaterThan(RATE * ((Date.now() - u0t) / 1000) * 2);

    // tsvmm top shows the traffic as a rate (its second screen: frames/s since the first)
    const screens = execFileSync(process.execPath, [CLI, 'top', '--api-socket', apiSock, '--interval', '0.5', '--count', '2'], { encoding: 'utf8' }).trim().split('\n\n');
    expect(screens).toHaveLength(2);
    const tx0 = screens[1].split('\n').find((l) => /^0\s+tx0\s/.test(l));
    expect(tx0, screens[1]).toBeDefined();
    expect(tx0!.split(/\s+/)[2]).not.toBe('0');

    // testpmd stops (and prints what it put on its rings); every frame was taken
    await sleep(500);
    t.proc.stdin!.write('\n');
    const tr = await t.done;
    expect(tr.code, tr.stdout.slice(-1500)).toBe(0);
    const sent = testpmdStats(tr.stdout + tr.stderr).tx;
    expect(sent).toBeGreaterThan(p2);
    await sleep(300);
    expect(await txFrames()).toBe(sent);
    b.proc.kill('SIGINT');
    const r = await b.done;
    const vu = (stats(r.stderr) as unknown as { vhostUser: { errors: string[]; pairs: Array<{ tx: { packets: number; drops: number } }> } }).vhostUser;
    expect(vu.errors).toEqual([]);
    expect(vu.pairs[0].tx.packets).toBe(sent);
    expect(vu.pairs[0].tx.drops).toBe(0);
    // the socket file went with the process
    expect(existsSync(apiSock)).toBe(false);
  }, 180_000);
});
