// A virtio device on tsvmm's virtio-pci transport with no KVM: its BAR 0 placed and enabled on an MMIO
// bus, register accessors for the common configuration, and the features the device offers.
import { Bus } from '../../src/vmm/bus.js';
import { VirtioPciDevice } from '../../src/vmm/devices/virtio-pci.js';
import { PCI_CMD_MEM } from '../../src/vmm/devices/pci.js';
import type { VmFd } from '../../src/vmm/kvm.js';
import type { GsiRouter } from '../../src/vmm/irq-routing.js';

export const BAR = 0xc0000000;

export function onPciBar(device: ConstructorParameters<typeof VirtioPciDevice>[0], vm: VmFd, classCode = 0x020000) {
  const router = { addMsi: () => 24, updateMsi: () => {} } as unknown as GsiRouter;
  const mmio = new Bus('mmio');
  const pci = new VirtioPciDevice(device, { mmio, vm, router }, classCode);
  pci.config.assignBar(0, BAR);
  pci.config.command = PCI_CMD_MEM;
  const r = (off: number, size = 4) => Number(mmio.read(BAR + off, size));
  const w = (off: number, v: number, size = 4) => mmio.write(BAR + off, size, BigInt(v));
  /** the 64 feature bits the device offers (device_feature_select 0 and 1) */
  const offered = () => {
    w(0x00, 0);
    const lo = BigInt(r(0x04));
    w(0x00, 1);
    return lo | (BigInt(r(0x04)) << 32n);
  };
  return { pci, mmio, r, w, offered };
}
