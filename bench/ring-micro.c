/* The C reference for bench/engine-micro.mjs: the device side of one virtio-net queue doing per packet
   the work the net engine with the null driver does, on the same ring layout in the same memory (a
   Node addon, so both run in one process, alternating): pop a one-descriptor chain (checked: head in
   range, no NEXT or INDIRECT, the right direction, the buffer inside memory), then
     TX: read the 12-byte virtio-net header (offloads refused as the engine's policy does), copy the
         frame out into a buffer of our own (the null driver's copy);
     RX: write the frame (the null driver's, its counter in bytes 14..17) and the 12-byte header;
   add the used entry, and publish the used index (split) or the head's flags (packed) once per batch
   of BATCH, as DPDK's vhost does. The driver side (making buffers available again) is here too, and
   is what both the C loop and the engine are measured with.
   Built by the benchmark: gcc -O2 -shared -fPIC -I/usr/include/node. */
#include <node_api.h>
#include <stdint.h>
#include <string.h>

enum { BATCH = 32, HDR = 12, F_NEXT = 1, F_WRITE = 2, F_INDIRECT = 4, P_AVAIL = 1 << 7, P_USED = 1 << 15 };

/* One ring, as the benchmark lays it out (cfg: the numbers in this order, as a Float64Array). */
struct ring {
  uint8_t *mem;
  size_t mem_len;
  size_t desc, avail, used;
  unsigned size, frame;
  int rx;
};
/* State (a Uint32Array): the device's next avail index, next used index (split) and wrap counter
   (packed), the driver's next slot and wrap counter (packed), the RX frame counter. */
enum { S_AVAIL, S_USED, S_WRAP, S_DRIVER_AT, S_DRIVER_WRAP, S_SEQ, S_WORDS };

static uint8_t mbuf[9018];
static uint8_t frame_src[9018];
static volatile uint32_t sink;

static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* the buffer of a descriptor, checked: NULL when the chain is not one the fast path takes */
static inline uint8_t *buffer(const struct ring *r, uint64_t addr, uint32_t len, uint16_t flags) {
  if (flags & (F_NEXT | F_INDIRECT)) return NULL;
  if (!!(flags & F_WRITE) != r->rx) return NULL;
  if (addr > r->mem_len || len > r->mem_len - addr) return NULL;
  if (r->rx ? len < HDR + r->frame : len < HDR + 14) return NULL;
  return r->mem + addr;
}

/* the packet work on one buffer; returns the used length */
static inline uint32_t packet(const struct ring *r, uint8_t *b, uint32_t len, uint32_t *seq) {
  if (r->rx) {
    uint32_t n = ++*seq;
    memcpy(frame_src + 14, &n, 4);
    memcpy(b + HDR, frame_src, r->frame);
    memset(b, 0, HDR);
    st16(b + 10, 1); /* num_buffers */
    return HDR + r->frame;
  }
  uint8_t hdr[HDR];
  memcpy(hdr, b, HDR);
  if (hdr[0] != 0 || hdr[1] != 0) return 0; /* offloads this device did not offer: dropped */
  uint32_t n = len - HDR;
  memcpy(mbuf, b + HDR, n < sizeof mbuf ? n : sizeof mbuf);
  sink += mbuf[0];
  return 0;
}

static unsigned split_device(const struct ring *r, uint32_t *s, unsigned n) {
  uint8_t *avail = r->mem + r->avail, *used = r->mem + r->used, *desc = r->mem + r->desc;
  unsigned done = 0, mask = r->size - 1;
  while (done < n) {
    uint16_t avail_idx = __atomic_load_n((uint16_t *)(avail + 2), __ATOMIC_ACQUIRE);
    unsigned k = 0;
    for (; k < BATCH && done < n && (uint16_t)s[S_AVAIL] != avail_idx; k++, done++) {
      uint16_t head = ld16(avail + 4 + 2 * (s[S_AVAIL] & mask));
      s[S_AVAIL] = (s[S_AVAIL] + 1) & 0xffff;
      if (head >= r->size) return done;
      const uint8_t *d = desc + 16 * head;
      uint32_t len = ld32(d + 8);
      uint8_t *b = buffer(r, ld64(d), len, ld16(d + 12));
      if (!b) return done;
      uint8_t *e = used + 4 + 8 * ((s[S_USED] + k) & mask);
      st32(e, head);
      st32(e + 4, packet(r, b, len, &s[S_SEQ]));
    }
    if (k == 0) break;
    s[S_USED] = (s[S_USED] + k) & 0xffff;
    __atomic_store_n((uint16_t *)(used + 2), (uint16_t)s[S_USED], __ATOMIC_RELEASE);
  }
  return done;
}

