// The test files that need KVM, on a host without /dev/kvm (or with TSVMM_TEST_IN_L1=1): they run inside
// an L1 with emulated AMD SVM (scripts/l1/boot.mjs), and each of their tests comes back here under its
// own name, below a suite named after its file: passed, failed with its own message, or skipped. If L1
// ends early (a panic, the time limit), the tests that were running then fail with what L1 said, and
// those of files that never finished fail as not run. A file with a failed test runs once more in a
// fresh L1 and its second result stands; what failed the first time is listed (run-tests.ts says why).
// vitest.config.ts sends the files here.
import { describe, it } from 'vitest';
import { ROOT } from './helpers/env.js';
import { kvmTestFiles } from './l1/files.js';
import { runTestsInL1, CONSOLE_LOG, type L1File, type L1Test } from './l1/run-tests.js';
import type { L1Error } from './l1/protocol.js';

// (TSVMM_L1_FILES=a,b runs only the files whose names contain one of those words)
const only = process.env.TSVMM_L1_FILES?.split(',').filter(Boolean);
const files = kvmTestFiles(ROOT).filter((f) => !only || only.some((w) => f.includes(w)));
process.stdout.write(`in L1: ${files.length} test files need KVM and this host has none (or TSVMM_TEST_IN_L1=1): running them inside an L1 (QEMU software emulation with AMD SVM); their tests follow as they end\n`);
const outcome = await runTestsInL1(files, (line) => process.stdout.write(`${line}\n`));
process.stdout.write(`in L1: ran ${outcome.seconds.toFixed(0)} s; whole console: ${CONSOLE_LOG}\n`);
if (outcome.firstFailures.length) process.stdout.write(`in L1: WARNING: these failed in a first L1 and their files ran again (the results below are the second try's):\n${outcome.firstFailures.map((l) => `  ${l}`).join('\n')}\n`);

function asError(errors: L1Error[], note = ''): Error {
  const first = errors[0] ?? { message: 'failed in L1 (no error reported)' };
  const e = new Error(`${first.message}${first.diff ? `\n${first.diff}` : ''}${errors.length > 1 ? `\n(and ${errors.length - 1} more errors)` : ''}${note}`);
  if (first.stack) e.stack = `${e.message}\n${first.stack.split('\n').filter((l) => /^\s+at /.test(l)).join('\n')}`;
  return e;
}

interface Node {
  tests: L1Test[];
  suites: Map<string, Node>;
  order: Array<['test', L1Test] | ['suite', string]>;
}

function tree(f: L1File): Node {
  const top: Node = { tests: [], suites: new Map(), order: [] };
  for (const t of f.tests.values()) {
    let n = top;
    for (const s of t.path.slice(0, -1)) {
      if (!n.suites.has(s)) {
        n.suites.set(s, { tests: [], suites: new Map(), order: [] });
        n.order.push(['suite', s]);
      }
      n = n.suites.get(s)!;
    }
    n.order.push(['test', t]);
  }
  return top;
}

function declare(n: Node): void {
  for (const [kind, v] of n.order) {
    if (kind === 'suite') describe(v, () => declare(n.suites.get(v)!));
    else if (v.state === 'passed') it(v.path.at(-1)!, () => {});
    else if (v.state === 'failed') it(v.path.at(-1)!, () => { throw asError(v.errors); });
    else it.skip(v.path.at(-1)!);
  }
}

for (const file of files) {
  const f = outcome.files.get(file)!;
  describe(`${file} (in L1)`, () => {
    declare(tree(f));
    for (const { path, errors } of f.errors) {
      it(`${path.length ? path.join(' > ') : 'the file'}: errors outside its tests`, () => { throw asError(errors); });
    }
    for (const running of f.running) {
      it(running.split('\u0000').join(' > '), () => { throw new Error(`this test was running when L1 ended: ${outcome.cutShort}`); });
    }
    if (!f.ended && f.running.size === 0) {
      it('(the file did not finish in L1)', () => { throw new Error(outcome.cutShort || 'no end reported for this file'); });
    }
  });
}

if (outcome.unhandled.length) {
  it('in L1: no unhandled errors', () => { throw asError(outcome.unhandled); });
}
