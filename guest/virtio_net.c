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

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_NET_MODERN 0x1041
#define QSIZE 256
#define BUF_SIZE 2048
#define HDR_LEN 12
#define ETHERTYPE 0x88b5
#define FRAME_MAGIC 0x53565354u

#define F_CSUM (1ull << 0)
#define F_MAC (1ull << 5)
#define F_MRG_RXBUF (1ull << 15)
#define F_STATUS (1ull << 16)
#define F_INDIRECT (1ull << 28)
#define F_EVENT_IDX (1ull << 29)
#define F_VERSION_1 (1ull << 32)

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40

#define D_NEXT 1
#define D_WRITE 2

struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};
struct ring {
  struct desc desc[QSIZE] __attribute__((aligned(4096)));
  volatile uint16_t avail_flags, avail_idx, avail_ring[QSIZE], used_event;
  struct {
    volatile uint16_t flags, idx;
    volatile struct {
      uint32_t id, len;
    } ring[QSIZE];
    volatile uint16_t avail_event;
  } used __attribute__((aligned(4096)));
  uint16_t next_avail, last_used, in_flight;
  volatile uint16_t *notify;
};

static struct ring rxr, txr;
static uint8_t rxbuf[QSIZE][BUF_SIZE] __attribute__((aligned(4096)));
static uint8_t txbuf[QSIZE][BUF_SIZE] __attribute__((aligned(4096)));

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
  int have = 0;
  for (uint8_t p = pci_read8((uint32_t)dev, 0x34); p; p = pci_read8((uint32_t)dev, p + 1u)) {
    if (pci_read8((uint32_t)dev, p) != 0x09) continue;
    uint8_t type = pci_read8((uint32_t)dev, p + 3u);
    uint8_t bar = pci_read8((uint32_t)dev, p + 4u);
    uint32_t off = pci_read32((uint32_t)dev, p + 8u);
    uint32_t len = pci_read32((uint32_t)dev, p + 12u);
    uint64_t base = pci_bar((uint32_t)dev, bar) + off;
    if (type == 1) common = map_mmio(base, len), have |= 1;
    if (type == 2) *notify_base = (uint64_t)(uintptr_t)map_mmio(base, len), *notify_mult = pci_read32((uint32_t)dev, p + 16u), have |= 2;
    if (type == 4) devcfg = map_mmio(base, len), have |= 4;
  }
  return have == 7;
}

static void setup_queue(uint16_t index, struct ring *r, uint64_t notify_base, uint32_t mult) {
  CW16(0x16) = index;
  uint16_t max = CW16(0x18);
  uint16_t size = max < QSIZE ? max : QSIZE;
  CW16(0x18) = size;
  CW16(0x1a) = 0xffff; /* no MSI-X vector: we poll */
  CW32(0x20) = (uint32_t)(uintptr_t)r->desc;
  CW32(0x24) = 0;
  CW32(0x28) = (uint32_t)(uintptr_t)&r->avail_flags;
  CW32(0x2c) = 0;
  CW32(0x30) = (uint32_t)(uintptr_t)&r->used;
  CW32(0x34) = 0;
  r->notify = (volatile uint16_t *)(uintptr_t)(notify_base + (uint64_t)CW16(0x1e) * mult);
  CW16(0x1c) = 1;
}

const char *net_error = "";

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
  features = offered & (want | F_VERSION_1 | F_EVENT_IDX | F_MAC | F_STATUS);
  if (!(features & F_VERSION_1)) return net_error = "device lacks VERSION_1", 0;
  for (uint32_t i = 0; i < 2; i++) {
    CW32(0x08) = i;
    CW32(0x0c) = (uint32_t)(features >> (32 * i));
  }
  CW8(0x14) = S_ACK | S_DRIVER | S_FEATURES_OK;
  if (!(CW8(0x14) & S_FEATURES_OK)) return net_error = "features refused", 0;
  for (int i = 0; i < 6; i++) mac[i] = devcfg[i];
  setup_queue(0, &rxr, notify_base, mult);
  setup_queue(1, &txr, notify_base, mult);
  CW8(0x14) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
  return 1;
}

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

static void reclaim_tx(void) {
  while (txr.last_used != txr.used.idx) {
    barrier();
    txr.last_used++;
    txr.in_flight--;
  }
}

uint64_t net_tx(uint32_t count, uint32_t len, const uint8_t *dst) {
  uint32_t sent = 0;
  if (len < 60) len = 60;
  if (len > BUF_SIZE - HDR_LEN) len = BUF_SIZE - HDR_LEN;
  /* prebuild a descriptor per slot: header + frame in one buffer */
  for (uint32_t i = 0; i < QSIZE; i++) {
    txr.desc[i].addr = (uint64_t)(uintptr_t)txbuf[i];
    txr.desc[i].flags = 0;
    for (int k = 0; k < HDR_LEN; k++) txbuf[i][k] = 0;
  }
  while (sent < count) {
    reclaim_tx();
    uint16_t old = txr.next_avail;
    while (sent < count && txr.in_flight < QSIZE) {
      uint16_t slot = txr.next_avail % QSIZE;
      fill_frame(txbuf[slot] + HDR_LEN, len, sent, dst);
      txr.desc[slot].len = HDR_LEN + len;
      txr.avail_ring[slot] = slot;
      txr.next_avail++;
      txr.in_flight++;
      sent++;
    }
    if (txr.next_avail != old) publish(&txr, 1, old);
    __asm__ volatile("pause");
  }
  /* wait until the device has taken everything */
  uint64_t t0 = rdtsc_();
  while (txr.in_flight && rdtsc_() - t0 < 20000000000ull) reclaim_tx();
  return sent - txr.in_flight;
}

static void post_rx(void) {
  uint16_t old = rxr.next_avail;
  while (rxr.in_flight < QSIZE) {
    uint16_t slot = rxr.next_avail % QSIZE;
    rxr.desc[slot].addr = (uint64_t)(uintptr_t)rxbuf[slot];
    rxr.desc[slot].len = BUF_SIZE;
    rxr.desc[slot].flags = D_WRITE;
    rxr.avail_ring[slot] = slot;
    rxr.next_avail++;
    rxr.in_flight++;
  }
  if (rxr.next_avail != old) publish(&rxr, 0, old);
}

void net_rx(uint32_t count, uint64_t idle_cycles, struct rx_result *res) {
  res->received = res->bad = res->other = res->out_of_order = 0;
  res->bytes = 0;
  res->first_seq = res->last_seq = 0;
  post_rx();
  serial_puts("NET-RX-READY\n");
  uint64_t last = rdtsc_();
  while (res->received < count && rdtsc_() - last < idle_cycles) {
    while (rxr.last_used != rxr.used.idx && res->received < count) {
      barrier();
      uint16_t u = rxr.last_used % QSIZE;
      uint32_t id = rxr.used.ring[u].id, len = rxr.used.ring[u].len;
      rxr.last_used++;
      rxr.in_flight--;
      uint32_t seq;
      int r = id < QSIZE && len > HDR_LEN ? net_check_frame(rxbuf[id] + HDR_LEN, len - HDR_LEN, &seq) : 0;
      if (r > 0) {
        if (!res->received) res->first_seq = seq;
        else if (seq != res->last_seq + 1) res->out_of_order++;
        res->last_seq = seq;
        res->received++;
        res->bytes += len - HDR_LEN;
      } else if (r == 0) {
        res->bad++;
      } else {
        res->other++;
      }
      last = rdtsc_();
    }
    post_rx();
    __asm__ volatile("pause");
  }
}
