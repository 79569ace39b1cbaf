/* PCI configuration mechanism #1 and memory-mapped BARs, from CPL3. */
#pragma once
#include <stdint.h>

uint32_t pci_read32(uint32_t dev, uint32_t reg);
uint16_t pci_read16(uint32_t dev, uint32_t reg);
uint8_t pci_read8(uint32_t dev, uint32_t reg);
void pci_write16(uint32_t dev, uint32_t reg, uint16_t v);
/* slot of the first function with vendor:device on bus 0, or -1 */
int pci_find(uint16_t vendor, uint16_t device);
/* guest-physical address of BAR n (64-bit BARs included) */
uint64_t pci_bar(uint32_t dev, int bar);
/* make [phys, phys+len) of MMIO reachable (identity, uncached) and return a pointer to it */
volatile void *map_mmio(uint64_t phys, uint64_t len);
