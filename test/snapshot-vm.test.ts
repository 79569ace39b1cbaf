// Snapshot and restore of a running VM on real KVM, through files:
// - library: the test guest waiting at DIRTY-READY is snapshotted and stopped; a fresh Vm restored from
//   the directory goes on without booting again, writes 1 MiB on request (into its copy-on-write
//   mapping of the memory file), is snapshotted again into the same directory while it runs on, and a
//   third Vm restored from that sees the pages the second one wrote;
// - processes: a receiving guest (mode=net-rx) under `tsvmm run --api-socket` gets the first frames on
//   tap0, `tsvmm ctl snapshot DIR stop` writes it and ends that process, `tsvmm run --restore DIR --net
//   tap,ifname=tap1` goes on in a new process on another tap, and the guest gets the rest there: every
//   frame once, in order. A snapshot into a directory that holds other things is refused with one line
//   and the VM runs on.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { Vm } from '../src/vmm/vm.js';
import { NetNs, runVm, pkt, lastJson, stats } from './helpers/netns.js';
import { CLI, TEST_GUEST, guestResult, haveKvm, which } from './helpers/env.js';
import { ctlSend } from '../src/api/ctl.js';

const MiB = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A Vm whose serial output is collected; `until(text)` resolves once it has appeared. */
function watched(vm: Vm) {
  let out = '';
  const waiters: Array<() => void> = [];
  vm.serial.on('data', (d: Buffer) => {
    out += d.toString('latin1');
    for (const w of waiters.splice(0)) w();
  });
  const until = async (text: string, ms = 120_000) => {
    const t0 = Date.now();
    while (!out.includes(text)) {
      if (Date.now() - t0 > ms) throw new Error(`no "${text}" in: ${out.slice(-400)}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 500);
      });
    }
  };
  return { vm, output: () => out, until };
}

/** Pages of guest memory [gpa, gpa+len) whose first byte is `v`. */
function pagesWith(vm: Vm, gpa: number, len: number, v: number): number {
  const b = vm.memory.slice(gpa, len);
  let n = 0;
  for (let i = 0; i < len; i += 4096) if (b[i] === v) n++;
  return n;
}

describe.runIf(haveKvm())('snapshot and restore of a running VM', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-snapvm-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('library: stopped at a snapshot, restored twice, the guest goes on and its writes carry over', async () => {
    const snap = join(dir, 'lib');
    const a = watched(new Vm({ kernel: TEST_GUEST, cmdline: 'mode=dirty', memory: '64M' }));
    await a.vm.start();
    await a.until('DIRTY-READY\n');
    const info = await a.vm.snapshot(snap, { resume: false });
    expect((await a.vm.exited).detail).toContain(`snapshot written to ${snap}`);
    expect(info.memoryBytes).toBe(64 * MiB);
    // sparse: the guest touched a few pages of its 64 MiB; the file takes about as much disk
    expect(info.pagesWritten).toBeGreaterThan(0);
    expect(info.pagesWritten).toBeLessThan(4096);
    const memFile = readdirSync(snap).find((f) => f.startsWith('memory-'))!;
    expect(statSync(join(snap, memFile)).size).toBe(64 * MiB);
    expect(statSync(join(snap, memFile)).blocks * 512).toBeLessThan(16 * MiB);

    const b = watched(new Vm({ restore: snap }));
    await b.vm.start();
    try {
      expect(b.vm.status.state).toBe('running');
      expect(pagesWith(b.vm, 16 * MiB, MiB, 0xd1)).toBe(0);
      b.vm.sendSerial('x');
      await b.until('DIRTY-DONE\n');
      // it went on where it was: no banner, no second DIRTY-READY
      expect(a.output() + b.output()).toBe('tsvmm test guest: mode dirty\nDIRTY-READY\nDIRTY-DONE\n');
      expect(pagesWith(b.vm, 16 * MiB, MiB, 0xd1)).toBe(256);
      // a snapshot of the restored VM (its memory a copy-on-write mapping of the file it replaces), which runs on
      const again = await b.vm.snapshot(snap);
      expect(b.vm.status.state).toBe('running');
      expect(again.pagesWritten).toBeGreaterThanOrEqual(256);
    } finally {
      await b.vm.stop();
    }
    expect(readdirSync(snap).filter((f) => f.startsWith('memory-'))).not.toContain(memFile);

    const c = watched(new Vm({ restore: snap }));
    await c.vm.start();
    try {
      expect(pagesWith(c.vm, 16 * MiB, MiB, 0xd1)).toBe(256);
      await expect(c.vm.snapshot(join(dir, 'lib'), { resume: true }).then(() => c.vm.status.state)).resolves.toBe('running');
    } finally {
      await c.vm.stop();
    }
    expect(c.output()).toBe('');
  }, 300_000);
});

describe.runIf(haveKvm() && which('ip') && which('python3'))('snapshot in one tsvmm process, restore in another on another tap', () => {
  const GUEST_MAC = '52:54:00:75:76:00';
  const HOST_MAC = '02:00:00:00:00:02';
  let ns: NetNs;
  let dir: string;
  beforeAll(() => {
    ns = new NetNs('snap');
    ns.addTap('tap0');
    ns.addTap('tap1');
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-snapcli-'));
  });
  afterAll(() => {
    ns?.delete();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a receiving guest gets the first frames on tap0 and the rest on tap1 after the restore, each once and in order', async () => {
    const [a, b] = [200, 300];
    const n = a + b;
    const sock = join(dir, 'one.sock');
    const sock2 = join(dir, 'two.sock');
    const snap = join(dir, 'snap');
    let one: ReturnType<typeof runVm> | undefined;
    let two: ReturnType<typeof runVm> | undefined;
    try {
      // (idle=: the guest gives up after that many million TSC cycles without a frame, 30 000 by
      // default. Its TSC runs from the last frame on tap0 through two `tsvmm ctl` processes and, once
      // restored, until the frames on tap1 come, which in a loaded emulated L1 can exceed the default;
      // 150 000 M cycles is about a minute there, well inside this test's limit.)
      one = runVm(ns, ['--kernel', TEST_GUEST, '--mem', '64M', '--cpus', '2', '--api-socket', sock, '--net', 'tap,ifname=tap0', '--cmdline', `mode=net-rx count=${n} idle=150000`]);
      await one.waitFor('NET-RX-READY', 120_000);
      const rxFrames = async (s: string) => {
        const r = await ctlSend(s, { method: 'GET', path: '/metrics' });
        return (JSON.parse(r.body) as { devices: Array<{ queues: Array<{ queue: string; frames: number }> }> }).devices[0].queues.find((q) => q.queue === 'rx0')!.frames;
      };
      expect(lastJson((await pkt(ns, ['send', 'tap0', String(a), '600', HOST_MAC, GUEST_MAC, '0']).done).stdout)).toEqual({ sent: a });
      for (let i = 0; i < 600 && (await rxFrames(sock)) < a; i++) await sleep(100);
      expect(await rxFrames(sock)).toBe(a);

      // refused: a directory with other things in it; the VM runs on
      const busy = join(dir, 'busy');
      mkdirSync(busy);
      writeFileSync(join(busy, 'keep'), '');
      const refused = spawnSync(process.execPath, [CLI, 'ctl', '--api-socket', sock, 'snapshot', busy], { encoding: 'utf8' });
      expect(refused.status).toBe(1);
      expect(refused.stderr.trim()).toBe(`tsvmm: ctl: PUT /snapshot: 400 snapshot ${busy}: the directory is not empty and holds no snapshot (refusing to write into it)`);
      expect(JSON.parse((await ctlSend(sock, { method: 'GET', path: '/vm' })).body)).toMatchObject({ state: 'running' });

      const taken = spawnSync(process.execPath, [CLI, 'ctl', '--api-socket', sock, 'snapshot', snap, 'stop'], { encoding: 'utf8' });
      expect(taken.status, taken.stderr).toBe(0);
      expect(JSON.parse(taken.stdout)).toMatchObject({ dir: snap, memoryBytes: 64 * MiB });
      const first = await one.done;
      expect(first.code).toBe(0);
      expect(first.stderr).toContain(`VM stopped (snapshot written to ${snap}`);
      expect(guestResult(first.stdout)).toBeUndefined();

      two = runVm(ns, ['--restore', snap, '--stats', '--api-socket', sock2, '--net', 'tap,ifname=tap1']);
      for (let i = 0; i < 600; i++) {
        const r = await ctlSend(sock2, { method: 'GET', path: '/vm' }).catch(() => undefined);
        if (r?.status === 200 && (JSON.parse(r.body) as { state: string }).state === 'running') break;
        await sleep(100);
      }
      expect(lastJson((await pkt(ns, ['send', 'tap1', String(b), '600', HOST_MAC, GUEST_MAC, String(a)]).done).stdout)).toEqual({ sent: b });
      const r = await two.done;
      expect(guestResult(r.stdout), r.stdout + r.stderr).toMatchObject({ mode: 'net-rx', received: n, bad: 0, out_of_order: 0, first_seq: 0, last_seq: n - 1, ok: true });
      // it went on: no second boot
      expect(r.stdout).not.toContain('tsvmm test guest: mode');
      expect(stats(r.stderr).net[0].pairs[0].rx.packets).toBe(b);
      expect(r.code).toBe(0);
    } catch (e) {
      throw new Error(`${(e as Error).stack}\nfirst tsvmm: ${one?.stdout().slice(-600)} ${one?.stderr().slice(-600)}\nrestored tsvmm: ${two?.stdout().slice(-600)} ${two?.stderr().slice(-600)}`);
    }
  }, 300_000);
});