static unsigned packed_device(const struct ring *r, uint32_t *s, unsigned n) {
  uint8_t *desc = r->mem + r->desc;
  unsigned done = 0;
  while (done < n) {
    unsigned first = s[S_AVAIL], k = 0;
    uint16_t first_flags = 0;
    for (; k < BATCH && done < n; k++, done++) {
      uint8_t *d = desc + 16 * s[S_AVAIL];
      uint16_t flags = __atomic_load_n((uint16_t *)(d + 14), __ATOMIC_ACQUIRE);
      if (!!(flags & P_AVAIL) != !!s[S_WRAP] || !!(flags & P_USED) == !!s[S_WRAP]) break;
      uint32_t len = ld32(d + 8);
      uint16_t id = ld16(d + 12);
      uint8_t *b = buffer(r, ld64(d), len, flags);
      if (!b) return done;
      uint32_t written = packet(r, b, len, &s[S_SEQ]);
      /* the used element goes where this chain was (one descriptor: avail and used move together) */
      st16(d + 12, id);
      st32(d + 8, written);
      uint16_t uflags = (s[S_WRAP] ? P_AVAIL | P_USED : 0) | (r->rx ? F_WRITE : 0);
      if (k == 0) first_flags = uflags;
      else __atomic_store_n((uint16_t *)(d + 14), uflags, __ATOMIC_RELEASE);
      if (++s[S_AVAIL] == r->size) s[S_AVAIL] = 0, s[S_WRAP] ^= 1;
    }
    if (k == 0) break;
    /* the batch's first flags last: the driver sees the whole batch at once */
    __atomic_store_n((uint16_t *)(desc + 16 * first + 14), first_flags, __ATOMIC_RELEASE);
  }
  return done;
}

/* The driver: make `n` buffers available again (all were used), the same for the C loop and the engine. */
static void split_driver(const struct ring *r, unsigned n) {
  uint8_t *avail = r->mem + r->avail;
  __atomic_store_n((uint16_t *)(avail + 2), (uint16_t)(ld16(avail + 2) + n), __ATOMIC_RELEASE);
}

static void packed_driver(const struct ring *r, uint32_t *s, unsigned n) {
  uint8_t *desc = r->mem + r->desc;
  for (unsigned k = 0; k < n; k++) {
    uint8_t *d = desc + 16 * s[S_DRIVER_AT];
    st32(d + 8, r->rx ? 2048 : HDR + r->frame);
    st16(d + 12, (uint16_t)s[S_DRIVER_AT]);
    uint16_t flags = (s[S_DRIVER_WRAP] ? P_AVAIL : P_USED) | (r->rx ? F_WRITE : 0);
    __atomic_store_n((uint16_t *)(d + 14), flags, __ATOMIC_RELEASE);
    if (++s[S_DRIVER_AT] == r->size) s[S_DRIVER_AT] = 0, s[S_DRIVER_WRAP] ^= 1;
  }
}

/* ---- the JavaScript side: (mem: Uint8Array, cfg: Float64Array, state: Uint32Array, n) */
static int args(napi_env env, napi_callback_info info, struct ring *r, uint32_t **s, uint32_t *n, int *packed, int *is_driver) {
  size_t argc = 4;
  napi_value a[4];
  void *data;
  size_t len;
  napi_typedarray_type t;
  void *which;
  if (napi_get_cb_info(env, info, &argc, a, NULL, &which) != napi_ok || argc < 4) return 0;
  *is_driver = which != NULL;
  if (napi_get_typedarray_info(env, a[0], &t, &len, &data, NULL, NULL) != napi_ok || t != napi_uint8_array) return 0;
  r->mem = data, r->mem_len = len;
  if (napi_get_typedarray_info(env, a[1], &t, &len, &data, NULL, NULL) != napi_ok || t != napi_float64_array || len < 7) return 0;
  const double *c = data;
  r->desc = (size_t)c[0], r->avail = (size_t)c[1], r->used = (size_t)c[2], r->size = (unsigned)c[3];
  r->frame = (unsigned)c[4], r->rx = c[5] != 0, *packed = c[6] != 0;
  if (napi_get_typedarray_info(env, a[2], &t, &len, &data, NULL, NULL) != napi_ok || t != napi_uint32_array || len < S_WORDS) return 0;
  *s = data;
  return napi_get_value_uint32(env, a[3], n) == napi_ok && r->size && !(r->size & (r->size - 1)) && r->frame <= 9000 &&
         r->desc + 16 * r->size <= r->mem_len && r->avail + 6 + 2 * r->size <= r->mem_len && r->used + 6 + 8 * r->size <= r->mem_len;
}

static napi_value result(napi_env env, unsigned v) {
  napi_value out;
  napi_create_uint32(env, v, &out);
  return out;
}

/* device(...) or driver(...), as the property's data says */
static napi_value call(napi_env env, napi_callback_info info) {
  struct ring r;
  uint32_t *s, n;
  int packed, is_driver;
  if (!args(env, info, &r, &s, &n, &packed, &is_driver)) {
    napi_throw_type_error(env, NULL, "ring-micro: bad arguments");
    return NULL;
  }
  if (!is_driver) return result(env, packed ? packed_device(&r, s, n) : split_device(&r, s, n));
  if (packed) packed_driver(&r, s, n);
  else split_driver(&r, n);
  return result(env, n);
}

NAPI_MODULE_INIT() {
  for (unsigned i = 0; i < sizeof frame_src; i++) frame_src[i] = (uint8_t)i;
  memset(frame_src, 0xff, 6);
  napi_property_descriptor p[] = {
      {"device", NULL, call, NULL, NULL, NULL, napi_default, (void *)0},
      {"driver", NULL, call, NULL, NULL, NULL, napi_default, (void *)1},
  };
  napi_define_properties(env, exports, 2, p);
  return exports;
}
