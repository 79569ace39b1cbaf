// A scripted packed-ring driver (VIRTIO_F_RING_PACKED, virtio 1.x §2.8) for the fuzz targets: the same
// moves as the split ScriptedRing (guest.ts), on one descriptor ring both sides write.
//
// The driver makes a chain available at its next slots with AVAIL = its wrap counter and USED the
// opposite (the head's flags written last), every descriptor carrying the chain's buffer id; it
// reclaims used descriptors at its own used position (AVAIL = USED = its used wrap counter), moving on
// by as many slots as the named chain took. With EVENT_IDX it asks for an interrupt at its used
// position (driver area {off_wrap, flags = DESC}); without, interrupts stay enabled.
import { align, type Desc, type DriverRing, type InFlight, type ScriptedMemory } from './guest.js';

const F_NEXT = 1;
const F_WRITE = 2;
const F_INDIRECT = 4;
const F_AVAIL = 1 << 7;
const F_USED = 1 << 15;

export class ScriptedPackedRing implements DriverRing {
  /** the descriptor ring */
  readonly desc: number;
  /** the driver event suppression area */
  readonly avail: number;
  /** the device event suppression area */
  readonly used: number;
  readonly end: number;
  private availPos = 0;
  private availWrap = true;
  private usedPos = 0;
  private usedWrap = true;
  private freeSlots: number;
  private readonly freeIds: number[] = [];
  readonly inFlight = new Map<number, InFlight>();
  bad: string | undefined;

  constructor(
    private readonly m: ScriptedMemory,
    readonly size: number,
    at: number,
    readonly eventIdx: boolean,
    /** hand out buffer ids in order */
    private readonly inOrder: boolean,
  ) {
    this.desc = align(at, 16);
    this.avail = this.desc + 16 * size;
    this.used = this.avail + 4;
    this.end = this.used + 4;
    this.freeSlots = size;
    for (let i = 0; i < size; i++) this.freeIds.push(i);
  }

  private writeDesc(g: number, d: Desc, id: number, flags: number): void {
    this.m.put32(g, d.addr % 2 ** 32);
    this.m.put32(g + 4, Math.floor(d.addr / 2 ** 32));
    this.m.put32(g + 8, d.len);
    this.m.put16(g + 12, id);
    this.m.put16(g + 14, flags | (d.write ? F_WRITE : 0));
  }

  /** The flags that make a slot available under wrap counter `wrap`. */
  private static availFlags(wrap: boolean): number {
    return wrap ? F_AVAIL : F_USED;
  }

  add(bufs: Desc[], indirectAt?: number): boolean {
    const need = indirectAt === undefined ? bufs.length : 1;
    if (bufs.length === 0 || this.freeSlots < need || this.freeIds.length === 0) return false;
    if (this.inOrder) this.freeIds.sort((a, b) => a - b);
    const id = this.freeIds.shift()!;
    const top: Array<{ d: Desc; flags: number }> = [];
    if (indirectAt === undefined) bufs.forEach((d, k) => top.push({ d, flags: k + 1 < bufs.length ? F_NEXT : 0 }));
    else {
      // (NEXT is not used in a packed indirect table: its descriptors are read in order, §2.8.7)
      bufs.forEach((d, k) => this.writeDesc(indirectAt + 16 * k, d, id, 0));
      top.push({ d: { addr: indirectAt, len: 16 * bufs.length, write: false }, flags: F_INDIRECT });
    }
    const slots: number[] = [];
    let headFlags = 0;
    top.forEach(({ d, flags }, k) => {
      const f = flags | ScriptedPackedRing.availFlags(this.availWrap);
      slots.push(this.availPos);
      if (k === 0) headFlags = f | (d.write ? F_WRITE : 0);
      this.writeDesc(this.desc + 16 * this.availPos, d, id, k === 0 ? ScriptedPackedRing.availFlags(!this.availWrap) : f);
      if (++this.availPos === this.size) {
        this.availPos = 0;
        this.availWrap = !this.availWrap;
      }
    });
    // the head made available last, so the device never sees a chain half-written
    this.m.put16(this.desc + 16 * slots[0] + 14, headFlags);
    this.freeSlots -= slots.length;
    this.inFlight.set(id, { head: id, slots, bufs, writableBytes: bufs.reduce((s, d) => s + (d.write ? d.len : 0), 0) });
    return true;
  }

  allowFromTable(): void {
    // used descriptors overwrite ring slots; the device area is the device's
    this.m.allowWrite(this.desc, 16 * this.size);
    this.m.allowWrite(this.used, 4);
    for (let i = 0; i < this.size; i++) this.allowDesc(this.desc + 16 * i, true);
    // (a chain the device holds may have had its slots overwritten by used descriptors since)
    for (const c of this.inFlight.values()) for (const d of c.bufs) if (d.write) this.m.allowWrite(d.addr, d.len);
  }

  private allowDesc(g: number, top: boolean): void {
    const m = this.m;
    const addr = m.get32(g) + m.get32(g + 4) * 2 ** 32;
    const len = m.get32(g + 8);
    const flags = m.get16(g + 14);
    if (flags & F_WRITE) m.allowWrite(addr, len);
    if (top && flags & F_INDIRECT && len % 16 === 0 && m.off(addr, len) >= 0) {
      for (let k = 0; k < len / 16; k++) this.allowDesc(addr + 16 * k, false);
    }
  }

  reclaim(): Array<{ chain: InFlight; len: number }> {
    const out: Array<{ chain: InFlight; len: number }> = [];
    for (;;) {
      const g = this.desc + 16 * this.usedPos;
      const flags = this.m.get16(g + 14);
      const avail = (flags & F_AVAIL) !== 0;
      const used = (flags & F_USED) !== 0;
      if (avail !== used || used !== this.usedWrap) break;
      const id = this.m.get16(g + 12);
      const len = this.m.get32(g + 8);
      const chain = this.inFlight.get(id);
      if (!chain) {
        // (the driver cannot tell how far to move on: it stops here)
        this.bad ??= `used descriptor names buffer id ${id}, which is not in flight`;
        break;
      }
      if (len > chain.writableBytes) this.bad ??= `used descriptor for id ${id} says ${len} bytes written into ${chain.writableBytes} writable`;
      this.inFlight.delete(id);
      this.freeIds.push(id);
      this.freeSlots += chain.slots.length;
      this.usedPos += chain.slots.length;
      if (this.usedPos >= this.size) {
        this.usedPos -= this.size;
        this.usedWrap = !this.usedWrap;
      }
      out.push({ chain, len });
    }
    if (this.eventIdx) {
      this.m.put16(this.avail, this.usedPos | (this.usedWrap ? 0x8000 : 0));
      this.m.put16(this.avail + 2, 2);
    }
    return out;
  }

  poke(where: number, value: number): void {
    const at = this.desc + (where % (this.end - this.desc));
    this.m.u8[this.m.off(at)] = value & 0xff;
  }

  /** A hostile driver's move: its next chains go where the device does not look for them. */
  jumpAvail(by: number): void {
    const to = this.availPos + (by % this.size);
    if (to >= this.size || by % 2) this.availWrap = !this.availWrap;
    this.availPos = to % this.size;
  }
}
