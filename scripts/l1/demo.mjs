// The demo's steps (scripts/demo-steps.sh) inside the emulated L1, for a host without /dev/kvm: L1's
// console is the demo's output; the long waits before it (images, the host-wide L1 lock, L1's boot)
// are announced with the time they started at.
import { runInL1 } from './boot.mjs';

const t0 = Date.now();
const say = (what) => process.stdout.write(`tsvmm demo [${((Date.now() - t0) / 1000).toFixed(0)} s]: ${what}\n`);
let line = '';
let jobStarted = false;
const onConsole = (text) => {
  line += text;
  const lines = line.split('\n');
  line = lines.pop();
  for (const l of lines) {
    // (the firmware's and L1's own lines before the job, and L1's bookkeeping, stay out of the output)
    if (/^L1: .*running the job/.test(l)) jobStarted = true;
    if (jobStarted && !/^L1(-JOB-EXIT|:)/.test(l)) process.stdout.write(`${Buffer.from(l, 'latin1').toString('utf8')}\n`);
  }
};
const r = await runInL1('exec bash scripts/demo-steps.sh\n', { onConsole, onStep: say, limitS: 3600 });
if (r.status !== 0) say(r.status === undefined ? `L1 ended before the demo did (after ${r.seconds.toFixed(0)} s): see its console above` : `the demo failed in L1 (exit status ${r.status})`);
process.exit(r.status ?? 1);
