// The real-mode reset vector (F000:FFF0, physical 0xFFFF0), where a PC's firmware starts after a reset.
// tsvmm boots kernels directly and has no firmware; a guest that jumps here asks for a reset the way it
// would on a PC. Linux does so by default on hardware-reduced ACPI without EFI (reboot_type falls from
// BOOT_EFI to BOOT_BIOS: a real-mode jump to F000:FFF0), after a panic or on `reboot` — so the vector
// holds a few instructions that request a reset through the reset control register, which ends the VM
// as any other guest reset does.
import { ACPI_RESET_PORT } from './acpi.js';

/** physical address of F000:FFF0 */
export const RESET_VECTOR_ADDR = 0xffff0;

/** 16-bit code: mov dx, 0xcf9; mov al, 0x0e (full reset: SYS_RST | RST_CPU | FULL_RST); out dx, al; then hlt forever. */
export function resetVectorCode(): Uint8Array {
  const port = ACPI_RESET_PORT;
  return Uint8Array.of(0xba, port & 0xff, port >> 8, 0xb0, 0x0e, 0xee, 0xf4, 0xeb, 0xfd);
}
