// MSI-X for a PCI function (PCI Local Bus 3.0 §6.8.2): the capability in configuration space, the
// vector table in a BAR, and per programmed vector a GSI route in KVM. Which eventfds raise a vector
// (irqfds on its GSI) is the function's to wire (virtio-pci-irq.ts), told of every change: an unmasked
// vector with an address has a GSI (activeGsi); a masked one has none, and what the eventfds aimed
// at it gather meanwhile injects when it is unmasked.
import type { GsiRouter } from '../irq-routing.js';
import type { PciConfigSpace } from './pci.js';

const PCI_CAP_ID_MSIX = 0x11;
const MSIX_ENABLE = 0x8000;
const MSIX_FUNCTION_MASK = 0x4000;
/** table entry: address low, address high, data, vector control (bit 0: masked) */
const ENTRY_WORDS = 4;

interface Vector {
  /** its route, made the first time it was usable and kept (reprogrammed) after */
  gsi?: number;
  active: boolean;
}

export interface MsixPlacement {
  /** where in BAR 0 the table and the pending-bit array are */
  tableOffset: number;
  pbaOffset: number;
}

export class Msix {
  /** the vector table as the guest programs it, a word per 32-bit register */
  readonly table: Uint32Array;
  private readonly vectors: Vector[];
  private readonly cap: number;

  /** `refused`: KVM would not take a route for what the guest programmed. `changed`: after each sync. */
  constructor(
    private readonly config: PciConfigSpace,
    count: number,
    place: MsixPlacement,
    private readonly platform: { router: GsiRouter },
    private readonly refused: (reason: string) => void,
    private readonly changed: () => void = () => {},
  ) {
    const body = new Uint8Array(10);
    const v = new DataView(body.buffer);
    v.setUint16(0, count - 1, true);
    v.setUint32(2, place.tableOffset | 0, true); // BIR 0
    v.setUint32(6, place.pbaOffset | 0, true);
    const writable = new Uint8Array(12);
    writable[3] = 0xc0; // enable and function mask
    this.cap = config.addCapability(PCI_CAP_ID_MSIX, body, writable);
    this.table = new Uint32Array(count * ENTRY_WORDS);
    for (let i = 0; i < count; i++) this.table[i * ENTRY_WORDS + 3] = 1; // masked
    this.vectors = Array.from({ length: count }, () => ({ active: false }));
  }

  get count(): number {
    return this.vectors.length;
  }

  /** The MSI-X enable bit (with it set the function signals no INTx, masked or not). */
  get enabled(): boolean {
    return (this.config.read(this.cap + 2, 2) & MSIX_ENABLE) !== 0;
  }

  /** The GSI that raises vector `i` now, or undefined (MSI-X off or function-masked, vector masked, unprogrammed or absent). */
  activeGsi(i: number): number | undefined {
    const v = this.vectors[i];
    return v?.active ? v.gsi : undefined;
  }

  /** A configuration-space write: the capability's control word changes what is active. */
  configWritten(off: number, size: number): void {
    if (off <= this.cap + 3 && off + size > this.cap + 2) this.sync();
  }

  /** A table read at `offset` into the table; only aligned 32-bit accesses reach a register (else 0). */
  readTable(offset: number, size: number): number {
    return this.inTable(offset, size) ? this.table[offset / 4] : 0;
  }

  writeTable(offset: number, size: number, value: number): void {
    if (!this.inTable(offset, size)) return;
    this.table[offset / 4] = value >>> 0;
    this.sync();
  }

  /** Bring KVM's routes in line with the capability and table; a refusal goes to `refused`. */
  sync(): void {
    try {
      this.apply();
    } catch (e) {
      this.refused(`MSI-X programming refused: ${(e as Error).message}`);
    }
    this.changed();
  }

  private inTable(offset: number, size: number): boolean {
    return offset >= 0 && offset < this.table.length * 4 && size === 4 && offset % 4 === 0;
  }

  private apply(): void {
    const ctrl = this.config.read(this.cap + 2, 2);
    const on = (ctrl & MSIX_ENABLE) !== 0 && (ctrl & MSIX_FUNCTION_MASK) === 0;
    this.vectors.forEach((v, i) => {
      const t = i * ENTRY_WORDS;
      v.active = false;
      if (!(on && (this.table[t + 3] & 1) === 0 && this.table[t] !== 0)) return;
      const msg = { addressLo: this.table[t], addressHi: this.table[t + 1], data: this.table[t + 2] };
      if (v.gsi === undefined) v.gsi = this.platform.router.addMsi(msg);
      else this.platform.router.updateMsi(v.gsi, msg);
      v.active = true;
    });
  }
}
