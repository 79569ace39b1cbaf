// Strict per-packet IOMMU mappings by a real Linux driver (Debian's 6.12, iommu.strict=1, iperf3 3 s
// each way), on both of tsvmm's translation paths, each against the same guest without an IOMMU in
// the same run:
//
// 1. The vhost-user device-IOTLB path: QEMU in software emulation boots Debian's kernel (the nested
// harness's L2 initramfs, scenario vhostuser-iommu) with its vhost-user net device served by tsvmm's
// backend (tap driver, in a namespace it creates and deletes), alternating:
//   no-iommu      virtio-net-pci without iommu_platform: addresses are guest-physical
//   iotlb-strict  QEMU's intel-iommu with device-TLB, iommu_platform=on, Linux iommu.strict=1: every
//                 buffer is mapped before use and unmapped after; tsvmm learns each translation by
//                 an IOTLB MISS → UPDATE round trip and drops it on INVALIDATE (acknowledged)
//
// 2. The in-process path: the nested harness (Linux under tsvmm inside a QEMU/TCG L1 with emulated
// SVM), scenarios `basic` (no IOMMU) and `iommu-strict` (tsvmm --viommu: Linux's virtio_iommu maps and
// unmaps each buffer through tsvmm's virtio-iommu; the dataplane reads the shared table), alternating
// in one L1 boot.
//
// The two paths run under different emulation (Linux under QEMU TCG directly; Linux under tsvmm under
// KVM nested in TCG), so their absolute rates are not comparable: each path's strict/none ratio is.
//
//   node bench/iotlb-bench.mjs [--json] [--rounds N] [--skip-nested]
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

/** The in-process path: one L1 boot running basic and iommu-strict `rounds` times, alternating. */
async function nested() {
  execFileSync('bash', [join(ROOT, 'test', 'nested', 'build-images.sh')], { stdio: 'pipe' });
  const order = [];
  for (let r = 0; r < rounds; r++) order.push(...(r % 2 ? ['iommu-strict', 'basic'] : ['basic', 'iommu-strict']));
  const l1 = spawn('timeout', ['1200', 'qemu-system-x86_64', '-accel', 'tcg,thread=multi', '-machine', 'q35', '-cpu', 'max', '-smp', '2', '-m', '2048',
    '-nographic', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    '-kernel', join(ROOT, '.cache', 'nested', 'vmlinuz'), '-initrd', join(ROOT, '.cache', 'nested', 'l1.cpio.gz'),
    '-append', `console=ttyS0 quiet panic=-1 tsvmm.run=${order.join(',')}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(l1);
  let out = '';
  l1.stdout.on('data', (d) => (out += d));
  await new Promise((r) => l1.on('close', r));
  writeFileSync(join(ROOT, 'bench', 'out', 'iotlb-nested.log'), out);
  const runs = { basic: [], 'iommu-strict': [] };
  // one segment per scenario run, in order
  const segments = out.replace(/\r/g, '').split(/STAGE tsvmm-start-/).slice(1);
  for (const seg of segments) {
    const scn = /^([\w-]+)/.exec(seg)[1];
    const rate = (name) => {
      const m = new RegExp(`L2-CHECK ${scn}/${name} PASS .*?([\\d.]+) ([KMG])bits/sec`).exec(seg);
      return m ? Number(m[1]) * { K: 1e-3, M: 1, G: 1e3 }[m[2]] : NaN;
    };
    const fails = seg.match(/L[12]-CHECK \S+ FAIL.*/g) ?? [];
    // a guest that printed nothing (tsvmm stopped it at its time limit) failed too
    if (!/L2-CHECK/.test(seg)) fails.push(`no L2 output; ${/tsvmm: time limit.*/.exec(seg)?.[0] ?? 'no tsvmm exit line'}`);
    runs[scn]?.push({ txMbps: rate('iperf3-l2-to-l1'), rxMbps: rate('iperf3-l1-to-l2'), fails });
    log(`nested ${scn}: guest→host ${rate('iperf3-l2-to-l1').toFixed(1)} Mbit/s, host→guest ${rate('iperf3-l1-to-l2').toFixed(1)} Mbit/s${fails.length ? `; FAILED: ${fails.join('; ')}` : ''}`);
  }
  return runs;
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
const inProcess = args.includes('--skip-nested') ? undefined : await nested();

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
/** per direction: medians, and the strict/none ratio of each round (pairs in run order) */
function summarise(none, strict) {
  const s = {};
  for (const dirn of ['txMbps', 'rxMbps']) {
    // (rounds where either side failed have no ratio: they are listed, with why, in the output)
    const ratios = strict.map((x, i) => x[dirn] / none[i][dirn]).filter(Number.isFinite);
    if (!ratios.length) ratios.push(NaN);
    s[dirn] = { none: median(none.map((x) => x[dirn]).filter(Number.isFinite)), strict: median(strict.map((x) => x[dirn]).filter(Number.isFinite)), ratioMedian: median(ratios), ratioMin: Math.min(...ratios), ratioMax: Math.max(...ratios) };
  }
  return s;
}
const summary = { deviceIotlb: summarise(results['no-iommu'], results['iotlb-strict']) };
if (inProcess) summary.inProcess = summarise(inProcess.basic, inProcess['iommu-strict']);
const name = { txMbps: 'guest→host', rxMbps: 'host→guest' };
const title = { deviceIotlb: 'vhost-user device IOTLB (Linux under QEMU TCG, intel-iommu)', inProcess: 'in-process (Linux under tsvmm, nested; virtio-iommu, shared table)' };
log('\nstrict per-packet mappings vs no IOMMU, Mbit/s, same run:');
for (const [path, sum] of Object.entries(summary)) {
  log(`  ${title[path]}:`);
  for (const [k, s] of Object.entries(sum)) log(`    ${name[k]}: none ${s.none.toFixed(1)}, strict ${s.strict.toFixed(1)}, strict/none ${s.ratioMedian.toFixed(2)} (rounds ${s.ratioMin.toFixed(2)}–${s.ratioMax.toFixed(2)})`);
}
const out = { rounds, deviceIotlb: results, inProcess, summary };
if (json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
writeFileSync(join(ROOT, 'bench', 'out', 'iotlb.json'), JSON.stringify(out, null, 2) + '\n');
const failed = [...Object.values(results).flat(), ...(inProcess ? Object.values(inProcess).flat() : [])].some((x) => x.fails.length);
process.exit(failed ? 1 : 0);
