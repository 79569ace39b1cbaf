// The vhost-user device-IOTLB path under a strict per-packet mapping workload, against the same
// guest without an IOMMU, alternating in one invocation: QEMU in software emulation boots Debian's
// kernel (the nested harness's L2 initramfs, scenario vhostuser-iommu) with its vhost-user net device
// served by tsvmm's backend (tap driver, in a namespace it creates and deletes):
//   no-iommu      virtio-net-pci without iommu_platform: addresses are guest-physical
//   iotlb-strict  QEMU's intel-iommu with device-TLB, iommu_platform=on, Linux iommu.strict=1: every
//                 buffer is mapped before use and unmapped after; tsvmm learns each translation by
//                 an IOTLB MISS → UPDATE round trip and drops it on INVALIDATE (acknowledged)
// The guest runs iperf3 (3 s) in both directions; we report Mbit/s, the iotlb-strict/no-iommu ratio
// and the IOTLB messages per packet. The in-process path's figure for the same policy (per-packet
// MAP/UNMAP, translations read from shared memory) is `npm run bench:viommu`: there the guest is the
// test guest under KVM, here Linux under TCG (the only way this host runs Linux's intel-iommu driver),
// so each path is compared with its own no-IOMMU baseline, not the two with each other.
//
//   node bench/iotlb-bench.mjs [--json] [--rounds N]
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const json = args.includes('--json');
const rounds = args.includes('--rounds') ? Number(args[args.indexOf('--rounds') + 1]) : 3;
const log = (...m) => (json ? process.stderr : process.stdout).write(m.join(' ') + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

for (const f of ['.cache/linux/vmlinuz', '.cache/nested/l2.cpio.gz']) {
  if (!existsSync(join(ROOT, f))) {
    console.error(`iotlb-bench: ${f} is missing (npm test builds it: npm run guest:linux && bash test/nested/build-images.sh)`);
    process.exit(1);
  }
}
const ns = `tsvmm-iotlbb-${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-iotlbb-'));
const live = new Set();
const inNs = (...cmd) => execFileSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8' });
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
  try {
    execFileSync('ip', ['netns', 'del', ns]);
  } catch {}
  rmSync(dir, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

function start(argv) {
  const p = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(p);
  let out = '';
  let err = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (err += d));
  const done = new Promise((r) => p.on('close', (code) => (live.delete(p), r({ code, out, err }))));
  return { p, done };
}

execFileSync('ip', ['netns', 'add', ns]);
inNs('ip', 'link', 'set', 'lo', 'up');
inNs('env', `TSVMM_DIR=${ROOT}`, process.execPath, join(ROOT, 'test', 'nested', 'mktap.mjs'), 'tap0');
inNs('ip', 'addr', 'add', '10.0.2.1/24', 'dev', 'tap0');
inNs('ip', 'link', 'set', 'tap0', 'up');
mkdirSync(join(dir, 'data'));
execFileSync('cp', [join(ROOT, '.cache', 'nested', 'blob'), join(dir, 'data', 'blob')]);
start(['busybox', 'httpd', '-f', '-p', '80', '-h', join(dir, 'data')]);
start(['iperf3', '-s']);

/** One guest boot: iperf3 both ways, and the backend's counters. */
async function once(variant) {
  const sock = join(dir, `vu-${variant}-${Date.now()}.sock`);
  const backend = start([process.execPath, join(ROOT, 'bin', 'tsvmm.js'), 'vhost-user', '--socket', sock, '--net', 'tap,ifname=tap0', '--stats']);
  for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
  const iommu = variant === 'iotlb-strict';
  const qemu = start(['timeout', '300', 'qemu-system-x86_64', '-accel', 'tcg', '-machine', 'q35', '-cpu', 'max', '-m', '512', '-smp', '1',
    '-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-machine', 'memory-backend=mem',
    ...(iommu ? ['-device', 'intel-iommu,intremap=off,device-iotlb=on'] : []),
    '-chardev', `socket,id=c0,path=${sock}`, '-netdev', 'vhost-user,id=n0,chardev=c0',
    '-device', 'pcie-root-port,id=rp0,bus=pcie.0,chassis=1',
    '-device', `virtio-net-pci,bus=rp0,netdev=n0,vectors=0,mac=52:54:00:75:76:00,disable-legacy=on${iommu ? ',iommu_platform=on,ats=on' : ''}`,
    '-nographic', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    '-kernel', join(ROOT, '.cache', 'linux', 'vmlinuz'), '-initrd', join(ROOT, '.cache', 'nested', 'l2.cpio.gz'),
    '-append', `console=ttyS0 loglevel=4 panic=-1 ${iommu ? 'intel_iommu=on iommu.strict=1 tsvmm.iommu=intel' : ''} tsvmm.scenario=vhostuser-iommu tsvmm.cpus=1 tsvmm.queues=1`]);
  const q = await qemu.done;
  backend.p.kill('SIGINT');
  const b = await backend.done;
  const rate = (name) => {
    const m = new RegExp(`L2-CHECK vhostuser-iommu/${name} PASS .*?([\\d.]+) ([KMG])bits/sec`).exec(q.out);
    return m ? Number(m[1]) * { K: 1e-3, M: 1, G: 1e3 }[m[2]] : NaN;
  };
  const st = JSON.parse(/TSVMM-STATS (.*)/.exec(b.err)?.[1] ?? 'null')?.vhostUser;
  const packets = st ? st.pairs[0].rx.packets + st.pairs[0].tx.packets : NaN;
  const fails = (q.out.match(/L2-CHECK \S+ FAIL.*/g) ?? []).concat(/translation failure/.test(q.out) ? ['QEMU: translation failure'] : []);
  return {
    txMbps: rate('iperf3-l2-to-l1'),
    rxMbps: rate('iperf3-l1-to-l2'),
    iotlbPerPacket: st?.iotlb && packets ? (st.iotlb.misses + st.iotlb.invalidations) / packets : 0,
    fails,
  };
}

const variants = ['no-iommu', 'iotlb-strict'];
const results = Object.fromEntries(variants.map((v) => [v, []]));
for (let r = 0; r < rounds; r++) {
  // alternate the order each round, so a slow phase of this host does not favour one variant
  for (const v of r % 2 ? [...variants].reverse() : variants) {
    const res = await once(v);
    results[v].push(res);
    log(`round ${r + 1} ${v}: guest→host ${res.txMbps.toFixed(1)} Mbit/s, host→guest ${res.rxMbps.toFixed(1)} Mbit/s, IOTLB messages/packet ${res.iotlbPerPacket.toFixed(2)}${res.fails.length ? `; FAILED: ${res.fails.join('; ')}` : ''}`);
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const summary = {};
for (const dirn of ['txMbps', 'rxMbps']) {
  const ratios = results['iotlb-strict'].map((x, i) => x[dirn] / results['no-iommu'][i][dirn]);
  summary[dirn] = {
    noIommu: median(results['no-iommu'].map((x) => x[dirn])),
    iotlbStrict: median(results['iotlb-strict'].map((x) => x[dirn])),
    ratioMedian: median(ratios),
    ratioMin: Math.min(...ratios),
    ratioMax: Math.max(...ratios),
  };
}
const name = { txMbps: 'guest→host', rxMbps: 'host→guest' };
log('\nvhost-user device IOTLB, strict per-packet mappings, vs no IOMMU (same run, Linux under QEMU TCG):');
for (const [k, s] of Object.entries(summary)) {
  log(`  ${name[k]}: no-iommu ${s.noIommu.toFixed(1)} Mbit/s, iotlb-strict ${s.iotlbStrict.toFixed(1)} Mbit/s, ratio ${s.ratioMedian.toFixed(2)} (rounds ${s.ratioMin.toFixed(2)}–${s.ratioMax.toFixed(2)})`);
}
const out = { rounds, results, summary };
if (json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
writeFileSync(join(ROOT, 'bench', 'out', 'iotlb.json'), JSON.stringify(out, null, 2) + '\n');
process.exit(Object.values(results).flat().some((x) => x.fails.length) ? 1 : 0);
