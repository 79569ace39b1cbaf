// A real Linux driver behind the vhost-user front door: QEMU in software emulation (the frontend: it
// owns the guest memory, shared as a memfd, and the rings) boots Debian's kernel with the nested
// harness's L2 initramfs; its own virtio_net driver talks to tsvmm's dataplane through vhost-user, and
// tsvmm's tap driver carries the traffic to this namespace (web server, iperf3, the file check).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, ROOT, which } from './helpers/env.js';
import { NetNs, runInNs, stats, type Running } from './helpers/netns.js';

const NESTED = join(ROOT, '.cache', 'nested');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.runIf(!!which('qemu-system-x86_64') && !!which('busybox'))('Linux virtio_net through QEMU (TCG) over vhost-user to tsvmm', () => {
  let ns: NetNs;
  let work: string;
  const procs: Running[] = [];
  let consoleOut = '';
  let qemuCode: number | null = null;
  let backendErr = '';
  let fileOk = false;
  let restartedAt = 0;

  beforeAll(async () => {
    execFileSync('bash', [join(ROOT, 'test', 'nested', 'build-images.sh')], { stdio: 'pipe', timeout: 600_000 });
    ns = new NetNs('vul');
    work = mkdtempSync(join(tmpdir(), 'tsvmm-vul-'));
    const data = join(work, 'data');
    mkdirSync(join(data, 'cgi-bin'), { recursive: true });
    copyFileSync(join(NESTED, 'blob'), join(data, 'blob'));
    ns.exec('env', `TSVMM_DIR=${ROOT}`, process.execPath, join(ROOT, 'test', 'nested', 'mktap.mjs'), 'tap0');
    ns.exec('ip', 'addr', 'add', '10.0.2.1/24', 'dev', 'tap0');
    ns.exec('ip', 'link', 'set', 'tap0', 'up');
    procs.push(runInNs(ns, ['busybox', 'httpd', '-f', '-p', '80', '-h', data]));
    procs.push(runInNs(ns, ['iperf3', '-s']));
    const sock = join(work, 'vu.sock');
    const startBackend = async () => {
      const b = runInNs(ns, [process.execPath, CLI, 'vhost-user', '--socket', sock, '--net', 'tap,ifname=tap0', '--stats']);
      procs.push(b);
      for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
      return b;
    };
    const first = await startBackend();
    // the guest → host direction: fetch the guest's blob as soon as its web server answers
    const fetcher = (async () => {
      for (let i = 0; i < 300 && !fileOk; i++) {
        try {
          ns.exec('busybox', 'wget', '-q', '-O', join(work, 'recv'), 'http://10.0.2.2:8080/blob');
          fileOk = createHash('md5').update(readFileSync(join(work, 'recv'))).digest('hex') === createHash('md5').update(readFileSync(join(data, 'blob'))).digest('hex');
        } catch {
          await sleep(1000);
        }
      }
    })();
    const qemu = runInNs(ns, ['qemu-system-x86_64', '-accel', 'tcg', '-machine', 'q35', '-cpu', 'max', '-m', '512', '-smp', '1',
      '-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-machine', 'memory-backend=mem',
      // reconnect: QEMU keeps running when the backend goes away and connects to the next one
      '-chardev', `socket,id=c0,path=${sock},reconnect=1`, '-netdev', 'vhost-user,id=n0,chardev=c0',
      // QEMU 7.2 under TCG crashes with vhost-user and MSI-X: INTx (vectors=0), see MACHINE.md
      '-device', 'virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:75:76:00',
      '-nographic', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
      '-kernel', join(ROOT, '.cache', 'linux', 'vmlinuz'), '-initrd', join(NESTED, 'l2.cpio.gz'),
      '-append', 'console=ttyS0 loglevel=4 panic=-1 tsvmm.scenario=vhostuser tsvmm.cpus=1 tsvmm.queues=1']);
    procs.push(qemu);
    const killer = setTimeout(() => qemu.proc.kill('SIGKILL'), 400_000);
    // backend restart mid-run: killed outright (a crash: no goodbye to QEMU), a new one on the same
    // socket, and /restarted published for the guest once it serves
    let backend = first;
    const restart = qemu.waitFor('L2-KILL-BACKEND', 380_000).then(async () => {
      first.proc.kill('SIGKILL');
      await first.done;
      restartedAt = Date.now();
      backend = await startBackend();
      writeFileSync(join(data, 'restarted'), 'yes\n');
    });
    restart.catch(() => {});
    const q = await qemu.done;
    clearTimeout(killer);
    consoleOut = (q.stdout + q.stderr).replace(/\r/g, '');
    qemuCode = q.code;
    await Promise.race([fetcher, sleep(5000)]);
    backend.proc.kill('SIGINT');
    backendErr = (await backend.done).stderr;
  }, 900_000);

  afterAll(() => {
    for (const p of procs) p.proc.kill('SIGKILL');
    ns?.delete();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  const context = () => `console tail:\n${consoleOut.split('\n').slice(-20).join('\n')}\nbackend: ${backendErr.slice(-800)}`;

  it.each([
    'virtio-net-bound', 'feature-version1', 'feature-event-idx', 'feature-mrg-rxbuf', 'feature-csum-tso', 'feature-ctrl-vq', 'link-up',
    'ping-56', 'ping-1400', 'ping-8000', 'file-l1-to-l2', 'iperf3-l2-to-l1', 'iperf3-l1-to-l2',
    'traffic-after-backend-restart', 'link-after-backend-restart', 'ping-after-backend-restart', 'file-after-backend-restart',
  ])('L2-CHECK %s', (name) => {
    const m = new RegExp(`^L2-CHECK vhostuser/${name} (PASS|FAIL)(.*)$`, 'm').exec(consoleOut);
    expect(m, `no L2-CHECK ${name}; ${context()}`).not.toBeNull();
    expect(m![1], `${name}:${m![2]}; ${context()}`).toBe('PASS');
  });

  it('moved a 4 MiB file from the guest (md5 equal) and the guest powered off (QEMU exit 0)', () => {
    expect(fileOk, context()).toBe(true);
    expect(qemuCode, context()).toBe(0);
  });

  it('the restarted backend served the same frontend: one connection, no errors, traffic both ways', () => {
    expect(restartedAt, `the backend was never restarted; ${context()}`).toBeGreaterThan(0);
    const vu = (stats(backendErr) as unknown as { vhostUser: { connections: number; errors: string[]; pairs: Array<{ rx: { packets: number }; tx: { packets: number } }> } }).vhostUser;
    expect(vu.errors).toEqual([]);
    expect(vu.connections).toBe(1);
    expect(vu.pairs[0].rx.packets).toBeGreaterThan(20);
    expect(vu.pairs[0].tx.packets).toBeGreaterThan(20);
  });
});
