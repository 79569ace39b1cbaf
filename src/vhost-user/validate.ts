// Checks on what a frontend hands over that the dataplane threads could not survive: a ring the queue
// code would refuse once its thread started, a descriptor the thread could not watch or would block on.
import { readFileSync } from 'node:fs';
import { O_NONBLOCK } from '../native.js';

/** Why the ring's addresses break the alignment the split ring requires (virtio 1.x 2.7), or undefined. */
export function ringMisalignment(a: { desc: number; avail: number; used: number }): string | undefined {
  if (a.desc % 16) return `descriptor table at 0x${a.desc.toString(16)} is not 16-byte aligned`;
  if (a.avail % 2) return `available ring at 0x${a.avail.toString(16)} is not 2-byte aligned`;
  if (a.used % 4) return `used ring at 0x${a.used.toString(16)} is not 4-byte aligned`;
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
