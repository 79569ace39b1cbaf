// The fuzz runner: the targets take turns for a time budget (each turn a fast-check run with its own
// seed, shares by weight), a failing case is shrunk by fast-check and written as a replay file (target,
// seed, path: fast-check regenerates exactly that case), and the targets' descriptors and memory are
// compared across turns (growth over sessions is a finding too).
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { openFds, type FuzzTarget } from './target.js';

export interface Finding {
  target: string;
  seed: number;
  /** fast-check's path to the shrunk case (absent for a leak across turns) */
  path?: string;
  error: string;
  counterexample?: string;
  file?: string;
}

export interface RunOptions {
  seconds: number;
  seed: number;
  outDir: string;
  log: (line: string) => void;
  /** a round's length (every target gets its share of it); default 20 s, less for short runs */
  roundMs?: number;
}

/** descriptors or memory (heap + external, after a collection) a target may gain over a run */
const FD_SLACK = 0;
const MEMORY_SLACK = 256 * 1024 * 1024;

const gc = (globalThis as { gc?: () => void }).gc;

function memoryNow(): number {
  gc?.();
  const m = process.memoryUsage();
  return m.heapUsed + m.external + m.arrayBuffers;
}

export async function fuzz(targets: FuzzTarget[], o: RunOptions): Promise<Finding[]> {
  const findings: Finding[] = [];
  const end = Date.now() + o.seconds * 1000;
  const total = targets.reduce((s, t) => s + t.weight, 0);
  const roundMs = o.roundMs ?? Math.min(20_000, Math.max(200, (o.seconds * 1000) / 4));
  const baseline = new Map<string, { fds: number; memory: number }>();
  const failed = new Set<string>();
  const started = Date.now();
  let progressAt = started;
  for (let round = 0; Date.now() < end; round++) {
    // a line a minute, so a long run shows where it stands
    if (Date.now() - progressAt >= 60_000) {
      progressAt = Date.now();
      o.log(`fuzz: ${((progressAt - started) / 1000).toFixed(0)} s: ${targets.map((t) => `${t.name} ${Object.values(t.counts)[0]}`).join(', ')}`);
    }
    for (const [i, t] of targets.entries()) {
      const left = end - Date.now();
      if (left <= 0) break;
      if (failed.has(t.name)) continue;
      const seed = (o.seed + round * 977 + i * 131) | 0;
      const ms = Math.max(20, Math.min(left, (roundMs * t.weight) / total));
      const r = await fc.check(t.property(), { seed, numRuns: 2 ** 31 - 1, interruptAfterTimeLimit: ms, markInterruptAsFailure: false });
      if (r.failed) {
        failed.add(t.name);
        const f: Finding = { target: t.name, seed, path: r.counterexamplePath ?? undefined, error: errorLine(r.errorInstance), counterexample: fc.stringify(r.counterexample) };
        f.file = save(o.outDir, f);
        findings.push(f);
        o.log(`FINDING in ${t.name}: ${f.error}\n  case: ${(f.counterexample ?? '').slice(0, 2000)}\n  replay: npm run fuzz -- --replay ${f.file}`);
        continue;
      }
      const now = await settled(baseline.get(t.name)?.fds);
      const first = baseline.get(t.name);
      if (!first) baseline.set(t.name, now);
      else if (now.fds > first.fds + FD_SLACK || now.memory > first.memory + MEMORY_SLACK) {
        failed.add(t.name);
        const f: Finding = { target: t.name, seed, error: `growth across sessions: ${first.fds} → ${now.fds} descriptors, ${mib(first.memory)} → ${mib(now.memory)} MiB` };
        f.file = save(o.outDir, f);
        findings.push(f);
        o.log(`FINDING in ${t.name}: ${f.error} (the turn with seed ${seed})`);
      }
    }
  }
  return findings;
}

/**
 * Descriptors and memory now; descriptors looked at again for up to 10 s while more than `fds`: a
 * stopped worker thread's own descriptors (its event loop's) close after its exit event, later still
 * on a loaded host.
 */
async function settled(fds: number | undefined): Promise<{ fds: number; memory: number }> {
  let n = openFds();
  for (let i = 0; i < 200 && fds !== undefined && n > fds; i++) {
    await new Promise((r) => setTimeout(r, 50));
    n = openFds();
  }
  return { fds: n, memory: memoryNow() };
}

/** Run the case a replay file names (and shrink it further if it still fails). */
export async function replay(targets: FuzzTarget[], file: string, log: (line: string) => void): Promise<boolean> {
  const f = JSON.parse(readFileSync(file, 'utf8')) as Finding;
  const t = targets.find((x) => x.name === f.target);
  if (!t) throw new Error(`${file}: no target named ${f.target}`);
  if (!f.path) {
    log(`${file} records growth across sessions, not a case: run the target alone (--target ${f.target} --seed ${f.seed})`);
    return false;
  }
  const r = await fc.check(t.property(), { seed: f.seed, path: f.path, endOnFailure: false, numRuns: 1 });
  if (r.failed) {
    log(`${f.target}: still fails: ${errorLine(r.errorInstance)}\n  case: ${fc.stringify(r.counterexample)}`);
    return false;
  }
  log(`${f.target}: the recorded case (seed ${f.seed}, path ${f.path}) passes now`);
  return true;
}

function save(dir: string, f: Finding): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${f.target}-${f.seed >>> 0}.json`);
  writeFileSync(file, JSON.stringify(f, null, 2) + '\n');
  return file;
}

function errorLine(e: unknown): string {
  if (e instanceof Error) return `${e.message}${e.stack ? `\n    ${e.stack.split('\n').slice(1, 4).map((s) => s.trim()).join('\n    ')}` : ''}`;
  return String(e);
}

function mib(n: number): string {
  return (n / 2 ** 20).toFixed(1);
}
