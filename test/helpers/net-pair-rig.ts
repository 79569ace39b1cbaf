// A NetQueuePair as unit tests drive it: over an RX and a TX ring the test drives as the guest's
// driver would (TestDriver, PackedTestDriver), with a driver queue of the test's, and the pair's options
// those of a plain guest unless given: no mergeable buffers, 1514-byte frames, no offloads, no
// interrupt eventfds, fresh counters and a fresh RX filter.
import { createQueue } from '../../src/virtio/queues.js';
import { NetQueuePair, type PairOptions } from '../../src/virtio-net/net-pair.js';
import { RxFilter } from '../../src/virtio-net/rx-filter.js';
import { txPolicy } from '../../src/virtio-net/features.js';
import { STAT_WORDS } from '../../src/dataplane/stats.js';
import type { DriverQueue } from '../../src/drivers/api.js';
import type { TestMemory } from './virtq-driver.js';
import type { RingDriver } from './ring-driver.js';

/** The queues' ring features: `packed` for PackedTestDriver rings, `eventIdx` when the test's driver uses it. */
export interface RigRings {
  packed?: boolean;
  eventIdx?: boolean;
}

export function newPair(mem: TestMemory, rx: RingDriver, tx: RingDriver, driver: DriverQueue, rings: RigRings = {}, options: Partial<PairOptions> = {}) {
  const feats = { eventIdx: rings.eventIdx ?? false, indirect: true, packed: rings.packed ?? false };
  const rxq = createQueue(mem.view, rx.cfg, feats, 32768);
  const txq = createQueue(mem.view, tx.cfg, feats, 32768);
  if (typeof rxq === 'string' || typeof txq === 'string') throw new Error(`the test's rings: ${typeof rxq === 'string' ? rxq : txq}`);
  const o: PairOptions = {
    mergeable: false,
    maxRxFrame: 1514,
    txPolicy: txPolicy(0n),
    rxCallFd: -1,
    txCallFd: -1,
    rxStats: new Float64Array(STAT_WORDS),
    txStats: new Float64Array(STAT_WORDS),
    filter: new RxFilter(),
    ...options,
  };
  const pair = new NetQueuePair(mem.view, mem.buffer, rxq, txq, driver, o);
  return { rxq, txq, pair, rxStats: o.rxStats, txStats: o.txStats, filter: o.filter };
}
