// A virtual machine's lifecycle: KVM objects, guest memory, boot, the platform devices, start, pause,
// stop. Its vCPU threads are in vcpu-threads.ts, its virtio functions in virtio-devices.ts. The main
// thread owns every device model; vCPU threads reach them through mailboxes (see mailbox.ts).
import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';
import { native } from '../native.js';
import { UserError } from '../errors.js';
import { KVM, CAP } from './kvm-abi.js';
import { openKvm, requireCaps, checkExtension, supportedCpuid, VmFd, VcpuFd } from './kvm.js';
import { GuestMemory } from './memory.js';
import { GsiRouter } from './irq-routing.js';
import { Bus } from './bus.js';
import { VcpuThreads } from './vcpu-threads.js';
import { vmMetrics } from './vm-metrics.js';
import type { Metrics } from '../dataplane/metrics.js';
import { configureVcpu, enterKernel } from './vcpu-setup.js';
import { readInput, requestedCpus, resolveCpus, resolveMemory, type VmConfig } from './config.js';
import type { VirtioIommu } from '../viommu/device.js';
import type { VirtioNet } from '../virtio-net/device.js';
import type { VirtioRng } from '../virtio-rng/device.js';
import { VirtioDevices, type NetDevice } from './virtio-devices.js';
import { DirtyPages } from './dirty-pages.js';
import { ramRegions, ramLayout, TSS_ADDR, IDENTITY_MAP_ADDR } from '../boot/layout.js';
import { attachPlatform, type Platform } from './vm-platform.js';
import { loadKernel, type BootEntry } from '../boot/loader.js';
import { restoreMachine, type Machine } from './state/machine.js';
import { readSnapshot } from './state/snapshot.js';
import { restoredConfig } from './state/restore-config.js';
import { checkRegions, snapshotMachine, type SnapshotInfo } from './vm-snapshot.js';
import { VmMoves } from './vm-moves.js';
import { parseMigrationUrl, type MigrationUrl } from './migration/url.js';
import type { MigrateOptions, MigrationSummary } from './migration/source.js';
import type { MigrationState } from './migration/status.js';

export type { VmConfig } from './config.js';
export type { NetDevice } from './virtio-devices.js';
export type { SnapshotInfo } from './vm-snapshot.js';
export type { MigrationSummary } from './migration/source.js';
export type { MigrationState } from './migration/status.js';

export interface VmExit {
  /** poweroff: the guest turned the machine off; reset: it asked for a reboot (tsvmm ends the VM);
   * crash: KVM or the VMM could not go on; stopped: stop() was called, or shutdown()'s deadline passed;
   * migrated: migrate() handed the guest over to another VMM, which runs it now. */
  reason: 'poweroff' | 'reset' | 'crash' | 'stopped' | 'migrated';
  /** the guest's power-off status (debug-exit value), else 0 */
  status: number;
  detail: string;
}

/** What Vm.status tells: where the VM is in its life, how it ended, for how long it has run. */
export interface VmStatus {
  /** incoming: built, waiting for (or taking) a migration (`incoming` in its config) */
  state: 'new' | 'starting' | 'incoming' | 'running' | 'paused' | 'stopping' | 'stopped';
  exit?: VmExit;
  /** since start() completed (0 before) */
  uptimeMs: number;
}

export { COM1_PORT, COM1_IRQ, DEBUG_EXIT_PORT } from './vm-platform.js';

export class Vm extends EventEmitter {
  /** Everything the guest writes to its serial console (COM1). */
  readonly serial = new PassThrough();
  readonly pio = new Bus('pio');
  readonly mmio = new Bus('mmio');
  readonly exited: Promise<VmExit>;
  boot?: BootEntry;

