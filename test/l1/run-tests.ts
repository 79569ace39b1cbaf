// Runs test files inside an L1 (scripts/l1/boot.mjs) and collects what its reporter (test/l1/reporter.ts)
// sends back: per file, its tests by path with their outcome; and, when L1 ends early, which tests were
// running then.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
// @ts-expect-error: a plain ES module of the project's scripts, without types
import { runInL1 } from '../../scripts/l1/boot.mjs';
import type { L1Error, L1Event } from './protocol.js';

export interface L1Test {
  path: string[];
  state: string;
  ms?: number;
  errors: L1Error[];
}

export interface L1File {
  tests: Map<string, L1Test>;
  /** errors of the file itself or of a suite's hooks (path '' for the file) */
  errors: Array<{ path: string[]; errors: L1Error[] }>;
  /** tests that started and did not end */
  running: Set<string>;
  ended: boolean;
}

export interface L1Outcome {
  files: Map<string, L1File>;
  /** why L1 ended before every file did ('' if it did not) */
  cutShort: string;
  unhandled: L1Error[];
  seconds: number;
  /** the tests that failed in a first L1 that ran to its end, whose files then ran once more */
  firstFailures: string[];
}

const key = (path: string[]) => path.join('\u0000');
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** The whole console of the last run, for what the failure texts leave out. */
export const CONSOLE_LOG = join(ROOT, '.cache', 'l1', 'last-console.log');

/** Lines a kernel writes when it dies, and where its report begins. */
const KERNEL_TROUBLE = /\] (BUG:|Oops|Kernel panic|general protection|watchdog:)/;
/**
 * A CPU of L1 that has run one task without scheduling for this long does not recover (tsvmm's process
 * in KVM_RUN, in the emulated L1): waiting would hold the run until L1's time limit, so L1 is ended
 * then, as if its kernel had died.
 */
const LOCKUP_GIVE_UP_S = 90;
const SOFT_LOCKUP = /soft lockup - CPU#\d+ stuck for (\d+)s!/g;

/** The longest soft lockup `text` reports, in seconds (0 if none). */
export function longestSoftLockup(text: string): number {
  let most = 0;
  for (const m of text.matchAll(SOFT_LOCKUP)) most = Math.max(most, Number(m[1]));
  return most;
}

/** (`boot`: which L1 of this run it is, 1 for the first; TSVMM_L1_BOOT in the tests' environment) */
function jobScript(files: string[], boot: number): string {
  return [
    'set -u',
    `export CI=${process.env.CI ?? ''} TSVMM_L1_RESULTS=/dev/ttyS1 TSVMM_L1_BOOT=${boot}`,
    'stty -F /dev/ttyS1 raw -echo 2>/dev/null',
    `exec node node_modules/vitest/vitest.mjs run --reporter=default --reporter=./test/l1/reporter.ts ${files.join(' ')}`,
    '',
  ].join('\n');
}

const freshFile = (): L1File => ({ tests: new Map(), errors: [], running: new Set(), ended: false });
const failedIn = (f: L1File): boolean => f.errors.length > 0 || [...f.tests.values()].some((t) => t.state === 'failed');

/** L1s booted at most for one set of files: the first, and fresh ones for what a kernel death left. */
const MAX_L1_BOOTS = 3;

/**
 * Runs `files` in L1. Should L1 end before they do, on its own (its kernel dies, seen only as QEMU 7.2's
 * multi-threaded software emulation going wrong: "Oops: int3" at static-branch sites,
 * test/nested/pin-kvm-keys.mjs, "corrupted stack end detected inside scheduler" in KVM_RUN, soft lockups
 * of tsvmm's process in KVM_RUN, which end L1 (LOCKUP_GIVE_UP_S); or QEMU ends with no word from L1),
 * that is said loudly, with what L1 said, and the files that did not finish run again in a fresh L1, up
 * to MAX_L1_BOOTS L1s in all, with the files that failed in the L1 that died; a death of the last fails
 * them. L1's time limit is not such an end: a run that long is not retried.
 */
