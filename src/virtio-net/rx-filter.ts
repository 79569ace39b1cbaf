// Receive filtering state set by the control queue (main thread) and read per packet by the dataplane
// threads: a few shared words, a MAC table and a VLAN table. Writers change it rarely; a reader seeing a
// change one packet late is harmless, so plain loads suffice.

const W_PROMISC = 0;
const W_ALLMULTI = 1;
const W_ALLUNI = 2;
const W_NOMULTI = 3;
const W_NOUNI = 4;
const W_NOBCAST = 5;
const W_UNI_COUNT = 6;
const W_MULTI_COUNT = 7;
/** the device's link is down (set by the host, kept over device resets): nothing is accepted */
const W_LINK_DOWN = 8;
/** the driver negotiated VIRTIO_NET_F_CTRL_VLAN: tagged frames pass only for VLANs in the table */
const W_VLAN_FILTER = 9;
const WORDS = 10;
export const MAC_TABLE_MAX = 64;
const MAC_OFF = WORDS * 4; // primary MAC (8 bytes reserved), then the unicast and multicast tables
const TABLE_OFF = MAC_OFF + 8;
/** 802.1Q VLAN ids are 12 bits */
export const VLAN_IDS = 4096;
/** the VLAN table: one bit per id (id >> 3 is its byte, id & 7 its bit) */
const VLAN_OFF = TABLE_OFF + 2 * MAC_TABLE_MAX * 6;
export const RX_FILTER_BYTES = VLAN_OFF + VLAN_IDS / 8;
/** the TPID of an 802.1Q tag (a C-tag; Linux's virtio_net filters only these, as QEMU does) */
const ETH_P_8021Q = 0x8100;

export const RX_MODE = { PROMISC: 0, ALLMULTI: 1, ALLUNI: 2, NOMULTI: 3, NOUNI: 4, NOBCAST: 5 } as const;

