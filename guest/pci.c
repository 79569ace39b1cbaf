#include "pci.h"
#include "io.h"

#define CONFIG_ADDRESS 0xcf8
#define CONFIG_DATA 0xcfc

static inline void outl_(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "d"(port)); }
static inline uint32_t inl_(uint16_t port) {
  uint32_t v;
  __asm__ volatile("inl %1, %0" : "=a"(v) : "d"(port));
  return v;
}

static void select_reg(uint32_t dev, uint32_t reg) { outl_(CONFIG_ADDRESS, 0x80000000u | (dev << 11) | (reg & 0xfc)); }

uint32_t pci_read32(uint32_t dev, uint32_t reg) {
  select_reg(dev, reg);
  return inl_(CONFIG_DATA);
}
uint16_t pci_read16(uint32_t dev, uint32_t reg) { return (uint16_t)(pci_read32(dev, reg) >> ((reg & 2) * 8)); }
uint8_t pci_read8(uint32_t dev, uint32_t reg) { return (uint8_t)(pci_read32(dev, reg) >> ((reg & 3) * 8)); }
void pci_write16(uint32_t dev, uint32_t reg, uint16_t v) {
  /* read-modify-write of the dword: the #GP emulator handles only 8- and 32-bit port forms */
  uint32_t d = pci_read32(dev, reg);
  int sh = (reg & 2) * 8;
  d = (d & ~(0xffffu << sh)) | ((uint32_t)v << sh);
  select_reg(dev, reg);
  outl_(CONFIG_DATA, d);
}

int pci_find(uint16_t vendor, uint16_t device) {
  for (uint32_t dev = 0; dev < 32; dev++) {
    uint32_t id = pci_read32(dev, 0);
    if ((id & 0xffff) == vendor && (id >> 16) == device) return (int)dev;
  }
  return -1;
}

uint64_t pci_bar(uint32_t dev, int bar) {
  uint32_t lo = pci_read32(dev, 0x10 + 4 * (uint32_t)bar);
  uint64_t a = lo & ~0xfu;
  if ((lo & 0x6) == 0x4) a |= (uint64_t)pci_read32(dev, 0x14 + 4 * (uint32_t)bar) << 32;
  return a;
}

extern uint64_t pdpt[512], pd_hi[512];

volatile void *map_mmio(uint64_t phys, uint64_t len) {
  /* start.S maps the first GiB; 3-4 GiB goes through pd_hi in 2 MiB pages, above 4 GiB 1 GiB pages.
     Adding mappings needs no TLB flush (they were not present). */
  for (uint64_t a = phys & ~((1ull << 21) - 1); a < phys + len; a += 1ull << 21) {
    if (a >= (3ull << 30) && a < (4ull << 30)) {
      uint64_t i = (a - (3ull << 30)) >> 21;
      if (!pd_hi[i]) pd_hi[i] = a | 0x9f; /* present, rw, user, PWT, PCD, 2 MiB */
    } else if (a >= (4ull << 30) && a < (512ull << 30)) {
      uint64_t i = a >> 30;
      if (!pdpt[i]) pdpt[i] = (a & ~((1ull << 30) - 1)) | 0x9f; /* 1 GiB page */
    }
  }
  return (volatile void *)(uintptr_t)phys;
}
