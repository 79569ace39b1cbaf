// A network namespace per test file, created and deleted by the test: taps and packet tools live in
// it, and nothing is ever sent outside it.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { CLI, ROOT } from './env.js';
import { l1TripleReport } from './l1-trace.js';

export const PKT = join(ROOT, 'test', 'helpers', 'pkt.py');
/** frames a test tap queues toward the VMM (NetNs.addTap) */
const TAP_QUEUE = 10_000;

export class NetNs {
  readonly name: string;
  constructor(tag: string) {
    this.name = `tsvmm-${tag}-${process.pid}`;
    this.ip('netns', 'add', this.name);
    this.exec('ip', 'link', 'set', 'lo', 'up');
  }

  private ip(...args: string[]): string {
    return execFileSync('ip', args, { encoding: 'utf8' });
  }

  exec(...cmd: string[]): string {
    return execFileSync('ip', ['netns', 'exec', this.name, ...cmd], { encoding: 'utf8' });
  }

  /**
   * A multi-queue tap with a vnet header, up, without IPv6 chatter. Its queue toward the VMM holds
   * TAP_QUEUE frames: a test's burst from the host (thousands of frames, sent as fast as the host
   * can) waits there for a VMM that reads slower than that (in the emulated L1, always) rather than
   * being dropped by the tap, which would fail a test that counts every frame.
   */
  addTap(name: string): void {
    this.exec('ip', 'tuntap', 'add', name, 'mode', 'tap', 'multi_queue', 'vnet_hdr');
    this.exec('sysctl', '-qw', `net.ipv6.conf.${name}.disable_ipv6=1`);
    this.exec('ip', 'link', 'set', name, 'txqueuelen', String(TAP_QUEUE), 'up');
  }

  spawn(cmd: string[]): ChildProcess {
    return spawn('ip', ['netns', 'exec', this.name, ...cmd], { stdio: ['pipe', 'pipe', 'pipe'] });
  }

  delete(): void {
    try {
      this.ip('netns', 'del', this.name);
    } catch {
      // already gone
    }
  }
}

export interface Running {
  proc: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** resolves when `text` has appeared on stdout */
  waitFor(text: string, timeoutMs?: number): Promise<void>;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

function track(proc: ChildProcess, elf?: string): Running {
  let out = '';
  let err = '';
  const waiters: Array<{ text: string; resolve: () => void }> = [];
  proc.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    for (const w of waiters.splice(0)) (out.includes(w.text) ? w.resolve : () => waiters.push(w))();
  });
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => proc.on('close', (code) => {
    // (a triple fault inside the emulated L1: where the guest was, from KVM's trace there)
    if (err.includes('triple fault')) err += l1TripleReport(proc.pid, elf);
    resolve({ code, stdout: out, stderr: err });
  }));
  return {
    proc,
    stdout: () => out,
    stderr: () => err,
    waitFor(text, timeoutMs = 30_000) {
      if (out.includes(text)) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`timed out waiting for "${text}"; stdout: ${out.slice(-500)} stderr: ${err.slice(-500)}`)), timeoutMs);
        waiters.push({ text, resolve: () => (clearTimeout(t), resolve()) });
        done.then(() => reject(new Error(`process ended before "${text}"; stdout: ${out.slice(-800)} stderr: ${err.slice(-800)}`)));
      });
    },
    done,
  };
}

/** tsvmm run inside the namespace. */
export function runVm(ns: NetNs, args: string[]): Running {
  const kernel = args[args.indexOf('--kernel') + 1];
  return track(ns.spawn([process.execPath, CLI, 'run', ...args]), args.includes('--kernel') ? kernel : undefined);
}

/** Any command inside the namespace. */
export function runInNs(ns: NetNs, cmd: string[]): Running {
  return track(ns.spawn(cmd));
}

/** The packet tool inside the namespace. */
export function pkt(ns: NetNs, args: string[]): Running {
  return track(ns.spawn(['python3', PKT, ...args]));
}

/**
 * What a `pkt capture` saw, once its sender is done: the capture reads what is queued and ends after a
 * second without frames, so that its TIMEOUT_S is only a bound (a slow host, the emulated L1, may take
 * longer than it to send everything).
 */
export async function captured(cap: Running): Promise<Record<string, unknown>> {
  cap.proc.stdin!.end();
  return lastJson((await cap.done).stdout);
}

/** Last JSON object printed on a line. */
export function lastJson(text: string): Record<string, unknown> {
  const line = text.trim().split('\n').reverse().find((l) => l.startsWith('{'));
  if (!line) throw new Error(`no JSON in: ${text.slice(-300)}`);
  return JSON.parse(line) as Record<string, unknown>;
}

export function stats(stderr: string): { net: Array<{ mac: string; threads: number; pairs: Array<{ rx: Record<string, number>; tx: Record<string, number> }> }> } {
  const m = /^TSVMM-STATS (\{.*\})$/m.exec(stderr);
  if (!m) throw new Error(`no TSVMM-STATS in: ${stderr.slice(-300)}`);
  return JSON.parse(m[1]);
}

/** The test pattern frame (the guest's fill_frame, pkt.py's frame). */
export function patternFrame(seq: number, size: number, src: string, dst: string): Buffer {
  const f = Buffer.alloc(size);
  Buffer.from(dst.replace(/:/g, ''), 'hex').copy(f, 0);
  Buffer.from(src.replace(/:/g, ''), 'hex').copy(f, 6);
  f.writeUInt16BE(0x88b5, 12);
  f.writeUInt32LE(0x53565354, 14);
  f.writeUInt32LE(seq, 18);
  f.writeUInt32LE(size, 22);
  for (let i = 26; i < size; i++) f[i] = (seq + i) & 0xff;
  return f;
}
