// A Vm's live migration, both ends, over the stream of src/vmm/migration/:
// - out: the running Vm as a MigrationSource: KVM's and the devices' dirty logs, pause, and the device
//   state saved as a snapshot's is (state/machine.ts: devices quiesced, one document); a failure
//   before the hand-over lets the devices and vCPUs go on and turns the dirty log off again;
// - in: a Vm built but not started as a MigrationTarget: pages into its fresh (zeroed) memory, the
//   document restored into its machine, then the guest run.
// TSVMM_DEBUG_MIGRATION_MEMORY=FILE: each side writes the guest's memory to FILE (sparse, as a
// snapshot's memory file) at the hand-over (the source once nothing writes it any more, the
// destination before it restores the devices), for a test to compare them page by page.
import type { Socket } from 'node:net';
import type { GuestMemory } from './memory.js';
import { fingerprint, quiesceDevices, restoreMachine, saveMachine, unquiesceDevices, type Machine } from './state/machine.js';
import { writeMemoryFile } from './state/memory-file.js';
import { migrateOut, type MigrateOptions, type MigrationSource, type MigrationSummary } from './migration/source.js';
import { migrateIn, type IncomingSummary } from './migration/destination.js';
import { connectTo, type Incoming } from './migration/endpoint.js';
import { MigrationError } from './migration/wire.js';
import type { MigrationUrl } from './migration/url.js';
import type { SnapshotSubject } from './vm-snapshot.js';

/** The VM as a migration's source sees it. */
export interface MigrationSubject extends Pick<SnapshotSubject, 'wasPaused' | 'pause' | 'resume' | 'ended' | 'machine' | 'memory'> {
  /** turn the dirty log on (a no-op if it was on already) */
  startDirtyLog(): Promise<void>;
  takeDirtyPages(): number[];
  /** turn the dirty log off, if startDirtyLog turned it on */
  stopDirtyLog(): Promise<void>;
}

const dumpPath = () => process.env.TSVMM_DEBUG_MIGRATION_MEMORY || undefined;

/** Move the VM to `url`. Resolves once the destination runs the guest (this VM is paused and quiesced then: end it). */
export async function migrateVm(vm: MigrationSubject, url: MigrationUrl, opts: MigrateOptions): Promise<MigrationSummary> {
  const conn = await connectTo(url);
  let quiesced: Machine | undefined;
  const live = () => {
    if (vm.ended()) throw new MigrationError('the VM ended during the migration');
  };
  const src: MigrationSource = {
    memory: vm.memory,
    fingerprint: fingerprint(vm.machine()),
    startDirtyLog: () => vm.startDirtyLog(),
    takeDirty: () => (live(), vm.takeDirtyPages()),
    pause: async () => {
      await vm.pause();
      live();
    },
    // (a VM that ended meanwhile has closed its devices: nothing to let go on)
    resume: async () => {
      if (quiesced && !vm.ended()) await unquiesceDevices(quiesced);
      quiesced = undefined;
      if (!vm.wasPaused && !vm.ended()) await vm.resume();
    },
    saveState: async () => {
      const m = vm.machine();
      await quiesceDevices(m);
      quiesced = m;
      const dump = dumpPath();
      if (dump) writeMemoryFile(dump, vm.memory);
      return saveMachine(m);
    },
  };
  try {
    return await migrateOut(conn, src, opts);
  } catch (e) {
    conn.destroy();
    if (!vm.ended()) await vm.stopDirtyLog();
    throw e instanceof MigrationError ? e : new MigrationError((e as Error).message);
  }
}

/** The VM as a migration's destination sees it: built, not started. */
export interface MigrationReceiver {
  memory: GuestMemory;
  machine(): Machine;
  /** run the guest (the vCPUs, then the announcement on the network) */
  launch(): Promise<void>;
}

/**
 * Take the one connection `incoming` gets and receive the VM on it; resolves once the guest runs here.
 * `signal` aborts the wait or the transfer (MigrationError).
 */
export async function receiveVm(vm: MigrationReceiver, incoming: Incoming, signal: AbortSignal): Promise<IncomingSummary> {
  let conn: Socket | undefined;
  const abort = () => {
    incoming.close();
    conn?.destroy();
  };
  signal.addEventListener('abort', abort, { once: true });
  try {
    if (signal.aborted) abort();
    conn = await incoming.accepted;
    if (signal.aborted) throw new MigrationError('stopped before the migration came');
    return await migrateIn(conn, {
      memory: vm.memory,
      fingerprint: fingerprint(vm.machine()),
      restoreState: async (doc) => {
        const dump = dumpPath();
        if (dump) writeMemoryFile(dump, vm.memory);
        await restoreMachine(vm.machine(), doc);
      },
      start: () => vm.launch(),
    });
  } finally {
    signal.removeEventListener('abort', abort);
    incoming.close();
    conn?.destroy();
  }
}
