// Guest RAM: one memfd, mapped shared once, seen by every thread as the same SharedArrayBuffer.
// A VM restored from a snapshot maps the snapshot's memory file instead, MAP_PRIVATE: pages are read
// from the file as the guest touches them and copied on its first write (the file is never written);
// the threads of this process share one address space, so they still see one buffer and each other's
// writes. The memory table maps guest-physical ranges to offsets in that buffer. It is fixed when the
// VM is built, so any thread reads it without locks (workers get a copy of the plain numbers).
import { openSync, closeSync } from 'node:fs';
import { native } from '../native.js';
import { UserError } from '../errors.js';
import { guestBytes, type GuestBytes } from '../virtio/guest-bytes.js';

export interface MemoryRegion {
  /** guest-physical start */
  gpa: number;
  size: number;
  /** offset of gpa in the shared buffer */
  offset: number;
}

/** Serializable description a worker needs to translate guest addresses. */
export interface MemoryTableData {
  regions: MemoryRegion[];
}

/** Guest-physical → buffer-offset translation. Pure: used on every thread. */
export class MemoryTable {
  readonly regions: readonly MemoryRegion[];
  constructor(regions: MemoryRegion[]) {
    this.regions = [...regions].sort((a, b) => a.gpa - b.gpa);
    for (let i = 1; i < this.regions.length; i++) {
      const p = this.regions[i - 1];
      if (p.gpa + p.size > this.regions[i].gpa) throw new Error('memory regions overlap');
    }
  }

  /** Offset in the shared buffer of [gpa, gpa+len), or -1 when any byte of it is not RAM or it spans regions. */
  translate(gpa: number, len: number): number {
    if (!(gpa >= 0) || !(len >= 0)) return -1;
    // (an indexed loop: this runs for every descriptor, and for-of allocates an iterator)
    const rs = this.regions;
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i];
      if (gpa >= r.gpa && gpa + len <= r.gpa + r.size) return r.offset + (gpa - r.gpa);
    }
    return -1;
  }

  get totalSize(): number {
    return this.regions.reduce((s, r) => s + r.size, 0);
  }

  toJSON(): MemoryTableData {
    return { regions: this.regions.map((r) => ({ ...r })) };
  }
}

export interface GuestMemoryOptions {
  /** map this file (its size must be the memory's) copy-on-write instead of a fresh memfd */
  file?: string;
}

export class GuestMemory {
  readonly table: MemoryTable;
  readonly buffer: SharedArrayBuffer;
  /** the buffer's bytes, as windows (it may be larger than any one typed array) */
  readonly bytes: GuestBytes;
  /** host virtual address of buffer[0], for KVM_SET_USER_MEMORY_REGION */
  readonly hostAddress: bigint;
  /** the bytes are a private (copy-on-write) mapping of `fd`, a file opened read-only, not a memfd */
  readonly copyOnWrite: boolean;
  private memfd: number;

  constructor(regions: MemoryRegion[], opts: GuestMemoryOptions = {}) {
    this.table = new MemoryTable(regions);
    const size = this.table.totalSize;
    this.copyOnWrite = opts.file !== undefined;
    this.memfd = opts.file !== undefined ? openMemoryFile(opts.file, size) : native.memfdCreate('tsvmm-guest-ram', 0);
    try {
      if (!this.copyOnWrite) native.ftruncate(this.memfd, size);
      const m = native.mmapShared(this.memfd, size, 0, this.copyOnWrite);
      this.buffer = m.buffer;
      this.hostAddress = m.address;
    } catch (e) {
      native.close(this.memfd);
      throw e;
    }
    this.bytes = guestBytes(this.buffer);
  }

  /** the memfd, or the file mapped copy-on-write (copyOnWrite): -1 once released */
  get fd(): number {
    return this.memfd;
  }

  /** A view of guest memory at gpa; throws if the range is not entirely RAM (VMM-side callers only). */
  slice(gpa: number, len: number): Uint8Array {
    const off = this.table.translate(gpa, len);
    if (off < 0) throw new Error(`guest range 0x${gpa.toString(16)}+0x${len.toString(16)} is not RAM`);
    return this.bytes.view(off, len);
  }

  write(gpa: number, data: Uint8Array): void {
    this.slice(gpa, data.length).set(data);
  }

  /**
   * Close the memfd and swap the mapping for anonymous pages, so nothing of the guest survives stop()
   * even while JavaScript still holds views (they now read zeros; the mapping goes when they are collected).
   */
  release(): void {
    if (this.memfd < 0) return;
    native.remapAnonymous(this.hostAddress, this.table.totalSize);
    native.close(this.memfd);
    this.memfd = -1;
  }
}

/** A memory file opened read-only, checked to be `size` bytes (a mapping past a file's end faults). */
function openMemoryFile(path: string, size: number): number {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new UserError(`memory file ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  const have = native.fileSize(fd);
  if (have !== size) {
    closeSync(fd);
    throw new UserError(`memory file ${path}: ${have} bytes, the memory is ${size}`);
  }
  return fd;
}
