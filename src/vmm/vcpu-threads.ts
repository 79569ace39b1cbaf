// The vCPU threads: per vCPU a worker in KVM_RUN (vcpu-worker.ts), its kvm_run mapping, and the
// mailbox through which its exits reach the device models on this (main) thread. This module starts,
// pauses, resumes, stops and releases them; the VM configures the vCPUs before they start.
import { Worker } from 'node:worker_threads';
import { native, PROT_READ, PROT_WRITE, MAP_SHARED } from '../native.js';
import { CAP, RUN, SYNC_X86_REGS } from './kvm-abi.js';
import { checkExtension, type VcpuFd } from './kvm.js';
import { newMailbox, MailboxServer } from './mailbox.js';
import { CONTROL_STOP, CONTROL_PAUSE, CONTROL_WORDS } from './vcpu-control.js';
import { pauseVcpus, resumeVcpus } from './vcpu-pause.js';
import type { BusAccess, VcpuStop } from './exit.js';
import { workerUrl } from '../worker-url.js';
import type { VcpuWorkerData } from './vcpu-worker.js';

interface VcpuThread {
  fd: VcpuFd;
  worker?: Worker;
  thread?: bigint;
  run?: DataView;
  runSize?: number;
  server?: MailboxServer;
  exited?: Promise<void>;
  /** its thread has ended */
  ended?: boolean;
}

/** Why a vCPU (and with it the VM) cannot go on: what the guest asked for, or a crash. */
export type VcpuEnd = { reason: Exclude<VcpuStop['reason'], 'stopped'>; detail: string };

export class VcpuThreads {
  private vcpus: VcpuThread[] = [];
  /** the words the threads are told to pause and stop through (vcpu-control.ts) */
  private readonly control = new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4));
  /** the signal that kicks a thread out of KVM_RUN */
  private readonly kickSignal = native.sigRtMin() + 3;
  /** where each vCPU was when stop() ended it */
  private readonly stoppedAt: string[] = [];

  /** `access`: a vCPU's port or MMIO access, served on this thread; `end`: the VM must end. */
  constructor(
    private readonly access: BusAccess,
    private readonly end: (e: VcpuEnd) => void,
  ) {}

  /** A vCPU, configured by the caller, whose thread start() runs. */
  add(fd: VcpuFd): void {
    this.vcpus.push({ fd });
  }

  get fds(): number[] {
    return this.vcpus.map((v) => v.fd.fd);
  }

  /** Start every vCPU's thread; resolves once all are in their run loop. */
  async start(kvmFd: number, runSize: number): Promise<void> {
    native.signalNoop(this.kickSignal);
    const syncRegs = (checkExtension(kvmFd, CAP.SYNC_REGS) & SYNC_X86_REGS) !== 0;
    await Promise.all(this.vcpus.map((v, i) => this.spawn(v, i, runSize, syncRegs)));
  }

  /** Resolves once every live thread is out of KVM_RUN and waiting (or the VM is stopping). */
  pause(): Promise<void> {
    const vcpus = this.vcpus.map((v) => ({ run: v.run, thread: v.thread, alive: !!v.worker && !v.ended }));
    return pauseVcpus(this.control, vcpus, this.kickSignal);
  }

  resume(): void {
    resumeVcpus(this.control);
  }

  /** Where the vCPUs were when stop() ended them, as a sentence part ('' if none said). */
  get stoppedWhere(): string {
    return this.stoppedAt.filter(Boolean).join(', ');
  }

  private spawn(v: VcpuThread, index: number, runSize: number, syncRegs: boolean): Promise<void> {
    const mailbox = newMailbox();
    v.server = new MailboxServer(mailbox, this.access, (e) => this.end({ reason: 'crash', detail: `device model error: ${(e as Error).stack ?? e}` }));
    v.run = new DataView(native.mmap(v.fd.fd, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, 0));
    v.runSize = runSize;
    const data: VcpuWorkerData = { index, vcpuFd: v.fd.fd, runSize, syncRegs, kickSignal: this.kickSignal, mailbox, control: this.control };
    const worker = (v.worker = new Worker(workerUrl('./vcpu-worker.js', import.meta.url), { workerData: data, name: `vcpu${index}` }));
    v.exited = new Promise((resolve) =>
      worker.once('exit', () => {
        v.ended = true;
        resolve();
      }),
    );
    return new Promise((resolve, reject) => {
      worker.on('message', (m: { type: string; thread?: bigint; stop?: VcpuStop }) => {
        if (m.type === 'ready') {
          v.thread = m.thread;
          resolve();
        } else if (m.type === 'stopped' && m.stop && m.stop.reason !== 'stopped') {
          this.end({ reason: m.stop.reason, detail: `vcpu${index}: ${m.stop.detail}` });
        } else if (m.type === 'stopped' && m.stop?.detail) {
          this.stoppedAt[index] = `vcpu${index} at ${m.stop.detail}`;
        }
      });
      worker.once('error', (e) => {
        reject(e);
        this.end({ reason: 'crash', detail: `vcpu${index} thread failed: ${e.message}` });
      });
      worker.once('exit', () => reject(new Error(`vcpu${index} thread exited during start-up`)));
    });
  }

  /** Kick every vCPU out of KVM_RUN until its thread has ended. */
  async stop(): Promise<void> {
    Atomics.store(this.control, CONTROL_STOP, 1);
    // (paused vCPU threads wait on CONTROL_PAUSE)
    Atomics.notify(this.control, CONTROL_PAUSE);
    const pending = this.vcpus.filter((v) => v.worker);
    let done = false;
    const all = Promise.all(pending.map((v) => v.exited)).then(() => (done = true));
    while (!done) {
      for (const v of pending) {
        v.run?.setUint8(RUN.immediate_exit, 1);
        if (v.thread !== undefined) {
          try {
            native.threadKill(v.thread, this.kickSignal);
          } catch {
            // thread already gone
          }
        }
      }
      await Promise.race([all, new Promise((r) => setTimeout(r, 20))]);
    }
  }

  /** After stop(): close the mailboxes (their last accesses served), then the kvm_run mappings and vCPU fds. */
  async close(): Promise<void> {
    await Promise.all(this.vcpus.map((v) => v.server?.close()));
    for (const v of this.vcpus) {
      // our kvm_run mapping would keep the vCPU, and with it the VM, alive until a GC
      if (v.run && v.runSize) native.remapAnonymous(native.addressOf(v.run.buffer as ArrayBuffer), v.runSize);
      v.fd.close();
    }
    this.vcpus = [];
  }
}
