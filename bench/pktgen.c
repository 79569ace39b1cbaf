/* Host-side frame generator for the receive benchmarks: COUNT test-pattern frames (the guest's format)
   of SIZE bytes on IFACE as fast as the socket takes them. Prints {"sent":N,"seconds":S}. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"

static int parse_mac(const char *s, uint8_t *m) {
  return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: pktgen IFACE COUNT SIZE SRC DST\n");
    return 2;
  }
  unsigned count = (unsigned)atoi(argv[2]), size = (unsigned)atoi(argv[3]);
  uint8_t src[6], dst[6];
  if (size < 60 || size > 9000 || !parse_mac(argv[4], src) || !parse_mac(argv[5], dst)) return 2;
  int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(argv[1])};
  if (s < 0 || !sll.sll_ifindex || bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) {
    perror("pktgen");
    return 1;
  }
  /* 256 prebuilt frames: the payload pattern repeats every 256 sequence numbers */
  uint8_t *frames = malloc(256 * (size_t)size);
  for (unsigned k = 0; k < 256; k++) {
    fill_frame(frames + k * (size_t)size, k, size, src, dst);
  }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  unsigned sent = 0;
  while (sent < count) {
    uint8_t *f = frames + (sent & 255) * (size_t)size;
    memcpy(f + 18, &sent, 4);
    if (send(s, f, size, 0) < 0) {
      if (errno == ENOBUFS || errno == EAGAIN) continue;
      perror("send");
      return 1;
    }
    sent++;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("{\"sent\":%u,\"seconds\":%.6f}\n", sent, (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
  return 0;
}
