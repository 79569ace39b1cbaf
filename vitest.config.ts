import { fileURLToPath } from 'node:url';
import { defineConfig, configDefaults } from 'vitest/config';
import { kvmTestFiles, kvmTestsGoToL1, insideL1 } from './test/l1/files.js';

// On a host without /dev/kvm the files that need KVM run inside an L1 with emulated AMD SVM, through
// test/in-l1.test.ts, which reports their tests by name here; elsewhere that file is left out.
const viaL1 = kvmTestsGoToL1();
const exclude = [...configDefaults.exclude, ...(viaL1 ? kvmTestFiles(fileURLToPath(new URL('.', import.meta.url))) : ['test/in-l1.test.ts'])];

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude,
    // KVM and namespace tests hold real kernel objects: run files in separate processes, two at a time
    pool: 'forks',
    maxWorkers: 2,
    // (inside L1, JavaScript runs 6-12x slower and every guest exit is emulated)
    testTimeout: insideL1 ? 600_000 : 60_000,
    hookTimeout: insideL1 ? 600_000 : 60_000,
    reporters: ['default', './test/helpers/summary-reporter.ts'],
  },
});
