/* Port I/O and the serial console for the CPL3 program. */
#pragma once
#include <stdint.h>

/*
 * Port I/O from CPL3 (IOPL=3). Only the %dx forms: where the hypervisor refuses CPL3 port I/O (kvm_pvm),
 * the #GP handler in start.S emulates exactly these encodings.
 */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "d"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "d"(port)); }
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "d"(port));
  return v;
}

#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4

void serial_putc(char c);
void serial_puts(const char *s);
void serial_put_dec(uint64_t v);
void serial_put_hex(uint64_t v);
int serial_getc(void); /* blocks */
void guest_exit(uint32_t status) __attribute__((noreturn));
