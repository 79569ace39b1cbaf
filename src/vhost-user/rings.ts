// What the backend knows of each of the frontend's rings (size, addresses, base, eventfds), and where a
// ring's parts lie in the frontend's memory: by frontend virtual address, or by IOVA behind its IOTLB.
import { native } from '../native.js';
import { guestView, dmaContiguous, type DmaAccess } from '../virtio/dma.js';
import { guestBytes } from '../virtio/guest-bytes.js';
import { MAP_READ } from '../viommu/table.js';
import { decodeRingBase, type RingState } from '../virtio/virtqueue.js';
import type { Iotlb } from './iotlb.js';
import type { FrontendMemory } from './memory.js';

export interface Vring {
  num: number;
  desc: number;
  avail: number;
  used: number;
  base: number;
  kickFd: number;
  callFd: number;
  enabled: boolean;
  /** guest-physical address to log used-ring writes at (VHOST_VRING_F_LOG), if the frontend gave one */
  logGpa: number | undefined;
}

/** vhost_vring_addr.flags bit: log_guest_addr is valid */
export const VRING_F_LOG = 1;

export function freshRing(): Vring {
  return { num: 0, desc: 0, avail: 0, used: 0, base: 0, kickFd: -1, callFd: -1, enabled: false, logGpa: undefined };
}

/**
 * Where a packed ring resumes from the frontend's 32-bit base (vhost-user.rst: bits 0–14 the next
 * available position, 15 its wrap counter; 16–30 and 31 the same for used). A frontend that gives only
 * the available half leaves the used half 0 (DPDK's virtio-user sends 0x8000 for a fresh ring; DPDK's
 * vhost library reads only that half): both resume there. Otherwise both resume at the used position:
 * chains made available and never used are taken again, as a split ring resumes at its used index.
 * (A base this backend reported has both halves equal: its threads stop with every chain taken used.)
 * After a backend died no one knows where a packed ring stood (QEMU keeps no in-flight record for
 * net): only split rings survive a backend restart under QEMU.
 */
export function packedStart(base: number): RingState {
  const s = decodeRingBase(base, true);
  const [at, wrap] = base >>> 16 === 0 ? [s.nextAvail, s.availWrap] : [s.nextUsed, s.usedWrap];
  return { nextAvail: at, availWrap: wrap, nextUsed: at, usedWrap: wrap };
}

/** The bytes of a ring's three areas: split descriptor table, available and used rings (with their
 * event fields); packed descriptor ring and the 4-byte driver and device event suppression areas. */
export function ringAreas(num: number, packed: boolean): { desc: number; avail: number; used: number } {
  return packed ? { desc: 16 * num, avail: 4, used: 4 } : { desc: 16 * num, avail: 6 + 2 * num, used: 6 + 8 * num };
}

/**
 * Offset in the shared buffer of a ring range (IOVA with an IOTLB, else frontend address), or -1. A
 * range the IOTLB does not map is asked of the frontend.
 */
export function ringOffset(mem: FrontendMemory, iotlb: Iotlb | undefined, addr: number, len: number, access: DmaAccess): number {
  if (iotlb) {
    const off = dmaContiguous(guestView(mem.buffer, mem.table, iotlb.reader), addr, len, access);
    if (off < 0) iotlb.sendMisses([{ iova: addr, access }]);
    return off;
  }
  const gpa = mem.vaToGpa(addr, len);
  return gpa < 0 ? -1 : mem.table.translate(gpa, len);
}

/** A split ring's used index as the frontend's memory holds it (`r.base` when it cannot be read). */
export function usedIndex(mem: FrontendMemory | undefined, iotlb: Iotlb | undefined, r: Vring): number {
  if (!mem) return r.base;
  const off = ringOffset(mem, iotlb, r.used + 2, 2, MAP_READ);
  return off < 0 ? r.base : guestBytes(mem.buffer).u16(off);
}

/** (tracing) a split ring's avail index and its last 24 used entries: index:head/len@buffer address */
export function ringDump(mem: FrontendMemory | undefined, iotlb: Iotlb | undefined, r: Vring): string {
  if (!mem) return '';
  const g = guestBytes(mem.buffer);
  const a = ringOffset(mem, iotlb, r.avail + 2, 2, MAP_READ);
  const u = ringOffset(mem, iotlb, r.used, 4 + 8 * r.num, MAP_READ);
  const d = ringOffset(mem, iotlb, r.desc, 16 * r.num, MAP_READ);
  if (a < 0 || u < 0 || d < 0) return 'rings not translatable';
  const idx = g.u16(u + 2);
  const out: string[] = [];
  for (let k = idx - 24; k < idx; k++) {
    const slot = (k & 0xffff) % r.num;
    const head = g.u32(u + 4 + 8 * slot);
    const buf = head < r.num ? g.u64(d + 16 * head).toString(16) : '?';
    out.push(`${k & 0xffff}:${head}/${g.u32(u + 8 + 8 * slot)}@${buf}`);
  }
  return `avail ${g.u16(a)}, used ${out.join(' ')}`;
}

/** Close a descriptor we hold (-1: none); returns -1, for the field that held it. */
export function closeFd(fd: number): number {
  if (fd >= 0) native.close(fd);
  return -1;
}
