// Moving a Vm: a snapshot (vm-snapshot.ts) or a live migration out (vm-migration.ts), one at a time
// and only while it runs, and a migration in (a Vm built with `incoming`); each sees the Vm through
// MovableVm. The last migration's state is kept here for the API and said to the Vm's listeners.
import type { GuestMemory } from './memory.js';
import type { Machine } from './state/machine.js';
import type { SnapshotMachine } from './state/snapshot.js';
import type { MigrateOptions, MigrationSummary } from './migration/source.js';
import { takeSnapshot, type SnapshotInfo } from './vm-snapshot.js';
import { migrateVm, receiveVm, type MigrationReceiver } from './vm-migration.js';
import { formatMigrationUrl, parseMigrationUrl, type MigrationUrl } from './migration/url.js';
import { listenOn } from './migration/endpoint.js';
import { MigrationStatus, type MigrationState } from './migration/status.js';

/** The Vm as its moves see it. */
export interface MovableVm {
  paused(): boolean;
  /** its lifecycle state ('running' when it can be moved) */
  state(): string;
  /** it is ending (it cannot be moved then) */
  ended(): boolean;
  /** pause and resume, for the moves' own use (the Vm's pause() and resume() refuse during a migration) */
  hold(): Promise<void>;
  release(): Promise<void>;
  machine(): Machine;
  memory(): GuestMemory;
  /** the machine a snapshot records */
  shape(): SnapshotMachine;
  dirtyLog: { on(): boolean; enable(): Promise<void>; disable(): Promise<void>; take(): number[] };
  /** end the VM: stopped after a snapshot, or migrated */
  end(reason: 'stopped' | 'migrated', detail: string): void;
  /** a migration's state changed */
  migrationChanged(s: MigrationState): void;
}

export class VmMoves {
  private busy?: 'snapshot' | 'migration';
  private migration?: MigrationStatus;

  constructor(private readonly vm: MovableVm) {}

  /** a migration out holds the VM: nobody else may pause or resume it */
  get migrating(): boolean {
    return this.busy === 'migration';
  }

  /** What the last migration, out or in, did or is doing (undefined before any). */
  get migrationState(): MigrationState | undefined {
    return this.migration?.state;
  }

  async snapshot(dir: string, resume: boolean): Promise<SnapshotInfo> {
    const held = this.claim('snapshot');
    try {
      return await takeSnapshot({ ...held, shape: () => this.vm.shape(), stop: (detail) => this.vm.end('stopped', detail) }, dir, resume);
    } finally {
      this.busy = undefined;
    }
  }

  async migrate(url: string, opts: Pick<MigrateOptions, 'maxDowntimeMs' | 'maxPasses'>): Promise<MigrationSummary> {
    const target = parseMigrationUrl(url, 'migrate');
    const held = this.claim('migration');
    const status = this.track('out', target);
    const log = this.vm.dirtyLog;
    const wasOn = log.on();
    try {
      const summary = await migrateVm(
        {
          ...held,
          startDirtyLog: () => (wasOn ? Promise.resolve() : log.enable()),
          takeDirtyPages: () => log.take(),
          stopDirtyLog: () => (wasOn ? Promise.resolve() : log.disable()),
        },
        target,
        { ...opts, onProgress: (p) => status.progress(p) },
      );
      status.completed(summary);
      this.vm.end('migrated', `migrated to ${formatMigrationUrl(target)}`);
      return summary;
    } catch (e) {
      status.failed(e as Error);
      throw e;
    } finally {
      this.busy = undefined;
    }
  }

  private incoming?: AbortController;

  /**
   * Listen on `url` and take a migration there; resolves once the guest runs here (MigrationError if
   * it does not, or stopIncoming() came first). `listening` is called once the socket is up.
   */
  async receive(url: MigrationUrl, vm: MigrationReceiver, listening: () => void): Promise<void> {
    const status = this.track('in', url);
    const abort = (this.incoming = new AbortController());
    try {
      const incoming = await listenOn(url);
      listening();
      status.listening();
      status.received(await receiveVm(vm, incoming, abort.signal));
    } catch (e) {
      status.failed(e as Error);
      throw e;
    } finally {
      this.incoming = undefined;
    }
  }

  /** Stop waiting for (or taking) a migration in. */
  stopIncoming(): void {
    this.incoming?.abort();
  }

  private track(direction: 'out' | 'in', url: MigrationUrl): MigrationStatus {
    return (this.migration = new MigrationStatus(direction, formatMigrationUrl(url), (st) => this.vm.migrationChanged(st)));
  }

  /** Refuse unless the VM runs and no other move is under way; the VM as the move holds it. */
  private claim(what: 'snapshot' | 'migration') {
    if (this.busy) throw new Error(`a ${this.busy} is under way`);
    if (this.vm.state() !== 'running' || this.vm.ended()) throw new Error(`the VM is ${this.vm.state()}, not running`);
    this.busy = what;
    const vm = this.vm;
    return { wasPaused: vm.paused(), pause: () => vm.hold(), resume: () => vm.release(), ended: () => vm.ended(), machine: () => vm.machine(), memory: vm.memory() };
  }
}
