// virtio-pci modern transport (virtio 1.x §4.1): configuration space with the virtio capabilities and
// MSI-X, one 64-bit memory BAR holding common/ISR/device configuration, the notification area and the
// MSI-X table. Queue notifications are KVM ioeventfds and MSI-X vectors are irqfds through GSI routes,
// so on the data path neither kicks nor interrupts pass through a vCPU exit or this thread. Register
// accesses (the slow path) arrive here on vCPU exits; the common configuration's registers are
// virtio-pci-common.ts, this file what the device does about them (activation, reset, state). A guest that does not enable MSI-X gets INTA, a
// level-triggered line with the ISR status register (intx.ts; wired in virtio-pci-irq.ts).
import { native, EFD_NONBLOCK } from '../../native.js';
import type { Bus, BusDevice } from '../bus.js';
import type { VmFd } from '../kvm.js';
import type { GsiRouter } from '../irq-routing.js';
import { PciConfigSpace, PCI_CMD_INTX_DISABLE, type PciDevice } from './pci.js';
import { Msix } from './msix.js';
import { IntxLine } from './intx.js';
import { InterruptWiring } from './virtio-pci-irq.js';
import { STATUS, VIRTIO_F_VERSION_1, type ActiveQueue, type VirtioDevice } from '../../virtio/device.js';
import type { RingState } from '../../virtio/virtqueue.js';
import type { Fields, StateValue } from '../../state/fields.js';
import { encodeTransport, readTransport } from './virtio-pci-state.js';
import { CommonConfig, COMMON_LEN, NO_VECTOR } from './virtio-pci-common.js';

export { NO_VECTOR } from './virtio-pci-common.js';

export interface PciPlatform {
  mmio: Bus;
  vm: VmFd;
  router: GsiRouter;
  /** the GSI this function's INTA is routed to (the DSDT's _PRT says so); none: no interrupt pin */
  intxGsi?: number;
}

export const BAR_SIZE = 0x8000;
export const COMMON_OFF = 0x0000;
export const ISR_OFF = 0x1000;
export const DEVICE_OFF = 0x2000;
export const NOTIFY_OFF = 0x3000;
export const NOTIFY_MULTIPLIER = 4;
export const MSIX_TABLE_OFF = 0x4000;
export const MSIX_PBA_OFF = 0x6000;
/** ISR status bits: a queue interrupt, a configuration change */
export const ISR_QUEUE = 1;
export const ISR_CONFIG = 2;
const PCI_CAP_ID_VNDR = 0x09;

export class VirtioPciDevice implements PciDevice, BusDevice {
  readonly config: PciConfigSpace;
  /** one vector per queue and one for configuration changes */
  private readonly msix: Msix;
  /** each interrupt source's eventfd, and where it goes (MSI-X, INTx or nowhere) */
  private readonly irq: InterruptWiring;
  private readonly kickFds: number[];
  /** the common configuration's registers (status, features, queues) */
  private readonly common: CommonConfig;
  private barAddr: number | undefined;
  /**
   * The ISR status (virtio 1.x §4.1.4.5): bit 0 a queue interrupt, bit 1 a configuration change; the
   * driver's read returns and clears it. A shared word, so that threads raising a queue's legacy (INTx)
   * interrupt can set bit 0 atomically before they signal it.
   */
  readonly isr = new Int32Array(new SharedArrayBuffer(4));
  private resetting: Promise<void> | undefined;
  /** why the device stopped trusting the driver, if it did */
  brokenReason: string | undefined;

