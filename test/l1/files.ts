// Which test files need KVM, and whether this run sends them into an L1 (scripts/l1/boot.mjs).
import { readdirSync, readFileSync, accessSync, constants } from 'node:fs';
import { join } from 'node:path';

/** Test files that call haveKvm() need /dev/kvm, except nested.test.ts, which brings its own L1. */
export function kvmTestFiles(root: string): string[] {
  const dir = join(root, 'test');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.test.ts') && f !== 'nested.test.ts' && /\bhaveKvm\(\)/.test(readFileSync(join(dir, f), 'utf8')))
    .sort()
    .map((f) => `test/${f}`);
}

/** True inside L1 (scripts/l1/init.sh sets it). */
export const insideL1 = process.env.TSVMM_IN_L1 === '1';

/** The KVM test files run inside an L1: on a host without /dev/kvm, or anywhere with TSVMM_TEST_IN_L1=1. */
export function kvmTestsGoToL1(): boolean {
  if (insideL1) return false;
  if (process.env.TSVMM_TEST_IN_L1 === '1') return true;
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return false;
  } catch {
    return true;
  }
}
