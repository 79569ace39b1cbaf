// A stand-in dataplane thread for the vIOMMU test of enter()'s race: it stops inside enter(), right
// after reading the table's generation and before publishing it, while the test changes the table and
// waits for quiescence (which finds this thread idle); then enter() goes on. Atomics.load is wrapped in
// this thread only, for that one read.
import { workerData, parentPort } from 'node:worker_threads';
const { IommuReader } = await import(new URL('../../dist/viommu/table.js', import.meta.url).href);

const { buffer, slot, control } = workerData;
const reader = new IommuReader(buffer, 1, slot);
const c = new Int32Array(control); // [0] the test changed the table: go on
reader.enter(); // a first pass (the rings translated), then asleep
reader.idle();
const load = Atomics.load;
let stopped = false;
Atomics.load = (array, index) => {
  const value = load(array, index);
  if (!stopped && array.buffer === buffer && index === 0) { // the first read of the sequence word
    stopped = true;
    parentPort.postMessage('between read and publish');
    Atomics.wait(c, 0, 0);
  }
  return value;
};
const moved = reader.enter();
Atomics.load = load;
parentPort.postMessage({ moved });
