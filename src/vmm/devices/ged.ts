// The Generic Event Device's event register (see buildDsdt's GED in src/boot/acpi.ts): the host raises
// events (the power button), the guest's _EVT method reads which. One byte of port I/O.
import type { BusDevice } from '../bus.js';
import { GED_EVENT_POWER_BUTTON } from '../../boot/acpi.js';

export class GedEvents implements BusDevice {
  private pending = 0;
  /** events raised since the VM started, and reads of the register that returned some */
  readonly counts = { raised: 0, taken: 0 };

  /** `pulse` raises the GED's interrupt (an edge: the line up, then down). */
  constructor(private readonly pulse: () => void) {}

  /** Press the power button: the event is pending until the guest reads the register. */
  pressPowerButton(): void {
    this.raise(GED_EVENT_POWER_BUTTON);
  }

  private raise(event: number): void {
    this.pending |= event;
    this.counts.raised++;
    this.pulse();
  }

  /** Read-to-clear: the events pending now, each reported once. Other widths and offsets read nothing. */
  read(offset: number, size: number): number {
    if (offset !== 0 || size !== 1) return 0;
    const events = this.pending;
    this.pending = 0;
    if (events) this.counts.taken++;
    return events;
  }

  /** The register is read-only: writes are ignored. */
  write(): void {}
}
