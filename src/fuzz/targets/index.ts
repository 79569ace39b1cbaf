// Every fuzz target, in the order a run gives them turns.
import type { FuzzTarget } from '../target.js';
import { NetPairTarget } from './net-pair.js';

export async function allTargets(): Promise<FuzzTarget[]> {
  return [new NetPairTarget()];
}
