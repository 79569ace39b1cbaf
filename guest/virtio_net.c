/*
 * A poll-mode virtio-net driver for virtio-pci modern, at CPL3 with no interrupts, in the manner of
 * DPDK's testpmd: it follows the virtio 1.x spec (capabilities, feature negotiation, split rings,
 * EVENT_IDX kick suppression), so it runs unmodified against QEMU's virtio-net-pci as against tsvmm.
 *
 * Frames it sends and checks (ethertype 0x88b5, local experimental):
 *   dst(6) src(6) 0x88b5 | magic "TSVS" (u32 0x53565354) | seq (u32) | frame length (u32) | byte i = (seq + i) & 0xff
 */
#include <stddef.h>
#include <stdint.h>
#include "io.h"
#include "pci.h"
#include "virtio_net.h"
#include "virtio_pci.h"
#include "viommu.h"

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_NET_MODERN 0x1041
#define QSIZE 256
#define BUF_SIZE 2048
#define HDR_LEN 12
#define ETHERTYPE 0x88b5
#define FRAME_MAGIC 0x53565354u

#define F_CSUM (1ull << 0)
#define F_HOST_TSO4 (1ull << 11)
#define F_MAC (1ull << 5)
#define F_MRG_RXBUF (1ull << 15)
#define F_STATUS (1ull << 16)
#define F_CTRL_VQ (1ull << 17)
#define F_CTRL_RX (1ull << 18)
#define F_MQ (1ull << 22)
#define F_CTRL_MAC_ADDR (1ull << 23)
#define F_INDIRECT (1ull << 28)
#define F_EVENT_IDX (1ull << 29)
#define F_VERSION_1 (1ull << 32)
#define F_ACCESS_PLATFORM (1ull << 33)

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40

#define D_NEXT 1
#define D_WRITE 2

struct ring {
  /* the driver's own bookkeeping first: the used ring's page then holds only what the device writes
     (the dirty-log test tells the device's writes from the vCPU's by that) */
  uint16_t next_avail, last_used, in_flight;
  volatile uint16_t *notify;
  /* strict IOMMU mode: slot i's buffer is mapped at iova_base + i * 4096 while the device has it */
  uint64_t iova_base;
  struct desc desc[QSIZE] __attribute__((aligned(4096)));
  volatile uint16_t avail_flags, avail_idx, avail_ring[QSIZE], used_event;
  struct {
    volatile uint16_t flags, idx;
    volatile struct {
      uint32_t id, len;
    } ring[QSIZE];
    volatile uint16_t avail_event;
  } used __attribute__((aligned(4096)));
};

#define MAX_PAIRS 2
static struct ring rxq[MAX_PAIRS], txq[MAX_PAIRS], ctrlr;
static uint8_t rxbufs_low[MAX_PAIRS][QSIZE][BUF_SIZE] __attribute__((aligned(4096)));
static uint8_t txbufs_low[MAX_PAIRS][QSIZE][BUF_SIZE] __attribute__((aligned(4096)));
/* the packet buffers: in the image, or above 4 GiB (net_set_high_buffers) */
static uint8_t (*rxbufs)[QSIZE][BUF_SIZE] = rxbufs_low;
static uint8_t (*txbufs)[QSIZE][BUF_SIZE] = txbufs_low;
static uint8_t ctrlbuf[2][64] __attribute__((aligned(64)));
#define rxr rxq[0]
#define txr txq[0]
#define rxbuf rxbufs[0]
#define txbuf txbufs[0]
static void reclaim_tx_ring(struct ring *r);

/*
 * Behind the vIOMMU: static — every address is identity-mapped once by the caller, nothing to do here;
 * strict — rings are mapped at set-up, and each buffer is mapped (at its slot's own IOVA page) just
 * before the device gets it and unmapped once the device gave it back, in batches per burst.
 */
