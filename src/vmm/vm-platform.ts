// The platform devices every Vm has, on its buses: COM1 (its output batched into the VM's serial
// stream), the power controls (debug exit, i8042 reset, ACPI sleep and reset), the ACPI event device
// (the power button) and the PCI host with its ECAM window (the virtio functions go on it).
import type { PassThrough } from 'node:stream';
import type { Bus } from './bus.js';
import { Uart8250 } from './devices/uart8250.js';
import { AcpiSleep, DebugExit, I8042, ResetControl, type PowerEvent } from './devices/power.js';
import { GedEvents } from './devices/ged.js';
import { PciHost, PciEcam, PCI_CONFIG_ADDRESS } from './devices/pci.js';
import { ACPI_SLEEP_CONTROL_PORT, ACPI_S5_SLP_TYP, ACPI_GED_PORT, ACPI_GED_GSI } from '../boot/acpi.js';
import { PCI_ECAM_BASE, PCI_ECAM_SIZE } from '../boot/layout.js';

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
export const DEBUG_EXIT_PORT = 0xf4;
const I8042_PORT = 0x60;

export interface Platform {
  uart: Uart8250;
  ged: GedEvents;
  pci: PciHost;
  /** write what the guest sent to COM1 and has not reached the stream yet */
  flushSerial(): void;
}

export interface PlatformHost {
  pio: Bus;
  mmio: Bus;
  /** the guest powered off or asked for a reset */
  power(e: PowerEvent): void;
  /** an interrupt line of the in-kernel irqchip */
  irqLine(gsi: number, level: boolean): void;
  serial: PassThrough;
}

export function attachPlatform(h: PlatformHost): Platform {
  // serial bytes are batched per event-loop turn so the stream sees lines, not single bytes
  let pending: number[] = [];
  const flushSerial = () => {
    if (pending.length === 0) return;
    const chunk = Buffer.from(pending);
    pending = [];
    if (!h.serial.writableEnded) h.serial.write(chunk);
  };
  const uart = new Uart8250(
    (bytes) => {
      if (pending.length === 0) setImmediate(flushSerial);
      for (const b of bytes) pending.push(b);
    },
    (level) => h.irqLine(COM1_IRQ, level),
  );
  h.pio.register(COM1_PORT, 8, uart, 'com1');
  h.pio.register(DEBUG_EXIT_PORT, 4, new DebugExit(h.power), 'debug-exit');
  h.pio.register(I8042_PORT, 5, new I8042(h.power), 'i8042');
  const pci = new PciHost(new ResetControl(h.power));
  h.pio.register(PCI_CONFIG_ADDRESS, 8, pci, 'pci-host');
  h.mmio.register(PCI_ECAM_BASE, PCI_ECAM_SIZE, new PciEcam(pci), 'pci-ecam');
  h.pio.register(ACPI_SLEEP_CONTROL_PORT, 2, new AcpiSleep(ACPI_S5_SLP_TYP, h.power), 'acpi-sleep');
  const ged = new GedEvents(() => {
    h.irqLine(ACPI_GED_GSI, true);
    h.irqLine(ACPI_GED_GSI, false);
  });
  h.pio.register(ACPI_GED_PORT, 1, ged, 'acpi-ged');
  return { uart, ged, pci, flushSerial };
}
