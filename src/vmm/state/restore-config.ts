// The configuration a restore builds: the snapshot's machine, with what the caller gave on top. The
// machine's shape (memory, vCPUs, which devices) is the snapshot's: a different value given is refused
// with one line. A network device given replaces the saved one's driver and options (another tap) and
// may restate its device settings; what it leaves out is the saved device's.
import { UserError } from '../../errors.js';
import { resolveMemory, type NetConfig, type VmConfig } from '../config.js';
import type { SnapshotMachine } from './snapshot.js';

export function restoredConfig(given: VmConfig, m: SnapshotMachine): VmConfig {
  if (given.memory !== undefined && resolveMemory(given.memory) !== m.memory) throw new UserError(`--mem: the snapshot's VM has ${m.memory} bytes of memory, not ${resolveMemory(given.memory)}`);
  if (given.cpus !== undefined && given.cpus !== m.cpus) throw new UserError(`--cpus: the snapshot's VM has ${m.cpus} vCPUs, not ${given.cpus}`);
  if (given.viommu !== undefined && !!given.viommu !== m.viommu) throw new UserError(`--viommu: the snapshot's VM ${m.viommu ? 'has' : 'has no'} virtio-iommu`);
  if (given.rng !== undefined && (given.rng !== false) !== (m.rng !== false)) throw new UserError(`--rng: the snapshot's VM ${m.rng !== false ? 'has' : 'has no'} virtio-rng`);
  if (given.net !== undefined && given.net.length !== m.net.length) throw new UserError(`--net: the snapshot's VM has ${m.net.length} network device${m.net.length === 1 ? '' : 's'}, ${given.net.length} given`);
  return {
    ...given,
    memory: m.memory,
    cpus: m.cpus,
    cmdline: m.cmdline,
    viommu: m.viommu,
    rng: m.rng === false ? undefined : m.rng,
    net: m.net.map((saved, i) => (given.net ? mergeNet(saved, given.net[i]) : saved)),
  };
}

function mergeNet(saved: NetConfig, given: NetConfig): NetConfig {
  const out: NetConfig = { ...saved, driver: given.driver, options: { ...given.options } };
  for (const [k, v] of Object.entries(given)) if (k !== 'driver' && k !== 'options' && v !== undefined) (out as unknown as Record<string, unknown>)[k] = v;
  // (the driver learns the pairs from its options, as --net's queues=N tells it)
  if (out.queues !== undefined) out.options!.queues = String(out.queues);
  return out;
}