static int iommu_mode; /* 0 none, 1 static, 2 strict */
static uint32_t iommu_domain;
void net_set_iommu(int strict, uint32_t domain) {
  iommu_mode = strict ? 2 : 1;
  iommu_domain = domain;
}
#define PAGE 4096ull
static int forget_once; /* a buggy driver: hand the device one buffer it never mapped */
void net_iommu_forget_once(void) { forget_once = 1; }
static uint64_t dma_addr(struct ring *r, uint16_t slot, const void *buf, uint32_t access) {
  uint64_t a = (uint64_t)(uintptr_t)buf;
  if (iommu_mode != 2) return a;
  uint64_t iova = r->iova_base + slot * PAGE;
  if (forget_once) forget_once = 0;
  else iommu_map_async(iommu_domain, iova, a & ~(PAGE - 1), PAGE, access);
  return iova + (a & (PAGE - 1));
}
static void dma_done(struct ring *r, uint16_t slot) {
  if (iommu_mode == 2) iommu_unmap_async(iommu_domain, r->iova_base + slot * PAGE, PAGE);
}
static void dma_map_identity(const void *p, uint64_t len) {
  uint64_t a = (uint64_t)(uintptr_t)p & ~(PAGE - 1);
  uint64_t end = ((uint64_t)(uintptr_t)p + len + PAGE - 1) & ~(PAGE - 1);
  if (iommu_mode == 2) iommu_map_async(iommu_domain, a, a, end - a, IOMMU_READ | IOMMU_WRITE);
}
static uint16_t num_pairs = 1;
static uint32_t rx_buf_len = BUF_SIZE;

static volatile uint8_t *common, *devcfg;
static uint8_t mac[6];
static uint64_t features;

