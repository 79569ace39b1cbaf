/* Host-side reflector for the ping-pong test and benchmark: every test-pattern frame (ethertype 0x88b5)
   arriving on IFACE goes straight back with its MAC addresses swapped, COUNT times or until TIMEOUT_S
   seconds pass without one. Prints {"reflected":N}. */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: reflect IFACE COUNT TIMEOUT_S\n");
    return 2;
  }
  unsigned count = (unsigned)atoi(argv[2]);
  int s = socket(AF_PACKET, SOCK_RAW, htons(0x88b5));
  struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(0x88b5), .sll_ifindex = (int)if_nametoindex(argv[1])};
  if (s < 0 || !sll.sll_ifindex || bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) {
    perror("reflect");
    return 1;
  }
  struct timeval tv = {.tv_sec = atoi(argv[3])};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  printf("READY\n");
  fflush(stdout);
  unsigned char f[9216], mac[6];
  unsigned done = 0;
  while (done < count) {
    struct sockaddr_ll from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(s, f, sizeof f, 0, (struct sockaddr *)&from, &fl);
    if (n < 0) break; /* timeout */
    if (from.sll_pkttype == PACKET_OUTGOING || n < 14) continue;
    memcpy(mac, f, 6);
    memcpy(f, f + 6, 6);
    memcpy(f + 6, mac, 6);
    if (send(s, f, (size_t)n, 0) == n) done++;
  }
  printf("{\"reflected\":%u}\n", done);
  return 0;
}
