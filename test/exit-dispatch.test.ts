// The vCPU exit dispatcher, fed synthetic struct kvm_run contents.
import { describe, it, expect } from 'vitest';
import { handleExit, decodeExit, type BusAccess } from '../src/vmm/exit.js';
import { EXIT, RUN } from '../src/vmm/kvm-abi.js';
import { Bus } from '../src/vmm/bus.js';

function runArea(): DataView {
  return new DataView(new ArrayBuffer(4096));
}

function recorder(readValue = 0n) {
  const calls: Array<[string, boolean, number, number, bigint]> = [];
  const access: BusAccess = (space, write, addr, size, value) => {
    calls.push([space, write, addr, size, value]);
    return readValue;
  };
  return { calls, access };
}

function pio(run: DataView, o: { write: boolean; port: number; size: number; count: number; dataOffset: number }) {
  run.setUint32(RUN.exit_reason, EXIT.IO, true);
  run.setUint8(RUN.io_direction, o.write ? 1 : 0);
  run.setUint8(RUN.io_size, o.size);
  run.setUint16(RUN.io_port, o.port, true);
  run.setUint32(RUN.io_count, o.count, true);
  run.setBigUint64(RUN.io_data_offset, BigInt(o.dataOffset), true);
}

describe('exit dispatcher', () => {
  it('sends an OUT to the bus with its data', () => {
    const run = runArea();
    pio(run, { write: true, port: 0x3f8, size: 1, count: 1, dataOffset: 1024 });
    run.setUint8(1024, 0x41);
    const r = recorder();
    expect(handleExit(run, r.access)).toBeUndefined();
    expect(r.calls).toEqual([['pio', true, 0x3f8, 1, 0x41n]]);
  });
  it('answers an IN in the data area', () => {
    const run = runArea();
    pio(run, { write: false, port: 0xcfc, size: 4, count: 1, dataOffset: 1024 });
    const r = recorder(0x12345678n);
    handleExit(run, r.access);
    expect(run.getUint32(1024, true)).toBe(0x12345678);
  });
  it('repeats string I/O (rep outsw) element by element', () => {
    const run = runArea();
    pio(run, { write: true, port: 0x80, size: 2, count: 3, dataOffset: 2000 });
    [0x1111, 0x2222, 0x3333].forEach((x, i) => run.setUint16(2000 + 2 * i, x, true));
    const r = recorder();
    handleExit(run, r.access);
    expect(r.calls.map((c) => c[4])).toEqual([0x1111n, 0x2222n, 0x3333n]);
  });
  it('refuses a PIO exit whose data lies outside kvm_run', () => {
    const run = runArea();
    pio(run, { write: true, port: 0x80, size: 4, count: 2000, dataOffset: 1024 });
    expect(handleExit(run, recorder().access)).toMatchObject({ reason: 'crash' });
  });
  it('handles MMIO reads and writes of 1 to 8 bytes', () => {
    const run = runArea();
    run.setUint32(RUN.exit_reason, EXIT.MMIO, true);
    run.setBigUint64(RUN.mmio_phys_addr, 0xfe000010n, true);
    run.setUint32(RUN.mmio_len, 8, true);
    run.setUint8(RUN.mmio_is_write, 1);
    run.setBigUint64(RUN.mmio_data, 0x1122334455667788n, true);
    const w = recorder();
    handleExit(run, w.access);
    expect(w.calls).toEqual([['mmio', true, 0xfe000010, 8, 0x1122334455667788n]]);
    run.setUint8(RUN.mmio_is_write, 0);
    run.setUint32(RUN.mmio_len, 2, true);
    handleExit(run, recorder(0xbeefn).access);
    expect(run.getUint16(RUN.mmio_data, true)).toBe(0xbeef);
  });
  it('names the rip of a crash when KVM synced the registers', () => {
    const run = runArea();
    run.setUint32(RUN.exit_reason, EXIT.FAIL_ENTRY, true);
    run.setBigUint64(RUN.fail_entry_reason, 0x21n, true);
    expect(handleExit(run, recorder().access)).toEqual({ reason: 'crash', detail: 'VM entry failed, hardware reason 0x21' });
    run.setBigUint64(RUN.kvm_valid_regs, 1n, true);
    run.setBigUint64(RUN.sync_regs + 16 * 8, 0xffffffff81000000n, true);
    expect(handleExit(run, recorder().access)).toEqual({ reason: 'crash', detail: 'VM entry failed, hardware reason 0x21 at rip 0xffffffff81000000' });
  });

  it('maps terminal exits to how the VM ends', () => {
    const run = runArea();
    run.setUint32(RUN.exit_reason, EXIT.SHUTDOWN, true);
    expect(handleExit(run, recorder().access)).toEqual({ reason: 'reset', detail: 'triple fault' });
    run.setBigUint64(RUN.kvm_valid_regs, 1n, true);
    run.setBigUint64(RUN.sync_regs + 16 * 8, 0xffffffff81000000n, true);
    run.setBigUint64(RUN.sync_regs + 6 * 8, 0xffffc90000003ff8n, true);
    expect(handleExit(run, recorder().access)).toEqual({ reason: 'reset', detail: 'triple fault at rip 0xffffffff81000000 rsp 0xffffc90000003ff8' });
    run.setBigUint64(RUN.sync_regs + 16 * 8, 0xfff0n, true); // AMD: KVM reset the vCPU first
    expect(handleExit(run, recorder().access)).toEqual({ reason: 'reset', detail: 'triple fault' });
    run.setBigUint64(RUN.kvm_valid_regs, 0n, true);
    run.setUint32(RUN.exit_reason, EXIT.SYSTEM_EVENT, true);
    run.setUint32(RUN.system_event_type, 1, true);
    expect(handleExit(run, recorder().access)).toMatchObject({ reason: 'poweroff' });
    run.setUint32(RUN.system_event_type, 2, true);
    expect(handleExit(run, recorder().access)).toMatchObject({ reason: 'reset' });
    run.setUint32(RUN.exit_reason, EXIT.INTERNAL_ERROR, true);
    run.setUint32(RUN.internal_suberror, 1, true);
    run.setUint32(RUN.internal_ndata, 1, true);
    run.setBigUint64(RUN.internal_data, 0xabcn, true);
    expect(handleExit(run, recorder().access)).toEqual({ reason: 'crash', detail: 'KVM internal error, suberror 1 [0xabc]' });
    run.setUint32(RUN.exit_reason, 999, true);
    expect(decodeExit(run)).toEqual({ kind: 'unknown', reason: 999 });
    run.setUint32(RUN.exit_reason, EXIT.INTR, true);
    expect(handleExit(run, recorder().access)).toBeUndefined();
  });
});