static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline uint64_t rdtsc_(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

#define CW32(off) (*(volatile uint32_t *)(common + (off)))
#define CW16(off) (*(volatile uint16_t *)(common + (off)))
#define CW8(off) (*(volatile uint8_t *)(common + (off)))

static int find_caps(int dev, uint64_t *notify_base, uint32_t *notify_mult) {
  struct virtio_caps c;
  if (!virtio_find_caps(dev, &c)) return 0;
  common = c.common;
  devcfg = c.devcfg;
  *notify_base = c.notify_base;
  *notify_mult = c.notify_mult;
  return 1;
}

static uint16_t rx_vector = 0xffff; /* MSI-X vector for RX queue 0, when the guest takes interrupts */

static void setup_queue(uint16_t index, struct ring *r, uint64_t notify_base, uint32_t mult) {
  CW16(0x16) = index;
  uint16_t max = CW16(0x18);
  uint16_t size = max < QSIZE ? max : QSIZE;
  CW16(0x18) = size;
  CW16(0x1a) = index == 0 ? rx_vector : 0xffff; /* no MSI-X vector: we poll (unless net_use_msix) */
  CW32(0x20) = (uint32_t)(uintptr_t)r->desc;
  CW32(0x24) = 0;
  CW32(0x28) = (uint32_t)(uintptr_t)&r->avail_flags;
  CW32(0x2c) = 0;
  CW32(0x30) = (uint32_t)(uintptr_t)&r->used;
  CW32(0x34) = 0;
  /* strict IOMMU: the ring itself stays mapped (identity) while the queue lives */
  dma_map_identity(r, sizeof *r);
  r->iova_base = 0x100000000ull + (uint64_t)index * 0x1000000ull;
  r->notify = (volatile uint16_t *)(uintptr_t)(notify_base + (uint64_t)CW16(0x1e) * mult);
  CW16(0x1c) = 1;
}

const char *net_error = "";

static uint64_t notify_base_;
static uint32_t notify_mult_;

static int msix_dev = -1;
static uint8_t msix_cap;

/*
 * Interrupts for RX queue 0 through MSI-X vector 0, delivered as `vector` to local APIC 0. Call before
 * net_init: the vector is bound to the queue during set-up, as drivers do.
 */
int net_use_msix(uint8_t vector) {
  int dev = pci_find(VIRTIO_VENDOR, VIRTIO_NET_MODERN);
  if (dev < 0) return 0;
  for (uint8_t p = pci_read8((uint32_t)dev, 0x34); p; p = pci_read8((uint32_t)dev, p + 1u)) {
    if (pci_read8((uint32_t)dev, p) != 0x11) continue;
    uint32_t table = pci_read32((uint32_t)dev, p + 4u);
    uint64_t base = pci_bar((uint32_t)dev, (int)(table & 7)) + (table & ~7u);
    pci_write16((uint32_t)dev, 0x04, 0x06);
    volatile uint32_t *t = map_mmio(base, 16);
    t[0] = 0xfee00000u; /* destination: local APIC 0 */
    t[1] = 0;
    t[2] = vector;      /* fixed delivery, edge */
    t[3] = 0;           /* unmasked */
    pci_write16((uint32_t)dev, p + 2u, (uint16_t)(pci_read16((uint32_t)dev, p + 2u) | 0x8000)); /* MSI-X enable */
    msix_dev = dev;
    msix_cap = p;
    rx_vector = 0;
    return 1;
  }
  return 0;
}

int net_init(uint64_t want) {
  int dev = pci_find(VIRTIO_VENDOR, VIRTIO_NET_MODERN);
  if (dev < 0) return net_error = "no virtio-net device", 0;
  pci_write16((uint32_t)dev, 0x04, 0x06); /* memory decoding, bus master */
  uint64_t notify_base = 0;
  uint32_t mult = 0;
  if (!find_caps(dev, &notify_base, &mult)) return net_error = "virtio capabilities missing", 0;
  CW8(0x14) = 0;
  while (CW8(0x14)) {
  }
  CW8(0x14) = S_ACK | S_DRIVER;
  uint64_t offered = 0;
  for (uint32_t i = 0; i < 2; i++) {
    CW32(0x00) = i;
    offered |= (uint64_t)CW32(0x04) << (32 * i);
  }
  features = offered & (want | F_VERSION_1 | F_MAC | F_STATUS | (iommu_mode ? F_ACCESS_PLATFORM : 0));
  if (iommu_mode && !(features & F_ACCESS_PLATFORM)) return net_error = "device not behind the IOMMU (no ACCESS_PLATFORM)", 0;
  if (!(want & NET_NO_EVENT_IDX)) features |= offered & F_EVENT_IDX;
  if (!(features & F_VERSION_1)) return net_error = "device lacks VERSION_1", 0;
  for (uint32_t i = 0; i < 2; i++) {
    CW32(0x08) = i;
    CW32(0x0c) = (uint32_t)(features >> (32 * i));
  }
  CW8(0x14) = S_ACK | S_DRIVER | S_FEATURES_OK;
  if (!(CW8(0x14) & S_FEATURES_OK)) return net_error = "features refused", 0;
  for (int i = 0; i < 6; i++) mac[i] = devcfg[i];
  uint16_t max_pairs = (features & F_MQ) ? *(volatile uint16_t *)(devcfg + 8) : 1;
  num_pairs = max_pairs < MAX_PAIRS ? max_pairs : MAX_PAIRS;
  for (uint16_t p = 0; p < num_pairs; p++) {
    setup_queue((uint16_t)(2 * p), &rxq[p], notify_base, mult);
    setup_queue((uint16_t)(2 * p + 1), &txq[p], notify_base, mult);
  }
  /* the control queue comes after all max_pairs pairs */
  if (features & F_CTRL_VQ) setup_queue((uint16_t)(2 * max_pairs), &ctrlr, notify_base, mult);
  dma_map_identity(ctrlbuf, sizeof ctrlbuf);
  /* the mappings must exist before DRIVER_OK: the device translates the rings then */
  if (iommu_mode == 2 && iommu_sync()) return net_error = "the IOMMU refused the ring mappings", 0;
  notify_base_ = notify_base;
  notify_mult_ = mult;
  CW8(0x14) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
  return 1;
}

uint16_t net_pairs(void) { return num_pairs; }
/*
 * Packet buffers at guest-physical `gib` GiB (receive) and `gib` GiB + 256 MiB (transmit), which the
 * VMM must back with RAM: that GiB is identity-mapped with 2 MiB pages through one more page
 * directory (start.S maps only the first GiB; its tables are user-writable, so this runs at CPL3).
 */
extern volatile uint32_t irq_count; /* start.S: interrupts taken on vector 0x40 */
extern uint64_t pdpt[512];
static uint64_t pd_high[512] __attribute__((aligned(4096)));
int net_set_high_buffers(uint32_t gib) {
  if (gib < 4 || gib >= 512) return 0;
  for (uint64_t i = 0; i < 512; i++) pd_high[i] = ((uint64_t)gib << 30) + (i << 21) + 0x87;
  pdpt[gib] = (uint64_t)(uintptr_t)pd_high + 0x7;
  /* (no TLB flush, which CPL3 could not do: the entry was not present, and x86 caches no
   * translation through a not-present entry) */
  __asm__ volatile("" ::: "memory");
  rxbufs = (uint8_t(*)[QSIZE][BUF_SIZE])(uintptr_t)((uint64_t)gib << 30);
  txbufs = (uint8_t(*)[QSIZE][BUF_SIZE])(uintptr_t)(((uint64_t)gib << 30) + (256ull << 20));
  return 1;
}

void net_set_rx_buf_len(uint32_t len) { rx_buf_len = len < 64 ? 64 : len > BUF_SIZE ? BUF_SIZE : len; }

uint64_t net_features(void) { return features; }
const uint8_t *net_mac(void) { return mac; }
int net_status(void) { return CW8(0x14); }

/* Make [old, new) available and kick if the device asked for it (EVENT_IDX) or always without it. */
static void publish(struct ring *r, uint16_t qindex, uint16_t old) {
  mb();
  r->avail_idx = r->next_avail;
  mb();
  uint16_t n = r->next_avail;
  int kick = (features & F_EVENT_IDX) ? (uint16_t)(n - r->used.avail_event - 1) < (uint16_t)(n - old) : !(r->used.flags & 1);
  if (kick) *r->notify = qindex;
}

/* One control-queue command: class, command, data (device-readable), ack (device-writable). */
int net_ctrl(uint8_t cls, uint8_t cmd, const void *data, uint32_t len) {
  if (!(features & F_CTRL_VQ) || len > 60) return -1;
  ctrlbuf[0][0] = cls;
  ctrlbuf[0][1] = cmd;
  for (uint32_t i = 0; i < len; i++) ctrlbuf[0][2 + i] = ((const uint8_t *)data)[i];
  ctrlbuf[1][0] = 0xee;
  /* descriptors 0 and 1 every time: one command in flight at most */
  ctrlr.desc[0] = (struct desc){(uint64_t)(uintptr_t)ctrlbuf[0], 2 + len, D_NEXT, 1};
  ctrlr.desc[1] = (struct desc){(uint64_t)(uintptr_t)ctrlbuf[1], 1, D_WRITE, 0};
  uint16_t old = ctrlr.next_avail;
  ctrlr.avail_ring[old % QSIZE] = 0;
  ctrlr.next_avail++;
  publish(&ctrlr, (uint16_t)(2 * ((features & F_MQ) ? *(volatile uint16_t *)(devcfg + 8) : 1)), old);
  uint64_t t0 = rdtsc_();
  while (ctrlr.used.idx == ctrlr.last_used && rdtsc_() - t0 < 20000000000ull) __asm__ volatile("pause");
  if (ctrlr.used.idx == ctrlr.last_used) return -2;
  ctrlr.last_used++;
  return ctrlbuf[1][0];
}

/*
 * Hostile driver: make one malformed chain available on TX queue 0 and kick. The device must refuse it
 * (DEVICE_NEEDS_RESET) without harm to the host. kind: 1 loop, 2 address outside RAM, 3 length past
 * the end of RAM, 4 indirect table inside an indirect table, 5 indirect table of a bad size,
 * 6 available index far ahead.
 */
void net_hostile(int kind) {
  uint16_t s0 = txr.next_avail % QSIZE, s1 = (uint16_t)((s0 + 1) % QSIZE);
  static struct desc table[4] __attribute__((aligned(16)));
  switch (kind) {
    case 1:
      txr.desc[s0] = (struct desc){(uint64_t)(uintptr_t)txbuf[0], 64, D_NEXT, s1};
      txr.desc[s1] = (struct desc){(uint64_t)(uintptr_t)txbuf[1], 64, D_NEXT, s0};
      break;
    case 2:
      txr.desc[s0] = (struct desc){0x7000000000ull, 1500, 0, 0};
      break;
    case 3:
      txr.desc[s0] = (struct desc){(uint64_t)(uintptr_t)txbuf[0], 0xfffffff0u, 0, 0};
      break;
    case 4:
      table[0] = (struct desc){(uint64_t)(uintptr_t)table, 32, 4 /* INDIRECT */, 0};
      txr.desc[s0] = (struct desc){(uint64_t)(uintptr_t)table, 32, 4, 0};
      break;
    case 5:
      txr.desc[s0] = (struct desc){(uint64_t)(uintptr_t)table, 24, 4, 0};
      break;
  }
  uint16_t old = txr.next_avail;
  txr.avail_ring[s0] = s0;
  txr.next_avail = (uint16_t)(txr.next_avail + (kind == 6 ? 1000 : 1));
  publish(&txr, 1, old);
}

static void fill_frame(uint8_t *f, uint32_t len, uint32_t seq, const uint8_t *dst) {
  for (int i = 0; i < 6; i++) f[i] = dst[i], f[6 + i] = mac[i];
  f[12] = ETHERTYPE >> 8;
  f[13] = ETHERTYPE & 0xff;
  *(uint32_t *)(f + 14) = FRAME_MAGIC;
  *(uint32_t *)(f + 18) = seq;
  *(uint32_t *)(f + 22) = len;
  for (uint32_t i = 26; i < len; i++) f[i] = (uint8_t)(seq + i);
}

/* 1 if the frame carries our pattern intact, 0 if it is damaged, -1 if it is someone else's */
int net_check_frame(const uint8_t *f, uint32_t len, uint32_t *seq) {
  if (len < 14 || f[12] != (ETHERTYPE >> 8) || f[13] != (ETHERTYPE & 0xff)) return -1;
  if (len < 26) return 0;
  if (*(const uint32_t *)(f + 14) != FRAME_MAGIC || *(const uint32_t *)(f + 22) != len) return 0;
  uint32_t s = *(const uint32_t *)(f + 18);
  for (uint32_t i = 26; i < len; i++)
    if (f[i] != (uint8_t)(s + i)) return 0;
  *seq = s;
  return 1;
}

static void reclaim_tx_ring(struct ring *r) {
  int any = 0;
  while (r->last_used != r->used.idx) {
    barrier();
    dma_done(r, (uint16_t)r->used.ring[r->last_used % QSIZE].id);
    r->last_used++;
    r->in_flight--;
    any = 1;
  }
  if (any && iommu_mode == 2) iommu_sync();
}

static uint64_t net_tx_one(struct ring *tr, uint8_t (*tb)[BUF_SIZE], uint16_t qindex, uint32_t first, uint32_t stride, uint32_t count, uint32_t len,
                           const uint8_t *dst) {
  uint32_t sent = 0;
  if (len < 60) len = 60;
  if (len > BUF_SIZE - HDR_LEN) len = BUF_SIZE - HDR_LEN;
  /* a descriptor per slot: header + frame in one buffer */
  for (uint32_t i = 0; i < QSIZE; i++) {
    tr->desc[i].addr = (uint64_t)(uintptr_t)tb[i];
    tr->desc[i].flags = 0;
    for (int k = 0; k < HDR_LEN; k++) tb[i][k] = 0;
  }
  while (sent < count) {
    reclaim_tx_ring(tr);
    uint16_t old = tr->next_avail;
    while (sent < count && tr->in_flight < QSIZE) {
      uint16_t slot = tr->next_avail % QSIZE;
      fill_frame(tb[slot] + HDR_LEN, len, first + sent * stride, dst);
      tr->desc[slot].addr = dma_addr(tr, slot, tb[slot], IOMMU_READ);
      tr->desc[slot].len = HDR_LEN + len;
      tr->avail_ring[slot] = slot;
      tr->next_avail++;
      tr->in_flight++;
      sent++;
    }
    if (tr->next_avail != old) {
      if (iommu_mode == 2) iommu_sync(); /* the burst's buffers are mapped before the device sees them */
      publish(tr, qindex, old);
    }
    __asm__ volatile("pause");
  }
  /* wait until the device has taken everything */
  uint64_t t0 = rdtsc_();
  while (tr->in_flight && rdtsc_() - t0 < 20000000000ull) reclaim_tx_ring(tr);
  return sent - tr->in_flight;
}

/* Send `count` frames; with several pairs, frame k goes out on pair k % pairs (one pair after the other). */
uint64_t net_tx(uint32_t count, uint32_t len, const uint8_t *dst) {
  uint64_t total = 0;
  for (uint16_t p = 0; p < num_pairs; p++) {
    uint32_t n = count / num_pairs + (p < count % num_pairs ? 1 : 0);
    total += net_tx_one(&txq[p], txbufs[p], (uint16_t)(2 * p + 1), p, num_pairs, n, len, dst);
  }
  return total;
}

/*
 * TSO: one TCP/IPv4 frame of up to 64 KiB handed to the device with GSO metadata (NEEDS_CSUM, TCPV4,
 * gso_size = mss). The TCP checksum field holds the pseudo-header sum, as Linux leaves it; whoever
 * segments completes it per segment. Payload byte i = (i * 7 + k) & 0xff for frame k.
 */
static uint8_t tso_buf[HDR_LEN + 65600] __attribute__((aligned(4096)));

static uint32_t sum16(const uint8_t *p, uint32_t len, uint32_t sum) {
  for (uint32_t i = 0; i + 1 < len; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
  if (len & 1) sum += (uint32_t)p[len - 1] << 8;
  return sum;
}
static uint16_t fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)sum;
}

