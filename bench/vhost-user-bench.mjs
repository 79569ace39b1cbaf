// vhost-user loopback, the DPDK community's guest-less standard: testpmd with the net_virtio_user PMD
// (the "guest" driver) against (a) testpmd with DPDK's net_vhost PMD and (b) tsvmm's vhost-user backend
// with the null driver, alternating in one invocation. Each side has its own CPU: the virtio-user
// forwarding lcore on CPU 0; the vhost side (DPDK's forwarding lcore, or every tsvmm thread) on CPU 1;
// testpmd's main lcores, which only wait for commands, on the other CPU.
//
//   node bench/vhost-user-bench.mjs [--json] [--rounds N] [--quick] [--seconds S] [--only tsvmm|dpdk]
//                                   [--layouts split,packed] [--sizes 64,1518] [--modes virtio→vhost,vhost→virtio,io loop]
//                                   [--cpu-prof DIR] (tsvmm under node --cpu-prof: each row's top functions, by thread)
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
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, CLI, cliArgs, requireTools, start, stop, testpmd, quitTestpmd, portCounters, socketPath, sleep, median, spread, alternate } from './lib.mjs';

const { json, has, str, num, list, log } = cliArgs();
const quick = has('--quick');
const rounds = num('--rounds', quick ? 1 : 3);
const seconds = num('--seconds', quick ? 2 : 4);
const only = str('--only');
if (only && only !== 'tsvmm' && only !== 'dpdk') throw new Error('--only takes tsvmm or dpdk');
const layouts = list('--layouts', ['split', 'packed']);
if (layouts.some((l) => l !== 'split' && l !== 'packed')) throw new Error('--layouts takes split and/or packed');
const sizes = list('--sizes', ['64', '1518']).map(Number);
const modes = list('--modes', ['virtio→vhost', 'vhost→virtio', 'io loop']);
/** --cpu-prof DIR: tsvmm runs under node --cpu-prof; each row's profiles go to DIR/<row>, summarised after it */
const profDir = str('--cpu-prof');
requireTools('vhost-user-bench', ['dpdk-testpmd', 'taskset', 'stdbuf']);

const MODES = {
  'virtio→vhost': { virtio: 'txonly', dpdk: 'rxonly', tsvmm: (size) => `null,rx=0,size=${size}`, count: 'tx' },
  'vhost→virtio': { virtio: 'rxonly', dpdk: 'txonly', tsvmm: (size) => `null,size=${size}`, count: 'rx' },
  'io loop': { virtio: 'io', dpdk: 'io', tsvmm: () => 'null,loop=1', count: 'rx', txFirst: true },
};

/** One measurement: Mpps at the virtio-user port. */
async function measure(side, modeName, size, layout) {
  const mode = MODES[modeName];
  const sock = socketPath('vu');
  let backend;
  if (side === 'dpdk') {
    backend = testpmd([`net_vhost0,iface=${sock},queues=1`], 0, 1);
    await backend.until(/Port 0: [0-9A-F:]{17}/);
    backend.send(`set fwd ${mode.dpdk}`);
    if (mode.dpdk === 'txonly') backend.send(`set txpkts ${size}`);
    backend.send('start');
  } else {
    // every tsvmm thread on CPU 1; the dataplane busy-polls as DPDK's lcore does
    const prof = profDir ? ['--cpu-prof', `--cpu-prof-dir=${rowDir(modeName, size, layout)}`] : [];
    backend = start('taskset', ['-c', '1', process.execPath, ...prof, CLI, 'vhost-user', '--socket', sock, '--net', `${mode.tsvmm(size)},busy-poll=1000000`]);
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
    await quitTestpmd(virtio);
    if (side === 'dpdk') await quitTestpmd(backend);
    else await stop(backend);
  }
}

/** where a row's profiles go */
const profilesOf = (modeName, size, layout) => join(profDir, `${modeName.replace(/[^a-z]+/g, '-')}-${size}-${layout}`);

/** a row's profile directory, emptied */
function rowDir(modeName, size, layout) {
  const dir = profilesOf(modeName, size, layout);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return dir;
}

const results = {};
for (let r = 0; r < rounds; r++) {
  for (const modeName of modes.filter((m) => MODES[m])) {
    for (const size of sizes) {
      for (const layout of layouts) {
        const key = `${modeName} ${size}B ${layout}`;
        results[key] ??= { dpdk: [], tsvmm: [] };
        // alternate which goes first, round by round
        const order = alternate(['dpdk', 'tsvmm'], r);
        for (const side of order.filter((s) => !only || s === only)) {
          const mpps = await measure(side, modeName, size, layout);
          results[key][side].push(mpps);
          log(`round ${r + 1} ${key} ${side}: ${mpps.toFixed(3)} Mpps`);
          if (profDir && side === 'tsvmm') {
            // (a profile per thread: the main thread's time is mostly its wait for vhost-user messages,
            // the dataplane thread's is the engine's)
            const dir = profilesOf(modeName, size, layout);
            for (const f of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))) {
              log(`${f}:\n${execFileSync(process.execPath, [join(ROOT, 'bench', 'profile-summary.mjs'), join(dir, f), '--top', '15'], { encoding: 'utf8' })}`);
            }
          }
        }
      }
    }
  }
}

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
  log(`| ${key} | ${spread(v.dpdk)} | ${spread(v.tsvmm)} | ${(t / d).toFixed(2)} |`);
}
if (json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
process.exit(0);
