// Where a virtio-pci function's interrupts go. Each interrupt source — every queue's used-buffer
// notification and the configuration change — has its own eventfd, the one its writer signals (a
// dataplane thread's call fd, the control queue, the transport for configuration changes). What a
// write raises is wired here, in KVM and on this thread, again whenever the guest changes what it
// asked for, so a running thread never learns of a switch:
// - MSI-X enabled: a source is an irqfd on the GSI of its vector while that vector is usable
//   (Msix.activeGsi); otherwise it is no irqfd, and its eventfd keeps what it gathers until it is one.
// - MSI-X disabled and INTx not disabled (command register bit 10 clear), with a line: the source is
//   attached to the INTx line (intx.ts), which sets its ISR bit and asserts the line on each write.
// - otherwise (INTx disabled, or no line): nothing; writes wait in the eventfd.
import { native, ONE, EFD_NONBLOCK } from '../../native.js';
import type { Msix } from './msix.js';
import type { IntxLine, IrqfdTarget } from './intx.js';

type Binding = { gsi: number } | 'intx' | undefined;

export interface InterruptWiringOptions {
  /** interrupt sources besides the configuration change: one per queue */
  queues: number;
  msix: Msix;
  line: IntxLine | undefined;
  vm: IrqfdTarget;
  /** the MSI-X vector source `i` asked for (queue i; `queues` is the configuration change) */
  vectorOf: (source: number) => number;
  /** the command register's INTx disable bit is clear */
  intxAllowed: () => boolean;
  /** the ISR bits a source sets on the INTx line: queue, configuration */
  isrBits: { queue: number; config: number };
  /** KVM refused an irqfd */
  refused: (reason: string) => void;
}

export class InterruptWiring {
  /** one eventfd per source: queue i at i, the configuration change last */
  private readonly fds: number[];
  private readonly bound: Binding[];
  private closed = false;

  constructor(private readonly o: InterruptWiringOptions) {
    this.fds = Array.from({ length: o.queues + 1 }, () => native.eventfd(0, EFD_NONBLOCK));
    this.bound = this.fds.map(() => undefined);
  }

  /** The eventfd queue `q`'s notifications are written to (its call fd), -1 for a queue that does not exist. */
  queueFd(q: number): number {
    return Number.isInteger(q) && q >= 0 && q < this.o.queues ? this.fds[q] : -1;
  }

  /** Signal the configuration change (its ISR bit is the transport's to set first). */
  signalConfig(): void {
    native.write(this.fds[this.o.queues], ONE);
  }

  /** Where interrupts go now, as `describe` tells (for tests and diagnostics): 'gsi N', 'intx' or 'none' per source. */
  describe(): string[] {
    return this.bound.map((b) => (b === undefined ? 'none' : b === 'intx' ? 'intx' : `gsi ${b.gsi}`));
  }

  /** Bring KVM's irqfds and the INTx line in line with MSI-X, the command register and the vectors. */
  sync(): void {
    if (this.closed) return;
    try {
      this.apply();
    } catch (e) {
      this.o.refused(`interrupt wiring refused: ${(e as Error).message}`);
    }
  }

  private apply(): void {
    const { msix, line } = this.o;
    const msixOn = msix.enabled;
    const intx = !msixOn && line !== undefined && this.o.intxAllowed();
    if (intx) line.enable();
    this.fds.forEach((fd, i) => {
      let want: Binding;
      if (msixOn) {
        const gsi = msix.activeGsi(this.o.vectorOf(i));
        want = gsi === undefined ? undefined : { gsi };
      } else if (intx) want = 'intx';
      this.rebind(i, want);
    });
    if (!intx && line?.enabled) line.disable();
  }

  private rebind(i: number, want: Binding): void {
    const cur = this.bound[i];
    const same = cur === want || (typeof cur === 'object' && typeof want === 'object' && cur.gsi === want.gsi);
    if (same) return;
    const fd = this.fds[i];
    if (cur === 'intx') this.o.line?.detach(fd);
    else if (cur) this.o.vm.irqfd(fd, cur.gsi, true);
    this.bound[i] = undefined;
    // (assigning an irqfd whose eventfd was written meanwhile injects at once; attaching to the line
    // raises it at once: a notification that waited while nothing was wired is delivered now)
    if (want === 'intx') this.o.line!.attach(fd, i < this.o.queues ? this.o.isrBits.queue : this.o.isrBits.config);
    else if (want) this.o.vm.irqfd(fd, want.gsi);
    this.bound[i] = want;
  }

  /** The INTx line's counters, if the function has a line. */
  get intxCounts(): { gsi: number; raised: number; eois: number; reasserted: number } | undefined {
    const l = this.o.line;
    return l && { gsi: l.gsi, raised: l.raised, eois: l.eois, reasserted: l.reasserted };
  }

  /** Assert the INTx line if it is in use and ISR is set (after a restore: KVM's line state is not saved). */
  refresh(): void {
    if (this.o.line?.enabled) this.o.line.refresh();
  }

  /**
   * Unwire everything and close the eventfds and the line (the device's threads have stopped). KVM
   * refusing to remove an irqfd here changes nothing: the VM's fd, closed after, takes them all.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.bound.forEach((_, i) => {
      try {
        this.rebind(i, undefined);
      } catch {
        if (this.bound[i] === 'intx') this.o.line?.detach(this.fds[i]);
      }
    });
    try {
      this.o.line?.close();
    } finally {
      for (const fd of this.fds) native.close(fd);
    }
  }
}
