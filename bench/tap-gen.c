/* Frame generator for the tap path benchmark: for SECONDS, sends SIZE-byte broadcast frames (the test
   pattern, a sequence number in bytes 18..21) out of IFACE as fast as the kernel takes them, BATCH
   frames per sendmmsg() on an AF_PACKET socket: through the qdisc to the tap's transmit, where the
   process reading the tap finds it (or the tap drops it, in its tx_dropped, when that process is
   behind: a tap never pushes back, so the generator keeps its pace). One system call per batch, so
   that the generator outruns one frame per system call on the reading side. (The qdisc is not
   bypassed: with PACKET_QDISC_BYPASS a frame the tap drops fails the call, and sendmmsg stops there.)
   With --hold-queue it also attaches a queue of its own to the (multi-queue, vnet_hdr) tap and never
   reads it: the generator alone, into a tap with nobody reading, to show it is not the limit.
   Prints {"sent":N,"seconds":S,"calls":C}. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"

enum { BATCH = 32 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static int hold_queue(const char *ifname) {
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  struct ifreq ifr = {.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR};
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0) {
    perror("tap-gen: attach a queue");
    return -1;
  }
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: tap-gen IFACE SIZE SECONDS [--hold-queue]\n");
    return 2;
  }
  unsigned size = (unsigned)atoi(argv[2]);
  double seconds = atof(argv[3]);
  if (size < 60 || size > 9000 || !(seconds > 0)) return 2;
  if (argc > 4 && strcmp(argv[4], "--hold-queue") == 0 && hold_queue(argv[1]) < 0) return 1;
  /* protocol 0: a socket that only sends (one that receives would see every frame the tap transmits) */
  int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
  struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(argv[1])};
  if (s < 0 || !sll.sll_ifindex || bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) {
    perror("tap-gen");
    return 1;
  }
  static uint8_t frames[BATCH][9000];
  static struct iovec iov[BATCH];
  static struct mmsghdr msgs[BATCH];
  const uint8_t src[6] = {0x02, 0, 0, 0, 0, 0x47}, broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  for (unsigned k = 0; k < BATCH; k++) {
    fill_frame(frames[k], k, size, src, broadcast);
    iov[k] = (struct iovec){.iov_base = frames[k], .iov_len = size};
    msgs[k].msg_hdr = (struct msghdr){.msg_iov = &iov[k], .msg_iovlen = 1};
  }
  uint64_t sent = 0, calls = 0;
  double t0 = now(), end = t0 + seconds, t1 = t0;
  while (t1 < end) {
    for (unsigned k = 0; k < BATCH; k++) {
      uint32_t seq = (uint32_t)(sent + k);
      memcpy(frames[k] + 18, &seq, 4);
    }
    int n = sendmmsg(s, msgs, BATCH, 0);
    calls++;
    if (n < 0 && errno != ENOBUFS && errno != EAGAIN && errno != EINTR) {
      perror("tap-gen: sendmmsg");
      return 1;
    }
    if (n > 0) sent += (unsigned)n;
    if ((calls & 63) == 0) t1 = now();
  }
  t1 = now();
  printf("{\"sent\":%llu,\"seconds\":%.6f,\"calls\":%llu}\n", (unsigned long long)sent, t1 - t0, (unsigned long long)calls);
  return 0;
}