  constructor(
    readonly device: VirtioDevice,
    private readonly platform: PciPlatform,
    classCode: number,
  ) {
    this.config = new PciConfigSpace({
      vendor: 0x1af4,
      device: 0x1040 + device.deviceType,
      revision: 1,
      classCode,
      subsystemVendor: 0x1af4,
      subsystem: 0x40 + device.deviceType,
      interruptPin: platform.intxGsi === undefined ? 0 : 1, // INTA
    });
    // the interrupt line register: what firmware would have written there (Linux takes the _PRT's)
    if (platform.intxGsi !== undefined) this.config.bytes[0x3c] = platform.intxGsi & 0xff;
    this.config.addBar(0, { size: BAR_SIZE, is64: true, onMap: (a) => this.onBarMap(a) });
    const cap = (type: number, offset: number, length: number, extra?: number) => {
      const body = new Uint8Array(extra === undefined ? 14 : 18);
      const v = new DataView(body.buffer);
      body[0] = body.length + 2; // cap_len
      body[1] = type;
      body[2] = 0; // BAR 0
      v.setUint32(6, offset, true);
      v.setUint32(10, length, true);
      if (extra !== undefined) v.setUint32(14, extra, true);
      this.config.addCapability(PCI_CAP_ID_VNDR, body);
    };
    cap(1, COMMON_OFF, COMMON_LEN);
    cap(2, NOTIFY_OFF, NOTIFY_MULTIPLIER * device.numQueues, NOTIFY_MULTIPLIER);
    cap(3, ISR_OFF, 1);
    cap(4, DEVICE_OFF, Math.max(device.configSize, 4));

    // KVM refusing a route or an irqfd for what the guest programmed: the device stops trusting it
    const refused = (reason: string) => this.needsReset(reason);
    this.msix = new Msix(this.config, device.numQueues + 1, { tableOffset: MSIX_TABLE_OFF, pbaOffset: MSIX_PBA_OFF }, platform, refused, () => this.irq.sync());
    this.irq = new InterruptWiring({
      queues: device.numQueues,
      msix: this.msix,
      line: platform.intxGsi === undefined ? undefined : new IntxLine(platform.vm, platform.intxGsi, this.isr),
      vm: platform.vm,
      vectorOf: (i) => (i < device.numQueues ? this.common.queues[i].msixVector : this.common.msixConfig),
      intxAllowed: () => (this.config.command & PCI_CMD_INTX_DISABLE) === 0,
      isrBits: { queue: ISR_QUEUE, config: ISR_CONFIG },
      refused,
    });
    // (virtio 1.x §4.1.4.5: without MSI-X, the status register's Interrupt Status is ISR's bits ORed)
    this.config.interruptStatus = () => !this.msix.enabled && Atomics.load(this.isr, 0) !== 0;
    // MSI-X's control word changes what its vectors do; the command register's INTx disable bit the line's
    this.config.onWrite = (off, size) => {
      this.msix.configWritten(off, size);
      if (off <= 5 && off + size > 5) this.irq.sync();
    };
    this.kickFds = Array.from({ length: device.numQueues }, () => native.eventfd(0, EFD_NONBLOCK));
    this.common = new CommonConfig({
      features: device.features,
      numQueues: device.numQueues,
      maxQueueSize: device.maxQueueSize,
      vectors: this.msix.count,
      writeStatus: (v) => this.writeStatus(v),
      vectorsChanged: () => this.irq.sync(),
    });
    // out of reset a function's INTx is enabled and MSI-X is not
    this.irq.sync();
  }

  get deviceStatus(): number {
    return this.common.status;
  }

  // ---- BAR placement: the MMIO range, and an ioeventfd per queue notify address

  /**
   * The guest places the BAR (a PCI configuration write). A placement that cannot be decoded — over
   * another device's range, or where KVM refuses the notify ioeventfds — leaves the BAR undecoded, as
   * a conflicting BAR is on real hardware: the guest's doing must never end the VM.
   */
  private onBarMap(addr: number | undefined): void {
    if (this.barAddr !== undefined) {
      this.platform.mmio.unregister(this, this.barAddr);
      this.setIoeventfds(this.barAddr, true);
      this.barAddr = undefined;
    }
    if (addr === undefined) return;
    try {
      this.platform.mmio.register(addr, BAR_SIZE, this, `virtio-pci-${this.device.deviceType}`);
    } catch {
      this.barConflicts++;
      return;
    }
    try {
      this.setIoeventfds(addr, false);
    } catch {
      this.setIoeventfds(addr, true, true);
      this.platform.mmio.unregister(this, addr);
      this.barConflicts++;
      return;
    }
    this.barAddr = addr;
  }

  /** ISR reads that found nothing, and that found bits (diagnostics: TSVMM_DEBUG_INTX) */
  readonly isrReads = [0, 0];

  /** BAR placements refused (overlaps): visible for diagnostics and tests. */
  barConflicts = 0;

  private setIoeventfds(bar: number, deassign: boolean, bestEffort = false): void {
    this.kickFds.forEach((fd, q) => {
      if (this.device.kickedByExit?.(q)) return;
      // len 0: any access width (KVM_CAP_IOEVENTFD_ANY_LENGTH); drivers write 16-bit queue indices
      try {
        this.platform.vm.ioeventfd({ fd, addr: bar + NOTIFY_OFF + q * NOTIFY_MULTIPLIER, len: 0, deassign });
      } catch (e) {
        if (!bestEffort) throw e;
      }
    });
  }

  // ---- BAR register accesses (vCPU exits)

