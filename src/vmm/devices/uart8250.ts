// 8250/16550A UART: the serial console. Transmit goes to a sink; receive comes from push(); the
// interrupt line follows IER and the pending conditions, as Linux's 8250 driver expects.
import type { BusDevice } from '../bus.js';
import type { Fields, StateValue } from '../../state/fields.js';

const IER_RDI = 0x01; // receive data available
const IER_THRI = 0x02; // transmitter holding register empty
const IIR_NO_INT = 0x01;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_FIFO = 0xc0;
const LCR_DLAB = 0x80;
const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;
const RX_FIFO_MAX = 4096;

export class Uart8250 implements BusDevice {
  private ier = 0;
  private lcr = 0x03;
  private mcr = 0x08;
  private scr = 0;
  private dll = 0x0c;
  private dlm = 0;
  private fcr = 0;
  private rx: number[] = [];
  /** THR-empty interrupt pending: set when transmit completes, cleared by reading IIR or writing THR */
  private thriPending = false;
  private irqLevel = false;

  constructor(
    private readonly sink: (bytes: Uint8Array) => void,
    private readonly setIrq: (level: boolean) => void = () => {},
  ) {}

  /** Host → guest bytes (keyboard input, test harness). Dropped beyond a bounded FIFO. */
  push(bytes: Uint8Array): void {
    for (const b of bytes) if (this.rx.length < RX_FIFO_MAX) this.rx.push(b);
    this.updateIrq();
  }

  saveState(): StateValue {
    return { ier: this.ier, lcr: this.lcr, mcr: this.mcr, scr: this.scr, dll: this.dll, dlm: this.dlm, fcr: this.fcr, rx: Uint8Array.from(this.rx), thriPending: this.thriPending, irqLevel: this.irqLevel };
  }

  /** Registers, the receive FIFO and the interrupt line; a raised line is raised again (the irqchip's state says whether it was seen). */
  restoreState(f: Fields): void {
    const s = {
      ier: f.uint('ier', 0x0f),
      lcr: f.uint('lcr', 0xff),
      mcr: f.uint('mcr', 0x1f),
      scr: f.uint('scr', 0xff),
      dll: f.uint('dll', 0xff),
      dlm: f.uint('dlm', 0xff),
      fcr: f.uint('fcr', 0xff),
      rx: f.bytes('rx', { min: 0, max: RX_FIFO_MAX }),
      thriPending: f.bool('thriPending'),
      irqLevel: f.bool('irqLevel'),
    };
    f.done();
    Object.assign(this, { ...s, rx: [...s.rx] });
    if (s.irqLevel) this.setIrq(true);
  }

  private pendingIir(): number {
    if (this.ier & IER_RDI && this.rx.length) return IIR_RDI;
    if (this.ier & IER_THRI && this.thriPending) return IIR_THRI;
    return IIR_NO_INT;
  }

  private updateIrq(): void {
    const level = this.pendingIir() !== IIR_NO_INT;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      this.setIrq(level);
    }
  }

  read(offset: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case 0: {
        if (dlab) return this.dll;
        const b = this.rx.shift() ?? 0;
        this.updateIrq();
        return b;
      }
      case 1:
        return dlab ? this.dlm : this.ier;
      case 2: {
        const iir = this.pendingIir();
        if (iir === IIR_THRI) this.thriPending = false;
        this.updateIrq();
        return iir | (this.fcr & 1 ? IIR_FIFO : 0);
      }
      case 3:
        return this.lcr;
      case 4:
        return this.mcr;
      case 5:
        return LSR_THRE | LSR_TEMT | (this.rx.length ? LSR_DR : 0);
      case 6:
        // loopback mode reflects MCR outputs (Linux's autoconfig probes this); otherwise DCD|DSR|CTS
        if (!(this.mcr & MCR_LOOP)) return 0xb0;
        return ((this.mcr & 0x02) << 3) | ((this.mcr & 0x01) << 5) | ((this.mcr & 0x0c) << 4); // RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD
      case 7:
        return this.scr;
      default:
        return 0xff;
    }
  }

  write(offset: number, _size: number, value: number): void {
    const v = value & 0xff;
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case 0:
        if (dlab) {
          this.dll = v;
          return;
        }
        if (this.mcr & MCR_LOOP) this.push(new Uint8Array([v]));
        else this.sink(new Uint8Array([v]));
        // the byte leaves at once: THR is empty again
        this.thriPending = true;
        this.updateIrq();
        return;
      case 1:
        if (dlab) {
          this.dlm = v;
          return;
        }
        // enabling THRI with an empty THR raises it immediately (16550 behaviour the driver relies on)
        if (!(this.ier & IER_THRI) && v & IER_THRI) this.thriPending = true;
        this.ier = v & 0x0f;
        this.updateIrq();
        return;
      case 2:
        this.fcr = v;
        if (v & 0x02) this.rx = [];
        this.updateIrq();
        return;
      case 3:
        this.lcr = v;
        return;
      case 4:
        this.mcr = v & 0x1f;
        return;
      case 7:
        this.scr = v;
        return;
    }
  }
}
