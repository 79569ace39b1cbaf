// The functions a V8 CPU profile (node --cpu-prof) spent its time in, by self time: what bounds a
// benchmark. Reads every .cpuprofile in DIR (or one FILE) and prints the top N functions with their
// share of the samples, where they are, and the total.
//
//   node bench/profile-summary.mjs DIR|FILE [--top 25] [--json]
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { ROOT, cliArgs } from './lib.mjs';

const { json, num } = cliArgs();
const target = process.argv[2];
if (!target || target.startsWith('--')) {
  console.error('usage: node bench/profile-summary.mjs DIR|FILE [--top N] [--json]');
  process.exit(2);
}
const top = num('--top', 25);
const files = statSync(target).isDirectory()
  ? readdirSync(target)
      .filter((f) => f.endsWith('.cpuprofile'))
      .map((f) => join(target, f))
  : [target];

/** self microseconds by function (name, file, line) over every profile */
const self = new Map();
let total = 0;
for (const file of files) {
  const p = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  // each sample is charged the time until the next one (timeDeltas[i + 1])
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i + 1] ?? 0;
    const f = byId.get(p.samples[i]).callFrame;
    const url = f.url.startsWith('file://') ? relative(ROOT, new URL(f.url).pathname) : f.url;
    const key = `${f.functionName || '(anonymous)'}\t${url}${url ? `:${f.lineNumber + 1}` : ''}`;
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  }
}
const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
if (json) {
  process.stdout.write(JSON.stringify({ files, totalMs: total / 1000, top: rows.map(([k, us]) => ({ fn: k.split('\t')[0], at: k.split('\t')[1], ms: us / 1000, share: us / total })) }, null, 2) + '\n');
} else {
  console.log(`${files.length} profile(s), ${(total / 1000).toFixed(0)} ms sampled; self time:`);
  for (const [k, us] of rows) {
    const [fn, at] = k.split('\t');
    console.log(`${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${fn.padEnd(28)} ${at}`);
  }
}