  private resolveExit!: (e: VmExit) => void;
  private state: 'new' | 'starting' | 'incoming' | 'running' | 'stopping' | 'stopped' = 'new';
  private kvmFd = -1;
  private vmFd?: VmFd;
  private mem?: GuestMemory;
  private router?: GsiRouter;
  private readonly vcpus = new VcpuThreads(
    (space, write, addr, size, value) => {
      const bus = space === 'pio' ? this.pio : this.mmio;
      if (write) {
        bus.write(addr, size, value);
        return 0n;
      }
      return bus.read(addr, size);
    },
    (e) => this.finish({ ...e, status: 0 }),
  );
  private platform?: Platform;
  /** the virtio functions on the PCI host, once build() has made it */
  private devices?: VirtioDevices;

  /** The network devices with their PCI functions and drivers, in the order configured (empty once stopped). */
  get netDevices(): NetDevice[] {
    return this.devices?.net ?? [];
  }
  /** The network devices in the order configured: `vm.net[0].setLink(false)` takes its link down. */
  get net(): readonly VirtioNet[] {
    return this.netDevices.map((d) => d.net);
  }
  /** the virtio-rng device (`rng: true`) */
  get rng(): VirtioRng | undefined {
    return this.devices?.rng;
  }
  /** the virtio-iommu (`viommu: true`) */
  get iommu(): VirtioIommu | undefined {
    return this.devices?.iommu;
  }
  readonly config: Readonly<VmConfig>;
  /** the configuration built: `config`, or for a restore the snapshot's machine with `config` on top */
  private built?: VmConfig;

  constructor(config: VmConfig) {
    super();
    this.config = { ...config };
    this.exited = new Promise((r) => (this.resolveExit = r));
  }

  get memory(): GuestMemory {
    if (!this.mem) throw new Error('VM not started');
    return this.mem;
  }

  get vm(): VmFd {
    if (!this.vmFd) throw new Error('VM not started');
    return this.vmFd;
  }

  /** MSI routes for irqfds (devices allocate one GSI per interrupt vector). */
  get irqRoutes(): GsiRouter {
    if (!this.router) throw new Error('VM not started');
    return this.router;
  }

  get running(): boolean {
    return this.state === 'running';
  }

  private paused = false;
  /** pause() and resume() one after the other, in the order called */
  private pauseChain: Promise<void> = Promise.resolve();
  private startedAt = 0;
  private exitSeen?: VmExit;

  get status(): VmStatus {
    const state = this.state === 'running' && this.paused ? 'paused' : this.state;
    return { state, ...(this.exitSeen ? { exit: this.exitSeen } : {}), uptimeMs: this.startedAt ? Date.now() - this.startedAt : 0 };
  }

  /**
   * Stop the guest without ending it: every vCPU out of KVM_RUN and waiting, every dataplane thread off
   * its rings (frames wait in the rings and in the drivers' queues). Resolves once all are held. A VM
   * that is not running cannot be paused (an Error saying so).
   */
  pause(): Promise<void> {
    if (this.moves.migrating) return Promise.reject(new Error('a migration is under way: it pauses and resumes the VM itself'));
    return this.hold();
  }

  private hold(): Promise<void> {
    const step = async () => {
      if (this.state !== 'running') throw new Error(`the VM is ${this.state}, not running`);
      if (this.paused) return;
      this.paused = true;
      await this.vcpus.pause();
      // (a VM that ends meanwhile stops its threads rather than pausing them)
      await Promise.race([this.devices?.pause(), this.exited]);
    };
    return (this.pauseChain = this.pauseChain.catch(() => undefined).then(step));
  }

  /** Let the devices and then the vCPUs go on where pause() held them. */
  resume(): Promise<void> {
    if (this.moves.migrating) return Promise.reject(new Error('a migration is under way: it pauses and resumes the VM itself'));
    return this.release();
  }

  private release(): Promise<void> {
    const step = async () => {
      if (!this.paused) return;
      this.devices?.resume();
      this.vcpus.resume();
      this.paused = false;
    };
    return (this.pauseChain = this.pauseChain.catch(() => undefined).then(step));
  }

  /** Per device and queue counters, live (see Metrics). */
  metrics(): Metrics {
    return vmMetrics(this);
  }

