// virtio-net throughput: the same test guest under QEMU (-accel kvm, virtio-net-pci, -netdev tap with
// vhost=off: QEMU's own userspace virtio-net) and under tsvmm (in-process dataplane thread, tap driver),
// same tap set-up, alternating runs in one invocation. This host's CPUs are paused by their own host for
// 3-68 % of the time, so only same-run ratios mean anything: each figure is the median of the rounds,
// with the spread.
//
//   node bench/net-bench.mjs [--json] [--rounds N] [--quick] [--only NAME] [--compare qemu|af-xdp]
//
// --compare qemu (default): QEMU against tsvmm with the tap driver. --compare af-xdp: tsvmm with the tap
// driver (`tsvmm`) against tsvmm with the AF_XDP driver on a veth pair (`tsvmm-xdp`, copy mode; the
// host end is the veth peer). No TSO row for AF_XDP: it offers the guest no offloads. --compare
// viommu: tsvmm without an IOMMU, with --viommu and the guest mapping all RAM once (`tsvmm-static`),
// and with the guest mapping each buffer before use and unmapping it after (`tsvmm-strict`).
//
// Guest → host: the guest sends N frames as fast as its ring allows and reports the TSC cycles it took.
// Host → guest: bench/pktgen.c offers N frames on the tap; the guest reports how many arrived intact and
// the TSC cycles from the first to the last. CPU seconds per million packets: the VMM process's user +
// system time between the guest's NET-START line and its result line (guest time on the vCPU included,
// for both VMMs alike).
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const OUT = join(ROOT, 'bench', 'out');
const GUEST = join(ROOT, 'guest', 'out', 'testguest.elf');
const GUEST_MAC = '52:54:00:75:76:00';
const HOST_MAC = '02:00:00:00:00:02';
const args = process.argv.slice(2);
const json = args.includes('--json');
const quick = args.includes('--quick');
const rounds = Number(args[args.indexOf('--rounds') + 1]) || (quick ? 1 : 3);
const compare = args.includes('--compare') ? args[args.indexOf('--compare') + 1] : 'qemu';
/** what runs, the first being the baseline the others' ratios are taken against */
const VARIANTS = { qemu: ['qemu', 'tsvmm'], 'af-xdp': ['tsvmm', 'tsvmm-xdp'], viommu: ['tsvmm', 'tsvmm-static', 'tsvmm-strict'] }[compare];
if (!VARIANTS) throw new Error('--compare takes qemu, af-xdp or viommu');
const A = VARIANTS[0];
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
if (only && !VARIANTS.includes(only)) throw new Error(`--only takes ${VARIANTS.join(' or ')}`);
const log = (...m) => (json ? process.stderr : process.stdout).write(m.join(' ') + '\n');

function sh(cmd, a, opts = {}) {
  return execFileSync(cmd, a, { encoding: 'utf8', ...opts });
}

// ---- set-up: helpers, guest, namespace with one tap per VMM
mkdirSync(OUT, { recursive: true });
sh('gcc', ['-O2', '-o', join(OUT, 'tsc-hz'), join(ROOT, 'bench', 'tsc-hz.c')]);
sh('gcc', ['-O2', '-o', join(OUT, 'pktgen'), join(ROOT, 'bench', 'pktgen.c')]);
sh('gcc', ['-O2', '-o', join(OUT, 'reflect'), join(ROOT, 'bench', 'reflect.c')]);
sh('make', ['-s', '-C', join(ROOT, 'guest')]);
const tscHz = Number(sh(join(OUT, 'tsc-hz'), []).trim());
const NS = `tsvmm-bench-${process.pid}`;
const inNs = (...c) => ['ip', 'netns', 'exec', NS, ...c];
sh('ip', ['netns', 'add', NS]);
process.on('exit', () => {
  try {
    execFileSync('ip', ['netns', 'del', NS]);
  } catch {}
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));
for (const [tap, mq] of [['tapb', true], ['tapq', false]]) {
  sh('ip', ['netns', 'exec', NS, 'ip', 'tuntap', 'add', tap, 'mode', 'tap', ...(mq ? ['multi_queue'] : []), 'vnet_hdr']);
  sh('ip', ['netns', 'exec', NS, 'sysctl', '-qw', `net.ipv6.conf.${tap}.disable_ipv6=1`]);
  sh('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', tap, 'up']);
}
if (compare === 'af-xdp') {
  sh('ip', ['netns', 'exec', NS, 'ip', 'link', 'add', 'vxb0', 'type', 'veth', 'peer', 'name', 'vxb1']);
  for (const i of ['vxb0', 'vxb1']) {
    sh('ip', ['netns', 'exec', NS, 'sysctl', '-qw', `net.ipv6.conf.${i}.disable_ipv6=1`]);
    sh('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', i, 'up']);
  }
}

