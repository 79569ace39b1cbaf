// Ways a guest ends or resets the machine through port I/O.
import type { BusDevice } from '../bus.js';
import { StateError, type Fields, type StateValue } from '../../state/fields.js';

export type PowerEvent = { reason: 'poweroff'; status: number; detail: string } | { reason: 'reset'; detail: string };

/**
 * isa-debug-exit compatible port (QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=4`): a write of N
 * powers the machine off with status N. The test guest uses it under tsvmm and under QEMU alike
 * (QEMU reports (N << 1) | 1 as its exit code).
 */
export class DebugExit implements BusDevice {
  constructor(private readonly onEvent: (e: PowerEvent) => void) {}
  read(): number {
    return 0xffffffff;
  }
  write(_offset: number, _size: number, value: number): void {
    this.onEvent({ reason: 'poweroff', status: value >>> 0, detail: `debug-exit port written with ${value >>> 0}` });
  }
}

/** i8042 keyboard controller, only as far as the pulse-reset command (0xFE to port 0x64) that Linux uses. */
export class I8042 implements BusDevice {
  constructor(private readonly onEvent: (e: PowerEvent) => void) {}
  read(offset: number): number {
    // status (0x64): output buffer empty, input buffer empty; data (0x60): nothing
    return offset === 4 ? 0x00 : 0x00;
  }
  write(offset: number, _size: number, value: number): void {
    if (offset === 4 && (value & 0xff) === 0xfe) this.onEvent({ reason: 'reset', detail: 'i8042 reset pulse' });
  }
}

/** Reset control register at 0xCF9 (PIIX/ICH): bit 2 with bit 1 requests a reset. */
export class ResetControl implements BusDevice {
  private value = 0;
  constructor(private readonly onEvent: (e: PowerEvent) => void) {}
  read(): number {
    return this.value;
  }
  write(_offset: number, _size: number, value: number): void {
    this.value = value & 0x0a;
    if (value & 0x04) this.onEvent({ reason: 'reset', detail: 'reset control register (0xcf9)' });
  }
  saveState(): StateValue {
    return { value: this.value };
  }
  restoreState(f: Fields): void {
    const v = f.uint('value', 0xff);
    f.done();
    if (v & ~0x0a) throw new StateError(`${f.path}.value: bits 0x${(v & ~0x0a).toString(16)} are never kept`);
    this.value = v;
  }
}

/**
 * ACPI hardware-reduced sleep control/status registers (FADT SLEEP_CONTROL_REG / SLEEP_STATUS_REG):
 * writing SLP_EN with the \_S5 sleep type powers the machine off.
 */
export class AcpiSleep implements BusDevice {
  constructor(
    private readonly s5SlpTyp: number,
    private readonly onEvent: (e: PowerEvent) => void,
  ) {}
  read(): number {
    return 0;
  }
  write(offset: number, _size: number, value: number): void {
    if (offset !== 0) return; // status register: write-1-to-clear of nothing
    if (value & 0x20 && ((value >> 2) & 7) === this.s5SlpTyp) this.onEvent({ reason: 'poweroff', status: 0, detail: 'ACPI S5 (soft off)' });
  }
}