  /**
   * The machine as its device state is saved and restored (src/vmm/state/machine.ts): its vCPUs must
   * be out of KVM_RUN (paused) and its devices quiesced for that.
   */
  get machine(): Machine {
    return { kvmFd: this.kvmFd, vmFd: this.vm.fd, vcpuFds: this.vcpus.fds, memory: this.memory.table.totalSize, buses: [this.pio, this.mmio] };
  }

  /**
   * Start tracking guest writes to RAM, per 4 KiB page (for live migration and snapshots): the vCPUs'
   * in KVM's dirty log, the devices' (net dataplane threads and control queue, the vIOMMU's request
   * thread and event queue) in a log of tsvmm's own. Resolves once both are on.
   */
  async enableDirtyLog(): Promise<void> {
    await this.devices?.setDirtyLog(this.dirtyPages.enable(this.memory, this.vm));
  }

  /** Pages written since the last call (or since enableDirtyLog), as guest-physical page addresses, ascending. */
  takeDirtyPages(): number[] {
    return this.dirtyPages.take(this.memory, this.vm);
  }

  private readonly dirtyPages = new DirtyPages();

  /** snapshots and migrations, out and in */
  private readonly moves = new VmMoves({
    paused: () => this.paused,
    state: () => this.state,
    ended: () => this.finishing,
    hold: () => this.hold(),
    release: () => this.release(),
    machine: () => this.machine,
    memory: () => this.memory,
    shape: () => snapshotMachine(this.built!, this.memory.table.totalSize, this.vcpus.fds.length, this.netDevices),
    dirtyLog: {
      on: () => this.dirtyPages.on,
      enable: () => this.enableDirtyLog(),
      disable: async () => {
        this.dirtyPages.disable(this.memory, this.vm);
        await this.devices?.setDirtyLog(undefined);
      },
      take: () => this.takeDirtyPages(),
    },
    end: (reason, detail) => this.finish({ reason, status: 0, detail }),
    migrationChanged: (st) => this.emit('migration', st),
  });

  /**
   * Write the VM into directory `dir` (created; if it exists it must be empty or hold a snapshot,
   * which is replaced): pause, quiesce the devices, write guest memory (sparse: memory-file.ts) and the
   * device-state document, then let the VM go on as it was (running, or paused if it was) or, with
   * `resume: false`, stop it. A failure leaves the VM as it was and rejects with one line.
   */
  snapshot(dir: string, opts: { resume?: boolean } = {}): Promise<SnapshotInfo> {
    return this.moves.snapshot(dir, opts.resume ?? true);
  }

  /**
   * Move the running VM to another tsvmm (`tsvmm run --incoming URL` there, with the same machine):
   * `url` is `unix:PATH` or `tcp:HOST:PORT`. Memory is copied while the guest runs, then again what it
   * wrote meanwhile, pass after pass (KVM's dirty log and the devices'), until the rest fits the
   * downtime allowed (`maxDowntimeMs`, default 300; or `maxPasses` passes, default 30); then the VM
   * pauses for the last pages and the device state, and once the
   * destination has restored them it runs the guest and this VM ends (exit reason `migrated`).
   * Resolves with what it took. A failure before the hand-over rejects with one line and leaves the VM
   * running (or paused, if it was) as before. Progress: `migration` events and `migrationState`.
   */
  migrate(url: string, opts: Pick<MigrateOptions, 'maxDowntimeMs' | 'maxPasses'> = {}): Promise<MigrationSummary> {
    return this.moves.migrate(url, opts);
  }

  /** What the last migration, out or in, did or is doing (undefined before any). */
  get migrationState(): MigrationState | undefined {
    return this.moves.migrationState;
  }

  /** Send bytes to the guest's serial console input. */
  sendSerial(data: string | Uint8Array): void {
    this.platform?.uart.push(typeof data === 'string' ? new TextEncoder().encode(data) : data);
  }

