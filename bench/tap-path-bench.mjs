// The tap path, both directions, guest-less: tsvmm's vhost-user backend with its tap driver against
// DPDK testpmd forwarding between its net_vhost and net_tap ports, with testpmd's net_virtio_user PMD as
// the "guest" driver of both, alternating in one invocation. The tap (multi-queue, vnet_hdr: the kind
// tsvmm's tap driver takes; net_tap attaches to it as it is) lives in a network namespace this script
// creates and deletes. CPUs as in vhost-user-bench.mjs: virtio-user's forwarding lcore on CPU 0, the
// vhost side (DPDK's forwarding lcore, or every tsvmm thread) on CPU 1.
//
//   node bench/tap-path-bench.mjs [--json] [--rounds N] [--seconds S] [--sizes 64,1514]
//                                 [--directions guest→tap,tap→guest] [--only tsvmm|tsvmm-writev|dpdk]
//                                 [--gen-cpus 0] (taskset list for the generator)
//                                 [--txqueuelen N] (frames the tap holds for its reader; kernel default 1000)
//                                 [--queue-size N] (virtio-user's ring size; default 256)
//
// DPDK's net_tap receives only after a SIGIO (the kernel raises one per frame queued on the tap; see
// pmd_rx_burst's tap_trigger): where `perf` exists, the signals delivered to the DPDK side and its
// readv calls are counted over the tap→guest window (perf stat on the tracepoints) and reported beside
// its rate, which that signal rate bounds.
//
// Sides: `dpdk` (testpmd io-forwarding net_vhost ↔ net_tap: one read or write system call per frame),
// `tsvmm` (tap driver with io_uring: a batch per io_uring_enter), `tsvmm-writev` (uring=off: one readv
// or writev per frame). Both tsvmm sides busy-poll, as DPDK's lcore does.
//   guest→tap  virtio-user txonly → backend → tap. Counted at the tap: the kernel's rx_packets (a frame
//              a process writes into a tap is the interface's receive), rx_dropped beside it.
//   tap→guest  bench/tap-gen.c (32 frames per sendmmsg, qdisc bypassed, on CPU 0 with virtio-user)
//              transmits broadcast frames on the tap → backend reads them → virtio-user rxonly. Counted
//              at the receiving testpmd's port; what the tap dropped for want of a reader (tx_dropped)
//              is reported beside it. The generator alone (into the tap with a queue nobody reads) is
//              measured first, so that a rate near it is seen as the generator's limit.
//              The generator and virtio-user's rxonly lcore take turns on CPU 0, each for a scheduler
//              time slice: while one runs, the frames the other would make or take wait in the tap's
//              queue and the virtio ring, so this direction's rate depends on what those two hold
//              (--txqueuelen, --queue-size); BENCHMARKS.md shows how much.
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { CLI, cliArgs, requireTools, start, stop, testpmd, quitTestpmd, portCounters, socketPath, sleep, median, spread, alternate, NetNs, buildC } from './lib.mjs';

const { json, has, str, num, list, log } = cliArgs();
const rounds = num('--rounds', 3);
const seconds = num('--seconds', 4);
const sizes = list('--sizes', ['64', '1514']).map(Number);
const DIRECTIONS = ['guest→tap', 'tap→guest'];
const directions = list('--directions', DIRECTIONS);
if (directions.some((d) => !DIRECTIONS.includes(d))) throw new Error(`--directions takes ${DIRECTIONS.join(', ')}`);
const SIDES = ['dpdk', 'tsvmm', 'tsvmm-writev'];
const only = str('--only');
if (only && !SIDES.includes(only)) throw new Error(`--only takes one of ${SIDES.join(', ')}`);
const txqueuelen = num('--txqueuelen', 0);
const queueSize = num('--queue-size', 0);
const WARMUP_MS = 1000;
requireTools('tap-path-bench', ['dpdk-testpmd', 'taskset', 'stdbuf', 'gcc', 'ip']);