uint32_t net_tso(uint32_t count, uint32_t payload, uint32_t mss, const uint8_t *dst, const uint8_t *sip, const uint8_t *dip) {
  if (!(features & F_CSUM) || !(features & F_HOST_TSO4)) return 0;
  if (payload > 65535 - 40) payload = 65535 - 40;
  uint32_t done = 0;
  for (uint32_t k = 0; k < count; k++) {
    uint8_t *h = tso_buf, *f = tso_buf + HDR_LEN;
    uint32_t iplen = 40 + payload;
    for (int i = 0; i < HDR_LEN; i++) h[i] = 0;
    h[0] = 1;    /* NEEDS_CSUM */
    h[1] = 1;    /* GSO_TCPV4 */
    h[2] = 54;   /* hdr_len */
    h[4] = (uint8_t)mss, h[5] = (uint8_t)(mss >> 8);
    h[6] = 34;   /* csum_start: the TCP header */
    h[8] = 16;   /* csum_offset: its checksum field */
    for (int i = 0; i < 6; i++) f[i] = dst[i], f[6 + i] = mac[i];
    f[12] = 0x08, f[13] = 0x00;
    uint8_t *ip = f + 14, *tcp = f + 34;
    ip[0] = 0x45, ip[1] = 0, ip[2] = (uint8_t)(iplen >> 8), ip[3] = (uint8_t)iplen;
    ip[4] = 0, ip[5] = (uint8_t)k, ip[6] = 0x40, ip[7] = 0; /* id, DF */
    ip[8] = 64, ip[9] = 6, ip[10] = ip[11] = 0;
    for (int i = 0; i < 4; i++) ip[12 + i] = sip[i], ip[16 + i] = dip[i];
    uint16_t ic = (uint16_t)~fold(sum16(ip, 20, 0));
    ip[10] = (uint8_t)(ic >> 8), ip[11] = (uint8_t)ic;
    uint32_t seq = 1000 + k * payload;
    tcp[0] = 0xc0, tcp[1] = 0x00;            /* source port 49152 */
    tcp[2] = 0x13, tcp[3] = 0x89;            /* destination port 5001 */
    tcp[4] = (uint8_t)(seq >> 24), tcp[5] = (uint8_t)(seq >> 16), tcp[6] = (uint8_t)(seq >> 8), tcp[7] = (uint8_t)seq;
    for (int i = 8; i < 12; i++) tcp[i] = 0; /* ack */
    tcp[12] = 0x50, tcp[13] = 0x18;          /* 20-byte header, PSH|ACK */
    tcp[14] = 0xff, tcp[15] = 0xff, tcp[16] = tcp[17] = 0, tcp[18] = tcp[19] = 0;
    for (uint32_t i = 0; i < payload; i++) tcp[20 + i] = (uint8_t)(i * 7 + k);
    /* pseudo-header sum, not complemented: the segmenter adds the segment and complements */
    uint8_t ph[12] = {sip[0], sip[1], sip[2], sip[3], dip[0], dip[1], dip[2], dip[3], 0, 6, (uint8_t)((20 + payload) >> 8), (uint8_t)(20 + payload)};
    uint16_t pc = fold(sum16(ph, 12, 0));
    tcp[16] = (uint8_t)(pc >> 8), tcp[17] = (uint8_t)pc;
    uint16_t slot = txr.next_avail % QSIZE;
    txr.desc[slot] = (struct desc){(uint64_t)(uintptr_t)tso_buf, HDR_LEN + 54 + payload, 0, 0};
    uint16_t old = txr.next_avail;
    txr.avail_ring[slot] = slot;
    txr.next_avail++;
    txr.in_flight++;
    publish(&txr, 1, old);
    uint64_t t0 = rdtsc_();
    while (txr.in_flight && rdtsc_() - t0 < 20000000000ull) reclaim_tx_ring(&txr);
    if (!txr.in_flight) done++;
  }
  return done;
}