  async start(): Promise<void> {
    if (this.state !== 'new') throw new Error('a Vm can be started once');
    this.state = 'starting';
    try {
      const incoming = this.config.incoming !== undefined ? parseMigrationUrl(this.config.incoming, '--incoming') : undefined;
      await this.build(!!incoming);
      if (incoming) await this.receive(incoming);
      else await this.launch(this.config.restore !== undefined);
    } catch (e) {
      await this.teardown();
      this.state = 'stopped';
      throw e;
    }
    this.state = 'running';
    this.startedAt = Date.now();
  }

  /** Stop the VM (if running) and release everything it holds. Resolves with how it ended. */
  async stop(): Promise<VmExit> {
    if (this.state === 'new') {
      this.state = 'stopped';
      this.resolveExit({ reason: 'stopped', status: 0, detail: 'never started' });
    } else this.finish({ reason: 'stopped', status: 0, detail: 'stopped by the host' });
    return this.exited;
  }

  /**
   * Press the ACPI power button and wait for the guest to power off; once `deadlineMs` (default 30 s)
   * has passed, stop the VM instead (its exit then says so). Resolves with how the VM ended.
   */
  async shutdown(options: { deadlineMs?: number } = {}): Promise<VmExit> {
    const deadlineMs = options.deadlineMs ?? 30_000;
    if (!Number.isFinite(deadlineMs) || deadlineMs < 0 || deadlineMs > 2 ** 31 - 1) throw new RangeError(`shutdown: deadlineMs must be a number of milliseconds from 0 to ${2 ** 31 - 1}, not ${deadlineMs}`);
    if (this.state === 'new' || this.state === 'starting') throw new Error('shutdown: the VM is not running');
    if (this.state !== 'running' || this.finishing) return this.exited;
    this.platform!.ged.pressPowerButton();
    const timer = setTimeout(() => this.finish({ reason: 'stopped', status: 0, detail: `shutdown deadline of ${deadlineMs} ms passed` }), deadlineMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }

  /** The machine, its memory and devices, ready to run (restored from a snapshot, if one is given); `incoming`: its memory left zeroed for a migration. */
  private async build(incoming: boolean): Promise<void> {
    const snap = this.config.restore !== undefined ? readSnapshot(this.config.restore) : undefined;
    const cfg = (this.built = snap ? restoredConfig(this.config, snap.manifest.machine) : this.config);
    const memSize = resolveMemory(cfg.memory);
    requestedCpus(cfg.cpus);
    if (snap && incoming) throw new UserError('--restore and --incoming: a VM starts from one or the other');
    const boots = !snap && !incoming;
    if (boots && cfg.kernel === undefined) throw new UserError('--kernel FILE is required (or --restore DIR, or --incoming URL)');
    const kernel = boots ? readInput('--kernel', cfg.kernel!) : undefined;
    const initrd = boots && cfg.initrd !== undefined ? readInput('--initrd', cfg.initrd) : undefined;

    this.kvmFd = openKvm(cfg.kvmDevice);
    requireCaps(this.kvmFd);
    const cpus = resolveCpus(cfg.cpus, checkExtension(this.kvmFd, CAP.MAX_VCPUS) || checkExtension(this.kvmFd, CAP.NR_VCPUS) || 1);

    const vm = (this.vmFd = VmFd.create(this.kvmFd));
    vm.setTssAddr(TSS_ADDR);
    vm.setIdentityMapAddr(IDENTITY_MAP_ADDR);
    vm.createIrqchip();
    vm.createPit2();
    this.router = new GsiRouter(vm, checkExtension(this.kvmFd, CAP.IRQ_ROUTING) || 1024);

    const regions = ramRegions(memSize);
    if (snap) checkRegions(regions, snap.manifest.memory.regions);
    const mem = (this.mem = new GuestMemory(regions, snap ? { file: snap.memoryPath } : {}));
    mem.table.regions.forEach((r, slot) => vm.setUserMemoryRegion(slot, r.gpa, r.size, mem.hostAddress + BigInt(r.offset)));

    // devices first: the ACPI tables the loader writes describe them (VIOT: who is behind the IOMMU)
    const platform = (this.platform = attachPlatform({
      pio: this.pio,
      mmio: this.mmio,
      power: (e) => this.finish(e.reason === 'poweroff' ? { reason: 'poweroff', status: e.status, detail: e.detail } : { reason: 'reset', status: 0, detail: e.detail }),
      irqLine: (gsi, level) => this.vmFd?.irqLine(gsi, level),
      serial: this.serial,
    }));
    const pci = platform.pci;
    const devices = (this.devices = new VirtioDevices({ memory: mem, pci, mmio: this.mmio, vm, router: this.router, intx: checkExtension(this.kvmFd, CAP.IRQFD_RESAMPLE) > 0 }));
    if (cfg.viommu) devices.plugIommu();
    for (const [i, n] of (cfg.net ?? []).entries()) await devices.plugNet(n, i);
    if (cfg.rng) devices.plugRng(cfg.rng === true ? {} : cfg.rng);
    const viot = devices.viot;

    // (a restored or incoming machine's memory holds its kernel and tables already, or will)
    if (kernel) {
      this.boot = loadKernel(
        { slice: (gpa, len) => mem.slice(gpa, len), lowSize: ramLayout(memSize).lowSize },
        { kernel, initrd, cmdline: cfg.cmdline ?? '', memSize, cpus, viot },
      );
    }

    const supported = supportedCpuid(this.kvmFd);
    for (let i = 0; i < cpus; i++) {
      const fd = new VcpuFd(vm.createVcpu(i));
      this.vcpus.add(fd);
      configureVcpu(fd, supported, i, cpus);
      if (i === 0 && this.boot) enterKernel(fd, this.boot);
    }
    if (snap) await restoreMachine(this.machine, snap.state);
  }

  /** Run the vCPUs; `moved` (restored, or migrated here): the guest is asked to announce itself. */
  private async launch(moved: boolean): Promise<void> {
    const runSize = native.ioctl(this.kvmFd, KVM.GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
    await this.vcpus.start(this.kvmFd, runSize);
    // the guest may be on another wire now: its network drivers are asked to announce it there
    if (moved) for (const d of this.netDevices) d.net.announce();
  }

  /** Listen on `url` and take a migration there; resolves once the guest runs here. */
  private receive(url: MigrationUrl): Promise<void> {
    const receiver = { memory: this.memory, machine: () => this.machine, launch: () => this.launch(true) };
    return this.moves.receive(url, receiver, () => (this.state = 'incoming'));
  }

  private finishing = false;

  /** End the VM once, whoever asks first (guest power-off, a vCPU error, stop()). */
  private finish(exit: VmExit): void {
    if (this.finishing) return;
    this.finishing = true;
    const run = async () => {
      // a VM still starting is torn down by start() itself if that fails; one waiting for a migration stops waiting
      while (this.state === 'starting' || this.state === 'incoming') {
        this.moves.stopIncoming();
        await new Promise((r) => setTimeout(r, 5));
      }
      if (this.state !== 'stopped') {
        this.state = 'stopping';
        await this.teardown();
        this.state = 'stopped';
      }
      const where = this.vcpus.stoppedWhere;
      if (exit.reason === 'stopped' && where) exit = { ...exit, detail: `${exit.detail}; ${where}` };
      this.exitSeen = exit;
      this.resolveExit(exit);
      this.emit('exit', exit);
    };
    void run();
  }

  private async teardown(): Promise<void> {
    await this.vcpus.stop();
    // devices stop their dataplane threads before guest memory goes
    await this.devices?.close();
    await this.vcpus.close();
    this.platform?.flushSerial();
    this.serial.end();
    this.vmFd?.close();
    this.vmFd = undefined;
    this.mem?.release();
    if (this.kvmFd >= 0) native.close(this.kvmFd);
    this.kvmFd = -1;
  }
}
