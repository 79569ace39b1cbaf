// A bounded slice of every fuzz target (src/fuzz/, `npm run fuzz` for long runs): a fixed seed, so a
// failure here replays, and a few hundred milliseconds each. A failure prints fast-check's shrunk case.
import { describe, it, expect, afterAll } from 'vitest';
import fc from 'fast-check';
import { allTargets } from '../src/fuzz/targets/index.js';

const targets = await allTargets();
const SLICE_MS = Number(process.env.TSVMM_FUZZ_SLICE_MS ?? 400);

describe('fuzz targets (bounded slice)', () => {
  afterAll(() => {
    for (const t of targets) t.close?.();
  });
  for (const t of targets) {
    it(`${t.name}: ${t.about}`, async () => {
      await fc.assert(t.property(), { seed: 42, numRuns: 1_000_000, interruptAfterTimeLimit: SLICE_MS, markInterruptAsFailure: false });
      // (the slice ran cases: the target is reachable, not skipped)
      expect(Object.values(t.counts)[0]).toBeGreaterThan(0);
    });
  }
});
