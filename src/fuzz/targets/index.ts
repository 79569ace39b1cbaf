// Every fuzz target, in the order a run gives them turns.
import type { FuzzTarget } from '../target.js';
import { NetPairTarget } from './net-pair.js';
import { VhostHandlersTarget } from './vhost-handlers.js';
import { VhostReaderTarget } from './vhost-reader.js';
import { CtrlqTarget } from './ctrlq.js';
import { IommuTarget } from './iommu.js';
import { PciTarget } from './pci.js';
import { RngTarget } from './rng.js';
import { ApiTarget } from './api.js';

export async function allTargets(): Promise<FuzzTarget[]> {
  return [new NetPairTarget(), new VhostHandlersTarget(), new VhostReaderTarget(), new CtrlqTarget(), new IommuTarget(), new PciTarget(), new RngTarget(), new ApiTarget()];
}
