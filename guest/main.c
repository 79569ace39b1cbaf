/*
 * Test guest main program, running at CPL3. The kernel command line selects a mode:
 *   mode=hello    print who we are, the memory map we were given, a result line; exit 0
 *   mode=memtest  write and verify a pattern over the RAM the memory map reports (first 1 GiB)
 *   mode=echo     read a line from the serial port and report it back
 *   mode=fault    execute ud2: the CPL0 exception stub reports vector 6 and exits 0x7f
 *   mode=hang     spin forever (the host's stop path must end it)
 *   mode=reset    pulse the i8042 reset line
 *   mode=smp      count the CPUs in the ACPI MADT, start the APs (INIT-SIPI-SIPI), report how many came up
 *   mode=mmio     after a byte on the serial port, access MMIO_TEST_BASE (see the mmio mode below)
 *   mode=dirty    after a byte on the serial port, write one byte in each page of [16 MiB, 17 MiB), then spin
 *   mode=net-tx   count=N size=S [dst=MAC]: send N frames of S bytes through virtio-net, report
 *   mode=net-rx   count=N: receive and verify N frames (see virtio_net.c for the pattern), report
 *   mode=net-pingpong count=N size=S dst=MAC: N round trips through a host reflector, p50/p99 in cycles
 *   mode=net-macswap count=N: forward N received frames back with their MAC addresses swapped
 *                 (the net modes take highbufs=N: packet buffers at N GiB, N >= 4, for a VM with that much RAM)
 *   mode=irq      enable interrupts, print "IRQ n" for each vector-0x40 interrupt, report after irqs=N
 *   mode=button   gsi=G port=P [ignore=1]: route IOAPIC pin G to vector 0x40, wait for the ACPI power
 *                 button's interrupt, read the GED event register at port P twice, report, power off
 *                 through ACPI S5; with ignore=1 never look (the host's shutdown deadline must end it)
 * Every mode that finishes prints one line "TSVMM-RESULT {json}" and powers off with 0 on success.
 */
#include <stddef.h>
#include <stdint.h>
#include "io.h"
#include "pci.h"
#include "virtio_net.h"
#include "viommu.h"

struct hvm_start_info {
  uint32_t magic, version, flags, nr_modules;
  uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
  uint32_t memmap_entries, reserved;
};
struct hvm_modlist_entry {
  uint64_t paddr, size, cmdline_paddr, reserved;
};
struct hvm_memmap_entry {
  uint64_t addr, size;
  uint32_t type, reserved;
};
#define HVM_START_MAGIC 0x336ec578u
#define MAPPED_LIMIT (1ull << 30) /* start.S maps the first 1 GiB */

extern char __image_start[], __image_end[];
extern char ap_trampoline[], ap_trampoline_end[];
extern volatile uint32_t ap_count;
extern volatile uint32_t irq_count;
#define TRAMPOLINE_BASE 0x8000
#define LAPIC_ICR_LO ((volatile uint32_t *)0xfee00300)
#define LAPIC_ICR_HI ((volatile uint32_t *)0xfee00310)
/* Unbacked guest-physical address inside the 1 GiB identity map (tests use at most 512 MiB of RAM). */
#define MMIO_TEST_BASE 0x30000000ull

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

static int mem_eq(const void *a, const char *b, size_t n) {
  const char *p = a;
  for (size_t i = 0; i < n; i++)
    if (p[i] != b[i]) return 0;
  return 1;
}

/* The RSDP from the start info, or found the BIOS way in 0xE0000-0xFFFFF. */
static const uint8_t *find_rsdp(const struct hvm_start_info *si) {
  if (si->rsdp_paddr) return (const uint8_t *)(uintptr_t)si->rsdp_paddr;
  for (uintptr_t a = 0xe0000; a < 0x100000; a += 16)
    if (mem_eq((const void *)a, "RSD PTR ", 8)) return (const uint8_t *)a;
  return 0;
}

