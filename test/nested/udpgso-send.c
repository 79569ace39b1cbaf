// L2's UDP segmentation sender for the nested netctl scenario (busybox has none): WRITES writes of
// RECORDS records of 1000 bytes each to ADDR:PORT through one UDP socket with UDP_SEGMENT 1000, so each
// write leaves the guest as one GSO packet (GSO_UDP_L4) when its device does USO. A record is a
// datagram once segmented: a u32 sequence number, then byte i = (seq + i) & 0xff.
// Usage: udpgso-send ADDR PORT WRITES RECORDS; prints "sent N" (records) or why not.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define RECORD 1000

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: udpgso-send ADDR PORT WRITES RECORDS\n");
    return 2;
  }
  int writes = atoi(argv[3]), records = atoi(argv[4]);
  if (writes < 1 || records < 1 || records > 64) return 2;
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  int seg = RECORD;
  if (s < 0 || setsockopt(s, SOL_UDP, UDP_SEGMENT, &seg, sizeof seg) != 0) {
    perror("udpgso-send: UDP_SEGMENT");
    return 1;
  }
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
  if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) return 2;
  static uint8_t buf[64 * RECORD];
  uint32_t seq = 0;
  for (int w = 0; w < writes; w++) {
    for (int r = 0; r < records; r++, seq++) {
      uint8_t *p = buf + r * RECORD;
      for (int i = 4; i < RECORD; i++) p[i] = (uint8_t)(seq + i);
      memcpy(p, &seq, 4);
    }
    if (sendto(s, buf, (size_t)records * RECORD, 0, (struct sockaddr *)&to, sizeof to) < 0) {
      perror("udpgso-send: sendto");
      return 1;
    }
    // (a pace a slow receiver keeps up with)
    usleep(20000);
  }
  printf("sent %u\n", seq);
  return 0;
}
