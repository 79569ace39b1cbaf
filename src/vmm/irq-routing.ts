// The VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, so the VM keeps it here:
// KVM's default legacy routes (ISA IRQs 0-15 to the PICs and the IOAPIC, 16-23 to the IOAPIC) plus
// one MSI route per interrupt vector a device hands to an irqfd.
import type { VmFd } from './kvm.js';

export const IRQCHIP_PIC_MASTER = 0;
export const IRQCHIP_PIC_SLAVE = 1;
export const IRQCHIP_IOAPIC = 2;
export const IOAPIC_PINS = 24;

export interface MsiMessage {
  addressLo: number;
  addressHi: number;
  data: number;
}

type Route = { gsi: number; irqchip?: { chip: number; pin: number }; msi?: MsiMessage };

/** The same table KVM installs with KVM_CREATE_IRQCHIP (arch/x86/kvm/irq_comm.c). */
export function defaultRoutes(): Route[] {
  const routes: Route[] = [];
  for (let gsi = 0; gsi < IOAPIC_PINS; gsi++) {
    routes.push({ gsi, irqchip: { chip: IRQCHIP_IOAPIC, pin: gsi } });
    if (gsi < 16) routes.push({ gsi, irqchip: { chip: gsi < 8 ? IRQCHIP_PIC_MASTER : IRQCHIP_PIC_SLAVE, pin: gsi % 8 } });
  }
  return routes;
}

/** An MSI message for a vector on one local APIC (fixed delivery, edge, physical destination). */
export function msiFor(apicId: number, vector: number): MsiMessage {
  return { addressLo: (0xfee00000 | (apicId << 12)) >>> 0, addressHi: 0, data: vector & 0xff };
}

export class GsiRouter {
  private readonly msi = new Map<number, MsiMessage>();
  private nextGsi = IOAPIC_PINS;
  private readonly free: number[] = [];

  constructor(
    private readonly vm: VmFd,
    private readonly maxRoutes = 4096,
  ) {}

  /** A new GSI routed to `msg` (committed at once). */
  addMsi(msg: MsiMessage): number {
    if (this.msi.size + defaultRoutes().length >= this.maxRoutes) throw new Error('GSI routing table full');
    const gsi = this.free.pop() ?? this.nextGsi++;
    this.msi.set(gsi, msg);
    this.commit();
    return gsi;
  }

  /** Point an existing MSI route elsewhere (the guest reprogrammed an MSI-X entry). */
  updateMsi(gsi: number, msg: MsiMessage): void {
    if (!this.msi.has(gsi)) throw new Error(`GSI ${gsi} is not an MSI route`);
    this.msi.set(gsi, msg);
    this.commit();
  }

  removeMsi(gsi: number): void {
    if (this.msi.delete(gsi)) {
      this.free.push(gsi);
      this.commit();
    }
  }

  routes(): Route[] {
    return [...defaultRoutes(), ...[...this.msi].map(([gsi, msi]) => ({ gsi, msi }))];
  }

  private commit(): void {
    this.vm.setGsiRouting(this.routes());
  }
}
