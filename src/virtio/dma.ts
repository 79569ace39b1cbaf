// What virtio queue code needs to know about memory, as interfaces defined here so that src/virtio/
// depends on neither the VMM (src/vmm/memory.ts implements GuestMemoryMap) nor the vIOMMU
// (src/viommu/table.ts's IommuReader implements DmaTranslator): guest-physical ranges as offsets in
// the one SharedArrayBuffer, and — for a device behind an IOMMU (VIRTIO_F_ACCESS_PLATFORM) — the
// translation of the addresses the driver gives it (IOVAs) into guest-physical ones.
import { guestBytes, type GuestBytes } from './guest-bytes.js';

/** DMA access kinds, as the IOMMU's mapping permissions name them */
export const DMA_READ = 1;
export const DMA_WRITE = 2;
export type DmaAccess = typeof DMA_READ | typeof DMA_WRITE;

/** A guest-physical range and where it lies in the shared buffer. */
export interface GuestRegion {
  gpa: number;
  size: number;
  offset: number;
}

/** Guest-physical → buffer offset. */
export interface GuestMemoryMap {
  readonly regions: readonly GuestRegion[];
  /** offset of [gpa, gpa+len) in the buffer, or -1 when any byte of it is not RAM or it spans regions */
  translate(gpa: number, len: number): number;
}

/** Device address (IOVA) → guest-physical, one mapping at a time. */
export interface DmaTranslator {
  /** set by translate(): the guest-physical address and how many bytes from the IOVA are contiguous */
  readonly hit: { gpa: number; len: number };
  /**
   * Translate the start of [iova, iova+len) for `access`; false when it is not mapped or not
   * permitted (counted as a fault unless `recordFault` is false).
   */
  translate(iova: number, len: number, access: DmaAccess, recordFault?: boolean): boolean;
}

/**
 * Guest memory as a queue sees it: its bytes (as windows: guest-bytes.ts; the buffer may be larger
 * than any one typed array), the map and the translator if any.
 */
export interface GuestView {
  bytes: GuestBytes;
  table: GuestMemoryMap;
  iommu?: DmaTranslator;
}

export function guestView(buffer: SharedArrayBuffer, table: GuestMemoryMap, iommu?: DmaTranslator): GuestView {
  return { bytes: guestBytes(buffer), table, iommu };
}

/**
 * Offset in guest memory of the device-visible range [addr, addr+len) that must be contiguous (a ring,
 * an indirect table); -1 when it is not RAM, not mapped for `access`, or not contiguous behind the
 * IOMMU.
 */
export function dmaContiguous(mem: GuestView, addr: number, len: number, access: DmaAccess): number {
  const io = mem.iommu;
  if (!io) return mem.table.translate(addr, len);
  let first = -1;
  let next = -1;
  for (let done = 0; done < len; ) {
    if (!io.translate(addr + done, len - done, access)) return -1;
    const piece = io.hit.len;
    const off = mem.table.translate(io.hit.gpa, piece);
    if (off < 0 || (next >= 0 && off !== next)) return -1;
    if (first < 0) first = off;
    next = off + piece;
    done += piece;
  }
  return first;
}
