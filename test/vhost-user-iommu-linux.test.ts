// The vhost-user IOTLB path with a real IOMMU driver: QEMU in software emulation puts an emulated
// Intel IOMMU (with device-TLB support) in front of its vhost-user net device (iommu_platform=on, ATS
// on, behind a PCIe root port so the guest enables ATS); Debian's kernel translates every DMA address
// through it, in strict mode (each buffer mapped and unmapped per use: an IOTLB miss and an
// invalidation per packet) and in lazy mode (unmaps batched into device-TLB flushes of everything).
// tsvmm's backend learns translations only from QEMU's IOTLB messages; the guest's traffic is checked
// end to end (ping, a 4 MiB file each way with its md5, iperf3 both ways).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, ROOT, which } from './helpers/env.js';
import { NetNs, runInNs, stats, type Running } from './helpers/netns.js';

const NESTED = join(ROOT, '.cache', 'nested');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// one guest run takes ~20 s here; the deadline leaves room for a host that pauses these CPUs
const DEADLINE_MS = 300_000;
const md5 = (path: string) => createHash('md5').update(readFileSync(path)).digest('hex');

interface Outcome {
  console: string;
  qemuCode: number | null;
  backendErr: string;
  fileFromGuest: boolean;
}

const MODES = [
  { mode: 'strict', strict: 1 },
  { mode: 'lazy', strict: 0 },
] as const;

