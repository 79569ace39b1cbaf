// The VM's virtio functions on the PCI host: the network devices, the entropy device and the vIOMMU.
// This module plugs them (slot, BAR, firmware's command bits), and fans pause, resume, dirty logging,
// the vIOMMU's stuck-thread request and close out over them.
import { UserError } from '../errors.js';
import { checkNetConfig, type NetConfig, type RngConfig } from './config.js';
import { createDriver } from '../drivers/registry.js';
import { VirtioIommu } from '../viommu/device.js';
import type { VirtioDevice } from '../virtio/device.js';
import { VirtioNet, parseMac } from '../virtio-net/device.js';
import { VirtioRng } from '../virtio-rng/device.js';
import { VirtioPciDevice } from './devices/virtio-pci.js';
import { PCI_CMD_MEM, PCI_CMD_MASTER, type PciHost } from './devices/pci.js';
import type { NetDriver } from '../drivers/api.js';
import type { Bus } from './bus.js';
import type { VmFd } from './kvm.js';
import type { GsiRouter } from './irq-routing.js';
import type { GuestMemory } from './memory.js';
import type { DirtyLogArea } from '../virtio/dirty-log.js';
import { MMIO_HOLE_START } from '../boot/layout.js';
import { pciIntxGsi } from '../boot/acpi.js';

/** A network device as the VM holds it. */
export interface NetDevice {
  net: VirtioNet;
  pci: VirtioPciDevice;
  driver: NetDriver;
}

/** What the devices need of the VM: its memory, its PCI host and MMIO bus, and the KVM objects for interrupts. */
export interface VirtioHost {
  memory: GuestMemory;
  pci: PciHost;
  mmio: Bus;
  vm: VmFd;
  router: GsiRouter;
  /** KVM can resample an irqfd (KVM_CAP_IRQFD_RESAMPLE): functions get an INTx line */
  intx?: boolean;
}


/** Each virtio device's BAR 0 (common, notify, ISR, device config and MSI-X), aligned to its size. */
const BAR_SIZE = 0x8000;
const PCI_CLASS_NET = 0x020000;
/** PCI class "other", as QEMU's virtio-rng-pci */
const PCI_CLASS_RNG = 0xff0000;
const PCI_CLASS_IOMMU = 0x088000;

export class VirtioDevices {
  /** in the order configured; emptied by close() */
  readonly net: NetDevice[] = [];
  rng?: VirtioRng;
  private rngPci?: VirtioPciDevice;
  iommu?: VirtioIommu;
  private iommuPci?: VirtioPciDevice;
  private iommuSlot = 0;
  /** next free address for BARs, in the 32-bit MMIO hole */
  private mmioNext = MMIO_HOLE_START;

  constructor(private readonly host: VirtioHost) {}

  /** The vIOMMU, plugged before the devices it translates for (they learn of it when plugged). */
  plugIommu(): void {
    this.iommu = new VirtioIommu(this.host.memory, { endpoints: [], thread: true });
    // an UNMAP waiting past the stuck-thread limit for a dataplane thread: its device ends its threads
    this.iommu.onStuckThread = async (slot, ms) => {
      await Promise.all([...this.net.map((d) => d.net.endStuckThread(slot, ms)), this.rng?.endStuckThread(slot, ms)]);
    };
    this.iommuSlot = this.host.pci.freeSlot();
    this.iommuPci = this.plug(this.iommu, PCI_CLASS_IOMMU, this.iommuSlot);
  }

