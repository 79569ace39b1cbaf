// A running Vm's snapshot: held, its devices quiesced, written (state/snapshot.ts), then let go on or
// stopped; and the machine it records, to be built again by a restore.
import type { VmConfig } from './config.js';
import type { GuestMemory } from './memory.js';
import { quiesceDevices, saveMachine, unquiesceDevices, type Machine } from './state/machine.js';
import { writeSnapshot } from './state/snapshot.js';
import type { NetDevice } from './virtio-devices.js';
import type { SnapshotMachine } from './state/snapshot.js';

/** What Vm.snapshot wrote. */
export interface SnapshotInfo {
  dir: string;
  /** bytes of guest memory, and 4 KiB pages written to the memory file (the rest are holes) */
  memoryBytes: number;
  pagesWritten: number;
  /** how long the guest was held for it */
  pausedMs: number;
}

/** The VM as a snapshot sees it. */
export interface SnapshotSubject {
  /** paused before the snapshot: it stays paused after */
  wasPaused: boolean;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** the VM is ending (it cannot be saved then) */
  ended(): boolean;
  machine(): Machine;
  memory: GuestMemory;
  shape(): SnapshotMachine;
  /** end the VM, saying why */
  stop(detail: string): void;
}

/** Pause, quiesce, write, then go on as before or (resume false) stop. A failure lets the VM go on as it was. */
export async function takeSnapshot(vm: SnapshotSubject, dir: string, resume: boolean): Promise<SnapshotInfo> {
  const t0 = Date.now();
  await vm.pause();
  if (vm.ended()) throw new Error('the VM ended while it was being paused');
  const m = vm.machine();
  await quiesceDevices(m);
  const goOn = async () => {
    await unquiesceDevices(m);
    if (!vm.wasPaused) await vm.resume();
  };
  let written;
  try {
    written = writeSnapshot(dir, { state: saveMachine(m), memory: vm.memory, machine: vm.shape() });
  } catch (e) {
    await goOn();
    throw e;
  }
  const pausedMs = Date.now() - t0;
  if (resume) await goOn();
  else vm.stop(`snapshot written to ${dir}`);
  return { dir, memoryBytes: written.memory.size, pagesWritten: written.memory.written, pausedMs };
}
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