/* Take one received frame (polling); returns its length (0 when none arrived within `cycles`). */
static uint32_t rx_one(uint64_t cycles, uint8_t **frame);

/*
 * Ping-pong: send frame k, wait for a frame carrying seq k back (a reflector swaps the MACs), record
 * the round trip in TSC cycles. rtt[] gets `count` samples (0 for a lost one).
 */
uint32_t net_pingpong(uint32_t count, uint32_t len, const uint8_t *dst, uint32_t *rtt) {
  uint32_t ok = 0;
  if (len < 60) len = 60;
  for (uint32_t i = 0; i < QSIZE; i++) txr.desc[i].addr = (uint64_t)(uintptr_t)txbuf[i], txr.desc[i].flags = 0;
  for (uint32_t k = 0; k < count; k++) {
    reclaim_tx_ring(&txr);
    uint16_t slot = txr.next_avail % QSIZE, old = txr.next_avail;
    for (int i = 0; i < HDR_LEN; i++) txbuf[slot][i] = 0;
    fill_frame(txbuf[slot] + HDR_LEN, len, k, dst);
    txr.desc[slot].len = HDR_LEN + len;
    txr.avail_ring[slot] = slot;
    txr.next_avail++;
    txr.in_flight++;
    uint64_t t0 = rdtsc_();
    publish(&txr, 1, old);
    rtt[k] = 0;
    for (;;) {
      uint8_t *f;
      uint32_t n = rx_one(26000000000ull, &f); /* ~10 s: a host paused for seconds is no lost frame */
      if (!n) break;
      uint32_t seq;
      if (net_check_frame(f, n, &seq) > 0 && seq == k) {
        rtt[k] = (uint32_t)(rdtsc_() - t0);
        ok++;
        break;
      }
    }
  }
  return ok;
}