const gen = buildC('tap-gen');
const ns = new NetNs('tappath');
/** the tap, made afresh for each measurement (net_tap sets it down when it quits) */
const TAP = 'tp0';

/** The vhost side on CPU 1, inside the namespace, serving `sock` and using the tap. */
async function backend(side, sock) {
  if (side === 'dpdk') {
    const t = testpmd([`net_vhost0,iface=${sock},queues=1`, `net_tap0,iface=${TAP}`], 0, 1, ns.prefix);
    await t.until(/Port 1: [0-9A-F:]{17}/);
    t.send('set fwd io');
    t.send('start');
    return { pid: t.p.pid, quit: () => quitTestpmd(t) };
  }
  const uring = side === 'tsvmm' ? 'on' : 'off';
  const t = start('taskset', ['-c', '1', ...ns.prefix, process.execPath, CLI, 'vhost-user', '--socket', sock, '--net', `tap,ifname=${TAP},uring=${uring},busy-poll=1000000`]);
  for (let i = 0; i < 400 && !existsSync(sock) && t.p.exitCode === null; i++) await sleep(25);
  return {
    quit: async () => {
      await stop(t);
      // a row must measure the path it names
      if (uring === 'on' && /using readv\/writev/.test(t.out)) throw new Error(`tsvmm did not use io_uring:\n${t.out.slice(-800)}`);
    },
  };
}

/** Frames/s counted where the direction says, with what was lost on the way. */
async function measure(side, direction, size) {
  const sock = socketPath('tp');
  ns.addTap(TAP, txqueuelen);
  const be = await backend(side, sock);
  const virtio = testpmd(`net_virtio_user0,path=${sock},queues=1${queueSize ? `,queue_size=${queueSize}` : ''}`, 1, 0);
  let generator;
  try {
    await virtio.until(/Port 0: [0-9A-F:]{17}/);
    if (direction === 'guest→tap') {
      virtio.send('set fwd txonly');
      virtio.send(`set txpkts ${size}`);
    } else {
      virtio.send('set fwd rxonly');
    }
    virtio.send('start');
    if (direction === 'tap→guest') {
      generator = start('taskset', ['-c', str('--gen-cpus', '0'), ...ns.prefix, gen, TAP, String(size), String((WARMUP_MS + 500) / 1000 + seconds)]);
    }
    await sleep(WARMUP_MS); // connection, JIT, rings filled
    const s0 = ns.linkStats(TAP);
    const c0 = await portCounters(virtio);
    const traced = direction === 'tap→guest' && be.pid && HAVE_PERF ? traceSignals(be.pid, seconds) : undefined;
    await sleep(seconds * 1000);
    const c1 = await portCounters(virtio);
    const signals = traced && (await traced);
    const s1 = ns.linkStats(TAP);
    const dt = Number(c1.at - c0.at) / 1e9;
    if (direction === 'guest→tap') {
      return { rate: (s1.rx.packets - s0.rx.packets) / dt, dropped: (s1.rx.dropped - s0.rx.dropped) / dt, offered: (c1.tx - c0.tx) / dt };
    }
    return { rate: (c1.rx - c0.rx) / dt, dropped: (s1.tx.dropped - s0.tx.dropped) / dt, offered: (s1.tx.packets + s1.tx.dropped - s0.tx.packets - s0.tx.dropped) / dt, ...signals };
  } finally {
    if (generator) await generator.exited;
    await quitTestpmd(virtio);
    await be.quit();
    ns.delTap(TAP);
  }
}

