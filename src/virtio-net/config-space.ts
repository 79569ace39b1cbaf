// virtio-net's device configuration space (virtio 1.x §5.1.4, struct virtio_net_config) as the guest
// reads it: mac[6], status, max_virtqueue_pairs, mtu (u16 each), speed (u32), duplex (u8),
// rss_max_key_size (u8), rss_max_indirection_table_length (u16), supported_hash_types (u32). Read-only to
// a VERSION_1 driver: the MAC changes through the control queue, the link from the host.
import { RSS_MAX_KEY, RSS_MAX_TABLE } from './rss-state.js';
import { SUPPORTED_HASH_TYPES } from './rss-classify.js';

export const NET_STATUS_LINK_UP = 1;
/** the driver is asked to announce itself (gratuitous ARP, unsolicited NA) and to ack it (VIRTIO_NET_F_GUEST_ANNOUNCE) */
export const NET_STATUS_ANNOUNCE = 2;
/** the speed and duplex when not known (Linux's SPEED_UNKNOWN, DUPLEX_UNKNOWN) */
export const SPEED_UNKNOWN = 0xffffffff;
const DUPLEX = { half: 0, full: 1, unknown: 0xff } as const;
export const NET_CONFIG_SIZE = 24;
const STATUS = 6;

export class NetConfigSpace {
  /** the bytes as the guest reads them (saved and restored as they are) */
  readonly bytes = new Uint8Array(NET_CONFIG_SIZE);

  /** `rss`: the device offers RSS or hash reports (the RSS fields are filled, else zero) */
  constructor(o: { mac: Uint8Array; pairs: number; mtu: number; speed?: number; duplex?: 'full' | 'half'; rss?: boolean }) {
    const v = new DataView(this.bytes.buffer);
    this.bytes.set(o.mac);
    v.setUint16(STATUS, NET_STATUS_LINK_UP, true);
    v.setUint16(8, o.pairs, true);
    v.setUint16(10, o.mtu, true);
    v.setUint32(12, o.speed ?? SPEED_UNKNOWN, true);
    v.setUint8(16, DUPLEX[o.duplex ?? 'unknown']);
    if (o.rss) {
      v.setUint8(17, RSS_MAX_KEY);
      v.setUint16(18, RSS_MAX_TABLE, true);
      v.setUint32(20, SUPPORTED_HASH_TYPES, true);
    }
  }

  get linkUp(): boolean {
    return (this.bytes[STATUS] & NET_STATUS_LINK_UP) !== 0;
  }

  setLinkUp(up: boolean): void {
    this.bytes[STATUS] = (this.bytes[STATUS] & ~NET_STATUS_LINK_UP) | (up ? NET_STATUS_LINK_UP : 0);
  }

  get announcing(): boolean {
    return (this.bytes[STATUS] & NET_STATUS_ANNOUNCE) !== 0;
  }

  setAnnounce(on: boolean): void {
    this.bytes[STATUS] = (this.bytes[STATUS] & ~NET_STATUS_ANNOUNCE) | (on ? NET_STATUS_ANNOUNCE : 0);
  }

  get mac(): Uint8Array {
    return this.bytes.slice(0, 6);
  }

  setMac(mac: Uint8Array): void {
    this.bytes.set(mac, 0);
  }

  /** A little-endian read of `size` bytes; past the end reads as 0. */
  read(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + (this.bytes[offset + i] ?? 0);
    return v >>> 0;
  }
}
