/* The test pattern frame (the test guest's fill_frame, test/helpers' patternFrame): dst, src, EtherType
   0x88b5, a magic, a sequence number in bytes 18..21 (the caller's), the size, then bytes (k + i). */
#ifndef TSVMM_BENCH_FRAME_H
#define TSVMM_BENCH_FRAME_H
#include <stdint.h>
#include <string.h>

static inline void fill_frame(uint8_t *f, unsigned k, unsigned size, const uint8_t src[6], const uint8_t dst[6]) {
  memcpy(f, dst, 6);
  memcpy(f + 6, src, 6);
  f[12] = 0x88, f[13] = 0xb5;
  uint32_t magic = 0x53565354u;
  memcpy(f + 14, &magic, 4);
  memcpy(f + 22, &size, 4);
  for (unsigned i = 26; i < size; i++) f[i] = (uint8_t)(k + i);
}
#endif