const HAVE_PERF = (() => {
  try {
    execFileSync('sh', ['-c', 'command -v perf'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/** Signals delivered to `pid` and its readv calls, per second, over the next `secs` (perf stat). */
async function traceSignals(pid, secs) {
  const t = start('perf', ['stat', '-x,', '-e', 'signal:signal_deliver,syscalls:sys_enter_readv', '-p', String(pid), '--', 'sleep', String(secs)]);
  await t.exited;
  const count = (ev) => Number(new RegExp(`^(\\d+),[^\\n]*${ev}`, 'm').exec(t.out)?.[1] ?? NaN);
  const out = { signalsPerSec: count('signal:signal_deliver') / secs, readvPerSec: count('syscalls:sys_enter_readv') / secs };
  return Number.isNaN(out.signalsPerSec) ? {} : out;
}

/** The generator alone: into a tap of its own, with a queue attached that nobody reads. */
async function generatorAlone(size) {
  ns.addTap('tg0');
  try {
    const g = start('taskset', ['-c', '0', ...ns.prefix, gen, 'tg0', String(size), String(Math.min(seconds, 2)), '--hold-queue']);
    await g.exited;
    const o = JSON.parse(g.out.trim().split('\n').pop());
    return o.sent / o.seconds;
  } finally {
    ns.delTap('tg0');
  }
}

const mfps = (x) => (x / 1e6).toFixed(3);
const generator = {};
if (directions.includes('tap→guest')) {
  for (const size of sizes) {
    generator[size] = await generatorAlone(size);
    log(`generator alone ${size} B: ${mfps(generator[size])} M frames/s`);
  }
}
const sides = SIDES.filter((s) => !only || s === only);
const results = {};
for (let r = 0; r < rounds; r++) {
  for (const direction of directions) {
    for (const size of sizes) {
      const key = `${direction} ${size}B`;
      results[key] ??= Object.fromEntries(SIDES.map((s) => [s, []]));
      for (const side of alternate(sides, r)) {
        const m = await measure(side, direction, size);
        results[key][side].push(m);
        const sig = m.signalsPerSec === undefined ? '' : `; ${mfps(m.signalsPerSec)} M signals/s and ${mfps(m.readvPerSec)} M readv/s delivered to testpmd`;
        log(`round ${r + 1} ${key} ${side}: ${mfps(m.rate)} M frames/s (offered ${mfps(m.offered)}, dropped ${mfps(m.dropped)}${sig})`);
        if (direction === 'tap→guest' && m.rate > 0.8 * generator[size]) log(`  (within 20 % of the generator alone, ${mfps(generator[size])}: the generator may be the limit)`);
      }
    }
  }
}

const report = { rounds, seconds, txqueuelen: txqueuelen || 1000, queueSize: queueSize || 256, cpus: 'virtio-user (and the generator) on CPU 0, vhost side on CPU 1', generatorAlone: generator, results: {} };
const ratio = (a, b) => (a.length && b.length ? median(a) / median(b) : undefined);
const fmt = (x) => (x === undefined ? '' : x.toFixed(2));
log('');
log('| path | DPDK M frames/s | tsvmm io_uring | tsvmm writev | io_uring/DPDK | writev/DPDK | io_uring/writev | dropped/s DPDK / io_uring / writev |');
log('|---|---|---|---|---|---|---|---|');
for (const [key, v] of Object.entries(results)) {
  const rates = Object.fromEntries(SIDES.map((s) => [s, v[s].map((m) => m.rate / 1e6)]));
  const row = { ratio: ratio(rates.tsvmm, rates.dpdk), writevRatio: ratio(rates['tsvmm-writev'], rates.dpdk), uringGain: ratio(rates.tsvmm, rates['tsvmm-writev']) };
  for (const s of SIDES) row[s] = { median: rates[s].length ? median(rates[s]) : undefined, runs: v[s] };
  report.results[key] = row;
  const cell = (s) => (rates[s].length ? spread(rates[s], 3) : '');
  const drops = SIDES.map((s) => (v[s].length ? (median(v[s].map((m) => m.dropped)) / 1e6).toFixed(3) + ' M' : '-')).join(' / ');
  log(`| ${key} | ${cell('dpdk')} | ${cell('tsvmm')} | ${cell('tsvmm-writev')} | ${fmt(row.ratio)} | ${fmt(row.writevRatio)} | ${fmt(row.uringGain)} | ${drops} |`);
}
if (json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
process.exit(0);