/* macswap forwarding: every frame received goes back out with its MAC addresses swapped. */
uint32_t net_macswap(uint32_t count, uint64_t idle_cycles) {
  uint32_t fwd = 0;
  for (uint32_t i = 0; i < QSIZE; i++) txr.desc[i].addr = (uint64_t)(uintptr_t)txbuf[i], txr.desc[i].flags = 0;
  serial_puts("NET-RX-READY\n");
  while (fwd < count) {
    uint8_t *f;
    uint32_t n = rx_one(idle_cycles, &f);
    if (!n) break;
    while (txr.in_flight >= QSIZE) reclaim_tx_ring(&txr);
    reclaim_tx_ring(&txr);
    uint16_t slot = txr.next_avail % QSIZE, old = txr.next_avail;
    uint8_t *o = txbuf[slot];
    for (int i = 0; i < HDR_LEN; i++) o[i] = 0;
    for (int i = 0; i < 6; i++) o[HDR_LEN + i] = f[6 + i], o[HDR_LEN + 6 + i] = f[i];
    for (uint32_t i = 12; i < n && i < BUF_SIZE - HDR_LEN; i++) o[HDR_LEN + i] = f[i];
    txr.desc[slot].len = HDR_LEN + n;
    txr.avail_ring[slot] = slot;
    txr.next_avail++;
    txr.in_flight++;
    publish(&txr, 1, old);
    fwd++;
  }
  uint64_t t0 = rdtsc_();
  while (txr.in_flight && rdtsc_() - t0 < 20000000000ull) reclaim_tx_ring(&txr);
  return fwd;
}