function vmmCommand(vmm, cmdline) {
  if (vmm === 'tsvmm' || vmm === 'tsvmm-xdp')
    return inNs(process.execPath, join(ROOT, 'bin', 'tsvmm.js'), 'run', '--kernel', GUEST, '--mem', '256M', '--net', vmm === 'tsvmm' ? 'tap,ifname=tapb' : 'af-xdp,ifname=vxb0', '--cmdline', cmdline);
  if (vmm === 'tsvmm-static' || vmm === 'tsvmm-strict')
    return inNs(process.execPath, join(ROOT, 'bin', 'tsvmm.js'), 'run', '--kernel', GUEST, '--mem', '256M', '--viommu', '--net', 'tap,ifname=tapb', '--cmdline', `${cmdline} iommu=${vmm.slice(6)}`);
  return inNs('qemu-system-x86_64', '-accel', 'kvm', '-machine', 'q35', '-cpu', 'host,-arch-capabilities', '-m', '256', '-nographic', '-no-reboot',
    '-monitor', 'none', '-serial', 'stdio', '-device', 'isa-debug-exit,iobase=0xf4,iosize=4', '-kernel', GUEST, '-append', cmdline,
    '-netdev', 'tap,id=n0,ifname=tapq,script=no,downscript=no,vhost=off', '-device', `virtio-net-pci,netdev=n0,mac=${GUEST_MAC},disable-legacy=on`);
}

const CLK = 100; // USER_HZ
function cpuSeconds(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK;
  } catch {
    return NaN;
  }
}

