// AF_XDP and bpf() constants and struct layouts (uapi <linux/if_xdp.h>, <linux/bpf.h>,
// <linux/if_link.h>); checked against the headers by test/af-xdp-abi.test.ts, which compiles C.

export const AF_XDP = 44;
export const SOCK_RAW = 3;
export const SOL_XDP = 283;
export const SOL_SOCKET = 1;

// setsockopt/getsockopt(SOL_XDP)
export const XDP_MMAP_OFFSETS = 1;
export const XDP_RX_RING = 2;
export const XDP_TX_RING = 3;
export const XDP_UMEM_REG = 4;
export const XDP_UMEM_FILL_RING = 5;
export const XDP_UMEM_COMPLETION_RING = 6;
export const XDP_STATISTICS = 7;
export const XDP_OPTIONS = 8;
export const XDP_OPTIONS_ZEROCOPY = 1;

// sockaddr_xdp.sxdp_flags
export const XDP_COPY = 1 << 1;
export const XDP_ZEROCOPY = 1 << 2;
export const XDP_USE_NEED_WAKEUP = 1 << 3;
// ring flags word
export const XDP_RING_NEED_WAKEUP = 1;

// mmap offsets of the four rings
export const XDP_PGOFF_RX_RING = 0;
export const XDP_PGOFF_TX_RING = 0x80000000;
export const XDP_UMEM_PGOFF_FILL_RING = 0x100000000;
export const XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000;

export const SIZEOF_UMEM_REG = 32;
export const SIZEOF_MMAP_OFFSETS = 128;
export const SIZEOF_SOCKADDR_XDP = 16;
export const SIZEOF_XDP_DESC = 16;
export const SIZEOF_XDP_STATISTICS = 48;

// socket busy polling (asm-generic/socket.h)
export const SO_BUSY_POLL = 46;
export const SO_PREFER_BUSY_POLL = 69;
export const SO_BUSY_POLL_BUDGET = 70;

// bpf() commands, types, attach points
export const BPF_MAP_CREATE = 0;
export const BPF_MAP_UPDATE_ELEM = 2;
export const BPF_MAP_DELETE_ELEM = 3;
export const BPF_PROG_LOAD = 5;
export const BPF_LINK_CREATE = 28;
export const BPF_MAP_TYPE_XSKMAP = 17;
export const BPF_PROG_TYPE_XDP = 6;
export const BPF_XDP = 37;
export const BPF_FUNC_redirect_map = 51;
export const SIZEOF_BPF_ATTR = 144;
/** union bpf_attr field offsets used here */
export const ATTR = {
  // BPF_MAP_CREATE
  mapType: 0,
  keySize: 4,
  valueSize: 8,
  maxEntries: 12,
  mapName: 28,
  // BPF_MAP_*_ELEM
  mapFd: 0,
  key: 8,
  value: 16,
  elemFlags: 24,
  // BPF_PROG_LOAD
  progType: 0,
  insnCnt: 4,
  insns: 8,
  license: 16,
  logLevel: 24,
  logSize: 28,
  logBuf: 32,
  progName: 48,
  expectedAttachType: 68,
  // BPF_LINK_CREATE
  linkProgFd: 0,
  linkTargetIfindex: 4,
  linkAttachType: 8,
  linkFlags: 12,
} as const;
/** XDP attach mode (if_link.h XDP_FLAGS_*) */
export const XDP_FLAGS_SKB_MODE = 2;
export const XDP_FLAGS_DRV_MODE = 4;
/** struct xdp_md.rx_queue_index */
export const XDP_MD_RX_QUEUE_INDEX = 16;
export const XDP_PASS = 2;

export const MSG_DONTWAIT = 0x40;
export const POLLIN = 1;