export class RxFilter {
  readonly words: Int32Array;
  readonly bytes: Uint8Array;
  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(RX_FILTER_BYTES)) {
    this.words = new Int32Array(buffer, 0, WORDS);
    this.bytes = new Uint8Array(buffer);
  }

  /** The modes, the link and VLAN words, the MAC, both MAC tables and the VLAN table, as bytes (the shared buffer's layout). */
  save(): Uint8Array {
    return this.bytes.slice();
  }

  /** Take saved bytes; why they cannot be this filter's (a mode or link word not 0/1, a table count too large), or undefined. */
  restore(saved: Uint8Array): string | undefined {
    if (saved.length !== RX_FILTER_BYTES) return `${saved.length} bytes, expected ${RX_FILTER_BYTES}`;
    const w = new Int32Array(saved.slice(0, WORDS * 4).buffer);
    for (const i of [W_PROMISC, W_ALLMULTI, W_ALLUNI, W_NOMULTI, W_NOUNI, W_NOBCAST, W_LINK_DOWN, W_VLAN_FILTER]) if (w[i] !== 0 && w[i] !== 1) return `word ${i} is ${w[i]}, not 0 or 1`;
    for (const i of [W_UNI_COUNT, W_MULTI_COUNT]) if (w[i] < 0 || w[i] > MAC_TABLE_MAX) return `table count ${w[i]} is more than ${MAC_TABLE_MAX}`;
    this.bytes.set(saved);
    return undefined;
  }

  /** Device reset state: promiscuous, as QEMU starts (drivers turn it off through the control queue); no VLAN filtering, an empty VLAN table. */
  reset(mac: Uint8Array): void {
    const down = this.words[W_LINK_DOWN];
    this.words.fill(0);
    this.words[W_LINK_DOWN] = down;
    this.words[W_PROMISC] = 1;
    this.setMac(mac);
    this.bytes.fill(0, VLAN_OFF, VLAN_OFF + VLAN_IDS / 8);
  }

  /**
   * VLAN filtering on (the driver negotiated VIRTIO_NET_F_CTRL_VLAN: the table starts empty and tagged
   * frames pass only for the ids it adds) or off (every tagged frame passes, §5.1.6.5.3).
   */
  setVlanFiltering(on: boolean): void {
    this.words[W_VLAN_FILTER] = on ? 1 : 0;
  }

  /** VIRTIO_NET_CTRL_VLAN_ADD / _DEL of `vid`; false (nothing changed) for an id that is not 12 bits. */
  setVlan(vid: number, on: boolean): boolean {
    if (!Number.isInteger(vid) || vid < 0 || vid >= VLAN_IDS) return false;
    const at = VLAN_OFF + (vid >> 3);
    this.bytes[at] = on ? this.bytes[at] | (1 << (vid & 7)) : this.bytes[at] & ~(1 << (vid & 7));
    return true;
  }

  hasVlan(vid: number): boolean {
    return (this.bytes[VLAN_OFF + (vid >> 3)] & (1 << (vid & 7))) !== 0;
  }

  setMode(mode: number, on: boolean): void {
    this.words[mode] = on ? 1 : 0;
  }

  setLinkDown(down: boolean): void {
    this.words[W_LINK_DOWN] = down ? 1 : 0;
  }

  setMac(mac: Uint8Array): void {
    this.bytes.set(mac.subarray(0, 6), MAC_OFF);
  }

  get mac(): Uint8Array {
    return this.bytes.slice(MAC_OFF, MAC_OFF + 6);
  }

  /** Replace the unicast and multicast tables; false if either is longer than we keep. */
  setTables(uni: Uint8Array[], multi: Uint8Array[]): boolean {
    if (uni.length > MAC_TABLE_MAX || multi.length > MAC_TABLE_MAX) return false;
    uni.forEach((m, i) => this.bytes.set(m, TABLE_OFF + 6 * i));
    multi.forEach((m, i) => this.bytes.set(m, TABLE_OFF + 6 * (MAC_TABLE_MAX + i)));
    this.words[W_UNI_COUNT] = uni.length;
    this.words[W_MULTI_COUNT] = multi.length;
    return true;
  }

  /**
   * VIRTIO_NET_CTRL_MAC_TABLE_SET's body (a unicast then a multicast table: a le32 count and that many
   * addresses each); false if it is malformed. Tables longer than we keep fall back to accepting that
   * class of address wholesale.
   */
  setTablesCommand(data: Uint8Array): boolean {
    const tables: Uint8Array[][] = [];
    let o = 0;
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let t = 0; t < 2; t++) {
      if (o + 4 > data.length) return false;
      const n = dv.getUint32(o, true);
      o += 4;
      if (n > 1024 || o + 6 * n > data.length) return false;
      tables.push(Array.from({ length: n }, (_, i) => data.slice(o + 6 * i, o + 6 * i + 6)));
      o += 6 * n;
    }
    if (o !== data.length) return false;
    if (!this.setTables(tables[0], tables[1])) {
      if (tables[0].length > MAC_TABLE_MAX) this.setMode(RX_MODE.ALLUNI, true);
      if (tables[1].length > MAC_TABLE_MAX) this.setMode(RX_MODE.ALLMULTI, true);
      this.setTables(tables[0].slice(0, MAC_TABLE_MAX), tables[1].slice(0, MAC_TABLE_MAX));
    }
    return true;
  }

  private inTable(p: Uint8Array, o: number, first: number, count: number): boolean {
    const b = this.bytes;
    for (let i = 0; i < count; i++) {
      const t = TABLE_OFF + 6 * (first + i);
      if (b[t] === p[o] && b[t + 1] === p[o + 1] && b[t + 2] === p[o + 2] && b[t + 3] === p[o + 3] && b[t + 4] === p[o + 4] && b[t + 5] === p[o + 5]) return true;
    }
    return false;
  }

  /** Does every frame reach the guest now (link up, promiscuous)? Read once per batch: accepts() is then not asked. */
  passesAll(): boolean {
    const w = this.words;
    return w[W_LINK_DOWN] === 0 && w[W_PROMISC] !== 0;
  }

  /**
   * Does a frame whose first `len` bytes are at p[o..o+len) (at least its destination MAC: 6) reach the
   * guest? Promiscuous mode takes everything, VLANs not added included (as QEMU does). A tag is looked
   * at where it lies whole in those bytes; VLAN id 0 (a priority tag, no VLAN) always passes.
   */
  accepts(p: Uint8Array, o: number, len = 6): boolean {
    const w = this.words;
    if (w[W_LINK_DOWN]) return false;
    if (w[W_PROMISC]) return true;
    if (w[W_VLAN_FILTER] && len >= 16 && ((p[o + 12] << 8) | p[o + 13]) === ETH_P_8021Q) {
      const vid = ((p[o + 14] & 0x0f) << 8) | p[o + 15];
      if (vid !== 0 && !this.hasVlan(vid)) return false;
    }
    if (p[o] & 1) {
      const bcast = p[o] === 0xff && p[o + 1] === 0xff && p[o + 2] === 0xff && p[o + 3] === 0xff && p[o + 4] === 0xff && p[o + 5] === 0xff;
      if (bcast) return !w[W_NOBCAST];
      if (w[W_NOMULTI]) return false;
      return w[W_ALLMULTI] !== 0 || this.inTable(p, o, MAC_TABLE_MAX, w[W_MULTI_COUNT]);
    }
    if (w[W_NOUNI]) return false;
    const b = this.bytes;
    if (b[MAC_OFF] === p[o] && b[MAC_OFF + 1] === p[o + 1] && b[MAC_OFF + 2] === p[o + 2] && b[MAC_OFF + 3] === p[o + 3] && b[MAC_OFF + 4] === p[o + 4] && b[MAC_OFF + 5] === p[o + 5]) return true;
    return w[W_ALLUNI] !== 0 || this.inTable(p, o, 0, w[W_UNI_COUNT]);
  }
}
