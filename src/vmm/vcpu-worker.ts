// One thread per vCPU: KVM_RUN in a loop; device accesses go to the device thread through the mailbox.
import { parentPort, workerData } from 'node:worker_threads';
import { native, PROT_READ, PROT_WRITE, MAP_SHARED, isNativeError } from '../native.js';
import { KVM, RUN, SYNC_X86_REGS } from './kvm-abi.js';
import { handleExit, syncedRip, type VcpuStop } from './exit.js';
import { mailboxCall } from './mailbox.js';
import { CONTROL_STOP, CONTROL_PAUSE, CONTROL_PAUSED } from './vcpu-control.js';

export interface VcpuWorkerData {
  index: number;
  vcpuFd: number;
  runSize: number;
  /** KVM_CAP_SYNC_REGS: have KVM copy the registers into kvm_run at each exit (crash reports name the rip) */
  syncRegs: boolean;
  kickSignal: number;
  mailbox: Int32Array;
  control: Int32Array;
}

const d = workerData as VcpuWorkerData;
const port = parentPort!;

native.unblockSignal(d.kickSignal);
const runBuffer = native.mmap(d.vcpuFd, d.runSize, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
const run = new DataView(runBuffer);
if (d.syncRegs) run.setBigUint64(RUN.kvm_valid_regs, BigInt(SYNC_X86_REGS), true);
const access = (space: 'pio' | 'mmio', write: boolean, addr: number, size: number, value: bigint) => mailboxCall(d.mailbox, space, write, addr, size, value);

port.postMessage({ type: 'ready', thread: native.threadSelf() });

let stop: VcpuStop | undefined;
let exits = 0;
/** KVM_RUN has returned at least once (kicked out included): kvm_run holds the registers then */
let ran = false;

/** Wait out a pause (Vm.pause): counted in CONTROL_PAUSED so the VM knows when every vCPU is out of
 * KVM_RUN; a stop ends the wait (Vm's stop notifies CONTROL_PAUSE). */
function pauseIfAsked(): void {
  if (!Atomics.load(d.control, CONTROL_PAUSE)) return;
  Atomics.add(d.control, CONTROL_PAUSED, 1);
  Atomics.notify(d.control, CONTROL_PAUSED);
  while (Atomics.load(d.control, CONTROL_PAUSE) && !Atomics.load(d.control, CONTROL_STOP)) Atomics.wait(d.control, CONTROL_PAUSE, 1, 1000);
  Atomics.sub(d.control, CONTROL_PAUSED, 1);
  Atomics.notify(d.control, CONTROL_PAUSED);
}

while (!stop) {
  pauseIfAsked();
  if (Atomics.load(d.control, CONTROL_STOP)) {
    // where the guest was (a VM stopped at a time limit is often a hung guest: this says where)
    const rip = ran ? syncedRip(run) : undefined;
    stop = { reason: 'stopped', detail: rip === undefined ? undefined : `rip 0x${rip.toString(16)}` };
    break;
  }
  try {
    native.ioctl(d.vcpuFd, KVM.RUN, 0, 'KVM_RUN', true);
    ran = true;
  } catch (e) {
    if (isNativeError(e) && (e.code === 'EINTR' || e.code === 'EAGAIN')) {
      ran = true;
      // kicked (or immediate_exit set): look at the control word again
      run.setUint8(RUN.immediate_exit, 0);
      continue;
    }
    stop = { reason: 'crash', detail: (e as Error).message };
    break;
  }
  exits++;
  stop = handleExit(run, access);
}
// Drop our kvm_run mapping now: it holds the vCPU (and so the whole VM) alive until this isolate's GC.
native.remapAnonymous(native.addressOf(runBuffer), d.runSize);
port.postMessage({ type: 'stopped', stop, exits });
