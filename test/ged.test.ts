// The GED event register (src/vmm/devices/ged.ts) on the port I/O bus, without KVM: what the guest's
// _EVT method reads after the host pressed the power button.
import { describe, it, expect } from 'vitest';
import { Bus } from '../src/vmm/bus.js';
import { GedEvents } from '../src/vmm/devices/ged.js';
import { ACPI_GED_PORT, GED_EVENT_POWER_BUTTON } from '../src/boot/acpi.js';

function setup() {
  let pulses = 0;
  const ged = new GedEvents(() => pulses++);
  const pio = new Bus('pio');
  pio.register(ACPI_GED_PORT, 1, ged, 'acpi-ged');
  return { ged, pio, pulses: () => pulses };
}

describe('GED event register', () => {
  it('reads nothing until the button is pressed; a press pulses the interrupt once', () => {
    const { ged, pio, pulses } = setup();
    expect(pio.read(ACPI_GED_PORT, 1)).toBe(0n);
    expect(pulses()).toBe(0);
    ged.pressPowerButton();
    expect(pulses()).toBe(1);
  });

  it('is read-to-clear: the press is reported to one read only', () => {
    const { ged, pio } = setup();
    ged.pressPowerButton();
    expect(pio.read(ACPI_GED_PORT, 1)).toBe(BigInt(GED_EVENT_POWER_BUTTON));
    expect(pio.read(ACPI_GED_PORT, 1)).toBe(0n);
    expect(ged.counts).toEqual({ raised: 1, taken: 1 });
  });

  it('two presses before a read are one pending event (each pulses its edge)', () => {
    const { ged, pio, pulses } = setup();
    ged.pressPowerButton();
    ged.pressPowerButton();
    expect(pulses()).toBe(2);
    expect(pio.read(ACPI_GED_PORT, 1)).toBe(1n);
    expect(pio.read(ACPI_GED_PORT, 1)).toBe(0n);
  });

  it('ignores writes, and wider or misplaced accesses neither read nor clear the events', () => {
    const { ged, pio } = setup();
    ged.pressPowerButton();
    pio.write(ACPI_GED_PORT, 1, 0xffn);
    pio.write(ACPI_GED_PORT, 1, 0n);
    // (the bus refuses accesses running past the one byte: they float high and reach no device)
    expect(pio.read(ACPI_GED_PORT, 2)).toBe(0xffffn);
    expect(pio.read(ACPI_GED_PORT, 4)).toBe(0xffffffffn);
    // and the device itself answers only a byte read at offset 0
    expect(ged.read(0, 4)).toBe(0);
    expect(ged.read(1, 1)).toBe(0);
    expect(pio.read(ACPI_GED_PORT, 1)).toBe(1n);
  });
});
