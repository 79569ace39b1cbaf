// `tsvmm vhost-user --net null` as a child process, for tests of what a frontend can do to it: the
// lines it writes on stderr, whether it is still running, and how many descriptors it holds.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI } from './env.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** the server's own lines when a connection starts and ends (not a report of anything wrong) */
const ROUTINE = /frontend connected|frontend gone|^tsvmm: net: |vhost-user: (packed|split) rings$/;

export interface CliOptions {
  /** run it inside this network namespace (where its tap is) */
  netns?: string;
  /** more arguments (e.g. --stats) */
  args?: string[];
  /** more environment variables */
  env?: Record<string, string>;
}

export class CliBackend {
  readonly sock: string;
  private readonly dir: string;
  private readonly proc: ChildProcess;
  /** every stderr line so far */
  readonly lines: string[] = [];
  private partial = '';
  exitCode: number | null | undefined;
  readonly exited: Promise<void>;

  private constructor(net: string, o: CliOptions) {
    this.dir = mkdtempSync(join(tmpdir(), 'tsvmm-vuh-'));
    this.sock = join(this.dir, 'vu.sock');
    const cmd = [process.execPath, CLI, 'vhost-user', '--socket', this.sock, '--net', net, ...(o.args ?? [])];
    // (ip netns exec execs the command: the child's pid is the backend's)
    if (o.netns) cmd.unshift('ip', 'netns', 'exec', o.netns);
    this.proc = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...o.env } });
    this.proc.stderr!.setEncoding('utf8');
    this.proc.stderr!.on('data', (s: string) => {
      const parts = (this.partial + s).split('\n');
      this.partial = parts.pop()!;
      this.lines.push(...parts);
    });
    this.exited = new Promise((r) => this.proc.once('exit', (code) => ((this.exitCode = code), r())));
  }

  /** Start one (`net`: the --net argument) and wait until its socket listens. */
  static async start(net = 'null', o: CliOptions = {}): Promise<CliBackend> {
    const b = new CliBackend(net, o);
    for (let i = 0; i < 500 && !b.listening() && b.exitCode === undefined; i++) await sleep(10);
    if (!b.listening()) throw new Error(`backend did not start: ${b.lines.join(' | ')}`);
    return b;
  }

  /** The socket exists from bind() on, but takes connections only from listen() on (/proc/net/unix:
   * flag __SO_ACCEPTCON, 0x10000) */
  private listening(): boolean {
    if (!existsSync(this.sock)) return false;
    // (the process's own view: /proc/net/unix lists the sockets of the reader's network namespace)
    return readFileSync(`/proc/${this.pid}/net/unix`, 'utf8')
      .split('\n')
      .some((l) => l.endsWith(` ${this.sock}`) && (parseInt(l.split(/\s+/)[3], 16) & 0x10000) !== 0);
  }

  get pid(): number {
    return this.proc.pid!;
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** descriptors the process holds now */
  fdCount(): number {
    return readdirSync(`/proc/${this.pid}/fd`).length;
  }

  /** lines that report something (the routine connect and disconnect lines left out) from line `from` on */
  reports(from = 0): string[] {
    return this.lines.slice(from).filter((l) => !ROUTINE.test(l));
  }

  /** Wait until `n` connections have ended (the server says so when it is ready for the next one). */
  async connectionsEnded(n: number): Promise<void> {
    for (let i = 0; i < 1000 && this.running; i++) {
      if (this.lines.filter((l) => l.includes('frontend gone')).length >= n) return;
      await sleep(10);
    }
    throw new Error(`connection ${n} never ended; stderr: ${this.lines.join(' | ')}`);
  }

  /** Wait for a stderr line matching `re`. */
  async line(re: RegExp): Promise<string> {
    for (let i = 0; i < 1000 && this.running; i++) {
      const l = this.lines.find((x) => re.test(x));
      if (l) return l;
      await sleep(10);
    }
    throw new Error(`no line matching ${re}; stderr: ${this.lines.join(' | ')}`);
  }

  /** SIGTERM (SIGKILL if that does not end it: a test must not hang on a wedged backend) */
  async stop(): Promise<number | null | undefined> {
    if (this.running) this.proc.kill('SIGTERM');
    const killer = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(killer);
    rmSync(this.dir, { recursive: true, force: true });
    return this.exitCode;
  }
}