  async plugNet(n: NetConfig, index: number): Promise<void> {
    let mac: Uint8Array;
    try {
      mac = n.mac ? parseMac(n.mac) : new Uint8Array([0x52, 0x54, 0x00, 0x75, 0x76, index & 0xff]);
    } catch (e) {
      throw new UserError(`--net: ${(e as Error).message}`);
    }
    checkNetConfig(n);
    // the driver sees the MTU too: it raises its wire's to it where it can
    const driver = await createDriver(n.driver, { ...(n.options ?? {}), ...(n.queues ? { queues: String(n.queues) } : {}), ...(n.mtu ? { mtu: String(n.mtu) } : {}) });
    try {
      if (n.mtu !== undefined && n.mtu > driver.caps.mtu) throw new UserError(`--net: mtu=${n.mtu} is more than the ${driver.name} driver carries (${driver.caps.mtu})`);
      const slot = this.host.pci.freeSlot();
      const iommu = this.endpoint(slot);
      const net = new VirtioNet(this.host.memory, { driver, mac, queuePairs: Math.min(n.queues ?? 1, driver.caps.queuePairs), threads: n.threads, busyPollUs: n.busyPollUs, packed: n.packed, mergeable: n.mergeable, rss: n.rss, mtu: n.mtu, speed: n.speed, duplex: n.duplex, rateLimit: n.rateLimit, iommu });
      const pci = this.plug(net, PCI_CLASS_NET, slot);
      if (iommu) this.iommu!.addEndpoint(iommu.endpoint);
      this.net.push({ net, pci, driver });
    } catch (e) {
      driver.close();
      throw e;
    }
  }

  /** The entropy device, after the network devices (their PCI slots stay where they were without it). */
  plugRng(o: RngConfig): void {
    if (o.packed !== undefined && typeof o.packed !== 'boolean') throw new UserError(`--rng: packed must be true or false (the library option), not ${JSON.stringify(o.packed)}`);
    const slot = this.host.pci.freeSlot();
    const iommu = this.endpoint(slot);
    this.rng = new VirtioRng(this.host.memory, { iommu, packed: o.packed });
    this.rngPci = this.plug(this.rng, PCI_CLASS_RNG, slot);
    if (iommu) this.iommu!.addEndpoint(iommu.endpoint);
  }

  /** Who sits behind the vIOMMU, for the ACPI VIOT table; undefined without one. */
  get viot(): { iommuBdf: number; endpoints: number[] } | undefined {
    return this.iommu && this.iommuPci ? { iommuBdf: this.iommuSlot << 3, endpoints: [...this.iommu.endpoints] } : undefined;
  }

  /** Hold every dataplane thread off its rings; resolves once all are held. */
  async pause(): Promise<void> {
    await Promise.all([...this.net.map((d) => d.net.pause()), this.rng?.pause()]);
  }

  resume(): void {
    for (const d of this.net) d.net.resume();
    this.rng?.resume();
  }

  /** Every device marks its writes into guest memory in `log` from now on (see dirty-pages.ts). */
  async setDirtyLog(log: DirtyLogArea | undefined): Promise<void> {
    await Promise.all([...this.net.map((d) => d.net.setDirtyLog(log)), this.rng?.setDirtyLog(log), this.iommu?.setDirtyLog(log)]);
  }

  /** Stop every device's threads and close the net drivers (before guest memory goes). */
  async close(): Promise<void> {
    for (const d of this.net.splice(0)) {
      await d.pci.close();
      d.driver.close();
    }
    await this.rngPci?.close();
    await this.iommuPci?.close();
  }

  /** Behind the vIOMMU a device's endpoint id is its PCI requester id (bus 0, this slot, function 0). */
  private endpoint(slot: number): { table: VirtioIommu['table']; endpoint: number } | undefined {
    return this.iommu ? { table: this.iommu.table, endpoint: slot << 3 } : undefined;
  }

  /** A virtio device on the PCI bus, with firmware's part done: BAR placed, decoding and bus mastering on. */
  private plug(dev: VirtioDevice, classCode: number, slot: number): VirtioPciDevice {
    const intxGsi = this.host.intx ? pciIntxGsi(slot) : undefined;
    const pci = new VirtioPciDevice(dev, { mmio: this.host.mmio, vm: this.host.vm, router: this.host.router, intxGsi }, classCode);
    this.host.pci.add(pci, slot);
    this.mmioNext = Math.ceil(this.mmioNext / BAR_SIZE) * BAR_SIZE;
    pci.config.assignBar(0, this.mmioNext);
    this.mmioNext += BAR_SIZE;
    pci.config.command = PCI_CMD_MEM | PCI_CMD_MASTER;
    return pci;
  }
}
