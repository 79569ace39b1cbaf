// Pause and resume over the API socket with a running guest (two vCPUs: one running, one never started,
// blocked in KVM_RUN until INIT/SIPI: both must be held): the test guest receives frames from a tap
// (in a namespace this test creates and deletes) in three bursts; the second is sent while the VM is
// paused and must wait (the counters stand still), then arrive after the resume with the third, every
// frame in order and none lost.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { NetNs, runVm, pkt, lastJson, stats } from './helpers/netns.js';
import { CLI, TEST_GUEST, guestResult, haveKvm, which } from './helpers/env.js';
import { ctlSend } from '../src/api/ctl.js';

const GUEST_MAC = '52:54:00:75:76:00';
const HOST_MAC = '02:00:00:00:00:02';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.runIf(haveKvm() && which('ip') && which('python3'))('pause and resume over the API socket', () => {
  let ns: NetNs;
  let dir: string;
  beforeAll(() => {
    ns = new NetNs('api');
    ns.addTap('tap0');
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-api-'));
  });
  afterAll(() => {
    ns?.delete();
    rmSync(dir, { recursive: true, force: true });
  });

  it('holds a receiving guest while paused and lets it go on after resume, no frame lost', async () => {
    const sock = join(dir, 'api.sock');
    const [a, b, c] = [300, 200, 300];
    const vm = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--cpus', '2', '--stats', '--api-socket', sock, '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-rx count=${a + b + c}`]);
    await vm.waitFor('NET-RX-READY', 120_000);
    expect(statSync(sock).mode & 0o777).toBe(0o600);
    const get = async (path: string) => {
      const r = await ctlSend(sock, { method: 'GET', path });
      expect(r.status, r.body).toBe(200);
      return JSON.parse(r.body) as Record<string, unknown>;
    };
    const rxFrames = async () => ((await get('/metrics')) as { devices: Array<{ queues: Array<{ queue: string; frames: number }> }> }).devices[0].queues.find((q) => q.queue === 'rx0')!.frames;
    expect(await get('/vm')).toMatchObject({ state: 'running' });
    // the link, down and up again (the guest gets a configuration interrupt each time)
    for (const link of ['down', 'up']) {
      expect((await ctlSend(sock, { method: 'PATCH', path: '/net/0', body: { link } })).status).toBe(204);
      expect(await get('/vm')).toMatchObject({ config: { net: [{ id: '0', link }] } });
    }

    expect(lastJson((await pkt(ns, ['send', 'tap0', String(a), '600', HOST_MAC, GUEST_MAC, '0']).done).stdout)).toEqual({ sent: a });
    for (let i = 0; i < 600 && (await rxFrames()) < a; i++) await sleep(100);
    expect(await rxFrames()).toBe(a);

    // the CLI client pauses it
    execFileSync(process.execPath, [CLI, 'ctl', '--api-socket', sock, 'pause']);
    expect(await get('/vm')).toMatchObject({ state: 'paused' });
    expect(lastJson((await pkt(ns, ['send', 'tap0', String(b), '600', HOST_MAC, GUEST_MAC, String(a)]).done).stdout)).toEqual({ sent: b });
    const r1 = await rxFrames();
    await sleep(1000);
    const r2 = await rxFrames();
    expect(r1).toBe(a);
    expect(r2).toBe(r1);
    const prom = await ctlSend(sock, { method: 'GET', path: '/metrics?format=prometheus' });
    expect(prom.body).toContain(`tsvmm_queue_frames_total{device="0",kind="net",queue="rx0"} ${a}\n`);

    expect((await ctlSend(sock, { method: 'PUT', path: '/vm/resume' })).status).toBe(204);
    expect(await get('/vm')).toMatchObject({ state: 'running' });
    expect(lastJson((await pkt(ns, ['send', 'tap0', String(c), '600', HOST_MAC, GUEST_MAC, String(a + b)]).done).stdout)).toEqual({ sent: c });
    const r = await vm.done;
    const n = a + b + c;
    expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-rx', received: n, bad: 0, out_of_order: 0, first_seq: 0, last_seq: n - 1, ok: true });
    expect(stats(r.stderr).net[0].pairs[0].rx.packets).toBe(n);
    expect(r.code).toBe(0);
    // removed on exit
    expect(existsSync(sock)).toBe(false);
  }, 300_000);
});
