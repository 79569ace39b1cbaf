#pragma once
#include <stdint.h>

struct rx_result {
  uint32_t received, bad, other, out_of_order, first_seq, last_seq;
  uint64_t bytes;
};

extern const char *net_error;
int net_init(uint64_t want_features);
uint64_t net_features(void);
const uint8_t *net_mac(void);
int net_status(void);
uint64_t net_tx(uint32_t count, uint32_t len, const uint8_t *dst);
void net_rx(uint32_t count, uint64_t idle_cycles, struct rx_result *res);
int net_check_frame(const uint8_t *f, uint32_t len, uint32_t *seq);
