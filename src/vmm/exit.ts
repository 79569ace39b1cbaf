// Decoding of struct kvm_run after KVM_RUN returns: what the vCPU wants from the VMM.
import { EXIT, RUN, SYSTEM_EVENT, SYNC_X86_REGS } from './kvm-abi.js';

export type VcpuExit =
  | { kind: 'pio'; write: boolean; port: number; size: number; count: number; dataOffset: number }
  | { kind: 'mmio'; write: boolean; addr: number; len: number }
  | { kind: 'shutdown' } // triple fault: the guest asked for a reset the hard way
  | { kind: 'system-event'; event: 'shutdown' | 'reset' | 'crash' | 'other'; type: number }
  | { kind: 'hlt' }
  | { kind: 'intr' }
  | { kind: 'internal-error'; suberror: number; data: bigint[] }
  | { kind: 'fail-entry'; reason: bigint }
  | { kind: 'unknown'; reason: number };

export function decodeExit(run: DataView): VcpuExit {
  const reason = run.getUint32(RUN.exit_reason, true);
  switch (reason) {
    case EXIT.IO:
      return {
        kind: 'pio',
        write: run.getUint8(RUN.io_direction) === 1,
        size: run.getUint8(RUN.io_size),
        port: run.getUint16(RUN.io_port, true),
        count: run.getUint32(RUN.io_count, true),
        dataOffset: Number(run.getBigUint64(RUN.io_data_offset, true)),
      };
    case EXIT.MMIO:
      return { kind: 'mmio', write: run.getUint8(RUN.mmio_is_write) !== 0, addr: Number(run.getBigUint64(RUN.mmio_phys_addr, true)), len: run.getUint32(RUN.mmio_len, true) };
    case EXIT.SHUTDOWN:
      return { kind: 'shutdown' };
    case EXIT.SYSTEM_EVENT: {
      const type = run.getUint32(RUN.system_event_type, true);
      const event = type === SYSTEM_EVENT.SHUTDOWN ? 'shutdown' : type === SYSTEM_EVENT.RESET ? 'reset' : type === SYSTEM_EVENT.CRASH ? 'crash' : 'other';
      return { kind: 'system-event', event, type };
    }
    case EXIT.HLT:
      return { kind: 'hlt' };
    case EXIT.INTR:
      return { kind: 'intr' };
    case EXIT.INTERNAL_ERROR: {
      const n = Math.min(run.getUint32(RUN.internal_ndata, true), 16);
      const data: bigint[] = [];
      for (let i = 0; i < n; i++) data.push(run.getBigUint64(RUN.internal_data + 8 * i, true));
      return { kind: 'internal-error', suberror: run.getUint32(RUN.internal_suberror, true), data };
    }
    case EXIT.FAIL_ENTRY:
      return { kind: 'fail-entry', reason: run.getBigUint64(RUN.fail_entry_reason, true) };
    default:
      return { kind: 'unknown', reason };
  }
}

/** Read one element of a PIO/MMIO data area as a bigint (little-endian, `size` bytes). */
export function getData(run: DataView, offset: number, size: number): bigint {
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(run.getUint8(offset + i));
  return v;
}

export function setData(run: DataView, offset: number, size: number, value: bigint): void {
  for (let i = 0; i < size; i++) run.setUint8(offset + i, Number((value >> BigInt(8 * i)) & 0xffn));
}

/** How a vCPU loop ends. */
export type VcpuStop =
  | { reason: 'stopped'; detail?: string }
  | { reason: 'reset'; detail: string }
  | { reason: 'poweroff'; detail: string }
  | { reason: 'crash'; detail: string };

export type BusAccess = (space: 'pio' | 'mmio', write: boolean, addr: number, size: number, value: bigint) => bigint;

/** Where the vCPU stood, when KVM synced its registers into kvm_run (KVM_CAP_SYNC_REGS). */
export function syncedRip(run: DataView): bigint | undefined {
  if (!(run.getBigUint64(RUN.kvm_valid_regs, true) & BigInt(SYNC_X86_REGS))) return undefined;
  return run.getBigUint64(RUN.sync_regs + 16 * 8, true);
}

/**
 * Serve one exit: device accesses go to `access`; anything that ends the vCPU returns a VcpuStop.
 * Pure apart from `access`, so the dispatcher is unit-tested with a synthetic kvm_run.
 */
export function handleExit(run: DataView, access: BusAccess): VcpuStop | undefined {
  const stop = dispatch(run, access);
  // a crash, and a triple fault (a guest that could not even take its double fault), say where the
  // guest was: the stack pointer too for the triple fault, whose usual cause is a bad stack. (Not on
  // AMD: KVM puts the vCPU through INIT before it reports the shutdown, so the registers are the reset
  // vector's, rip 0xfff0, and say nothing.)
  if (stop?.reason === 'crash' || (stop?.reason === 'reset' && stop.detail === 'triple fault')) {
    const rip = syncedRip(run);
    if (rip !== undefined && !(stop.reason === 'reset' && rip === 0xfff0n)) {
      const rsp = stop.reason === 'reset' ? ` rsp 0x${run.getBigUint64(RUN.sync_regs + 6 * 8, true).toString(16)}` : '';
      return { reason: stop.reason, detail: `${stop.detail} at rip 0x${rip.toString(16)}${rsp}` };
    }
  }
  return stop;
}

function dispatch(run: DataView, access: BusAccess): VcpuStop | undefined {
  const e = decodeExit(run);
  switch (e.kind) {
    case 'pio': {
      if (![1, 2, 4].includes(e.size) || e.dataOffset + e.size * e.count > run.byteLength) return { reason: 'crash', detail: 'malformed PIO exit' };
      for (let i = 0; i < e.count; i++) {
        const off = e.dataOffset + i * e.size;
        if (e.write) access('pio', true, e.port, e.size, getData(run, off, e.size));
        else setData(run, off, e.size, access('pio', false, e.port, e.size, 0n));
      }
      return undefined;
    }
    case 'mmio': {
      if (![1, 2, 4, 8].includes(e.len)) return { reason: 'crash', detail: `MMIO access of ${e.len} bytes` };
      if (e.write) access('mmio', true, e.addr, e.len, getData(run, RUN.mmio_data, e.len));
      else setData(run, RUN.mmio_data, e.len, access('mmio', false, e.addr, e.len, 0n));
      return undefined;
    }
    case 'intr':
    case 'hlt':
      return undefined;
    case 'shutdown':
      return { reason: 'reset', detail: 'triple fault' };
    case 'system-event':
      if (e.event === 'shutdown') return { reason: 'poweroff', detail: 'guest requested power-off' };
      if (e.event === 'reset') return { reason: 'reset', detail: 'guest requested reset' };
      return { reason: 'crash', detail: `system event ${e.type}` };
    case 'internal-error':
      return { reason: 'crash', detail: `KVM internal error, suberror ${e.suberror} [${e.data.map((d) => '0x' + d.toString(16)).join(' ')}]` };
    case 'fail-entry':
      return { reason: 'crash', detail: `VM entry failed, hardware reason 0x${e.reason.toString(16)}` };
    case 'unknown':
      return { reason: 'crash', detail: `unhandled KVM exit reason ${e.reason}` };
  }
}
