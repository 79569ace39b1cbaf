// virtio-net feature bits (linux/virtio_net.h), the feature offer made from what a driver can honour,
// and what the negotiated features mean for the dataplane: one source for the virtio-pci device
// (src/virtio-net/device.ts) and the vhost-user backend (src/vhost-user/backend.ts).
import type { DriverCapabilities } from '../drivers/api.js';
import { FRAME_OVERHEAD, MAX_GSO_FRAME, type TxPolicy } from './net-header.js';
import { VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, bit, has } from '../virtio/device.js';
import type { QueueFeatures } from '../virtio/virtqueue.js';

export const F = {
  CSUM: 0,
  GUEST_CSUM: 1,
  CTRL_GUEST_OFFLOADS: 2,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_VLAN: 19,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
  VQ_NOTF_COAL: 52,
  NOTF_COAL: 53,
  GUEST_USO4: 54,
  GUEST_USO6: 55,
  HOST_USO: 56,
  HASH_REPORT: 57,
  RSS: 60,
  SPEED_DUPLEX: 63,
  // transport
  INDIRECT_DESC: VIRTIO_F_INDIRECT_DESC,
  EVENT_IDX: VIRTIO_F_EVENT_IDX,
  VERSION_1: VIRTIO_F_VERSION_1,
  ACCESS_PLATFORM: VIRTIO_F_ACCESS_PLATFORM,
  RING_PACKED: VIRTIO_F_RING_PACKED,
  IN_ORDER: VIRTIO_F_IN_ORDER,
} as const;

export { bit, has };

/**
 * The features a virtio-net device offers over a driver with capabilities `caps`: the transport and
 * data-path bits every device has, MQ for more than one pair, and only the offloads the driver
 * honours (TX offloads need it to checksum/segment, RX ones to take partial checksums and GSO frames).
 * Device-model extras (MAC, the control queue...) and transport extras (vhost-user's) are the caller's.
 * `packed`: offer VIRTIO_F_RING_PACKED too (each transport opts in; the driver still chooses the layout).
 * `mergeable`: offer MRG_RXBUF (default true; false makes the guest post one buffer per frame).
 */
export function netFeatureOffer(caps: Pick<DriverCapabilities, 'offloads'>, queuePairs: number, opts: { packed?: boolean; mergeable?: boolean } = {}): bigint {
  const o = caps.offloads;
  let f = bit(F.VERSION_1) | bit(F.EVENT_IDX) | bit(F.INDIRECT_DESC);
  if (opts.mergeable ?? true) f |= bit(F.MRG_RXBUF);
  if (opts.packed) f |= bit(F.RING_PACKED);
  if (queuePairs > 1) f |= bit(F.MQ);
  if (o.txCsum) {
    f |= bit(F.CSUM);
    if (o.txTso4) f |= bit(F.HOST_TSO4);
    if (o.txTso6) f |= bit(F.HOST_TSO6);
    if (o.txTsoEcn && (o.txTso4 || o.txTso6)) f |= bit(F.HOST_ECN);
    if (o.txUso) f |= bit(F.HOST_USO);
  }
  if (o.rxCsum) {
    f |= bit(F.GUEST_CSUM);
    if (o.rxTso4) f |= bit(F.GUEST_TSO4);
    if (o.rxTso6) f |= bit(F.GUEST_TSO6);
    if (o.rxTsoEcn && (o.rxTso4 || o.rxTso6)) f |= bit(F.GUEST_ECN);
    if (o.rxUso4) f |= bit(F.GUEST_USO4);
    if (o.rxUso6) f |= bit(F.GUEST_USO6);
  }
  return f;
}

/** Which TX offloads the negotiated features allow the guest to ask for. */
export function txPolicy(features: bigint): TxPolicy {
  return { csum: has(features, F.CSUM), tso4: has(features, F.HOST_TSO4), tso6: has(features, F.HOST_TSO6), ecn: has(features, F.HOST_ECN), uso: has(features, F.HOST_USO) };
}

/** The queue layout and checks the negotiated features ask for. */
export function queueFeatures(features: bigint): Required<QueueFeatures> {
  return { eventIdx: has(features, F.EVENT_IDX), indirect: has(features, F.INDIRECT_DESC), packed: has(features, F.RING_PACKED), inOrder: has(features, F.IN_ORDER) };
}

/** the MTU range of `--net ...,mtu=N` and the config space's u16 field (RFC 791's minimum IPv4 MTU up) */
export const MIN_MTU = 68;
export const MAX_MTU = 65535;

/**
 * What the negotiated features mean for the net dataplane threads (the per-device part of their
 * configuration). `mtu`: the device's MTU (what it offers with VIRTIO_NET_F_MTU, else the wire's):
 * the largest frame taken from the driver for a guest that takes no GSO frames.
 */
export function netDataplaneFeatures(features: bigint, mtu: number) {
  const guestTso = has(features, F.GUEST_TSO4) || has(features, F.GUEST_TSO6) || has(features, F.GUEST_USO4) || has(features, F.GUEST_USO6);
  return {
    ...queueFeatures(features),
    mergeable: has(features, F.MRG_RXBUF),
    // the guest takes GSO frames: its buffers (or, with MRG_RXBUF, several) must hold the largest;
    // else it sized them for its MTU (Linux without MRG_RXBUF: enough pages for the offered MTU)
    maxRxFrame: guestTso ? MAX_GSO_FRAME : mtu + FRAME_OVERHEAD,
    txPolicy: txPolicy(features),
  };
}
