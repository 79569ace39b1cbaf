// The typed VM configuration shared by the CLI and the library, with validation that names what to fix.
import { UserError } from '../errors.js';

export type SerialConfig = 'stdio' | 'none' | { file: string };

export interface VmConfig {
  /** path to a bzImage or a PVH ELF vmlinux, or its bytes */
  kernel: string | Uint8Array;
  initrd?: string | Uint8Array;
  cmdline?: string;
  /** bytes, or a size string such as "512M" (default 512 MiB) */
  memory?: number | string;
  cpus?: number;
  /** where Vm.serial is sent by the CLI; the library always exposes it as a stream */
  kvmDevice?: string;
}

export const DEFAULT_MEMORY = 512 * 1024 * 1024;
export const MIN_MEMORY = 16 * 1024 * 1024;
export const MAX_MEMORY = 64 * 1024 * 1024 * 1024;
export const MAX_CPUS = 64;

/** "512M", "2G", "65536K", "1048576" (bytes) → bytes. */
export function parseSize(s: string, what = '--mem'): number {
  const m = /^(\d+)([KMGT]?)(i?B)?$/i.exec(s.trim());
  if (!m) throw new UserError(`${what}: "${s}" is not a size (examples: 512M, 2G)`);
  const mult: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };
  return Number(m[1]) * mult[m[2].toUpperCase()];
}

export function resolveMemory(mem: number | string | undefined): number {
  const bytes = mem === undefined ? DEFAULT_MEMORY : typeof mem === 'number' ? mem : parseSize(mem);
  if (!Number.isInteger(bytes) || bytes < MIN_MEMORY) throw new UserError(`--mem: at least 16M of guest memory is needed`);
  if (bytes > MAX_MEMORY) throw new UserError(`--mem: at most 64G of guest memory is supported`);
  if (bytes % (2 * 1024 * 1024) !== 0) throw new UserError(`--mem: size must be a multiple of 2M`);
  return bytes;
}

export function resolveCpus(cpus: number | undefined, hostMax: number): number {
  const n = cpus ?? 1;
  if (!Number.isInteger(n) || n < 1) throw new UserError(`--cpus: must be a whole number of at least 1`);
  const max = Math.min(MAX_CPUS, hostMax);
  if (n > max) throw new UserError(`--cpus: this KVM allows at most ${max} vCPUs`);
  return n;
}