/* Enabled processors in the MADT, or 0 when there is no ACPI. */
static uint32_t madt_cpus(const struct hvm_start_info *si) {
  const uint8_t *rsdp = find_rsdp(si);
  if (!rsdp) return 0;
  int x = rsdp[15] >= 2;
  const uint8_t *sdt = x ? (const uint8_t *)(uintptr_t)*(const uint64_t *)(rsdp + 24) : (const uint8_t *)(uintptr_t)*(const uint32_t *)(rsdp + 16);
  uint32_t len = *(const uint32_t *)(sdt + 4);
  for (uint32_t o = 36; o < len; o += x ? 8 : 4) {
    const uint8_t *t = x ? (const uint8_t *)(uintptr_t)*(const uint64_t *)(sdt + o) : (const uint8_t *)(uintptr_t)*(const uint32_t *)(sdt + o);
    if (!mem_eq(t, "APIC", 4)) continue;
    uint32_t tlen = *(const uint32_t *)(t + 4), n = 0;
    for (uint32_t e = 44; e + 2 <= tlen && t[e + 1] >= 2; e += t[e + 1])
      if (t[e] == 0 && (*(const uint32_t *)(t + e + 4) & 1)) n++;
    return n;
  }
  return 0;
}

static uint64_t parse_u64(const char *s) {
  uint64_t v = 0;
  for (; *s >= '0' && *s <= '9'; s++) v = v * 10 + (uint64_t)(*s - '0');
  return v;
}

static int hexval(char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; }

static void parse_mac(const char *s, uint8_t *out) {
  for (int i = 0; i < 6; i++, s += 3) {
    int h = hexval(s[0]), l = hexval(s[1]);
    if (h < 0 || l < 0) return;
    out[i] = (uint8_t)(h * 16 + l);
  }
}

static void parse_ip(const char *s, uint8_t *out) {
  for (int i = 0; i < 4; i++) {
    uint32_t v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (uint32_t)(*s++ - '0');
    out[i] = (uint8_t)v;
    if (*s == '.') s++;
  }
}

/* IOAPIC redirection entry for `pin`: `vector`, fixed delivery to APIC 0, edge, active high, unmasked. */
static void ioapic_route(uint32_t pin, uint8_t vector) {
  volatile uint32_t *sel = (volatile uint32_t *)0xfec00000, *win = (volatile uint32_t *)0xfec00010;
  *sel = 0x10 + 2 * pin + 1;
  *win = 0;
  *sel = 0x10 + 2 * pin;
  *win = vector;
}

static void lapic_ipi(uint32_t lo) {
  *LAPIC_ICR_HI = 0;
  *LAPIC_ICR_LO = lo;
}

static void spin_cycles(uint64_t cycles) {
  uint64_t t = rdtsc();
  while (rdtsc() - t < cycles) __asm__ volatile("pause");
}

static int streq_prefix(const char *s, const char *p) {
  while (*p)
    if (*s++ != *p++) return 0;
  return 1;
}

/* Value of "key=" in the command line, copied into out (up to a space). */
static int cmdline_get(const char *cmdline, const char *key, char *out, size_t outlen) {
  const char *s = cmdline;
  while (s && *s) {
    while (*s == ' ') s++;
    if (streq_prefix(s, key)) {
      s += __builtin_strlen(key);
      size_t i = 0;
      while (*s && *s != ' ' && i + 1 < outlen) out[i++] = *s++;
      out[i] = 0;
      return 1;
    }
    while (*s && *s != ' ') s++;
  }
  return 0;
}

static int streq(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}

static uint32_t current_cpl(void) {
  uint16_t cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  return cs & 3;
}

static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
  __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static void result_begin(const char *mode) {
  serial_puts("TSVMM-RESULT {\"mode\":\"");
  serial_puts(mode);
  serial_puts("\",\"cpl\":");
  serial_put_dec(current_cpl());
}
static void result_num(const char *key, uint64_t v) {
  serial_puts(",\"");
  serial_puts(key);
  serial_puts("\":");
  serial_put_dec(v);
}
static void result_str(const char *key, const char *v) {
  serial_puts(",\"");
  serial_puts(key);
  serial_puts("\":\"");
  for (; *v; v++) {
    if (*v == '"' || *v == '\\') serial_putc('\\');
    if ((unsigned char)*v >= 0x20) serial_putc(*v);
  }
  serial_putc('"');
}
static void result_end(int ok) {
  serial_puts(ok ? ",\"ok\":true}\n" : ",\"ok\":false}\n");
}

