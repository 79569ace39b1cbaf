// Runs a job (a bash script, from the checkout) inside an L1 with a real /dev/kvm, on a host without one.
//
// L1 is Debian's 6.12 cloud kernel under QEMU software emulation (TCG) with emulated AMD SVM, so that
// kvm_amd gives it a working /dev/kvm. It sees two disks (scripts/l1/build-images.sh): this host's
// /usr and /etc as its root, and this checkout at its own path; both are QEMU snapshots, so nothing L1
// writes reaches the host. The job's output comes back on L1's console; a second serial port carries
// a results channel (the L1 test reporter's JSON lines). One L1 runs at a time on a host (a lock shared
// with the nested harness): two would share its two CPUs and slow each other past their time limits.
import { spawn, execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync, fstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CACHE = join(ROOT, '.cache');
/**
 * The lock every L1 on this host is started under (also test/nested.test.ts's), in the host's temporary
 * directory rather than the checkout's cache: every checkout and worktree on the host shares the CPUs.
 */
export const L1_LOCK = join(tmpdir(), 'tsvmm-l1-qemu.lock');

/** `[qemu args]` run as `flock L1_LOCK qemu ...`; `started` resolves once the lock is held. */
export function spawnQemuLocked(args, opts = {}) {
  execFileSync('mkdir', ['-p', CACHE]);
  const proc = spawn('sh', ['-c', `exec 9>"$0"; flock 9; echo L1-LOCK-HELD >&2; exec qemu-system-x86_64 "$@"`, L1_LOCK, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...opts,
  });
  const started = new Promise((resolve) => {
    const look = (d) => {
      if (d.toString().includes('L1-LOCK-HELD')) {
        proc.stderr.off('data', look);
        resolve();
      }
    };
    proc.stderr.on('data', look);
    proc.on('close', resolve);
  });
  return { proc, started };
}

/**
 * Boot L1 and run `job` (bash script text) in the checkout there. Calls onConsole(text) with L1's
 * console as it comes and onResult(line) with each line of the results channel; resolves with the
 * whole console, the job's exit status (undefined if L1 ended without reporting one), the seconds
 * L1 ran, how QEMU ended ("exit status N", "killed by SIGNAL") and whether limitS ended it. limitS
 * bounds L1's run (not the wait for the lock); `signal` (an AbortSignal) ends L1 at once.
 */
export async function runInL1(job, { onConsole = () => {}, onResult = () => {}, onStep = () => {}, limitS = 3600, memMiB = 4096, signal } = {}) {
  const work = mkdtempSync(join(tmpdir(), 'tsvmm-l1-'));
  try {
    const jobFile = join(work, 'job.sh');
    writeFileSync(jobFile, job);
    onStep('building the L1 images (kernel, system and project disks; cached)');
    execFileSync('bash', [join(ROOT, 'scripts', 'l1', 'build-images.sh'), jobFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    const results = join(work, 'results');
    writeFileSync(results, '');
    const img = (name) => join(CACHE, 'l1', name);
    // (multi-threaded TCG: single-threaded, an L2 with two vCPUs boots too slowly to test; TSVMM_L1_TCG=single
    // is there to tell an emulation fault from a tsvmm one)
    const { proc, started } = spawnQemuLocked([
      '-accel', `tcg,thread=${process.env.TSVMM_L1_TCG ?? 'multi'}`, '-machine', 'q35', '-cpu', 'max', '-smp', '2', '-m', String(memMiB),
      '-nographic', '-no-reboot', '-monitor', 'none', '-nic', 'none',
      '-serial', 'stdio', '-serial', `file:${results}`,
      '-kernel', join(CACHE, 'linux', 'vmlinuz'), '-initrd', img('init.cpio.gz'),
      '-drive', `file=${img('system.img')},if=virtio,format=raw,snapshot=on`,
      '-drive', `file=${img('project.img')},if=virtio,format=raw,snapshot=on`,
      // (maxcpus=1: the second CPU comes online once L1 has pinned KVM's static keys, see init.sh;
      // loglevel=5 rather than quiet: a soft lockup's backtrace is printed at the default level, 4;
      // tsc=reliable: while the host pauses QEMU, the clocksource watchdog sees the emulated TSC skew
      // from the HPET and moves L1's clock onto the HPET, an emulated device that every clock read,
      // node's too, must then go through)
      '-append', `console=ttyS0 loglevel=5 tsc=reliable panic=-1 maxcpus=1 tsvmm.project=${ROOT}`,
    ]);
    onStep('waiting for any other L1 on this host to end');
    await started;
    onStep('booting L1 (QEMU software emulation, emulated AMD SVM)');
    const t0 = Date.now();
    let out = '';
    proc.stdout.on('data', (d) => {
      const s = d.toString('latin1');
      out += s;
      onConsole(s);
    });
    proc.stderr.on('data', (d) => {
      const s = d.toString('latin1');
      out += s;
      onConsole(s);
    });
    const tail = followLines(results, onResult);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      proc.kill('SIGKILL');
    }, limitS * 1000);
    const kill = () => proc.kill('SIGKILL');
    if (signal?.aborted) kill();
    signal?.addEventListener('abort', kill);
    const qemu = await new Promise((r) => proc.on('close', (code, signal) => r(signal ? `killed by ${signal}` : `exit status ${code}`)));
    clearTimeout(timer);
    signal?.removeEventListener('abort', kill);
    tail.stop();
    const m = /L1-JOB-EXIT (\d+)/.exec(out);
    return { console: out, status: m ? Number(m[1]) : undefined, seconds: (Date.now() - t0) / 1000, qemu, timedOut };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Calls onLine with each complete line appended to `file`, until stop() (which reads what is left). */
function followLines(file, onLine) {
  const fd = openSync(file, 'r');
  let pos = 0;
  let partial = '';
  const buf = Buffer.alloc(1 << 16);
  const read = () => {
    while (fstatSync(fd).size > pos) {
      const n = readSync(fd, buf, 0, buf.length, pos);
      if (n <= 0) break;
      pos += n;
      partial += buf.toString('utf8', 0, n);
      const lines = partial.split(/\r?\n/);
      partial = lines.pop();
      for (const l of lines) if (l.trim()) onLine(l.trim());
    }
  };
  const timer = setInterval(read, 250);
  return {
    stop() {
      clearInterval(timer);
      read();
      if (partial.trim()) onLine(partial.trim());
      closeSync(fd);
    },
  };
}
