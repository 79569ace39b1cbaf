#!/usr/bin/env node
// npm run fuzz -- --seconds N [--target NAME[,NAME]] [--seed S] [--replay FILE] [--out DIR]
import { parseArgs } from 'node:util';
import { allTargets } from './targets/index.js';
import { fuzz, replay } from './run.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    target: { type: 'string' },
    seed: { type: 'string' },
    replay: { type: 'string' },
    out: { type: 'string', default: '.cache/fuzz' },
  },
});

const log = (line: string) => process.stdout.write(line + '\n');
const targets = await allTargets();
const chosen = values.target ? values.target.split(',') : undefined;
const unknown = chosen?.filter((n) => !targets.some((t) => t.name === n));
if (unknown?.length) {
  process.stderr.write(`fuzz: no target ${unknown.join(', ')} (targets: ${targets.map((t) => t.name).join(', ')})\n`);
  process.exit(2);
}
const run = chosen ? targets.filter((t) => chosen.includes(t.name)) : targets;
let code = 0;
try {
  if (values.replay) {
    code = (await replay(run, values.replay, log)) ? 0 : 1;
  } else {
    const seconds = Number(values.seconds);
    const seed = values.seed !== undefined ? Number(values.seed) : Date.now() % 2 ** 31;
    if (!(seconds > 0) || !Number.isInteger(seed)) throw new Error('--seconds must be positive and --seed an integer');
    log(`fuzz: ${run.map((t) => t.name).join(', ')} for ${seconds} s, seed ${seed}`);
    const started = Date.now();
    const findings = await fuzz(run, { seconds, seed, outDir: values.out!, log });
    log(`fuzz: ${((Date.now() - started) / 1000).toFixed(0)} s, ${findings.length} finding(s)`);
    for (const t of run) log(`  ${t.name.padEnd(14)} ${Object.entries(t.counts).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    code = findings.length ? 1 : 0;
  }
} finally {
  for (const t of run) t.close?.();
}
process.exit(code);
