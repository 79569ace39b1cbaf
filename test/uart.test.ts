// The 8250 UART as Linux's driver and the test guest use it.
import { describe, it, expect } from 'vitest';
import { Uart8250 } from '../src/vmm/devices/uart8250.js';

function uart() {
  const out: number[] = [];
  const irq: boolean[] = [];
  const u = new Uart8250((b) => out.push(...b), (l) => irq.push(l));
  return { u, out, irq };
}

describe('8250 UART', () => {
  it('sends THR writes to the sink and always reports the transmitter empty', () => {
    const { u, out } = uart();
    for (const c of 'hi') u.write(0, 1, c.charCodeAt(0));
    expect(String.fromCharCode(...out)).toBe('hi');
    expect(u.read(5, 1) & 0x60).toBe(0x60);
  });
  it('delivers input through RBR with LSR.DR and a receive interrupt when enabled', () => {
    const { u, irq } = uart();
    u.write(1, 1, 0x01); // IER: receive data available
    u.push(new Uint8Array([0x61, 0x62]));
    expect(irq).toEqual([true]);
    expect(u.read(5, 1) & 1).toBe(1);
    expect(u.read(2, 1) & 0x0f).toBe(0x04); // IIR: RDI
    expect(u.read(0, 1)).toBe(0x61);
    expect(u.read(0, 1)).toBe(0x62);
    expect(u.read(5, 1) & 1).toBe(0);
    expect(irq).toEqual([true, false]);
    expect(u.read(2, 1) & 0x0f).toBe(0x01); // no interrupt pending
  });
  it('raises THRE when it is enabled and clears it on an IIR read', () => {
    const { u, irq } = uart();
    u.write(1, 1, 0x02);
    expect(irq).toEqual([true]);
    expect(u.read(2, 1) & 0x0f).toBe(0x02);
    expect(irq).toEqual([true, false]);
    u.write(0, 1, 0x41); // transmit: THR empty again
    expect(irq).toEqual([true, false, true]);
  });
  it('keeps the divisor latch behind DLAB and echoes the scratch register', () => {
    const { u, out } = uart();
    u.write(3, 1, 0x80);
    u.write(0, 1, 0x01);
    u.write(1, 1, 0x00);
    expect(u.read(0, 1)).toBe(0x01);
    u.write(3, 1, 0x03);
    expect(out).toEqual([]); // divisor writes are not data
    u.write(7, 1, 0x5a);
    expect(u.read(7, 1)).toBe(0x5a);
  });
  it('loops transmit back to receive in loopback mode (driver self-test)', () => {
    const { u, out } = uart();
    u.write(4, 1, 0x10 | 0x0a); // LOOP | RTS | OUT2
    u.write(0, 1, 0x55);
    expect(out).toEqual([]);
    expect(u.read(0, 1)).toBe(0x55);
    expect(u.read(6, 1) & 0xf0).toBe(0x90); // CTS (from RTS) and DCD (from OUT2)
  });
});
