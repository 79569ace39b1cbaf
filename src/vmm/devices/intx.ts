// A PCI function's legacy interrupt line (INTx) with the virtio ISR status (virtio 1.x §4.1.4.5):
// level-triggered, through one KVM irqfd with a resample eventfd (KVM_IRQFD_FLAG_RESAMPLE).
// - Raising: set the ISR bits, then write the trigger eventfd: KVM asserts the GSI (a write while it
//   is asserted changes nothing: the IOAPIC delivers a level line again only after an EOI).
// - The guest's handler reads ISR, which returns the bits and clears them (the transport's read).
// - The guest's EOI: KVM deasserts the line and writes the resample eventfd; this thread then asserts
//   it again if ISR is set by then (an interrupt source fired between the ISR read and the EOI), so no
//   interrupt is lost and none repeats once ISR reads 0. KVM keeps the line down between EOI and that
//   check: the line is never asserted with ISR clear for longer than the guest's handler runs.
// Interrupt sources (the dataplane threads' per-queue eventfds, the configuration change) reach the
// line as eventfds watched on this thread (attach): each write sets its ISR bit and raises the line.
// The threads only write their eventfd, as with MSI-X: which interrupt that becomes is decided here and
// in virtio-pci-irq.ts, so switching modes never touches a running thread.
import { native, ONE, EFD_NONBLOCK } from '../../native.js';

/** What the line needs of the VM: KVM_IRQFD (with a resample fd), as VmFd.irqfd. */
export interface IrqfdTarget {
  irqfd(fd: number, gsi: number, deassign?: boolean, resampleFd?: number): void;
}

const COUNTER = new BigUint64Array(1);

/** A watch callback runs from the event loop, where a throw would end the process: say it, once per kind. */
function guarded(fn: () => void): () => void {
  const said = new Set<string>();
  return () => {
    try {
      fn();
    } catch (e) {
      const msg = (e as Error).message;
      if (!said.has(msg)) process.stderr.write(`tsvmm: INTx line: ${msg}\n`);
      said.add(msg);
    }
  };
}

/** Read an eventfd's counter (non-blocking): whether it had been written. */
function drain(fd: number): boolean {
  return native.read(fd, COUNTER) === 8;
}

export class IntxLine {
  /** written to assert the line (KVM's irqfd); the resample fd is KVM's report of the guest's EOI */
  readonly triggerFd = native.eventfd(0, EFD_NONBLOCK);
  readonly resampleFd = native.eventfd(0, EFD_NONBLOCK);
  private assigned = false;
  private resampleWatch: number | undefined;
  /** source eventfd → its watch and the ISR bits a write sets */
  private readonly sources = new Map<number, { watch: number; bits: number }>();
  /** assertions: by a source, and again after an EOI found ISR set (diagnostics and tests) */
  raised = 0;
  reasserted = 0;
  /** EOIs KVM reported (resample eventfd reads) */
  eois = 0;
  private closed = false;

  constructor(
    private readonly vm: IrqfdTarget,
    readonly gsi: number,
    /** the ISR status word, shared (Atomics) */
    readonly isr: Int32Array,
  ) {}

  /** Whether the line is wired into KVM (INTx in use). */
  get enabled(): boolean {
    return this.assigned;
  }

  /** Wire the line into KVM: the trigger irqfd on the GSI with its resample fd, the resample fd watched. */
  enable(): void {
    if (this.assigned || this.closed) return;
    this.vm.irqfd(this.triggerFd, this.gsi, false, this.resampleFd);
    this.assigned = true;
    this.resampleWatch = native.watchReadable(this.resampleFd, guarded(() => this.onResample()));
    this.refresh();
  }

  /** Assert the line if ISR is set (a source fired before the line was wired, or restored state says so). */
  refresh(): void {
    if (this.assigned && Atomics.load(this.isr, 0) !== 0) this.assert();
  }

  /**
   * Unwire the line (MSI-X took over, the guest disabled INTx, teardown). KVM deasserts a GSI when the
   * last resampled irqfd on it goes; sources stay attached only while the line is enabled.
   */
  disable(): void {
    for (const fd of [...this.sources.keys()]) this.detach(fd);
    if (this.resampleWatch !== undefined) native.unwatch(this.resampleWatch);
    this.resampleWatch = undefined;
    if (this.assigned) {
      this.assigned = false;
      this.vm.irqfd(this.triggerFd, this.gsi, true);
    }
    drain(this.resampleFd);
  }

  /** Watch an interrupt source's eventfd: each write sets `bits` in ISR and raises the line. */
  attach(fd: number, bits: number): void {
    if (this.sources.has(fd) || this.closed) return;
    const watch = native.watchReadable(
      fd,
      guarded(() => {
        if (drain(fd)) this.raise(bits);
      }),
    );
    this.sources.set(fd, { watch, bits });
  }

  detach(fd: number): void {
    const s = this.sources.get(fd);
    if (!s) return;
    native.unwatch(s.watch);
    this.sources.delete(fd);
  }

  /** Set ISR bits and assert the line (while enabled; else the bits wait for enable()). */
  raise(bits: number): void {
    Atomics.or(this.isr, 0, bits);
    this.raised++;
    if (this.assigned) this.assert();
  }

  private assert(): void {
    native.write(this.triggerFd, ONE);
  }

  /** The guest's EOI deasserted the line: assert it again if a source fired since ISR was read. */
  private onResample(): void {
    if (!drain(this.resampleFd) || !this.assigned) return;
    this.eois++;
    if (Atomics.load(this.isr, 0) !== 0) {
      this.reasserted++;
      this.assert();
    }
  }

  /** Unwire and close (VM teardown: a refused irqfd removal is left to the VM fd's close). */
  close(): void {
    if (this.closed) return;
    try {
      this.disable();
    } catch {
      // (disable() unwatched everything before it asked KVM)
    } finally {
      this.closed = true;
      native.close(this.triggerFd);
      native.close(this.resampleFd);
    }
  }
}
