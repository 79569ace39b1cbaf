// The reporter of the test run inside L1 (scripts/l1/boot.mjs): one JSON line per event on the results
// channel (TSVMM_L1_RESULTS, L1's second serial port), which test/in-l1.test.ts turns back into the
// same tests, by name, in the host's run. A test's start is sent too, so that if L1 dies the host can
// say which test was running.
import { openSync, writeSync } from 'node:fs';
import type { Reporter, TestCase, TestModule, TestSuite } from 'vitest/node';
import type { SerializedError } from 'vitest';
import type { L1Event, L1Error } from './protocol.js';

/** suite names from the file down, then the test's own name */
function pathOf(t: TestCase | TestSuite): string[] {
  const names = [t.name];
  for (let p = t.parent; p.type === 'suite'; p = p.parent) names.unshift(p.name);
  return names;
}

function errorsOf(errors: ReadonlyArray<SerializedError>): L1Error[] {
  return errors.map((e) => ({ message: String(e.message ?? e), stack: e.stack, diff: e.diff }));
}

export default class L1Reporter implements Reporter {
  private readonly fd = openSync(process.env.TSVMM_L1_RESULTS ?? '/dev/ttyS1', 'w');
  private readonly sent = new Set<string>();

  private send(e: L1Event): void {
    writeSync(this.fd, `${JSON.stringify(e)}\n`);
  }

  onTestCaseReady(t: TestCase): void {
    this.send({ t: 'start', file: t.module.relativeModuleId, path: pathOf(t) });
  }

  onTestCaseResult(t: TestCase): void {
    this.sendTest(t);
  }

  private sendTest(t: TestCase): void {
    if (this.sent.has(t.id)) return;
    this.sent.add(t.id);
    const r = t.result();
    this.send({ t: 'test', file: t.module.relativeModuleId, path: pathOf(t), state: r.state, ms: t.diagnostic()?.duration, errors: errorsOf(r.errors ?? []) });
  }

  onTestModuleEnd(m: TestModule): void {
    // (tests never started, e.g. skipped, are reported here)
    for (const t of m.children.allTests()) this.sendTest(t);
    for (const s of m.children.allSuites()) {
      if (s.errors().length) this.send({ t: 'suite', file: m.relativeModuleId, path: pathOf(s), errors: errorsOf(s.errors()) });
    }
    this.send({ t: 'module', file: m.relativeModuleId, state: m.state(), errors: errorsOf(m.errors()) });
  }

  onTestRunEnd(_m: ReadonlyArray<TestModule>, unhandled: ReadonlyArray<SerializedError>): void {
    this.send({ t: 'end', errors: errorsOf(unhandled) });
  }
}
