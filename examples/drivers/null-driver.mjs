// A minimal tsvmm network driver plugin: everything the guest transmits is counted and discarded,
// nothing is ever received. Load it with:  tsvmm run ... --net ./examples/drivers/null-driver.mjs
//
// A driver module exports two functions (see src/drivers/api.ts for the types):
//   create(options)  on the main thread: capabilities, and per queue pair data for openQueue
//   openQueue(init)  on a dataplane thread: the queue the data path calls with packet batches
import { fileURLToPath } from 'node:url';

export function create(options) {
  const queuePairs = Number(options.queues ?? '1');
  return {
    name: 'null',
    // no offloads: the guest will not be offered checksum or segmentation offload
    caps: { queuePairs, mtu: 1500, offloads: { txCsum: false, txTso4: false, txTso6: false, txTsoEcn: false, rxCsum: false, rxTso4: false, rxTso6: false, rxTsoEcn: false } },
    module: fileURLToPath(import.meta.url),
    queueInit: (pair) => ({ pair }),
    setGuestOffloads() {},
    close() {},
  };
}

export function openQueue() {
  return {
    pollFd: -1, // nothing to wait for: we never receive, and always take everything we are given
    drops: 0,
    // a driver whose wire is full takes what it can, sets this and returns the count: the rest stay in
    // the guest's ring until pollFd is writable (without an fd: a millisecond later)
    wouldBlock: false,
    // batch.count packets; packet i is batch.iov triples [buffer, offset, length] from
    // batch.iovStart[i] to batch.iovStart[i + 1], batch.len[i] bytes in all
    transmit(batch) {
      return batch.count;
    },
    receive() {
      return 0;
    },
    close() {},
  };
}
