// The symbolizer that says where a guest that ended in a triple fault inside L1 was.
import { describe, it, expect } from 'vitest';
import { existsSync } from 'node:fs';
import { TEST_GUEST } from './helpers/env.js';
import { l1TripleReport, symbolize } from './helpers/l1-trace.js';

describe('L1 triple-fault report', () => {
  it.runIf(existsSync(TEST_GUEST))('names the function of the test guest an address lies in', () => {
    expect(symbolize(TEST_GUEST, 0x200100n)).toMatch(/^0x200100 is \w+\+0x[0-9a-f]+$/);
    expect(symbolize(TEST_GUEST, 0x1000n)).toBe('');
  });
  it('says nothing outside L1 or for no process', () => {
    const was = process.env.TSVMM_IN_L1;
    delete process.env.TSVMM_IN_L1;
    try {
      expect(l1TripleReport(process.pid, TEST_GUEST)).toBe('');
    } finally {
      if (was !== undefined) process.env.TSVMM_IN_L1 = was;
    }
    expect(l1TripleReport(undefined)).toBe('');
  });
});
