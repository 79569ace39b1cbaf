/* virtio-pci modern: the capabilities every device's driver needs (common config, notify, device config). */
#pragma once
#include <stdint.h>

struct virtio_caps {
  volatile uint8_t *common, *devcfg;
  uint64_t notify_base;
  uint32_t notify_mult;
};

/* Find and map the capabilities of PCI slot `dev`; 1 when all three are there. */
int virtio_find_caps(int dev, struct virtio_caps *c);