static void print_memmap(const struct hvm_start_info *si) {
  const struct hvm_memmap_entry *m = (const void *)(uintptr_t)si->memmap_paddr;
  serial_puts(",\"memmap\":[");
  for (uint32_t i = 0; i < si->memmap_entries; i++) {
    if (i) serial_putc(',');
    serial_puts("[");
    serial_put_dec(m[i].addr);
    serial_putc(',');
    serial_put_dec(m[i].size);
    serial_putc(',');
    serial_put_dec(m[i].type);
    serial_puts("]");
  }
  serial_puts("]");
}

static uint64_t ram_bytes(const struct hvm_start_info *si) {
  const struct hvm_memmap_entry *m = (const void *)(uintptr_t)si->memmap_paddr;
  uint64_t total = 0;
  for (uint32_t i = 0; i < si->memmap_entries; i++)
    if (m[i].type == 1) total += m[i].size;
  return total;
}

/* Pattern test over usable RAM above the image, within the mapped first 1 GiB; one word per 256 bytes. */
static int memtest(const struct hvm_start_info *si, uint64_t *tested) {
  const struct hvm_memmap_entry *m = (const void *)(uintptr_t)si->memmap_paddr;
  uint64_t lo_floor = ((uint64_t)(uintptr_t)__image_end + 0xfff) & ~0xfffull;
  *tested = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (uint32_t i = 0; i < si->memmap_entries; i++) {
      if (m[i].type != 1) continue;
      uint64_t a = m[i].addr < lo_floor ? lo_floor : m[i].addr;
      uint64_t end = m[i].addr + m[i].size;
      if (end > MAPPED_LIMIT) end = MAPPED_LIMIT;
      for (; a + 8 <= end; a += 256) {
        volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)a;
        uint64_t pat = a * 0x9e3779b97f4a7c15ull;
        if (pass == 0) {
          *p = pat;
          *tested += 8;
        } else if (*p != pat) {
          return 0;
        }
      }
    }
  }
  return 1;
}

