// Checks on what a frontend hands over that the dataplane threads could not survive: a ring the queue
// code would refuse once its thread started (or would start at a position outside it), a descriptor the
// thread could not watch or would block on.
import { readFileSync } from 'node:fs';
import { O_NONBLOCK } from '../native.js';
import { MAX_QUEUE_SIZE } from '../virtio/virtqueue.js';
import { packedStart } from './rings.js';

/**
 * Why the ring's addresses break the alignment its layout requires, or undefined: split (virtio 1.x
 * §2.7) descriptor table 16, available ring 2, used ring 4; packed (§2.8) descriptor ring 16, the
 * driver and device event suppression areas (in avail and used) 4.
 */
export function ringMisalignment(a: { desc: number; avail: number; used: number }, packed: boolean): string | undefined {
  if (a.desc % 16) return `descriptor ${packed ? 'ring' : 'table'} at 0x${a.desc.toString(16)} is not 16-byte aligned`;
  if (packed && a.avail % 4) return `driver event suppression area at 0x${a.avail.toString(16)} is not 4-byte aligned`;
  if (packed && a.used % 4) return `device event suppression area at 0x${a.used.toString(16)} is not 4-byte aligned`;
  if (a.avail % 2) return `available ring at 0x${a.avail.toString(16)} is not 2-byte aligned`;
  if (a.used % 4) return `used ring at 0x${a.used.toString(16)} is not 4-byte aligned`;
  return undefined;
}

/**
 * Why `num` cannot be a ring's size, or undefined: split sizes are powers of two up to 32768 (virtio
 * 1.x §2.7); packed ones any size from 1 to 32768 (§2.8).
 */
export function ringSizeProblem(num: number, packed: boolean): string | undefined {
  if (num < 1 || num > MAX_QUEUE_SIZE) return `bad size ${num} (1 to ${MAX_QUEUE_SIZE})`;
  if (!packed && num & (num - 1)) return `bad size ${num} (a split ring's size is a power of two)`;
  return undefined;
}

/** Why a packed ring of `num` descriptors cannot resume from the frontend's `base`, or undefined. */
export function packedBaseProblem(base: number, num: number): string | undefined {
  const s = packedStart(base);
  if (s.nextAvail >= num) return `base 0x${base.toString(16)}: position ${s.nextAvail} is not below the ring size ${num}`;
  return undefined;
}

/**
 * Why `fd` cannot be a ring's kick or call descriptor, or undefined. It must be an eventfd (epoll
 * watches one; a regular file or /dev/null it refuses) and non-blocking: a dataplane thread writes
 * the call fd and reads the kick fd, and on a blocking one a counter at its maximum (or a kick the
 * frontend read first) would hold the thread in that system call for good. QEMU and DPDK make
 * theirs with EFD_NONBLOCK. The kernel says what the descriptor is in /proc/self/fdinfo.
 */
export function eventfdProblem(fd: number): string | undefined {
  let info: string;
  try {
    info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    return 'not an open descriptor';
  }
  if (!/^eventfd-count:/m.test(info)) return 'not an eventfd';
  const flags = /^flags:\s*([0-7]+)$/m.exec(info);
  if (!flags || !(parseInt(flags[1], 8) & O_NONBLOCK)) return 'a blocking eventfd';
  return undefined;
}
