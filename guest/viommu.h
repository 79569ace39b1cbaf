/* A virtio-iommu driver for the test guest: requests queued, then sent with one notification. */
#pragma once
#include <stdint.h>

#define IOMMU_READ 1
#define IOMMU_WRITE 2

extern const char *iommu_error;
/* requests sent, and the ones the device refused */
extern uint64_t iommu_requests, iommu_failures;

int iommu_init(void);
/* the endpoint id of PCI slot `slot` (bus 0, function 0) */
static inline uint32_t iommu_endpoint(int slot) { return (uint32_t)slot << 3; }
int iommu_attach(uint32_t domain, uint32_t endpoint);
/* queue a MAP/UNMAP of [iova, iova+len) (whole pages); iommu_sync sends what is queued and waits */
void iommu_map_async(uint32_t domain, uint64_t iova, uint64_t phys, uint64_t len, uint32_t flags);
void iommu_unmap_async(uint32_t domain, uint64_t iova, uint64_t len);
/* returns how many of the queued requests failed */
uint32_t iommu_sync(void);
