// The in-L1 runner's reading of L1's console (test/l1/run-tests.ts): when a soft lockup is long enough
// to give L1 up.
import { describe, expect, it } from 'vitest';
import { longestSoftLockup } from './l1/run-tests.js';

describe('longestSoftLockup', () => {
  it('is the longest stuck time any report names', () => {
    const console = [
      '[  555.078000] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [node:1862]',
      ' ✓ test/net-e2e.test.ts > pings (3.1 s)',
      '[  583.078733] watchdog: BUG: soft lockup - CPU#1 stuck for 49s! [node:1862]',
      '[  611.077358] watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [node:1870]',
    ].join('\n');
    expect(longestSoftLockup(console)).toBe(49);
  });

  it('is 0 for a console without one, and for a report cut before its figure ends', () => {
    expect(longestSoftLockup('[ 12.0] watchdog: BUG: hard LOCKUP on cpu 1\nrcu: INFO: rcu_sched self-detected stall')).toBe(0);
    expect(longestSoftLockup('[ 611.0] watchdog: BUG: soft lockup - CPU#1 stuck for 1')).toBe(0);
  });

  it('reads a report again in a new call: it keeps no state between calls', () => {
    const line = 'watchdog: BUG: soft lockup - CPU#1 stuck for 120s! [node:7]';
    expect(longestSoftLockup(line)).toBe(120);
    expect(longestSoftLockup(line)).toBe(120);
  });
});
