#pragma once
#include <stdint.h>

struct rx_result {
  uint32_t received, bad, other, out_of_order, first_seq, last_seq, max_buffers;
  uint64_t bytes, first_tsc, last_tsc;
};

extern const char *net_error;
#define NET_F_MRG_RXBUF (1ull << 15)
#define NET_F_CTRL_VQ (1ull << 17)
#define NET_F_CTRL_RX (1ull << 18)
#define NET_F_MQ (1ull << 22)
#define NET_F_CTRL_MAC_ADDR (1ull << 23)
#define NET_NO_EVENT_IDX (1ull << 63) /* not a feature: ask net_init to leave EVENT_IDX off */
int net_init(uint64_t want_features);
/* before net_init: the device sits behind the vIOMMU, in `domain`; strict: map each buffer per use */
void net_set_iommu(int strict, uint32_t domain);
void net_iommu_forget_once(void);
int net_use_msix(uint8_t vector);
uint32_t net_pingpong(uint32_t count, uint32_t len, const uint8_t *dst, uint32_t *rtt);
uint32_t net_macswap(uint32_t count, uint64_t idle_cycles);
uint16_t net_pairs(void);
void net_set_rx_buf_len(uint32_t len);
void net_set_rx_split(int on);
int net_set_high_buffers(uint32_t gib);
int net_ctrl(uint8_t cls, uint8_t cmd, const void *data, uint32_t len);
void net_hostile(int kind);
#define NET_F_CSUM (1ull << 0)
#define NET_F_HOST_TSO4 (1ull << 11)
uint32_t net_tso(uint32_t count, uint32_t payload, uint32_t mss, const uint8_t *dst, const uint8_t *sip, const uint8_t *dip);
uint64_t net_features(void);
const uint8_t *net_mac(void);
int net_status(void);
uint64_t net_tx(uint32_t count, uint32_t len, const uint8_t *dst);
void net_rx(uint32_t count, uint64_t idle_cycles, struct rx_result *res);
/* net_rx waits for the RX interrupt (net_use_msix) whenever the ring is empty, rather than polling it */
void net_rx_wait_irq(int on);
int net_check_frame(const uint8_t *f, uint32_t len, uint32_t *seq);