  read(offset: number, size: number): number {
    if (offset < COMMON_OFF + COMMON_LEN) return this.common.read(offset - COMMON_OFF, size);
    if (offset === ISR_OFF) {
      const isr = Atomics.exchange(this.isr, 0, 0) & 0xff;
      this.isrReads[isr ? 1 : 0]++;
      return isr;
    }
    if (offset >= DEVICE_OFF && offset < DEVICE_OFF + this.device.configSize) return this.device.readConfig(offset - DEVICE_OFF, size);
    if (offset >= MSIX_TABLE_OFF && offset < MSIX_PBA_OFF) return this.msix.readTable(offset - MSIX_TABLE_OFF, size);
    return 0; // notify area, PBA (no pending bits kept: a masked vector's stay in its eventfd, see msix.ts), holes
  }

  write(offset: number, size: number, value: number): void {
    if (offset < COMMON_OFF + COMMON_LEN) return this.common.write(offset - COMMON_OFF, size, value);
    if (offset >= DEVICE_OFF && offset < DEVICE_OFF + this.device.configSize) return this.device.writeConfig(offset - DEVICE_OFF, size, value);
    if (offset >= NOTIFY_OFF && offset < NOTIFY_OFF + NOTIFY_MULTIPLIER * this.device.numQueues) {
      const q = (offset - NOTIFY_OFF) / NOTIFY_MULTIPLIER;
      if (Number.isInteger(q) && this.common.status & STATUS.DRIVER_OK) this.device.kick?.(q);
      return;
    }
    if (offset >= MSIX_TABLE_OFF && offset < MSIX_PBA_OFF) this.msix.writeTable(offset - MSIX_TABLE_OFF, size, value);
  }

  private writeStatus(value: number): void {
    if (value === 0) {
      this.reset();
      return;
    }
    if (this.resetting) return;
    const c = this.common;
    // the driver sets bits; only a reset clears them (§2.1.2: it must not clear one). A bit it leaves
    // out stays set: else clearing DRIVER_OK and setting it again would activate a live device twice
    const added = value & ~c.status;
    let next = c.status | value;
    if (added & STATUS.FEATURES_OK) {
      const ok = (c.driverFeatures & ~this.device.features) === 0n && (c.driverFeatures >> BigInt(VIRTIO_F_VERSION_1)) & 1n;
      if (!ok) next &= ~STATUS.FEATURES_OK; // the driver re-reads status and gives up
    }
    if (added & STATUS.DRIVER_OK && !(next & STATUS.FEATURES_OK)) next &= ~STATUS.DRIVER_OK;
    c.status = next;
    if (added & STATUS.DRIVER_OK && c.status & STATUS.DRIVER_OK) void this.activate();
  }

  private activate(starts?: Array<RingState | undefined>): Promise<void> {
    const queues: ActiveQueue[] = [];
    this.common.queues.forEach((q, index) => {
      if (!q.enable) return;
      queues.push({
        start: starts?.[index],
        index,
        size: q.size,
        desc: q.desc,
        avail: q.avail,
        used: q.used,
        kickFd: this.device.kickedByExit?.(index) ? -1 : this.kickFds[index],
        callFd: this.irq.queueFd(index),
      });
    });
    return this.device
      .activate({
        features: this.common.driverFeatures,
        queues,
        needsReset: (reason) => this.needsReset(reason),
        configChanged: () => this.configChanged(),
      })
      .catch((e: unknown) => this.needsReset(`activation failed: ${(e as Error).message}`));
  }

  /** The device stops trusting the driver: DEVICE_NEEDS_RESET and a configuration interrupt. */
  needsReset(reason: string): void {
    this.brokenReason ??= reason;
    if (!(this.common.status & STATUS.DRIVER_OK)) return;
    this.common.status |= STATUS.NEEDS_RESET;
    this.configChanged();
  }

  configChanged(): void {
    this.common.generation = (this.common.generation + 1) & 0xff;
    Atomics.or(this.isr, 0, ISR_CONFIG);
    if (!this.msix.enabled || this.common.msixConfig !== NO_VECTOR) this.irq.signalConfig();
  }

  private clearState(): void {
    this.common.clear();
    Atomics.store(this.isr, 0, 0);
    this.brokenReason = undefined;
    this.irq.sync();
    // clear kicks that arrived for the old rings
    for (const fd of this.kickFds) native.read(fd, SCRATCH);
  }

