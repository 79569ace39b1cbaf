// vhost-user loopback, the DPDK community's guest-less standard: testpmd with the net_virtio_user PMD
// (the "guest" driver) against (a) testpmd with DPDK's net_vhost PMD and (b) tsvmm's vhost-user backend
// with the null driver, alternating in one invocation. Each side has its own CPU: the virtio-user
// forwarding lcore on CPU 0; the vhost side (DPDK's forwarding lcore, or every tsvmm thread) on CPU 1;
// testpmd's main lcores, which only wait for commands, on the other CPU.
//
//   node bench/vhost-user-bench.mjs [--json] [--rounds N] [--quick] [--seconds S] [--only tsvmm|dpdk]
//                                   [--layouts split,packed] [--sizes 64,1518]
//
// Every mode and size runs on split rings and on packed ones (virtio-user packed_vq=1; DPDK's vhost
// library and tsvmm both take them), the two sides alternating within each layout.
//
// Modes, all measured at the virtio-user port (packets counted by testpmd between two "show port
// stats" a fixed time apart, after a warm-up):
//   virtio→vhost  virtio-user txonly; vhost side receives and discards (DPDK rxonly / null rx=0), every
//                 byte copied or read on the vhost side
//   vhost→virtio  vhost side generates (DPDK txonly / null size=S); virtio-user rxonly
//   io loop       both sides io-forward; 32 bursts injected with start tx_first (null loop=1)
// This host's CPUs are paused by their own host for 3-68 % of the time: only same-run ratios count,
// and each figure is the median of the rounds with the spread.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const json = args.includes('--json');
const quick = args.includes('--quick');
const opt = (name, dflt) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const rounds = opt('--rounds', quick ? 1 : 3);
const seconds = opt('--seconds', quick ? 2 : 4);
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
if (only && only !== 'tsvmm' && only !== 'dpdk') throw new Error('--only takes tsvmm or dpdk');
const list = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1].split(',') : dflt);
const layouts = list('--layouts', ['split', 'packed']);
if (layouts.some((l) => l !== 'split' && l !== 'packed')) throw new Error('--layouts takes split and/or packed');
const sizes = list('--sizes', ['64', '1518']).map(Number);
const log = (...m) => (json ? process.stderr : process.stdout).write(m.join(' ') + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

for (const tool of ['dpdk-testpmd', 'taskset', 'stdbuf']) {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`]);
  } catch {
    console.error(`vhost-user-bench: ${tool} is missing (scripts/setup-host.sh installs it)`);
    process.exit(1);
  }
}
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-vubench-'));
const live = new Set();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

/** A process whose output we watch; `until(re)` waits for a match in output that arrived after `from`. */
function start(cmd, argv) {
  const p = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
  live.add(p);
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (out += d));
  const exited = new Promise((r) => p.on('close', () => (live.delete(p), r())));
  return {
    p,
    exited,
    get out() {
      return out;
    },
    send: (line) => p.stdin.write(line + '\n'),
    async until(re, from = 0, ms = 30_000) {
      for (const end = Date.now() + ms; Date.now() < end; await sleep(10)) {
        const m = re.exec(out.slice(from));
        if (m) return m;
        if (p.exitCode !== null) break;
      }
      throw new Error(`${cmd}: no ${re} in:\n${out.slice(-1500)}`);
    },
  };
}

let runs = 0;
/** testpmd, interactive (commands on stdin), main lcore on `mainCpu`, forwarding lcore on `fwdCpu`. */
function testpmd(vdev, mainCpu, fwdCpu) {
  return start('stdbuf', ['-oL', 'dpdk-testpmd', '--no-huge', '-m', '1024', '--no-pci', `--file-prefix=vub${process.pid}-${++runs}`,
    `--lcores=0@${mainCpu},1@${fwdCpu}`, `--vdev=${vdev}`, '--', '-i', '--disable-link-check', '--total-num-mbufs=32768', '--txd=1024', '--rxd=1024']);
}

async function quit(t) {
  t.send('stop');
  t.send('quit');
  const killer = setTimeout(() => t.p.kill('SIGKILL'), 10_000);
  await t.exited;
  clearTimeout(killer);
}

/** Counters of port 0 as testpmd reports them now. */
async function portCounters(t) {
  const from = t.out.length;
  t.send('show port stats 0');
  const m = await t.until(/RX-packets:\s*(\d+)[\s\S]*?TX-packets:\s*(\d+)/, from);
  return { rx: Number(m[1]), tx: Number(m[2]), at: process.hrtime.bigint() };
}

const MODES = {
  'virtio→vhost': { virtio: 'txonly', dpdk: 'rxonly', tsvmm: (size) => `null,rx=0,size=${size}`, count: 'tx' },
  'vhost→virtio': { virtio: 'rxonly', dpdk: 'txonly', tsvmm: (size) => `null,size=${size}`, count: 'rx' },
  'io loop': { virtio: 'io', dpdk: 'io', tsvmm: () => 'null,loop=1', count: 'rx', txFirst: true },
};

/** One measurement: Mpps at the virtio-user port. */
async function measure(side, modeName, size, layout) {
  const mode = MODES[modeName];
  const sock = join(dir, `vu-${runs}.sock`);
  let backend;
  if (side === 'dpdk') {
    backend = testpmd(`net_vhost0,iface=${sock},queues=1`, 0, 1);
    await backend.until(/Port 0: [0-9A-F:]{17}/);
    backend.send(`set fwd ${mode.dpdk}`);
    if (mode.dpdk === 'txonly') backend.send(`set txpkts ${size}`);
    backend.send('start');
  } else {
    // every tsvmm thread on CPU 1; the dataplane busy-polls as DPDK's lcore does
    backend = start('taskset', ['-c', '1', process.execPath, join(ROOT, 'bin', 'tsvmm.js'), 'vhost-user', '--socket', sock, '--net', `${mode.tsvmm(size)},busy-poll=1000000`]);
  }
  for (let i = 0; i < 200 && !existsSync(sock); i++) await sleep(25);
  const virtio = testpmd(`net_virtio_user0,path=${sock},queues=1${layout === 'packed' ? ',packed_vq=1' : ''}`, 1, 0);
  try {
    await virtio.until(/Port 0: [0-9A-F:]{17}/);
    virtio.send(`set fwd ${mode.virtio}`);
    if (mode.virtio === 'txonly') virtio.send(`set txpkts ${size}`);
    if (mode.txFirst) virtio.send(`set txpkts ${size}`);
    virtio.send(mode.txFirst ? 'start tx_first 32' : 'start');
    await sleep(1000); // warm-up: connection, JIT, rings filled
    const a = await portCounters(virtio);
    await sleep(seconds * 1000);
    const b = await portCounters(virtio);
    const pkts = b[mode.count] - a[mode.count];
    // (tsvmm says when a frontend negotiated packed rings: a row must measure the layout it names)
    if (side === 'tsvmm' && /vhost-user: packed rings/.test(backend.out) !== (layout === 'packed')) throw new Error(`tsvmm did not run ${layout} rings:\n${backend.out.slice(-1500)}`);
    return pkts / (Number(b.at - a.at) / 1e9) / 1e6;
  } finally {
    await quit(virtio);
    if (side === 'dpdk') await quit(backend);
    else {
      backend.p.kill('SIGINT');
      await backend.exited;
    }
  }
}

const results = {};
for (let r = 0; r < rounds; r++) {
  for (const modeName of Object.keys(MODES)) {
    for (const size of sizes) {
      for (const layout of layouts) {
        const key = `${modeName} ${size}B ${layout}`;
        results[key] ??= { dpdk: [], tsvmm: [] };
        // alternate which goes first, round by round
        const order = r % 2 ? ['tsvmm', 'dpdk'] : ['dpdk', 'tsvmm'];
        for (const side of order.filter((s) => !only || s === only)) {
          const mpps = await measure(side, modeName, size, layout);
          results[key][side].push(mpps);
          log(`round ${r + 1} ${key} ${side}: ${mpps.toFixed(3)} Mpps`);
        }
      }
    }
  }
}

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const report = { rounds, seconds, layouts, cpus: 'virtio-user on CPU 0, vhost side on CPU 1', results: {} };
log('');
log('| mode | DPDK vhost Mpps (median, min–max) | tsvmm Mpps (median, min–max) | tsvmm/DPDK |');
log('|---|---|---|---|');
for (const [key, v] of Object.entries(results)) {
  if (!v.dpdk.length || !v.tsvmm.length) {
    log(`| ${key} | ${v.dpdk.map((x) => x.toFixed(2)).join(', ')} | ${v.tsvmm.map((x) => x.toFixed(2)).join(', ')} | |`);
    continue;
  }
  const d = median(v.dpdk);
  const t = median(v.tsvmm);
  report.results[key] = { dpdk: { median: d, runs: v.dpdk }, tsvmm: { median: t, runs: v.tsvmm }, ratio: t / d };
  const spread = (a) => `${Math.min(...a).toFixed(2)}–${Math.max(...a).toFixed(2)}`;
  log(`| ${key} | ${d.toFixed(2)} (${spread(v.dpdk)}) | ${t.toFixed(2)} (${spread(v.tsvmm)}) | ${(t / d).toFixed(2)} |`);
}
if (json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
process.exit(0);
