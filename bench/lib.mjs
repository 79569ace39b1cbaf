// What the guest-less benchmarks share: their arguments, child processes whose output they watch,
// testpmd driven through its interactive prompt, a network namespace of their own (created and
// deleted by the script; nothing leaves it), and the median with its spread.
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = join(ROOT, 'bin', 'tsvmm.js');
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The command line: flags, numbers and comma lists; `log` writes to stderr when stdout carries JSON. */
export function cliArgs(argv = process.argv.slice(2)) {
  const json = argv.includes('--json');
  const has = (name) => argv.includes(name);
  const str = (name, dflt) => (has(name) ? argv[argv.indexOf(name) + 1] : dflt);
  return {
    json,
    has,
    str,
    num: (name, dflt) => (has(name) ? Number(str(name)) : dflt),
    list: (name, dflt) => (has(name) ? str(name).split(',') : dflt),
    log: (...m) => (json ? process.stderr : process.stdout).write(m.join(' ') + '\n'),
  };
}

/** Exits with the reason when a tool is missing (scripts/setup-host.sh installs them). */
export function requireTools(who, tools) {
  for (const tool of tools) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`]);
    } catch {
      console.error(`${who}: ${tool} is missing (scripts/setup-host.sh installs it)`);
      process.exit(1);
    }
  }
}

/** A temporary directory and the processes started here, removed and killed when the script exits. */
const live = new Set();
let workDir;
export function scratchDir() {
  workDir ??= mkdtempSync(join(tmpdir(), 'tsvmm-bench-'));
  return workDir;
}
const cleanups = [];
/** `f` runs when the script exits, however it exits (last registered, first run). */
export function atExit(f) {
  cleanups.push(f);
}
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
  for (const f of cleanups.reverse()) {
    try {
      f();
    } catch {
      // the rest still runs
    }
  }
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

/** A process whose output we watch; `until(re)` waits for a match in output that arrived after `from`. */
export function start(cmd, argv) {
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

/** SIGINT, then SIGKILL if it has not ended in 10 s. */
export async function stop(proc, sig = 'SIGINT') {
  proc.p.kill(sig);
  const killer = setTimeout(() => proc.p.kill('SIGKILL'), 10_000);
  await proc.exited;
  clearTimeout(killer);
}

let runs = 0;
/**
 * testpmd, interactive (commands on stdin), main lcore on `mainCpu`, forwarding lcore on `fwdCpu`, one
 * port per vdev; `prefix` is a command to run it under (e.g. `ip netns exec NS`).
 */
export function testpmd(vdevs, mainCpu, fwdCpu, prefix = []) {
  const argv = [...prefix, 'stdbuf', '-oL', 'dpdk-testpmd', '--no-huge', '-m', '1024', '--no-pci', `--file-prefix=tsb${process.pid}-${++runs}`,
    `--lcores=0@${mainCpu},1@${fwdCpu}`, ...[vdevs].flat().map((v) => `--vdev=${v}`), '--', '-i', '--disable-link-check', '--total-num-mbufs=32768', '--txd=1024', '--rxd=1024'];
  return start(argv[0], argv.slice(1));
}

/** A fresh socket path in the scratch directory. */
export function socketPath(tag) {
  return join(scratchDir(), `${tag}-${++runs}.sock`);
}

/** testpmd stopped and quit (the virtio-user side before the vhost side). */
export async function quitTestpmd(t) {
  t.send('stop');
  t.send('quit');
  const killer = setTimeout(() => t.p.kill('SIGKILL'), 10_000);
  await t.exited;
  clearTimeout(killer);
}

/** Counters of port `port` as testpmd reports them now. */
export async function portCounters(t, port = 0) {
  const from = t.out.length;
  t.send(`show port stats ${port}`);
  const m = await t.until(/RX-packets:\s*(\d+)[\s\S]*?TX-packets:\s*(\d+)/, from);
  return { rx: Number(m[1]), tx: Number(m[2]), at: process.hrtime.bigint() };
}

/** A network namespace of this script's, deleted when it exits: taps and the processes using them live in it. */
export class NetNs {
  constructor(tag) {
    this.name = `tsvmm-${tag}-${process.pid}`;
    execFileSync('ip', ['netns', 'add', this.name]);
    atExit(() => execFileSync('ip', ['netns', 'del', this.name]));
    this.exec('ip', 'link', 'set', 'lo', 'up');
  }

  /** the prefix that runs a command in it */
  get prefix() {
    return ['ip', 'netns', 'exec', this.name];
  }

  exec(...cmd) {
    return execFileSync('ip', ['netns', 'exec', this.name, ...cmd], { encoding: 'utf8' });
  }

  /**
   * A multi-queue tap with a vnet header (the kind tsvmm's tap driver takes), up, without IPv6 chatter;
   * `txqueuelen`: the frames its queues hold for their reader (the kernel's default, 1000, if not given).
   */
  addTap(name, txqueuelen) {
    this.exec('ip', 'tuntap', 'add', name, 'mode', 'tap', 'multi_queue', 'vnet_hdr');
    this.exec('sysctl', '-qw', `net.ipv6.conf.${name}.disable_ipv6=1`);
    if (txqueuelen) this.exec('ip', 'link', 'set', name, 'txqueuelen', String(txqueuelen));
    this.exec('ip', 'link', 'set', name, 'up');
  }

  delTap(name) {
    this.exec('ip', 'link', 'del', name);
  }

  /** The kernel's counters of an interface (`ip -s`: rx/tx packets, bytes, dropped...). */
  linkStats(name) {
    return JSON.parse(this.exec('ip', '-s', '-j', 'link', 'show', 'dev', name))[0].stats64;
  }
}

export const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** "median (min–max)" with `digits` decimals */
export const spread = (a, digits = 2) => `${median(a).toFixed(digits)} (${Math.min(...a).toFixed(digits)}–${Math.max(...a).toFixed(digits)})`;

/** The order of the sides in round r: rotated round by round, so that each goes first in turn. */
export const alternate = (sides, r) => sides.map((_, i) => sides[(i + r) % sides.length]);

/** bench/NAME.c compiled (gcc -O2, `extra` flags) into bench/out/; returns the output's path. */
export function buildC(name, extra = [], out = name) {
  const dir = join(ROOT, 'bench', 'out');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, out);
  execFileSync('gcc', ['-O2', '-Wall', '-o', path, join(ROOT, 'bench', `${name}.c`), ...extra], { stdio: 'inherit' });
  return path;
}
