// Which guest pages were written, for live migration and snapshots: the vCPUs' writes in KVM's dirty
// log (per memory slot), the devices' (dataplane threads, control queue, vIOMMU) in a bitmap of
// tsvmm's own that their threads set, one bit per 4 KiB guest-physical page.
import { MEM_LOG_DIRTY_PAGES } from './kvm-abi.js';
import type { VmFd } from './kvm.js';
import type { GuestMemory } from './memory.js';
import type { DirtyLogArea } from '../virtio/dirty-log.js';

const PAGE = 4096;

export class DirtyPages {
  /** the devices' log, made by the first enable() */
  private deviceLog?: Uint8Array;
  private enabled = false;

  /** KVM's log is on (enable() was called, disable() not since) */
  get on(): boolean {
    return this.enabled;
  }

  /** Turn KVM's log on for every RAM slot; returns the devices' log for them to mark in. */
  enable(mem: GuestMemory, vm: VmFd): DirtyLogArea {
    mem.table.regions.forEach((r, slot) => vm.setUserMemoryRegion(slot, r.gpa, r.size, mem.hostAddress + BigInt(r.offset), MEM_LOG_DIRTY_PAGES));
    this.enabled = true;
    if (!this.deviceLog) {
      const end = Math.max(...mem.table.regions.map((r) => r.gpa + r.size));
      this.deviceLog = new Uint8Array(new SharedArrayBuffer(Math.ceil(end / PAGE / 8)));
    }
    return { buffer: this.deviceLog.buffer as SharedArrayBuffer, offset: 0, size: this.deviceLog.length };
  }

  /** Turn KVM's log off again (the devices are told by their owner to drop theirs). */
  disable(mem: GuestMemory, vm: VmFd): void {
    mem.table.regions.forEach((r, slot) => vm.setUserMemoryRegion(slot, r.gpa, r.size, mem.hostAddress + BigInt(r.offset)));
    this.enabled = false;
  }

  /** Pages written since the last call (or since enable), as guest-physical page addresses, ascending. */
  take(mem: GuestMemory, vm: VmFd): number[] {
    const pages = new Set<number>();
    /** the pages of one bitmap byte whose first page starts at `gpa` */
    const addByte = (byte: number, gpa: number) => {
      for (let bit = 0; byte; bit++, byte >>= 1) if (byte & 1) pages.add(gpa + bit * PAGE);
    };
    mem.table.regions.forEach((r, slot) => {
      const bitmap = vm.getDirtyLog(slot, r.size / PAGE);
      bitmap.forEach((byte, i) => {
        addByte(byte, r.gpa + i * 8 * PAGE);
      });
    });
    // the devices' log: taken and cleared a byte at a time (the threads keep setting bits meanwhile)
    const dev = this.deviceLog;
    if (dev) {
      for (let i = 0; i < dev.length; i++) {
        if (dev[i] === 0) continue;
        addByte(Atomics.exchange(dev, i, 0), i * 8 * PAGE);
      }
    }
    return [...pages].sort((a, b) => a - b);
  }
}
