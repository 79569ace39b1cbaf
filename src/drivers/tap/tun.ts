// /dev/net/tun interface (linux/if_tun.h): ioctls, flags, and the vnet header the tap prepends.
export const TUNSETIFF = 0x400454ca;
export const TUNSETOFFLOAD = 0x400454d0;
export const TUNSETVNETHDRSZ = 0x400454d8;
export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;
export const IFF_MULTI_QUEUE = 0x0100;
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
/** UDP segmentation offload (Linux 6.2): the kernel takes only both or neither */
export const TUN_F_USO4 = 0x20;
export const TUN_F_USO6 = 0x40;
export const IFNAMSIZ = 16;
export const SIZEOF_IFREQ = 40;

/** The tap's header (struct virtio_net_hdr_mrg_rxbuf; 12 bytes as set by TUNSETVNETHDRSZ). */
export const TAP_HDR_LEN = 12;
export const TAP_HDR_F_NEEDS_CSUM = 1;
export const TAP_HDR_F_DATA_VALID = 2;

export const TUNSETPERSIST = 0x400454cb;
/** bytes a queue's frames may hold in the kernel before writes return EAGAIN (default: no limit) */
export const TUNSETSNDBUF = 0x400454d4;
export const SIOCGIFFLAGS = 0x8913;
export const SIOCSIFFLAGS = 0x8914;
/** an interface's MTU (struct ifreq's ifr_mtu, an int after the name) */
export const SIOCGIFMTU = 0x8921;
export const SIOCSIFMTU = 0x8922;
export const IFF_UP = 0x1;
export const AF_INET = 2;
export const SOCK_DGRAM = 2;
