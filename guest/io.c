#include "io.h"

#define LSR 5
#define LSR_DR 0x01
#define LSR_THRE 0x20

void serial_putc(char c) {
  while (!(inb(COM1 + LSR) & LSR_THRE)) {
  }
  outb(COM1, (uint8_t)c);
}

void serial_puts(const char *s) {
  while (*s) serial_putc(*s++);
}

void serial_put_dec(uint64_t v) {
  char buf[21];
  int i = 20;
  buf[i] = 0;
  do {
    buf[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  serial_puts(&buf[i]);
}

void serial_put_hex(uint64_t v) {
  char buf[19];
  int i = 18;
  buf[i] = 0;
  do {
    buf[--i] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  buf[--i] = 'x';
  buf[--i] = '0';
  serial_puts(&buf[i]);
}

int serial_getc(void) {
  while (!(inb(COM1 + LSR) & LSR_DR)) {
  }
  return inb(COM1);
}

void guest_exit(uint32_t status) {
  /* isa-debug-exit: tsvmm ends with `status`, QEMU with (status << 1) | 1 */
  outl(DEBUG_EXIT_PORT, status);
  for (;;) {
  }
}

/* gcc may emit calls to these even in freestanding code */
void *memcpy(void *dst, const void *src, unsigned long n) {
  char *d = dst;
  const char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memset(void *dst, int c, unsigned long n) {
  char *d = dst;
  while (n--) *d++ = (char)c;
  return dst;
}

unsigned long strlen(const char *s) {
  unsigned long n = 0;
  while (s[n]) n++;
  return n;
}
