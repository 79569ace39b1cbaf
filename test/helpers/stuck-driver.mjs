// A plugin driver whose transmit never returns (it waits on a word nobody ever changes), as a driver
// stuck in a bug would: for the tests of what tsvmm does about a dataplane thread that does not come
// back. It says so on stderr when it gets stuck (and creates the file `flag=PATH` names, if given).
// Receives nothing. With a flag, each queue also opens PATH.own on its thread with the native addon
// (a descriptor Node does not track, as the tap's io_uring) and lists it as its own (ownFds).
import { writeSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const { native } = await import(new URL('../../dist/native.js', import.meta.url).href);

const NO_OFFLOADS = { txCsum: false, txTso4: false, txTso6: false, txTsoEcn: false, rxCsum: false, rxTso4: false, rxTso6: false, rxTsoEcn: false };

export function create(options) {
  return {
    name: 'stuck',
    caps: { queuePairs: Number(options.queues ?? '1'), mtu: 1500, offloads: NO_OFFLOADS },
    module: fileURLToPath(import.meta.url),
    queueInit: () => ({ flag: options.flag }),
    setGuestOffloads() {},
    close() {},
  };
}

export function openQueue(init) {
  const never = new Int32Array(new SharedArrayBuffer(4));
  let own;
  if (init.flag) {
    writeFileSync(`${init.flag}.own`, '');
    own = native.open(`${init.flag}.own`, 0);
  }
  return {
    pollFd: -1,
    drops: 0,
    ownFds: own === undefined ? [] : [own],
    transmit() {
      writeSync(2, 'stuck-driver: transmit blocks for good\n');
      if (init.flag) writeFileSync(init.flag, '');
      for (;;) Atomics.wait(never, 0, 0);
    },
    receive() {
      return 0;
    },
    close() {},
  };
}