  /**
   * Device reset. A device that never went live has nothing running: its state clears at once (the
   * driver's next write must find it reset). A live one keeps reporting its old status until its
   * threads have stopped; the driver polls for 0 (§4.1.4.3.2).
   */
  private reset(): void {
    if (this.resetting) return;
    if (!(this.common.status & STATUS.DRIVER_OK)) {
      this.clearState();
      void this.device.reset();
      return;
    }
    this.resetting = this.device
      .reset()
      .catch(() => undefined)
      .then(() => {
        this.clearState();
        this.resetting = undefined;
      });
  }

  // ---- device state (src/vmm/state/)

  /** Whether the device is live (its rings must be quiesced before saveState). */
  get live(): boolean {
    const status = this.common.status;
    return (status & STATUS.DRIVER_OK) !== 0 && !(status & STATUS.NEEDS_RESET);
  }

  private quiesced = false;

  /** Stop the device's threads (they own the ring positions while they run) before saveState. */
  async quiesce(): Promise<void> {
    await this.resetting;
    await this.device.quiesce?.();
    this.quiesced = true;
  }

  async unquiesce(): Promise<void> {
    this.quiesced = false;
    await this.device.unquiesce?.();
  }

  /** The transport's registers, each live ring's position and the device's state; a live device quiesced first. */
  saveState(): StateValue {
    if (!this.device.saveState) throw new Error(`virtio device type ${this.device.deviceType} cannot save its state`);
    const live = this.live;
    if (live && !this.quiesced) throw new Error(`virtio device type ${this.device.deviceType}: saveState while its rings are served (quiesce first)`);
    const c = this.common;
    return encodeTransport(
      {
        status: c.status,
        generation: c.generation,
        dfSelect: c.dfSelect,
        gfSelect: c.gfSelect,
        driverFeatures: c.driverFeatures,
        msixConfig: c.msixConfig,
        queueSelect: c.queueSelect,
        isr: Atomics.load(this.isr, 0),
        brokenReason: this.brokenReason,
        msixTable: this.msix.table,
        queues: c.queues.map((q, i) => ({ ...q, ring: live && q.enable ? (this.device.ringState?.(i) ?? { nextAvail: 0, nextUsed: 0, availWrap: true, usedWrap: true }) : undefined })),
      },
      this.device.saveState(),
    );
  }

  /**
   * Take saved registers into this freshly plugged transport (its configuration space restored first:
   * the BAR is where it was), program the MSI-X routes again and, for a live device, activate it with
   * each ring where it stood. Resolves once the device runs.
   */
  restoreState(f: Fields): Promise<void> {
    if (this.common.status !== 0) throw new Error('restoreState: the device is not fresh');
    const s = readTransport(f, { features: this.device.features, numQueues: this.device.numQueues, maxQueueSize: this.device.maxQueueSize, vectors: this.msix.count });
    const dev = f.obj('device');
    if (!this.device.restoreState) throw new Error(`virtio device type ${this.device.deviceType} cannot restore its state`);
    this.device.restoreState(dev);
    f.done();
    Object.assign(this.common, { status: s.status, generation: s.generation, dfSelect: s.dfSelect, gfSelect: s.gfSelect, driverFeatures: s.driverFeatures, msixConfig: s.msixConfig, queueSelect: s.queueSelect });
    this.brokenReason = s.brokenReason;
    Atomics.store(this.isr, 0, s.isr);
    this.msix.table.set(s.msixTable);
    s.queues.forEach((q, i) => (this.common.queues[i] = { size: q.size, msixVector: q.msixVector, enable: q.enable, desc: q.desc, avail: q.avail, used: q.used }));
    this.msix.sync();
    this.irq.refresh();
    return this.live ? this.activate(s.queues.map((q) => q.ring)) : Promise.resolve();
  }

  /** Close the eventfds (VM teardown; the VM's fds are closed with it). */
  async close(): Promise<void> {
    const c = this.irq.intxCounts;
    if (process.env.TSVMM_DEBUG_INTX && c && c.raised > 0)
      process.stderr.write(`tsvmm: INTx of virtio device type ${this.device.deviceType} on GSI ${c.gsi}: raised ${c.raised}, EOIs ${c.eois}, asserted again ${c.reasserted}; ISR reads ${this.isrReads[1]} with bits, ${this.isrReads[0]} without; ISR now ${Atomics.load(this.isr, 0)}\n`);
    await this.resetting;
    await this.device.reset();
    if (this.barAddr !== undefined) this.platform.mmio.unregister(this, this.barAddr);
    this.irq.close();
    for (const fd of this.kickFds) native.close(fd);
  }
}

const SCRATCH = new BigUint64Array(1);
