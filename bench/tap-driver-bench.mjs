// The tap driver's transmit path, in process, with no VM: frames/s written into a tap through its
// io_uring queue (a batch per io_uring_enter, one linked WRITEV per frame) against its readv/writev
// queue (one writev per frame), same run, alternating, for 64-byte and 1514-byte frames in batches as
// the dataplane makes them (64). The tap lives in a namespace this script creates and deletes; nobody
// reads it (the kernel takes each frame in and drops it: the cost measured is the write path).
//
//   node bench/tap-driver-bench.mjs [--json] [--rounds N] [--ms MS]
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const json = args.includes('--json');
const opt = (name, dflt) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const rounds = opt('--rounds', 3);
const ms = opt('--ms', 2000);
const BATCH = 64;
const SIZES = [64, 1514];

if (!process.env.TAP_BENCH_NS) {
  // re-run inside a namespace of our own, where the tap is made
  const ns = `tsvmm-tapbench-${process.pid}`;
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    execFileSync('ip', ['netns', 'exec', ns, process.execPath, fileURLToPath(import.meta.url), ...args], { stdio: 'inherit', env: { ...process.env, TAP_BENCH_NS: ns } });
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
  }
  process.exit(0);
}

const { create, openQueue } = await import(join(ROOT, 'dist', 'drivers', 'tap', 'index.js'));
const { newPacketBatch } = await import(join(ROOT, 'dist', 'drivers', 'api.js'));
const log = (...m) => (json ? process.stderr : process.stdout).write(m.join(' ') + '\n');

execFileSync('ip', ['tuntap', 'add', 'tb0', 'mode', 'tap', 'multi_queue', 'vnet_hdr']);
execFileSync('sysctl', ['-qw', 'net.ipv6.conf.tb0.disable_ipv6=1']);
execFileSync('ip', ['link', 'set', 'tb0', 'up']);
const driver = create({ ifname: 'tb0' });
const init = driver.queueInit(0);
const queues = { io_uring: openQueue({ ...init, uring: true }), writev: openQueue({ ...init, uring: false }) };
if (queues.io_uring.constructor.name !== 'UringTapQueue') log('tap-driver-bench: io_uring is not available here; both columns are writev');

const mem = new SharedArrayBuffer(1 << 20);
function batch(size) {
  const b = newPacketBatch(BATCH, BATCH);
  const u8 = new Uint8Array(mem);
  for (let i = 0; i < BATCH; i++) {
    const at = i * 2048;
    u8.fill(0xff, at, at + 6);
    u8.set([2, 0, 0, 0, 0, 1, 0x88, 0xb5], at + 6);
    b.iov.set([0, at, size], 3 * i);
    b.iovStart[i] = i;
    b.len[i] = size;
  }
  b.iovStart[BATCH] = BATCH;
  b.count = BATCH;
  return b;
}

function run(q, b) {
  const end = performance.now() + ms;
  let frames = 0;
  while (performance.now() < end) {
    for (let k = 0; k < 16; k++) frames += q.transmit(b, mem);
  }
  return frames / (ms / 1000);
}

const results = {};
for (const size of SIZES) {
  const b = batch(size);
  const rates = { io_uring: [], writev: [] };
  for (let r = 0; r < rounds; r++) {
    // alternate which goes first
    const order = r % 2 ? ['writev', 'io_uring'] : ['io_uring', 'writev'];
    for (const mode of order) rates[mode].push(run(queues[mode], b));
  }
  const ratios = rates.io_uring.map((u, i) => u / rates.writev[i]);
  const median = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
  results[size] = { io_uring: rates.io_uring, writev: rates.writev, ratio: median(ratios), ratioMin: Math.min(...ratios), ratioMax: Math.max(...ratios) };
  const f = (a) => a.map((x) => (x / 1e6).toFixed(2)).join(' ');
  log(`${size} B: io_uring ${f(rates.io_uring)} M frames/s | writev ${f(rates.writev)} M frames/s | io_uring/writev median ${results[size].ratio.toFixed(2)} (${results[size].ratioMin.toFixed(2)}–${results[size].ratioMax.toFixed(2)})`);
}
for (const q of Object.values(queues)) q.close();
driver.close();
if (json) process.stdout.write(JSON.stringify({ batch: BATCH, ms, rounds, results }) + '\n');
