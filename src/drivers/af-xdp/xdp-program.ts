// The XDP program that steers an interface's received frames to our AF_XDP sockets, loaded with the
// bpf() system call directly (no libbpf/clang at run time: it is five instructions), and attached
// through a bpf_link. A link lives exactly as long as its file descriptor: when the driver stops —
// or the VMM process dies, however it dies — the kernel detaches the program. Nothing is left on the
// interface for a next start to clean up.
import { native } from '../../native.js';
import * as A from './abi.js';

export class XdpAttachError extends Error {
  constructor(
    message: string,
    readonly errno: number,
  ) {
    super(message);
  }
}

function attr(): { buf: Uint8Array; v: DataView } {
  const buf = new Uint8Array(A.SIZEOF_BPF_ATTR);
  return { buf, v: new DataView(buf.buffer) };
}

function check(r: number, what: string): number {
  if (r < 0) throw new XdpAttachError(`${what}: ${errnoName(-r)}`, -r);
  return r;
}

const ERRNO: Record<number, string> = { 1: 'EPERM', 2: 'ENOENT', 12: 'ENOMEM', 13: 'EACCES', 16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV', 22: 'EINVAL', 95: 'EOPNOTSUPP' };
export const errnoName = (e: number): string => ERRNO[e] ?? `errno ${e}`;

/** One instruction (struct bpf_insn): opcode, dst and src registers, offset, immediate. */
function insn(out: DataView, i: number, code: number, dst: number, src: number, off: number, imm: number): void {
  out.setUint8(8 * i, code);
  out.setUint8(8 * i + 1, (src << 4) | dst);
  out.setInt16(8 * i + 2, off, true);
  out.setInt32(8 * i + 4, imm, true);
}

/**
 *   r2 = ctx->rx_queue_index
 *   r1 = &xsks (the XSKMAP: queue index → socket)
 *   r3 = XDP_PASS (what bpf_redirect_map returns when that queue has no socket: the stack gets it)
 *   return bpf_redirect_map(r1, r2, r3)
 */
function program(mapFd: number): Uint8Array {
  const code = new Uint8Array(6 * 8);
  const v = new DataView(code.buffer);
  insn(v, 0, 0x61, 2, 1, A.XDP_MD_RX_QUEUE_INDEX, 0); // BPF_LDX | BPF_MEM | BPF_W
  insn(v, 1, 0x18, 1, 1, 0, mapFd); // BPF_LD | BPF_DW | BPF_IMM, src = BPF_PSEUDO_MAP_FD
  insn(v, 2, 0, 0, 0, 0, 0); // (upper half of the 64-bit immediate)
  insn(v, 3, 0xb7, 3, 0, 0, A.XDP_PASS); // BPF_ALU64 | BPF_MOV | BPF_K
  insn(v, 4, 0x85, 0, 0, 0, A.BPF_FUNC_redirect_map); // BPF_JMP | BPF_CALL
  insn(v, 5, 0x95, 0, 0, 0, 0); // BPF_JMP | BPF_EXIT
  return code;
}

export type AttachMode = 'native' | 'generic';

export class XdpRedirect {
  private constructor(
    readonly mapFd: number,
    private readonly progFd: number,
    private readonly linkFd: number,
    readonly attachMode: AttachMode,
  ) {}

  /** Load the map and program and attach them to `ifindex` (native XDP when the driver has it). */
  static attach(ifindex: number, queues: number): XdpRedirect {
    const m = attr();
    m.v.setUint32(A.ATTR.mapType, A.BPF_MAP_TYPE_XSKMAP, true);
    m.v.setUint32(A.ATTR.keySize, 4, true);
    m.v.setUint32(A.ATTR.valueSize, 4, true);
    m.v.setUint32(A.ATTR.maxEntries, queues, true);
    m.buf.set(new TextEncoder().encode('tsvmm_xsks'), A.ATTR.mapName);
    const mapFd = check(native.bpf(A.BPF_MAP_CREATE, m.buf), 'creating the XSKMAP');
    let progFd = -1;
    try {
      const code = program(mapFd);
      const license = new TextEncoder().encode('GPL\0');
      const log = new Uint8Array(4096);
      const p = attr();
      p.v.setUint32(A.ATTR.progType, A.BPF_PROG_TYPE_XDP, true);
      p.v.setUint32(A.ATTR.insnCnt, code.length / 8, true);
      p.v.setBigUint64(A.ATTR.insns, native.addressOf(code), true);
      p.v.setBigUint64(A.ATTR.license, native.addressOf(license), true);
      p.v.setUint32(A.ATTR.logLevel, 1, true);
      p.v.setUint32(A.ATTR.logSize, log.length, true);
      p.v.setBigUint64(A.ATTR.logBuf, native.addressOf(log), true);
      p.buf.set(new TextEncoder().encode('tsvmm_xsk'), A.ATTR.progName);
      p.v.setUint32(A.ATTR.expectedAttachType, A.BPF_XDP, true);
      const r = native.bpf(A.BPF_PROG_LOAD, p.buf);
      if (r < 0) throw new XdpAttachError(`loading the XDP program: ${errnoName(-r)} ${new TextDecoder().decode(log.subarray(0, log.indexOf(0))).trim()}`, -r);
      progFd = r;
      // native (driver) mode first: it sees frames before an skb exists; generic mode otherwise
      for (const [mode, flags] of [['native', A.XDP_FLAGS_DRV_MODE], ['generic', A.XDP_FLAGS_SKB_MODE]] as const) {
        const l = attr();
        l.v.setUint32(A.ATTR.linkProgFd, progFd, true);
        l.v.setUint32(A.ATTR.linkTargetIfindex, ifindex, true);
        l.v.setUint32(A.ATTR.linkAttachType, A.BPF_XDP, true);
        l.v.setUint32(A.ATTR.linkFlags, flags, true);
        const fd = native.bpf(A.BPF_LINK_CREATE, l.buf);
        if (fd >= 0) return new XdpRedirect(mapFd, progFd, fd, mode);
        // EBUSY/EEXIST: another XDP program is on the interface; not ours to replace
        if (-fd === 16 || -fd === 17) throw new XdpAttachError('another XDP program is attached to the interface', -fd);
        if (mode === 'generic') throw new XdpAttachError(`attaching the XDP program: ${errnoName(-fd)}`, -fd);
      }
      throw new Error('unreachable');
    } catch (e) {
      if (progFd >= 0) native.close(progFd);
      native.close(mapFd);
      throw e;
    }
  }

  /** Detach (closing the link detaches the program) and free the map and program. */
  close(): void {
    native.close(this.linkFd);
    native.close(this.progFd);
    native.close(this.mapFd);
  }
}

/** Point queue `queue` of the XSKMAP at socket `xskFd` (from a dataplane thread: fds are process-wide). */
export function setQueueSocket(mapFd: number, queue: number, xskFd: number): number {
  const key = new Uint32Array([queue]);
  const value = new Uint32Array([xskFd]);
  const a = attr();
  a.v.setUint32(A.ATTR.mapFd, mapFd, true);
  a.v.setBigUint64(A.ATTR.key, native.addressOf(key), true);
  a.v.setBigUint64(A.ATTR.value, native.addressOf(value), true);
  return native.bpf(A.BPF_MAP_UPDATE_ELEM, a.buf);
}
