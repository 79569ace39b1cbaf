#include "virtio_pci.h"
#include "pci.h"

int virtio_find_caps(int dev, struct virtio_caps *c) {
  int have = 0;
  for (uint8_t p = pci_read8((uint32_t)dev, 0x34); p; p = pci_read8((uint32_t)dev, p + 1u)) {
    if (pci_read8((uint32_t)dev, p) != 0x09) continue; /* vendor-specific: a virtio capability */
    uint8_t type = pci_read8((uint32_t)dev, p + 3u);
    uint8_t bar = pci_read8((uint32_t)dev, p + 4u);
    uint32_t off = pci_read32((uint32_t)dev, p + 8u);
    uint32_t len = pci_read32((uint32_t)dev, p + 12u);
    uint64_t base = pci_bar((uint32_t)dev, bar) + off;
    if (type == 1) c->common = map_mmio(base, len), have |= 1;
    if (type == 2) c->notify_base = (uint64_t)(uintptr_t)map_mmio(base, len), c->notify_mult = pci_read32((uint32_t)dev, p + 16u), have |= 2;
    if (type == 4) c->devcfg = map_mmio(base, len), have |= 4;
  }
  return have == 7;
}
