/*
 * virtio-iommu (virtio 1.2 §5.13) for the test guest, polled at CPL3 like its net driver. Requests go
 * on the request queue in batches — as many MAPs or UNMAPs as the caller queued — with one notification
 * per batch, and the driver waits for all of them: an UNMAP is done only when the device says so.
 */
#include <stddef.h>
#include <stdint.h>
#include "io.h"
#include "pci.h"
#include "virtio_pci.h"
#include "viommu.h"

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_IOMMU_MODERN 0x1057
#define RQ 128
#define T_ATTACH 1
#define T_MAP 3
#define T_UNMAP 4

static struct {
  struct desc desc[RQ] __attribute__((aligned(4096)));
  volatile uint16_t avail_flags, avail_idx, avail_ring[RQ], used_event;
  struct {
    volatile uint16_t flags, idx;
    volatile struct {
      uint32_t id, len;
    } ring[RQ];
    volatile uint16_t avail_event;
  } used __attribute__((aligned(4096)));
} rq;
/* a request and its 4-byte tail per descriptor pair */
static uint8_t reqs[RQ / 2][40] __attribute__((aligned(64)));
static volatile uint8_t tails[RQ / 2][4] __attribute__((aligned(64)));
static struct virtio_caps caps;
static volatile uint16_t *notify;
static uint16_t queued, last_used;

const char *iommu_error = "";
uint64_t iommu_requests, iommu_failures;

#define CW32(off) (*(volatile uint32_t *)(caps.common + (off)))
#define CW16(off) (*(volatile uint16_t *)(caps.common + (off)))
#define CW8(off) (*(volatile uint8_t *)(caps.common + (off)))

int iommu_init(void) {
  int dev = pci_find(VIRTIO_VENDOR, VIRTIO_IOMMU_MODERN);
  if (dev < 0) return iommu_error = "no virtio-iommu device", 0;
  pci_write16((uint32_t)dev, 0x04, 0x06);
  if (!virtio_find_caps(dev, &caps)) return iommu_error = "virtio-iommu capabilities missing", 0;
  CW8(0x14) = 0;
  while (CW8(0x14)) {
  }
  CW8(0x14) = 1 | 2;
  /* VERSION_1, MAP_UNMAP: nothing else is needed (no bypass: unattached devices do no DMA) */
  uint64_t want = (1ull << 32) | (1ull << 2);
  uint64_t offered = 0;
  for (uint32_t i = 0; i < 2; i++) {
    CW32(0x00) = i;
    offered |= (uint64_t)CW32(0x04) << (32 * i);
  }
  if ((offered & want) != want) return iommu_error = "virtio-iommu lacks VERSION_1 or MAP_UNMAP", 0;
  for (uint32_t i = 0; i < 2; i++) {
    CW32(0x08) = i;
    CW32(0x0c) = (uint32_t)(want >> (32 * i));
  }
  CW8(0x14) = 1 | 2 | 8;
  if (!(CW8(0x14) & 8)) return iommu_error = "virtio-iommu refused our features", 0;
  CW16(0x16) = 0; /* the request queue */
  CW16(0x18) = RQ;
  CW16(0x1a) = 0xffff;
  CW32(0x20) = (uint32_t)(uintptr_t)rq.desc;
  CW32(0x24) = 0;
  CW32(0x28) = (uint32_t)(uintptr_t)&rq.avail_flags;
  CW32(0x2c) = 0;
  CW32(0x30) = (uint32_t)(uintptr_t)&rq.used;
  CW32(0x34) = 0;
  notify = (volatile uint16_t *)(uintptr_t)(caps.notify_base + (uint64_t)CW16(0x1e) * caps.notify_mult);
  CW16(0x1c) = 1;
  CW8(0x14) = 1 | 2 | 8 | 4;
  return 1;
}

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Queue one request of `len` bytes (already in reqs[slot]); sends the batch when the ring is full. */
static uint8_t *next_request(void) {
  if (queued == RQ / 2) iommu_sync();
  uint8_t *r = reqs[queued];
  for (int i = 0; i < 40; i++) r[i] = 0;
  return r;
}

static void enqueue(uint32_t len) {
  uint16_t slot = queued++;
  uint16_t d = (uint16_t)(2 * slot);
  rq.desc[d] = (struct desc){(uint64_t)(uintptr_t)reqs[slot], len, 1, (uint16_t)(d + 1)};
  rq.desc[d + 1] = (struct desc){(uint64_t)(uintptr_t)tails[slot], 4, 2, 0};
  tails[slot][0] = 0xff;
  rq.avail_ring[(rq.avail_idx + slot) % RQ] = d;
}

uint32_t iommu_sync(void) {
  if (!queued) return 0;
  uint16_t n = queued;
  __asm__ volatile("mfence" ::: "memory");
  rq.avail_idx = (uint16_t)(rq.avail_idx + n);
  __asm__ volatile("mfence" ::: "memory");
  *notify = 0;
  while ((uint16_t)(rq.used.idx - last_used) < n) __asm__ volatile("pause");
  last_used = (uint16_t)(last_used + n);
  uint32_t failed = 0;
  for (uint16_t i = 0; i < n; i++)
    if (tails[i][0] != 0) failed++;
  iommu_requests += n;
  iommu_failures += failed;
  queued = 0;
  return failed;
}

int iommu_attach(uint32_t domain, uint32_t endpoint) {
  uint8_t *r = next_request();
  r[0] = T_ATTACH;
  put32(r + 4, domain);
  put32(r + 8, endpoint);
  enqueue(20);
  return iommu_sync() == 0;
}

void iommu_map_async(uint32_t domain, uint64_t iova, uint64_t phys, uint64_t len, uint32_t flags) {
  uint8_t *r = next_request();
  r[0] = T_MAP;
  put32(r + 4, domain);
  put64(r + 8, iova);
  put64(r + 16, iova + len - 1);
  put64(r + 24, phys);
  put32(r + 32, flags);
  enqueue(36);
}

void iommu_unmap_async(uint32_t domain, uint64_t iova, uint64_t len) {
  uint8_t *r = next_request();
  r[0] = T_UNMAP;
  put32(r + 4, domain);
  put64(r + 8, iova);
  put64(r + 16, iova + len - 1);
  enqueue(28);
}
