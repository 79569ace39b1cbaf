// What a snapshot records of a running Vm besides its state and memory: the machine to build again.
import type { VmConfig } from './config.js';
import type { NetDevice } from './virtio-devices.js';
import type { SnapshotMachine } from './state/snapshot.js';
import type { MemoryRegion } from './memory.js';
import { UserError } from '../errors.js';

/** `cfg` as built (memory resolved to bytes), with each network device's pairs and MTU as they are. */
export function snapshotMachine(cfg: VmConfig, memory: number, cpus: number, nets: NetDevice[]): SnapshotMachine {
  return {
    memory,
    cpus,
    cmdline: cfg.cmdline ?? '',
    viommu: !!cfg.viommu,
    rng: cfg.rng ? (cfg.rng === true ? {} : { ...cfg.rng }) : false,
    net: (cfg.net ?? []).map((n, i) => ({ ...n, options: { ...n.options }, queues: nets[i].net.numQueues >> 1, mtu: nets[i].net.mtu })),
  };
}

/** The memory layout this tsvmm builds must be the one the snapshot's file was written from. */
export function checkRegions(here: readonly MemoryRegion[], saved: readonly MemoryRegion[]): void {
  const s = (rs: readonly MemoryRegion[]) => rs.map((r) => `${r.gpa}+${r.size}@${r.offset}`).join(',');
  if (s(here) !== s(saved)) throw new UserError(`snapshot: its memory regions (${s(saved)}) are not this tsvmm's for that size (${s(here)})`);
}
