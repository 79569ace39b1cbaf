// A machine built as Vm builds one (KVM VM, irqchip, PIT, RAM, the platform devices on their buses,
// vCPUs with CPUID, MSRs, LAPIC and FPU set up), whose single vCPU the test runs on its own thread
// exit by exit: so it can stop the guest at an exit of its choosing, read the whole state, and go on
// in another machine.
import { native, PROT_READ, PROT_WRITE, MAP_SHARED, isNativeError } from '../../src/native.js';
import { KVM, RUN } from '../../src/vmm/kvm-abi.js';
import { openKvm, requireCaps, supportedCpuid, VmFd, VcpuFd } from '../../src/vmm/kvm.js';
import { GuestMemory } from '../../src/vmm/memory.js';
import { Bus } from '../../src/vmm/bus.js';
import { configureVcpu, enterKernel } from '../../src/vmm/vcpu-setup.js';
import { handleExit, type VcpuStop } from '../../src/vmm/exit.js';
import { Uart8250 } from '../../src/vmm/devices/uart8250.js';
import { DebugExit, I8042, ResetControl, AcpiSleep } from '../../src/vmm/devices/power.js';
import { PciHost, PciEcam, PCI_CONFIG_ADDRESS } from '../../src/vmm/devices/pci.js';
import { ACPI_SLEEP_CONTROL_PORT, ACPI_S5_SLP_TYP } from '../../src/boot/acpi.js';
import { ramRegions, ramLayout, TSS_ADDR, IDENTITY_MAP_ADDR, PCI_ECAM_BASE, PCI_ECAM_SIZE } from '../../src/boot/layout.js';
import { loadKernel } from '../../src/boot/loader.js';
import type { Machine } from '../../src/vmm/state/machine.js';

export class BareMachine {
  readonly kvmFd = openKvm();
  readonly vm: VmFd;
  readonly mem: GuestMemory;
  readonly pio = new Bus('pio');
  readonly mmio = new Bus('mmio');
  readonly vcpu: VcpuFd;
  private readonly run: DataView;
  private readonly runSize: number;
  output = '';
  power?: string;
  /** called after each exit is served, before the vCPU runs again (a test injecting interrupts) */
  afterExit?: () => void;

  constructor(
    readonly memSize: number,
    boot?: { kernel: Uint8Array; cmdline: string },
  ) {
    requireCaps(this.kvmFd);
    const vm = (this.vm = VmFd.create(this.kvmFd));
    vm.setTssAddr(TSS_ADDR);
    vm.setIdentityMapAddr(IDENTITY_MAP_ADDR);
    vm.createIrqchip();
    vm.createPit2();
    const mem = (this.mem = new GuestMemory(ramRegions(memSize)));
    mem.table.regions.forEach((r, slot) => vm.setUserMemoryRegion(slot, r.gpa, r.size, mem.hostAddress + BigInt(r.offset)));
    const power = (e: { detail: string }) => (this.power = e.detail);
    this.pio.register(0x3f8, 8, new Uart8250((b) => (this.output += Buffer.from(b).toString('latin1')), (level) => vm.irqLine(4, level)), 'com1');
    this.pio.register(0xf4, 4, new DebugExit(power), 'debug-exit');
    this.pio.register(0x60, 5, new I8042(power), 'i8042');
    const host = new PciHost(new ResetControl(power));
    this.pio.register(PCI_CONFIG_ADDRESS, 8, host, 'pci-host');
    this.mmio.register(PCI_ECAM_BASE, PCI_ECAM_SIZE, new PciEcam(host), 'pci-ecam');
    this.pio.register(ACPI_SLEEP_CONTROL_PORT, 2, new AcpiSleep(ACPI_S5_SLP_TYP, power), 'acpi-sleep');

    const fd = (this.vcpu = new VcpuFd(vm.createVcpu(0)));
    configureVcpu(fd, supportedCpuid(this.kvmFd), 0, 1);
    if (boot) {
      const entry = loadKernel({ slice: (gpa, len) => mem.slice(gpa, len), lowSize: ramLayout(memSize).lowSize }, { kernel: boot.kernel, cmdline: boot.cmdline, memSize, cpus: 1 });
      enterKernel(fd, entry);
    }
    this.runSize = native.ioctl(this.kvmFd, KVM.GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
    this.run = new DataView(native.mmap(fd.fd, this.runSize, PROT_READ | PROT_WRITE, MAP_SHARED, 0));
  }

  get machine(): Machine {
    return { kvmFd: this.kvmFd, vmFd: this.vm.fd, vcpuFds: [this.vcpu.fd], memory: this.memSize, buses: [this.pio, this.mmio] };
  }

  /** Run until `until()` holds after an exit, the guest powers off, or the vCPU stops; then complete the exit's I/O. */
  runUntil(until: () => boolean, maxExits = 1_000_000): VcpuStop | undefined {
    const access = (space: 'pio' | 'mmio', write: boolean, addr: number, size: number, value: bigint) => {
      const bus = space === 'pio' ? this.pio : this.mmio;
      if (write) {
        bus.write(addr, size, value);
        return 0n;
      }
      return bus.read(addr, size);
    };
    for (let i = 0; i < maxExits; i++) {
      native.ioctl(this.vcpu.fd, KVM.RUN, 0, 'KVM_RUN', true);
      const stop = handleExit(this.run, access);
      if (stop || this.power) return stop;
      this.afterExit?.();
      if (until()) {
        this.completeExit();
        return undefined;
      }
    }
    throw new Error(`no end after ${maxExits} exits; output so far: ${this.output}`);
  }

  /**
   * KVM finishes an exit's I/O (an IN's value into the register, the instruction pointer past an OUT)
   * on the next KVM_RUN: one with immediate_exit set does just that and returns at once (EINTR), as
   * a paused VMM's vCPU threads do before their state is read.
   */
  completeExit(): void {
    this.run.setUint8(RUN.immediate_exit, 1);
    try {
      native.ioctl(this.vcpu.fd, KVM.RUN, 0, 'KVM_RUN', true);
    } catch (e) {
      if (!isNativeError(e) || e.code !== 'EINTR') throw e;
    }
    this.run.setUint8(RUN.immediate_exit, 0);
  }

  close(): void {
    native.remapAnonymous(native.addressOf(this.run.buffer as ArrayBuffer), this.runSize);
    this.vcpu.close();
    this.vm.close();
    this.mem.release();
    native.close(this.kvmFd);
  }
}
