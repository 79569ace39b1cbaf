// A virtio split-ring *driver* in plain memory, to drive the device-side queue in unit tests the way a
// guest would (and the way a hostile guest would, by writing raw descriptors).
import { MemoryTable } from '../../src/vmm/memory.js';
import { guestView, type GuestView } from '../../src/virtio/dma.js';
import type { QueueConfig } from '../../src/virtio/virtqueue.js';
import type { PacketBatch } from '../../src/drivers/api.js';

export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;

export class TestMemory {
  readonly buffer: SharedArrayBuffer;
  readonly view: GuestView;
  readonly dv: DataView;
  private bump: number;
  /** `buffer`: memory to use (e.g. a shared mapping handed to a vhost-user backend), else a fresh one */
  constructor(readonly size = 1 << 20, readonly base = 0, buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(size);
    this.view = guestView(this.buffer, new MemoryTable([{ gpa: base, size, offset: 0 }]));
    this.dv = new DataView(this.buffer);
    this.bump = base + 0x10000;
  }
  alloc(len: number, align = 16): number {
    this.bump = Math.ceil(this.bump / align) * align;
    const a = this.bump;
    this.bump += len;
    if (this.bump > this.base + this.size) throw new Error('test memory exhausted');
    return a;
  }
  bytes(gpa: number, len: number): Uint8Array {
    return new Uint8Array(this.buffer, gpa - this.base, len);
  }
}

export class TestDriver {
  readonly cfg: QueueConfig;
  private nextDesc = 0;
  availIdx = 0;
  lastUsed = 0;
  constructor(readonly mem: TestMemory, readonly size: number, readonly eventIdx = false) {
    this.cfg = {
      size,
      desc: mem.alloc(16 * size, 16),
      avail: mem.alloc(6 + 2 * size, 2),
      used: mem.alloc(6 + 8 * size, 4),
    };
  }
  private o(gpa: number) {
    return gpa - this.mem.base;
  }
  /** Write descriptor i (raw: any values, for hostile tests). */
  writeDesc(i: number, addr: number, len: number, flags: number, next: number, table = this.cfg.desc): void {
    const d = this.o(table) + 16 * i;
    this.mem.dv.setBigUint64(d, BigInt(addr), true);
    this.mem.dv.setUint32(d + 8, len, true);
    this.mem.dv.setUint16(d + 12, flags, true);
    this.mem.dv.setUint16(d + 14, next, true);
  }
  /** Make `head` available and advance avail.idx. */
  publish(head: number): void {
    this.mem.dv.setUint16(this.o(this.cfg.avail) + 4 + 2 * (this.availIdx % this.size), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.mem.dv.setUint16(this.o(this.cfg.avail) + 2, this.availIdx, true);
  }
  /** Add a chain of buffers (readable ones first); returns its head. */
  add(bufs: Array<{ addr: number; len: number; write?: boolean }>): number {
    const head = this.nextDesc;
    bufs.forEach((b, k) => {
      const i = (head + k) % this.size;
      const last = k === bufs.length - 1;
      this.writeDesc(i, b.addr, b.len, (b.write ? F_WRITE : 0) | (last ? 0 : F_NEXT), (i + 1) % this.size);
    });
    this.nextDesc = (head + bufs.length) % this.size;
    this.publish(head);
    return head;
  }
  /** Make a chain of raw descriptors available (NEXT links each to the following one). Returns its head. */
  raw(descs: Array<{ addr: number; len: number; flags: number }>): number {
    const head = this.nextDesc;
    descs.forEach((d, k) => this.writeDesc((head + k) % this.size, d.addr, d.len, d.flags, (head + k + 1) % this.size));
    this.nextDesc = (head + descs.length) % this.size;
    this.publish(head);
    return head;
  }
  /** Entry `k` of an indirect table (NEXT, if in `flags`, links it to entry k + 1). */
  writeTableEntry(table: number, k: number, addr: number, len: number, flags: number): void {
    this.writeDesc(k, addr, len, flags, k + 1, table);
  }
  /** Add one indirect descriptor pointing at a table holding `bufs`. */
  addIndirect(bufs: Array<{ addr: number; len: number; write?: boolean }>): number {
    const table = this.mem.alloc(16 * bufs.length, 16);
    bufs.forEach((b, k) => this.writeDesc(k, b.addr, b.len, (b.write ? F_WRITE : 0) | (k < bufs.length - 1 ? F_NEXT : 0), k + 1, table));
    const head = this.nextDesc;
    this.writeDesc(head, table, 16 * bufs.length, F_INDIRECT, 0);
    this.nextDesc = (head + 1) % this.size;
    this.publish(head);
    return head;
  }
  /** Used elements not yet consumed. */
  takeUsed(): Array<{ id: number; len: number }> {
    const idx = this.mem.dv.getUint16(this.o(this.cfg.used) + 2, true);
    const out: Array<{ id: number; len: number }> = [];
    while (this.lastUsed !== idx) {
      const e = this.o(this.cfg.used) + 4 + 8 * (this.lastUsed % this.size);
      out.push({ id: this.mem.dv.getUint32(e, true), len: this.mem.dv.getUint32(e + 4, true) });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }
  set usedEvent(v: number) {
    this.mem.dv.setUint16(this.o(this.cfg.avail) + 4 + 2 * this.size, v, true);
  }
  get availEvent(): number {
    return this.mem.dv.getUint16(this.o(this.cfg.used) + 4 + 8 * this.size, true);
  }
  set noInterrupt(on: boolean) {
    this.mem.dv.setUint16(this.o(this.cfg.avail), on ? 1 : 0, true);
  }
  get usedFlags(): number {
    return this.mem.dv.getUint16(this.o(this.cfg.used), true);
  }
}

/**
 * A test driver's receive of one frame: `f` scattered over the batch's first packet's buffers (as much as
 * they hold), its length the frame's, no offload metadata. Returns the packets received (1).
 */
export function receiveFrame(b: PacketBatch, mem: SharedArrayBuffer, f: Uint8Array): number {
  const u8 = new Uint8Array(mem);
  let at = 0;
  for (let k = b.iovStart[0]; k < b.iovStart[1] && at < f.length; k++) {
    const n = Math.min(b.iov[3 * k + 2], f.length - at);
    u8.set(f.subarray(at, at + n), b.iov[3 * k + 1]);
    at += n;
  }
  b.len[0] = f.length;
  b.meta.fill(0);
  return 1;
}