/** Run one guest; `during` runs once the guest prints `readyLine`. */
function runGuest(vmm, cmdline, readyLine, during) {
  return new Promise((resolve, reject) => {
    const [cmd, ...a] = vmmCommand(vmm, cmdline);
    const p = spawn(cmd, a, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let cpuStart = NaN;
    let cpuEnd = NaN;
    let ran = false;
    const timer = setTimeout(() => p.kill('SIGKILL'), 300_000);
    p.stdout.on('data', (d) => {
      out += d.toString('latin1');
      if (Number.isNaN(cpuStart) && out.includes('NET-START')) cpuStart = cpuSeconds(p.pid);
      if (!ran && out.includes(readyLine)) {
        ran = true;
        Promise.resolve(during?.()).catch(reject);
      }
      if (Number.isNaN(cpuEnd) && out.includes('TSVMM-RESULT')) cpuEnd = cpuSeconds(p.pid);
    });
    p.stderr.on('data', (d) => (out += d.toString('latin1')));
    p.on('close', () => {
      clearTimeout(timer);
      const m = /TSVMM-RESULT (\{.*\})/.exec(out);
      if (!m) return reject(new Error(`${vmm}: no result line:\n${out.slice(-2000)}`));
      resolve({ result: JSON.parse(m[1]), cpu: cpuEnd - cpuStart });
    });
  });
}

const scenarios = quick
  ? [
      { name: 'tx64', dir: 'tx', size: 60, count: 50000 },
      { name: 'tx1500', dir: 'tx', size: 1514, count: 20000 },
      { name: 'rx64', dir: 'rx', size: 60, count: 50000 },
      { name: 'rx1500', dir: 'rx', size: 1514, count: 20000 },
      { name: 'pingpong', dir: 'pp', size: 60, count: 2000 },
      { name: 'tso', dir: 'tso', size: 65549, count: 200 },
    ]
  : [
      { name: 'tx64', dir: 'tx', size: 60, count: 400000 },
      { name: 'tx1500', dir: 'tx', size: 1514, count: 200000 },
      { name: 'rx64', dir: 'rx', size: 60, count: 200000 },
      { name: 'rx1500', dir: 'rx', size: 1514, count: 100000 },
      { name: 'pingpong', dir: 'pp', size: 60, count: 10000 },
      { name: 'tso', dir: 'tso', size: 65549, count: 2000 },
    ];

/** the host end of each VMM's link: its tap, or the veth peer of the AF_XDP interface */
const tapOf = (vmm) => ({ tsvmm: 'tapb', 'tsvmm-static': 'tapb', 'tsvmm-strict': 'tapb', qemu: 'tapq', 'tsvmm-xdp': 'vxb1' })[vmm];

async function measure(vmm, s) {
  if (s.dir === 'pp') {
    const refl = spawn('ip', ['netns', 'exec', NS, join(OUT, 'reflect'), tapOf(vmm), String(s.count), '30'], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => refl.stdout.once('data', r));
    const { result } = await runGuest(vmm, `mode=net-pingpong count=${s.count} size=${s.size} dst=${HOST_MAC}`, 'NET-START');
    refl.kill();
    const us = (c) => (c / tscHz) * 1e6;
    return { pps: s.count / ((result.p50_cycles * s.count) / tscHz), gbps: 0, cpuPerMpkt: NaN, loss: 1 - result.answered / s.count, p50us: us(result.p50_cycles), p99us: us(result.p99_cycles) };
  }
  if (s.dir === 'tso') {
    const mac = sh('ip', ['netns', 'exec', NS, 'cat', `/sys/class/net/${tapOf(vmm)}/address`]).trim();
    const { result, cpu } = await runGuest(vmm, `mode=net-tso count=${s.count} dst=${mac} sip=10.99.0.2 dip=10.99.1.2`, 'NET-START');
    if (!result.ok) throw new Error(`${vmm} tso: ${JSON.stringify(result)}`);
    const seconds = result.cycles / tscHz;
    return { pps: result.sent / seconds, gbps: (result.sent * (result.payload + 54) * 8) / seconds / 1e9, cpuPerMpkt: cpu / (result.sent / 1e6), loss: 0 };
  }
  if (s.dir === 'tx') {
    const { result, cpu } = await runGuest(vmm, `mode=net-tx count=${s.count} size=${s.size} dst=${HOST_MAC}`, 'NET-START');
    if (!result.ok) throw new Error(`${vmm} ${s.name}: ${JSON.stringify(result)}`);
    const seconds = result.cycles / tscHz;
    return { pps: result.sent / seconds, gbps: (result.sent * s.size * 8) / seconds / 1e9, cpuPerMpkt: cpu / (result.sent / 1e6), loss: 0 };
  }
  const tap = tapOf(vmm);
  let offered = 0;
  const { result, cpu } = await runGuest(vmm, `mode=net-rx count=${s.count} idle=3000`, 'NET-RX-READY', () => {
    const o = JSON.parse(sh('ip', ['netns', 'exec', NS, join(OUT, 'pktgen'), tap, String(s.count), String(s.size), HOST_MAC, GUEST_MAC]));
    offered = o.sent / o.seconds;
  });
  const seconds = result.span_cycles / tscHz;
  const pps = result.received > 1 ? result.received / seconds : 0;
  return { pps, gbps: (pps * s.size * 8) / 1e9, cpuPerMpkt: cpu / (result.received / 1e6), loss: 1 - result.received / s.count, offeredPps: offered, bad: result.bad };
}

const samples = {};
// the viommu comparison: no ping-pong (its guest path maps nothing) and no TSO (ditto); no TSO on AF_XDP
const skip = (x) => (x.dir === 'tso' && compare !== 'qemu') || (x.dir === 'pp' && compare === 'viommu');
for (let r = 0; r < rounds; r++) {
  // alternate who goes first, round by round
  const order = only ? [only] : VARIANTS.map((_, i) => VARIANTS[(i + r) % VARIANTS.length]);
  for (const s of scenarios.filter((x) => !skip(x))) {
    for (const vmm of order) {
      const m = await measure(vmm, s);
      ((samples[s.name] ??= {})[vmm] ??= []).push(m);
      if (s.dir === 'pp') {
        log(`round ${r + 1} ${s.name.padEnd(8)} ${vmm.padEnd(12)} p50 ${m.p50us.toFixed(1)} µs  p99 ${m.p99us.toFixed(1)} µs${m.loss ? `  unanswered ${(m.loss * 100).toFixed(1)} %` : ''}`);
        continue;
      }
      log(`round ${r + 1} ${s.name.padEnd(7)} ${vmm.padEnd(12)} ${(m.pps / 1e3).toFixed(1).padStart(8)} kpps ${m.gbps.toFixed(3).padStart(7)} Gbit/s  cpu ${m.cpuPerMpkt.toFixed(2)} s/Mpkt${m.loss ? `  loss ${(m.loss * 100).toFixed(1)} %` : ''}${m.offeredPps ? `  offered ${(m.offeredPps / 1e3).toFixed(0)} kpps` : ''}`);
    }
  }
}

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const summary = {};
for (const [name, byVmm] of Object.entries(samples)) {
  const stat = (vmm, key) => {
    const v = byVmm[vmm].map((m) => m[key]);
    return { median: median(v), min: Math.min(...v), max: Math.max(...v) };
  };
  const pp = name === 'pingpong';
  const of = (vmm) =>
    byVmm[vmm] ? (pp ? { p50us: stat(vmm, 'p50us'), p99us: stat(vmm, 'p99us'), loss: stat(vmm, 'loss') } : { pps: stat(vmm, 'pps'), gbps: stat(vmm, 'gbps'), cpuPerMpkt: stat(vmm, 'cpuPerMpkt'), loss: stat(vmm, 'loss') }) : undefined;
  const row = Object.fromEntries(VARIANTS.map((v) => [v, of(v)]));
  const base = row[A];
  // ratio of each variant to the baseline: rates (Gbit/s for TSO), or for ping-pong the p50 latency
  // (below 1: faster)
  const ratios = Object.fromEntries(
    VARIANTS.slice(1).filter((v) => row[v] && base).map((v) => [v, pp ? row[v].p50us.median / base.p50us.median : name === 'tso' ? row[v].gbps.median / base.gbps.median : row[v].pps.median / base.pps.median]),
  );
  summary[name] = { ...row, ratios, ratio: ratios[VARIANTS[1]], ...(pp && row[VARIANTS[1]] && base ? { ratioP99: row[VARIANTS[1]].p99us.median / base.p99us.median } : {}) };
}
const report = { compare: VARIANTS, rounds, tscHz, quick, scenarios, summary };
if (json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
else {
  log('\nmedian of', rounds, only ? 'round(s)' : `rounds (min-max); ratios against ${A}`);
  for (const [name, s] of Object.entries(summary)) {
    const parts = VARIANTS.filter((v) => s[v]).map((v) => {
      const x = s[v];
      const r = s.ratios[v] !== undefined ? ` [${s.ratios[v].toFixed(2)}]` : '';
      if (name === 'pingpong') return `${v} p50 ${x.p50us.median.toFixed(1)} µs p99 ${x.p99us.median.toFixed(1)} µs${r}`;
      return `${v} ${(x.pps.median / 1e3).toFixed(1)} kpps (${(x.pps.min / 1e3).toFixed(0)}-${(x.pps.max / 1e3).toFixed(0)}) cpu ${x.cpuPerMpkt.median.toFixed(2)} s/Mpkt${x.loss.median ? ` loss ${(x.loss.median * 100).toFixed(0)} %` : ''}${r}`;
    });
    log(`${name.padEnd(8)} ${parts.join('  ')}`);
  }
}
