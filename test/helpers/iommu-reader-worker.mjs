// A stand-in dataplane thread for the vIOMMU quiescence test: passes that translate an IOVA and, while
// the translation is held, mark it in use; idle between passes now and then, as a thread that sleeps.
import { workerData, parentPort } from 'node:worker_threads';
const { IommuReader } = await import(new URL('../../dist/viommu/table.js', import.meta.url).href);

const { buffer, slot, iova, control, holdUs = 50 } = workerData;
const reader = new IommuReader(buffer, 1, slot);
const c = new Int32Array(control); // [0] stop, [1] in use, [2] uses
parentPort.postMessage('ready');
let pass = 0;
while (!Atomics.load(c, 0)) {
  reader.enter();
  if (reader.translate(iova, 64, 1)) {
    Atomics.store(c, 1, 1);
    Atomics.add(c, 2, 1);
    const until = process.hrtime.bigint() + BigInt(holdUs) * 1000n; // hold it (50 µs: a batch being copied)
    while (process.hrtime.bigint() < until);
    Atomics.store(c, 1, 0);
  }
  if (++pass % 16 === 0) reader.idle();
}
reader.idle();
