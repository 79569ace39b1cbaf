/* virtio-pci modern: the capabilities every device's driver needs (common config, notify, device config). */
#pragma once
#include <stdint.h>

/* a split-ring descriptor (virtio 1.x §2.7.5), as every driver here lays out its rings */
struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};

struct virtio_caps {
  volatile uint8_t *common, *devcfg;
  uint64_t notify_base;
  uint32_t notify_mult;
};

/* Find and map the capabilities of PCI slot `dev`; 1 when all three are there. */
int virtio_find_caps(int dev, struct virtio_caps *c);
