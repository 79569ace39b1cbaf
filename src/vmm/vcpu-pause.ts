// Pausing the vCPU threads: each leaves KVM_RUN (immediate_exit and a signal kick it out, as a stop
// does) and waits in vcpu-worker.ts's pauseIfAsked until resumed. Registers and in-kernel state stay
// in KVM; the guest simply does not run meanwhile.
import { native } from '../native.js';
import { RUN } from './kvm-abi.js';
import { CONTROL_PAUSE, CONTROL_PAUSED, CONTROL_STOP } from './vcpu-control.js';

export interface PausableVcpu {
  run?: DataView;
  thread?: bigint;
  /** false once its thread has ended */
  alive: boolean;
}

/** how often the threads not yet paused are kicked again (one in a guest's interrupts-off stretch misses) */
const KICK_EVERY_MS = 20;

/** Resolves once every live vCPU thread waits paused (or the VM is stopping). */
export async function pauseVcpus(control: Int32Array, vcpus: PausableVcpu[], kickSignal: number): Promise<void> {
  Atomics.store(control, CONTROL_PAUSE, 1);
  for (;;) {
    const paused = Atomics.load(control, CONTROL_PAUSED);
    if (paused >= vcpus.filter((v) => v.alive).length || Atomics.load(control, CONTROL_STOP)) return;
    for (const v of vcpus) {
      if (!v.alive) continue;
      v.run?.setUint8(RUN.immediate_exit, 1);
      if (v.thread === undefined) continue;
      try {
        native.threadKill(v.thread, kickSignal);
      } catch {
        // the thread has just ended
      }
    }
    const w = Atomics.waitAsync(control, CONTROL_PAUSED, paused, KICK_EVERY_MS);
    if (w.async) await w.value;
  }
}

export function resumeVcpus(control: Int32Array): void {
  Atomics.store(control, CONTROL_PAUSE, 0);
  Atomics.notify(control, CONTROL_PAUSE);
}