static int rx_split; /* post each buffer as two descriptors, splitting the 12-byte header 6 + rest */

void net_set_rx_split(int on) { rx_split = on; }

static void post_rx(void) {
  uint16_t old = rxr.next_avail;
  uint16_t limit = rx_split ? QSIZE / 2 : QSIZE;
  while (rxr.in_flight < limit) {
    uint16_t k = rxr.next_avail % limit;
    uint16_t head = rx_split ? (uint16_t)(2 * k) : k;
    uint64_t buf = dma_addr(&rxr, head, rxbuf[head], IOMMU_WRITE);
    if (rx_split) {
      rxr.desc[head] = (struct desc){buf, 6, D_WRITE | D_NEXT, (uint16_t)(head + 1)};
      rxr.desc[head + 1] = (struct desc){buf + 6, rx_buf_len - 6, D_WRITE, 0};
    } else {
      rxr.desc[head] = (struct desc){buf, rx_buf_len, D_WRITE, 0};
    }
    rxr.avail_ring[rxr.next_avail % QSIZE] = head;
    rxr.next_avail++;
    rxr.in_flight++;
  }
  /* strict: the unmaps of what was consumed and the maps of what is posted, one batch */
  if (iommu_mode == 2) iommu_sync();
  if (rxr.next_avail != old) publish(&rxr, 0, old);
}

