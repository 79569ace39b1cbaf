// What the end-to-end tests need from the host, checked once, with a reason when it is missing.
import { existsSync, accessSync, constants } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const TEST_GUEST = join(ROOT, 'guest', 'out', 'testguest.elf');
export const TEST_GUEST_BZIMAGE = join(ROOT, 'guest', 'out', 'testguest.bzImage');
export const CLI = join(ROOT, 'bin', 'tsvmm.js');

export function haveKvm(): boolean {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** kvm_pvm: guest CPL0 code is emulated; a stock kernel cannot reach user space. */
export function isKvmPvm(): boolean {
  return existsSync('/sys/module/kvm_pvm');
}

export function which(cmd: string): string | undefined {
  try {
    return execFileSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Parse the test guest's "TSVMM-RESULT {json}" line. */
export function guestResult(output: string): Record<string, unknown> | undefined {
  const m = /^TSVMM-RESULT (\{.*\})\s*$/m.exec(output);
  return m ? (JSON.parse(m[1]) as Record<string, unknown>) : undefined;
}
