// The frontend's dirty log (VHOST_USER_PROTOCOL_F_LOG_SHMFD): a bitmap, a bit per 4 KiB page of guest
// memory, in a file the frontend shares (SET_LOG_BASE) and reads during live migration; the dataplane
// threads set bits in it for every page they write while VHOST_F_LOG_ALL is negotiated.
import { native } from '../native.js';

/** VHOST_F_LOG_ALL: log every write into guest memory (live migration) */
export const F_LOG_ALL = 26;
/** a bit per 4 KiB page: 1 GiB of log covers 32 TiB of guest memory */
const MAX_LOG = 1 << 30;

/** the frontend's dirty log, mapped */
export interface MappedLog {
  buffer: SharedArrayBuffer;
  address: bigint;
  offset: number;
  size: number;
}

/** Map `size` bytes of log at `offset` in `fd` (the caller closes fd), or say why not. */
export function mapLog(fd: number, size: number, offset: number): MappedLog | string {
  if (!Number.isSafeInteger(size) || size <= 0 || size > MAX_LOG) return `log size ${size} out of range`;
  if (!Number.isSafeInteger(offset) || offset < 0 || offset > MAX_LOG) return `log offset ${offset} out of range`;
  // a log past the end of its file would fault (SIGBUS) the first time a thread set a bit there
  if (offset + size > native.fileSize(fd)) return 'log extends past the end of its file';
  try {
    const m = native.mmapShared(fd, offset + size);
    return { buffer: m.buffer, address: m.address, offset, size };
  } catch (e) {
    return (e as Error).message;
  }
}

/** Unmap a log (its address range becomes anonymous memory, so a late write by anyone stays harmless). */
export function releaseLog(log: MappedLog | undefined): void {
  if (log) native.remapAnonymous(log.address, log.offset + log.size);
}

/** (tracing) the guest-physical addresses of the pages whose bits are set in a log bitmap */
export function pagesIn(bits: Uint8Array): string {
  const out: string[] = [];
  for (let p = 0; p < bits.length * 8; p++) if (bits[p >> 3] & (1 << (p & 7))) out.push((p * 4096).toString(16));
  return out.join(' ');
}