export async function runTestsInL1(files: string[], say: (line: string) => void): Promise<L1Outcome> {
  const t0 = Date.now();
  const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(0)} s`;
  const out: L1Outcome = { files: new Map(), cutShort: '', unhandled: [], seconds: 0, firstFailures: [] };
  for (const f of files) out.files.set(f, freshFile());
  const consoles: string[] = [];
  try {
    let ran = files;
    let pass = await runPass(ran, out, (l) => say(`in L1 [${elapsed()}]: ${l}`), consoles);
    for (let boot = 2; boot <= MAX_L1_BOOTS; boot++) {
      if (!pass.died) break;
      // (a file that failed in an L1 whose kernel then died is run again too: a kernel that dies of
      // corrupted memory may have handed corrupted memory to the guests it ran before it said so)
      const failed = ran.filter((f) => out.files.get(f)!.ended && failedIn(out.files.get(f)!));
      const left = ran.filter((f) => !out.files.get(f)!.ended || failed.includes(f));
      if (left.length === 0) break;
      say(`in L1 [${elapsed()}]: WARNING: ${pass.died} before ${left.length - failed.length} test file(s) finished${failed.length ? ` (and after ${failed.join(', ')} failed)` : ''}; running them again in a fresh L1 (L1 ${boot} of at most ${MAX_L1_BOOTS}). What it reported:\n${pass.report}`);
      for (const f of left) out.files.set(f, freshFile());
      out.cutShort = '';
      ran = left;
      pass = await runPass(ran, out, (l) => say(`in L1 [${elapsed()}] (L1 ${boot}): ${l}`), consoles);
    }
    await retryFailed(files, out, (l) => say(`in L1 [${elapsed()}]${l}`), consoles);
  } finally {
    mkdirSync(join(ROOT, '.cache', 'l1'), { recursive: true });
    writeFileSync(CONSOLE_LOG, consoles.join('\n======== the next L1 ========\n'));
  }
  out.seconds = (Date.now() - t0) / 1000;
  return out;
}

/** lines of a first-try failure's message the retry warning shows */
const DETAIL_LINES = 40;

/**
 * The files with a failed test, after an L1 that ran them to their end, run once more in a fresh L1,
 * said loudly with what failed; their result there stands. Guests in the emulated L1 fail now and then
 * whatever runs them (the test guest under QEMU hangs before its first output or ends early, as Linux
 * under tsvmm may before its console comes up). A failure that comes back fails; one that does not is
 * still listed (firstFailures).
 */
async function retryFailed(files: string[], out: L1Outcome, say: (line: string) => void, consoles: string[]): Promise<void> {
  if (out.cutShort) return;
  const failed = files.filter((f) => out.files.get(f)!.ended && failedIn(out.files.get(f)!));
  if (failed.length === 0) return;
  // (the warning shows each failure's message up to DETAIL_LINES lines: what the first try saw is gone
  // once the second passes; the closing list keeps one line each)
  const detail: string[] = [];
  const note = (what: string, message = '') => {
    out.firstFailures.push(`${what}: ${message.split('\n')[0]}`);
    detail.push(`  ${what}: ${message.split('\n').slice(0, DETAIL_LINES).join('\n    ')}`);
  };
  for (const f of failed) {
    const file = out.files.get(f)!;
    for (const t of file.tests.values()) if (t.state === 'failed') note(`${f} > ${t.path.join(' > ')}`, t.errors[0]?.message);
    for (const e of file.errors) note(`${f} > ${e.path.join(' > ') || 'the file'}`, e.errors[0]?.message);
    out.files.set(f, freshFile());
  }
  say(`: WARNING: ${failed.join(', ')} failed in L1; running ${failed.length === 1 ? 'it' : 'them'} once more in a fresh L1, whose result stands. What failed:\n${detail.join('\n')}`);
  await runPass(failed, out, (l) => say(` (second try): ${l}`), consoles);
}

/**
 * One L1 running `files`: their events go into `out`. `died` says how L1 ended before their end, when it
 * did so on its own: its kernel died or reported a soft lockup of LOCKUP_GIVE_UP_S (`report`: what it
 * said), or QEMU ended with no word from it (`report`: its last console lines); '' when the run ended,
 * L1 reached its time limit, or never started.
 */
async function runPass(files: string[], out: L1Outcome, say: (line: string) => void, consoles: string[]): Promise<{ died: string; report: string }> {
  const boot = consoles.length + 1;
  const t0 = Date.now();
  const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(0)} s`;
  let ended = false;
  const onResult = (line: string) => {
    let e: L1Event;
    try {
      e = JSON.parse(line) as L1Event;
    } catch {
      return; // (a line the kernel's console interleaved; the reporter writes whole lines)
    }
    if (e.t === 'end') {
      ended = true;
      out.unhandled.push(...e.errors);
      return;
    }
    const f = out.files.get(e.file);
    if (!f) return;
    if (e.t === 'start') f.running.add(key(e.path));
    else if (e.t === 'test') {
      f.running.delete(key(e.path));
      f.tests.set(key(e.path), { path: e.path, state: e.state, ms: e.ms, errors: e.errors });
      const mark = e.state === 'passed' ? '✓' : e.state === 'failed' ? '✗' : '-';
      say(`${mark} ${e.file} > ${e.path.join(' > ')}${e.ms !== undefined ? ` (${(e.ms / 1000).toFixed(1)} s)` : ''}`);
    } else if (e.t === 'suite') f.errors.push({ path: e.path, errors: e.errors });
    else if (e.t === 'module') {
      f.ended = true;
      if (e.errors.length) f.errors.push({ path: [], errors: e.errors });
    }
  };
  // (console lines come in pieces: the watch looks at the tail, which holds a whole report line)
  const stop = new AbortController();
  let tail = '';
  let lockedUp = 0;
  const onConsole = (text: string) => {
    tail = (tail + text).slice(-4096);
    const s = longestSoftLockup(tail);
    if (s >= LOCKUP_GIVE_UP_S && !lockedUp) {
      lockedUp = s;
      say(`L1 reports a soft lockup of ${s} s: ending it`);
      stop.abort();
    }
  };
  try {
    const r = await runInL1(jobScript(files, boot), { onStep: say, onResult, onConsole, signal: stop.signal, limitS: 3000 });
    consoles.push(r.console);
    if (ended) return { died: '', report: '' };
    const lines = (r.console as string).split('\n');
    const first = lines.findIndex((l) => KERNEL_TROUBLE.test(l));
    const kernelReport = first >= 0 ? lines.slice(first, first + 30).join('\n') : '';
    out.cutShort = `L1 ended before the test run did (job exit status ${r.status ?? 'none'}, QEMU ${r.qemu}, after ${elapsed()})` +
      (kernelReport ? `; L1's kernel reported:\n${kernelReport}` : '') +
      `\nlast console lines:\n${lines.slice(-30).join('\n')}`;
    if (r.timedOut) return { died: '', report: '' };
    if (lockedUp) return { died: `L1's kernel reported a CPU stuck for ${lockedUp} s (a soft lockup), and L1 was ended`, report: kernelReport };
    // (an L1 that resets, a triple fault of its own included, ends QEMU without a word on its console:
    // QEMU runs with -no-reboot)
    if (first >= 0) return { died: "L1's kernel died", report: kernelReport };
    return { died: `L1's QEMU ended early (${r.qemu}) with no kernel report`, report: lines.slice(-15).join('\n') };
  } catch (err) {
    out.cutShort = `L1 could not be started: ${(err as { stderr?: Buffer }).stderr?.toString().slice(-2000) ?? err}`;
    return { died: '', report: '' };
  }
}