static uint8_t reasm[65536 + 64];

static uint32_t rx_one(uint64_t cycles, uint8_t **frame) {
  static int posted;
  if (!posted) post_rx(), posted = 1;
  uint64_t t0 = rdtsc_();
  while (rxr.last_used == rxr.used.idx)
    if (rdtsc_() - t0 > cycles) return 0;
  barrier();
  uint16_t u = rxr.last_used % QSIZE;
  uint32_t id = rxr.used.ring[u].id, len = rxr.used.ring[u].len;
  rxr.last_used++;
  rxr.in_flight--;
  if (id < QSIZE) dma_done(&rxr, (uint16_t)id);
  /* copy out, so the buffer can go straight back to the device */
  uint32_t n = 0;
  if (id < QSIZE && len > HDR_LEN && len <= rx_buf_len) {
    n = len - HDR_LEN;
    for (uint32_t i = 0; i < n; i++) reasm[i] = rxbuf[id][HDR_LEN + i];
  }
  rxr.used_event = rxr.last_used;
  post_rx();
  *frame = reasm;
  return n ? n : rx_one(cycles, frame);
}

static int rx_wait_irq;

void net_rx_wait_irq(int on) { rx_wait_irq = on; }

void net_rx(uint32_t count, uint64_t idle_cycles, struct rx_result *res) {
  res->received = res->bad = res->other = res->out_of_order = 0;
  res->bytes = 0;
  res->first_seq = res->last_seq = 0;
  res->max_buffers = 0;
  post_rx();
  serial_puts("NET-RX-READY\n");
  uint64_t last = rdtsc_();
  uint32_t have = 0, want_bufs = 0, got_bufs = 0; /* mergeable reassembly state */
  while (res->received < count && rdtsc_() - last < idle_cycles) {
    while (rxr.last_used != rxr.used.idx && res->received < count) {
      barrier();
      uint16_t u = rxr.last_used % QSIZE;
      uint32_t id = rxr.used.ring[u].id, len = rxr.used.ring[u].len;
      rxr.last_used++;
      rxr.in_flight--;
      if (id < QSIZE) dma_done(&rxr, (uint16_t)id);
      last = rdtsc_();
      if (id >= QSIZE || len > rx_buf_len) {
        res->bad++;
        continue;
      }
      const uint8_t *b = rxbuf[id];
      if (got_bufs == 0) {
        /* first buffer of a frame: the header says how many buffers it spans (MRG_RXBUF) */
        if (len < HDR_LEN) {
          res->bad++;
          continue;
        }
        want_bufs = (features & F_MRG_RXBUF) ? (uint32_t)(b[10] | (b[11] << 8)) : 1;
        if (want_bufs == 0) want_bufs = 1;
        if (want_bufs > res->max_buffers) res->max_buffers = want_bufs;
        have = 0;
        b += HDR_LEN;
        len -= HDR_LEN;
      }
      if (have + len > sizeof reasm) {
        res->bad++;
        got_bufs = 0;
        continue;
      }
      for (uint32_t i = 0; i < len; i++) reasm[have + i] = b[i];
      have += len;
      if (++got_bufs < want_bufs) continue;
      got_bufs = 0;
      uint32_t seq;
      int r = net_check_frame(reasm, have, &seq);
      if (r > 0) {
        res->last_tsc = rdtsc_();
        if (!res->received) {
          res->first_seq = seq;
          res->first_tsc = res->last_tsc;
        } else if (seq != res->last_seq + 1) {
          res->out_of_order++;
        }
        res->last_seq = seq;
        res->received++;
        res->bytes += have;
      } else if (r == 0) {
        res->bad++;
      } else {
        res->other++;
      }
    }
    /* EVENT_IDX: interrupt me when the next entry is used */
    uint32_t irqs_before = irq_count;
    rxr.used_event = rxr.last_used;
    post_rx();
    if (rx_wait_irq && res->received < count) {
      /* taking interrupts: a ring found empty once used_event was set is not looked at again until an
         interrupt comes (the device reads used_event after it publishes: either we see its entries
         here or it sees used_event and interrupts), so frames after a wait come through the interrupt */
      __asm__ volatile("mfence" ::: "memory");
      if (rxr.last_used == rxr.used.idx)
        while (irq_count == irqs_before && rdtsc_() - last < idle_cycles) __asm__ volatile("pause");
    } else {
      __asm__ volatile("pause");
    }
  }
}