describe('bus', () => {
  const dev = (log: string[], id: string) => ({
    read: (off: number, size: number) => {
      log.push(`${id} r ${off}/${size}`);
      return 0xa0 + off;
    },
    write: (off: number, size: number, v: number) => log.push(`${id} w ${off}/${size}=${v.toString(16)}`),
  });
  it('routes accesses to the device owning the address, with the offset inside it', () => {
    const log: string[] = [];
    const bus = new Bus('pio');
    bus.register(0x3f8, 8, dev(log, 'uart'), 'uart');
    bus.register(0xcf8, 8, dev(log, 'pci'), 'pci');
    expect(bus.read(0x3fd, 1)).toBe(0xa5n);
    bus.write(0xcfc, 4, 0x1234n);
    expect(log).toEqual(['uart r 5/1', 'pci w 4/4=1234']);
  });
  it('floats unclaimed reads high and counts them', () => {
    const bus = new Bus('pio');
    expect(bus.read(0x80, 1)).toBe(0xffn);
    expect(bus.read(0x80, 4)).toBe(0xffffffffn);
    bus.write(0x80, 1, 0n);
    expect(bus.unclaimed).toBe(3);
  });
  it('refuses overlapping ranges and accesses straddling a range end', () => {
    const bus = new Bus('mmio');
    bus.register(0x1000, 0x100, dev([], 'a'), 'a');
    expect(() => bus.register(0x10f0, 0x100, dev([], 'b'), 'b')).toThrow(/overlaps/);
    expect(bus.read(0x10fe, 4)).toBe(0xffffffffn);
  });
  it('splits 8-byte accesses into two 4-byte ones', () => {
    const log: string[] = [];
    const bus = new Bus('mmio');
    bus.register(0x1000, 0x100, dev(log, 'd'), 'd');
    bus.write(0x1008, 8, 0x1122334455667788n);
    expect(log).toEqual(['d w 8/4=55667788', 'd w 12/4=11223344']);
    expect(bus.read(0x1000, 8)).toBe((0xa4n << 32n) | 0xa0n);
  });
  it('unregisters a device', () => {
    const bus = new Bus('mmio');
    const d = dev([], 'd');
    bus.register(0x1000, 0x100, d, 'd');
    bus.unregister(d);
    expect(bus.find(0x1000)).toBeUndefined();
  });
});