int guest_main(const struct hvm_start_info *si) {
  static char mode[32];
  const char *cmdline = "";
  if (si->magic != HVM_START_MAGIC) {
    serial_puts("TSVMM-RESULT {\"ok\":false,\"error\":\"bad hvm_start_info magic\"}\n");
    return 2;
  }
  if (si->cmdline_paddr) cmdline = (const char *)(uintptr_t)si->cmdline_paddr;
  if (!cmdline_get(cmdline, "mode=", mode, sizeof mode)) __builtin_memcpy(mode, "hello", 6);

  serial_puts("tsvmm test guest: mode ");
  serial_puts(mode);
  serial_puts("\n");

  if (streq(mode, "hello")) {
    uint32_t a, b, c, d;
    char vendor[13];
    cpuid(0, &a, &b, &c, &d);
    __builtin_memcpy(vendor, &b, 4);
    __builtin_memcpy(vendor + 4, &d, 4);
    __builtin_memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    cpuid(1, &a, &b, &c, &d);
    result_begin(mode);
    result_str("cmdline", cmdline);
    result_str("vendor", vendor);
    result_num("apic_id", b >> 24);
    result_num("hypervisor", (c >> 31) & 1);
    result_num("ram", ram_bytes(si));
    if (si->nr_modules) {
      /* the initrd: its size and a byte sum the host can recompute */
      const struct hvm_modlist_entry *m = (const void *)(uintptr_t)si->modlist_paddr;
      const uint8_t *p = (const uint8_t *)(uintptr_t)m->paddr;
      uint32_t sum = 0;
      for (uint64_t i = 0; i < m->size; i++) sum += p[i];
      result_num("initrd_size", m->size);
      result_num("initrd_sum", sum);
    }
    print_memmap(si);
    result_end(current_cpl() == 3);
    return current_cpl() == 3 ? 0 : 1;
  }
  if (streq(mode, "memtest")) {
    uint64_t tested;
    int ok = memtest(si, &tested);
    result_begin(mode);
    result_num("bytes", tested);
    result_end(ok);
    return ok ? 0 : 1;
  }
  if (streq(mode, "echo")) {
    static char line[128];
    size_t n = 0;
    serial_puts("READY\n");
    for (;;) {
      int ch = serial_getc();
      if (ch == '\n' || ch == '\r') break;
      if (n + 1 < sizeof line) line[n++] = (char)ch;
    }
    line[n] = 0;
    result_begin(mode);
    result_str("line", line);
    result_end(1);
    return 0;
  }
  if (streq(mode, "smp")) {
    uint32_t cpus = madt_cpus(si);
    size_t n = (size_t)(ap_trampoline_end - ap_trampoline);
    __builtin_memcpy((void *)TRAMPOLINE_BASE, ap_trampoline, n);
    /* to all but self: INIT, then two STARTUPs at the trampoline (the MP spec's sequence) */
    lapic_ipi(0x000c4500);
    spin_cycles(10000000);
    for (int i = 0; i < 2; i++) {
      lapic_ipi(0x000c4600 | (TRAMPOLINE_BASE >> 12));
      spin_cycles(1000000);
    }
    uint64_t t0 = rdtsc();
    while (ap_count + 1 < cpus && rdtsc() - t0 < 20000000000ull) __asm__ volatile("pause");
    result_begin(mode);
    result_num("cpus", cpus);
    result_num("cpus_up", ap_count + 1);
    result_end(cpus > 0 && ap_count + 1 == cpus);
    return cpus > 0 && ap_count + 1 == cpus ? 0 : 1;
  }
  if (streq(mode, "mmio")) {
    volatile uint32_t *r32 = (volatile uint32_t *)MMIO_TEST_BASE;
    serial_puts("MMIO-READY\n");
    serial_getc();
    r32[0] = 0x11111111;
    r32[0] = 0x22222222;
    *(volatile uint64_t *)(MMIO_TEST_BASE + 0x10) = 0x1122334455667788ull;
    *(volatile uint8_t *)(MMIO_TEST_BASE + 0x20) = 0x5a;
    uint32_t got = r32[1];
    for (int i = 0; i < 16; i++) r32[0x100 / 4] = 1; /* the host may have an ioeventfd here */
    result_begin(mode);
    result_num("read", got);
    result_end(1);
    return 0;
  }
  if (streq(mode, "irq")) {
    static char nbuf[8];
    uint32_t want = 5, seen = 0;
    if (cmdline_get(cmdline, "irqs=", nbuf, sizeof nbuf)) {
      want = 0;
      for (char *p = nbuf; *p >= '0' && *p <= '9'; p++) want = want * 10 + (uint32_t)(*p - '0');
    }
    *(volatile uint32_t *)0xfee000f0 = 0x1ff; /* local APIC SVR: software-enable, spurious vector 0xff */
    serial_puts("IRQ-READY\n");
    __asm__ volatile("sti");
    uint64_t t0 = rdtsc();
    while (seen < want && rdtsc() - t0 < 60000000000ull) {
      if (irq_count != seen) {
        seen = irq_count;
        t0 = rdtsc();
        serial_puts("IRQ ");
        serial_put_dec(seen);
        serial_putc('\n');
      }
      __asm__ volatile("pause");
    }
    __asm__ volatile("cli");
    result_begin(mode);
    result_num("irqs", irq_count);
    result_end(irq_count == want);
    return irq_count == want ? 0 : 1;
  }
  if (streq(mode, "button")) {
    static char arg[16];
    uint32_t gsi = 16, port = 0x604;
    if (cmdline_get(cmdline, "gsi=", arg, sizeof arg)) gsi = (uint32_t)parse_u64(arg);
    if (cmdline_get(cmdline, "port=", arg, sizeof arg)) port = (uint32_t)parse_u64(arg);
    int ignore = cmdline_get(cmdline, "ignore=", arg, sizeof arg) && arg[0] == '1';
    *(volatile uint32_t *)0xfee000f0 = 0x1ff; /* local APIC SVR: software-enable, spurious vector 0xff */
    ioapic_route(gsi, 0x40);
    serial_puts("BUTTON-READY\n");
    if (ignore)
      for (;;) __asm__ volatile("pause");
    __asm__ volatile("sti");
    uint64_t t0 = rdtsc();
    while (irq_count == 0 && rdtsc() - t0 < 60000000000ull) __asm__ volatile("pause");
    __asm__ volatile("cli");
    /* what _EVT does: read the pending events (which clears them) */
    uint8_t events = inb((uint16_t)port), again = inb((uint16_t)port);
    result_begin(mode);
    result_num("irqs", irq_count);
    result_num("events", events);
    result_num("events_after", again);
    result_end(irq_count == 1 && events == 1 && again == 0);
    outb(0x600, (5 << 2) | 0x20); /* SLP_TYP 5 (\_S5) with SLP_EN: soft off, as Linux powers off */
    for (;;) __asm__ volatile("pause");
  }
  if (streq(mode, "dirty")) {
    serial_puts("DIRTY-READY\n");
    serial_getc();
    for (uintptr_t a = 16u << 20; a < 17u << 20; a += 4096) *(volatile uint8_t *)a = 0xd1;
    serial_puts("DIRTY-DONE\n");
    for (;;) __asm__ volatile("pause");
  }
  if (streq(mode, "net-tso")) {
    /* count=N payload=BYTES mss=M dst=MAC sip=a.b.c.d dip=a.b.c.d */
    static char arg[32];
    uint32_t count = 1, payload = 65495, mss = 1448;
    uint8_t dst[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, sip[4] = {10, 99, 0, 2}, dip[4] = {10, 99, 1, 2};
    if (cmdline_get(cmdline, "count=", arg, sizeof arg)) count = (uint32_t)parse_u64(arg);
    if (cmdline_get(cmdline, "payload=", arg, sizeof arg)) payload = (uint32_t)parse_u64(arg);
    if (cmdline_get(cmdline, "mss=", arg, sizeof arg)) mss = (uint32_t)parse_u64(arg);
    if (cmdline_get(cmdline, "dst=", arg, sizeof arg)) parse_mac(arg, dst);
    if (cmdline_get(cmdline, "sip=", arg, sizeof arg)) parse_ip(arg, sip);
    if (cmdline_get(cmdline, "dip=", arg, sizeof arg)) parse_ip(arg, dip);
    if (!net_init(NET_F_CSUM | NET_F_HOST_TSO4)) {
      result_begin(mode);
      result_str("error", net_error);
      result_end(0);
      return 1;
    }
    serial_puts("NET-START\n");
    uint64_t t0 = rdtsc();
    uint32_t sent = net_tso(count, payload, mss, dst, sip, dip);
    uint64_t cycles = rdtsc() - t0;
    result_begin(mode);
    result_num("features_lo", (uint32_t)net_features());
    result_num("sent", sent);
    result_num("payload", payload);
    result_num("cycles", cycles);
    result_num("status", (uint32_t)net_status());
    result_end(sent == count);
    return sent == count ? 0 : 1;
  }
  if (streq(mode, "net-tx") || streq(mode, "net-rx") || streq(mode, "net-pingpong") || streq(mode, "net-macswap")) {
    static char arg[32];
    uint32_t count = 1000, size = 1514;
    uint8_t dst[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    if (cmdline_get(cmdline, "count=", arg, sizeof arg)) count = (uint32_t)parse_u64(arg);
    if (cmdline_get(cmdline, "size=", arg, sizeof arg)) size = (uint32_t)parse_u64(arg);
    if (cmdline_get(cmdline, "dst=", arg, sizeof arg)) parse_mac(arg, dst);
    uint64_t want = 0;
    int pairs = 1, hostile = 0;
    if (cmdline_get(cmdline, "pairs=", arg, sizeof arg)) pairs = (int)parse_u64(arg);
    if (pairs > 1) want |= NET_F_MQ | NET_F_CTRL_VQ;
    if (cmdline_get(cmdline, "mrg=", arg, sizeof arg) && arg[0] == '1') want |= NET_F_MRG_RXBUF;
    if (cmdline_get(cmdline, "eventidx=", arg, sizeof arg) && arg[0] == '0') want |= NET_NO_EVENT_IDX;
    uint8_t newmac[6];
    int setmac = cmdline_get(cmdline, "setmac=", arg, sizeof arg);
    if (setmac) parse_mac(arg, newmac);
    int promisc = -1;
    if (cmdline_get(cmdline, "promisc=", arg, sizeof arg)) promisc = arg[0] == '1';
    if (setmac || promisc >= 0) want |= NET_F_CTRL_VQ | NET_F_CTRL_RX | NET_F_CTRL_MAC_ADDR;
    if (cmdline_get(cmdline, "hostile=", arg, sizeof arg)) hostile = (int)parse_u64(arg);
    if (hostile == 4 || hostile == 5) want |= 1ull << 28; /* INDIRECT_DESC: reach the indirect-table checks */
    if (cmdline_get(cmdline, "rxbuf=", arg, sizeof arg)) net_set_rx_buf_len((uint32_t)parse_u64(arg));
    if (cmdline_get(cmdline, "rxsplit=", arg, sizeof arg) && arg[0] == '1') net_set_rx_split(1);
    /* highbufs=N: packet buffers at N GiB (RX) and N GiB + 256 MiB (TX), for guests with that much RAM */
    uint32_t highbufs = 0;
    if (cmdline_get(cmdline, "highbufs=", arg, sizeof arg)) highbufs = (uint32_t)parse_u64(arg);
    if (highbufs && !net_set_high_buffers(highbufs)) {
      result_begin(mode);
      result_str("error", "highbufs= takes a GiB number from 4 to 511");
      result_end(0);
      return 1;
    }
    int use_irq = cmdline_get(cmdline, "irq=", arg, sizeof arg) && arg[0] == '1';
    if (use_irq) {
      if (!net_use_msix(0x40)) {
        result_begin(mode);
        result_str("error", "no MSI-X capability");
        result_end(0);
        return 1;
      }
      *(volatile uint32_t *)0xfee000f0 = 0x1ff; /* local APIC on */
      __asm__ volatile("sti");
      net_rx_wait_irq(1);
    }
    /* iommu=static|strict: the net device sits behind the virtio-iommu (tsvmm --viommu) */
    int iommu = 0;
    if (cmdline_get(cmdline, "iommu=", arg, sizeof arg)) iommu = streq(arg, "strict") ? 2 : streq(arg, "static") ? 1 : -1;
    if (iommu) {
      const char *err = 0;
      int slot = pci_find(0x1af4, 0x1041);
      if (iommu < 0) err = "iommu= takes static or strict";
      else if (!iommu_init()) err = iommu_error;
      else if (slot < 0 || !iommu_attach(1, iommu_endpoint(slot))) err = "ATTACH refused";
      else if (iommu == 1) {
        /* static: all of the first GiB, identity, once */
        iommu_map_async(1, 0, 0, 1ull << 30, IOMMU_READ | IOMMU_WRITE);
        if (iommu_sync()) err = "MAP refused";
      }
      if (err) {
        result_begin(mode);
        result_str("error", err);
        result_end(0);
        return 1;
      }
      net_set_iommu(iommu == 2, 1);
      if (cmdline_get(cmdline, "iommu_forget=", arg, sizeof arg) && arg[0] == '1') net_iommu_forget_once();
    }
    if (!net_init(want)) {
      result_begin(mode);
      result_str("error", net_error);
      result_end(0);
      return 1;
    }
    const uint8_t *m = net_mac();
    char macs[18];
    for (int i = 0; i < 6; i++) {
      macs[3 * i] = "0123456789abcdef"[m[i] >> 4];
      macs[3 * i + 1] = "0123456789abcdef"[m[i] & 15];
      macs[3 * i + 2] = i < 5 ? ':' : 0;
    }
    int acks = 0, nacks = 0;
    if (pairs > 1) {
      uint16_t n = (uint16_t)pairs;
      if (net_ctrl(4, 0, &n, 2) == 0) acks++; else nacks++; /* MQ VQ_PAIRS_SET */
    }
    if (promisc >= 0) {
      uint8_t on = (uint8_t)promisc;
      if (net_ctrl(0, 0, &on, 1) == 0) acks++; else nacks++; /* RX PROMISC */
    }
    if (setmac) {
      if (net_ctrl(1, 1, newmac, 6) == 0) acks++; else nacks++;
    } /* MAC ADDR_SET */
    /* ctrlloop=N: N more control commands (RX PROMISC off/on), ~1M cycles apart (for the dirty-log test) */
    if (cmdline_get(cmdline, "ctrlloop=", arg, sizeof arg)) {
      uint32_t n = (uint32_t)parse_u64(arg);
      serial_puts("CTRL-LOOP\n");
      for (uint32_t i = 0; i < n; i++) {
        uint8_t on = (uint8_t)(i & 1);
        if (net_ctrl(0, 0, &on, 1) == 0) acks++; else nacks++;
        for (uint64_t t = rdtsc(); rdtsc() - t < 1000000;) __asm__ volatile("pause");
      }
    }
    if (hostile) {
      net_hostile(hostile);
      uint64_t t0h = rdtsc();
      while (!(net_status() & 0x40) && rdtsc() - t0h < 20000000000ull) __asm__ volatile("pause");
      result_begin(mode);
      result_num("hostile", (uint32_t)hostile);
      result_num("status", (uint32_t)net_status());
      result_end((net_status() & 0x40) != 0);
      return (net_status() & 0x40) ? 0 : 1;
    }
    serial_puts("NET-START\n");
    uint64_t t0 = rdtsc();
    if (streq(mode, "net-pingpong")) {
      static uint32_t rtt[100000];
      if (count > 100000) count = 100000;
      uint32_t ok = net_pingpong(count, size, dst, rtt);
      /* percentiles of the answered ones (insertion sort is fine at this size) */
      uint32_t n = 0;
      for (uint32_t i = 0; i < count; i++)
        if (rtt[i]) rtt[n++] = rtt[i];
      for (uint32_t i = 1; i < n; i++) {
        uint32_t v = rtt[i], j = i;
        while (j > 0 && rtt[j - 1] > v) rtt[j] = rtt[j - 1], j--;
        rtt[j] = v;
      }
      result_begin(mode);
      result_num("answered", ok);
      result_num("p50_cycles", n ? rtt[n / 2] : 0);
      result_num("p99_cycles", n ? rtt[(n * 99) / 100] : 0);
      result_num("min_cycles", n ? rtt[0] : 0);
      result_end(ok == count);
      return ok == count ? 0 : 1;
    }
    if (streq(mode, "net-macswap")) {
      uint32_t fwd = net_macswap(count, 30000000000ull);
      result_begin(mode);
      result_num("forwarded", fwd);
      result_end(fwd == count);
      return fwd == count ? 0 : 1;
    }
    if (streq(mode, "net-tx")) {
      uint64_t sent = net_tx(count, size, dst);
      uint64_t cycles = rdtsc() - t0;
      result_begin(mode);
      result_str("mac", macs);
      result_num("features_lo", (uint32_t)net_features());
      result_num("pairs", net_pairs());
      result_num("acks", (uint32_t)acks);
      result_num("nacks", (uint32_t)nacks);
      result_num("sent", sent);
      result_num("highbufs", highbufs);
      result_num("iommu_requests", iommu_requests);
      result_num("iommu_failures", iommu_failures);
      result_num("size", size < 60 ? 60 : size);
      result_num("cycles", cycles);
      result_num("status", (uint32_t)net_status());
      result_end(sent == count);
      return sent == count ? 0 : 1;
    }
    struct rx_result rr;
    uint64_t idle = 30000000000ull; /* cycles without a frame before giving up (idle=N: N million) */
    if (cmdline_get(cmdline, "idle=", arg, sizeof arg)) idle = parse_u64(arg) * 1000000ull;
    net_rx(count, idle, &rr);
    uint64_t cycles = rdtsc() - t0;
    result_begin(mode);
    result_str("mac", macs);
    result_num("received", rr.received);
    result_num("highbufs", highbufs);
    result_num("iommu_requests", iommu_requests);
    result_num("iommu_failures", iommu_failures);
    result_num("bad", rr.bad);
    result_num("other", rr.other);
    result_num("max_buffers", rr.max_buffers);
    result_num("irqs", irq_count);
    result_num("acks", (uint32_t)acks);
    result_num("nacks", (uint32_t)nacks);
    result_num("out_of_order", rr.out_of_order);
    result_num("bytes", rr.bytes);
    result_num("span_cycles", rr.received > 1 ? rr.last_tsc - rr.first_tsc : 0);
    result_num("first_seq", rr.first_seq);
    result_num("last_seq", rr.last_seq);
    result_num("cycles", cycles);
    result_num("status", (uint32_t)net_status());
    result_end(rr.received == count && rr.bad == 0);
    return rr.received == count && rr.bad == 0 ? 0 : 1;
  }
  if (streq(mode, "fault")) {
    __asm__ volatile("ud2");
    return 1;
  }
  if (streq(mode, "hang")) {
    serial_puts("hanging\n");
    for (;;) __asm__ volatile("pause");
  }
  if (streq(mode, "reset")) {
    outb(0x64, 0xfe);
    for (;;) {
    }
  }
  result_begin(mode);
  result_str("error", "unknown mode");
  result_end(0);
  return 3;
}