describe.runIf(!!which('qemu-system-x86_64') && !!which('busybox'))('Linux behind QEMU intel-iommu over vhost-user to tsvmm (device IOTLB)', () => {
  let ns: NetNs;
  let work: string;
  const procs: Running[] = [];
  const outcomes = new Map<string, Outcome>();

  /** Boot the guest once in `strict` (1) or lazy (0) mode; everything it and the backend said. */
  async function runGuest(mode: string, strict: number): Promise<Outcome> {
    const data = join(work, 'data');
    const sock = join(work, `vu-${mode}.sock`);
    const backend = runInNs(ns, [process.execPath, CLI, 'vhost-user', '--socket', sock, '--net', 'tap,ifname=tap0', '--stats']);
    procs.push(backend);
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
    const qemu = runInNs(ns, ['qemu-system-x86_64', '-accel', 'tcg', '-machine', 'q35', '-cpu', 'max', '-m', '512', '-smp', '1',
      '-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-machine', 'memory-backend=mem',
      '-device', 'intel-iommu,intremap=off,device-iotlb=on',
      '-chardev', `socket,id=c0,path=${sock}`, '-netdev', 'vhost-user,id=n0,chardev=c0',
      // behind a root port: on the root bus QEMU makes it a conventional PCI function, without ATS,
      // and the guest would never send device-TLB invalidations (QEMU forwards no others in lazy mode)
      '-device', 'pcie-root-port,id=rp0,bus=pcie.0,chassis=1',
      // QEMU 7.2 under TCG crashes with vhost-user and MSI-X: INTx (vectors=0), see MACHINE.md
      '-device', 'virtio-net-pci,bus=rp0,netdev=n0,vectors=0,mac=52:54:00:75:76:00,disable-legacy=on,iommu_platform=on,ats=on',
      '-nographic', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
      '-kernel', join(ROOT, '.cache', 'linux', 'vmlinuz'), '-initrd', join(NESTED, 'l2.cpio.gz'),
      '-append', `console=ttyS0 loglevel=4 panic=-1 intel_iommu=on iommu.strict=${strict} tsvmm.scenario=vhostuser-iommu tsvmm.iommu=intel tsvmm.cpus=1 tsvmm.queues=1`]);
    procs.push(qemu);
    const killer = setTimeout(() => qemu.proc.kill('SIGKILL'), DEADLINE_MS);
    // the guest → host direction: fetch the guest's blob (asynchronously, bounded) once its server answers
    let fileFromGuest = false;
    let guestDone = false;
    const recv = join(work, `recv-${mode}`);
    const fetcher = (async () => {
      while (!fileFromGuest && !guestDone) {
        const wget = runInNs(ns, ['timeout', '60', 'busybox', 'wget', '-q', '-O', recv, 'http://10.0.2.2:8080/blob']);
        if ((await wget.done).code === 0) fileFromGuest = md5(recv) === md5(join(data, 'blob'));
        else await sleep(1000);
      }
    })();
    const q = await qemu.done;
    guestDone = true;
    clearTimeout(killer);
    await fetcher;
    backend.proc.kill('SIGINT');
    const b = await backend.done;
    return { console: (q.stdout + q.stderr).replace(/\r/g, ''), qemuCode: q.code, backendErr: b.stderr, fileFromGuest };
  }

  beforeAll(async () => {
    execFileSync('bash', [join(ROOT, 'test', 'nested', 'build-images.sh')], { stdio: 'pipe', timeout: 600_000 });
    ns = new NetNs('vuio');
    work = mkdtempSync(join(tmpdir(), 'tsvmm-vuio-'));
    const data = join(work, 'data');
    mkdirSync(data, { recursive: true });
    copyFileSync(join(NESTED, 'blob'), join(data, 'blob'));
    ns.exec('env', `TSVMM_DIR=${ROOT}`, process.execPath, join(ROOT, 'test', 'nested', 'mktap.mjs'), 'tap0');
    ns.exec('ip', 'addr', 'add', '10.0.2.1/24', 'dev', 'tap0');
    ns.exec('ip', 'link', 'set', 'tap0', 'up');
    procs.push(runInNs(ns, ['busybox', 'httpd', '-f', '-p', '80', '-h', data]));
    procs.push(runInNs(ns, ['iperf3', '-s']));
    for (const { mode, strict } of MODES) outcomes.set(mode, await runGuest(mode, strict));
  }, 2 * DEADLINE_MS + 600_000);

  afterAll(() => {
    for (const p of procs) p.proc.kill('SIGKILL');
    ns?.delete();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  const context = (o: Outcome) => `console tail:\n${o.console.split('\n').slice(-15).join('\n')}\nbackend: ${o.backendErr.slice(-600)}`;

  describe.each(MODES)('$mode mode', ({ mode }) => {
    it.each([
      'intel-iommu-enabled', 'virtio-net-bound', 'feature-access-platform', 'net-behind-iommu', 'link-up',
      'ping-56', 'ping-1400', 'ping-8000', 'file-l1-to-l2', 'iperf3-l2-to-l1', 'iperf3-l1-to-l2',
    ])('L2-CHECK %s', (name) => {
      const o = outcomes.get(mode)!;
      const m = new RegExp(`^L2-CHECK vhostuser-iommu/${name} (PASS|FAIL)(.*)$`, 'm').exec(o.console);
      expect(m, `no L2-CHECK ${name}; ${context(o)}`).not.toBeNull();
      expect(m![1], `${name}:${m![2]}; ${context(o)}`).toBe('PASS');
    });

    it('moved the guest\'s 4 MiB file to the host (md5 equal), and the guest powered off', () => {
      const o = outcomes.get(mode)!;
      expect(o.fileFromGuest, context(o)).toBe(true);
      expect(o.qemuCode, context(o)).toBe(0);
    });

    it('translated only through QEMU\'s IOTLB: misses asked and answered, invalidations taken, no errors, no translation failure', () => {
      const o = outcomes.get(mode)!;
      const vu = (stats(o.backendErr) as unknown as { vhostUser: { errors: string[]; iotlb: { misses: number; updates: number; invalidations: number }; pairs: Array<{ rx: { packets: number }; tx: { packets: number } }> } }).vhostUser;
      expect(vu.errors).toEqual([]);
      expect(o.backendErr).not.toMatch(/connection closed/);
      // (per packet in strict mode; lazy mode unmaps in batches, still far more than the rings)
      expect(vu.iotlb.misses, context(o)).toBeGreaterThan(1000);
      expect(vu.iotlb.updates).toBeGreaterThanOrEqual(vu.iotlb.misses * 0.9);
      expect(vu.iotlb.invalidations).toBeGreaterThan(100);
      expect(vu.pairs[0].tx.packets).toBeGreaterThan(1000);
      expect(vu.pairs[0].rx.packets).toBeGreaterThan(1000);
      // QEMU reports a miss it cannot translate (an IOVA the guest never mapped, or no longer maps)
      expect(o.console).not.toMatch(/translation failure|Fail to lookup/);
    });
  });
});
