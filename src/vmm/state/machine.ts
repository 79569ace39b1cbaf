// A whole machine's device state to and from a state document: the vCPUs, the VM's in-kernel chips
// and clock, and every bus device with state of its own (PCI functions through their host bridge,
// in their slots). Guest memory is not in it (a snapshot writes it beside the document).
import type { Bus, BusDevice } from '../bus.js';
import { PciConfigSpace } from '../devices/pci.js';
import { UserError } from '../../errors.js';
import { StateError, type StateValue } from '../../state/fields.js';
import { decodeState, encodeState, type Fingerprint } from './document.js';
import { msrsToSave, restoreVcpu, restoreVm, saveVcpu, saveVm } from './kvm-state.js';

/** A built machine, as its state is read and written: its KVM fds and its buses. */
export interface Machine {
  kvmFd: number;
  vmFd: number;
  vcpuFds: number[];
  /** bytes of guest RAM */
  memory: number;
  buses: Bus[];
}

/**
 * The devices with state, by `bus:name`. A PCI function is also on the MMIO bus (its BAR) but is
 * saved by the host bridge, with its configuration space, in its slot: it is left out here.
 */
export function statefulDevices(buses: Bus[]): Map<string, BusDevice> {
  const out = new Map<string, BusDevice>();
  const seen = new Set<BusDevice>();
  for (const bus of buses) {
    for (const { name, dev } of bus.devices()) {
      if (!dev.saveState || seen.has(dev)) continue;
      seen.add(dev);
      if ((dev as { config?: unknown }).config instanceof PciConfigSpace) continue;
      const key = `${bus.name}:${name}`;
      if (out.has(key)) throw new Error(`two devices with state are named ${key}`);
      out.set(key, dev);
    }
  }
  return out;
}

export function fingerprint(m: Machine): Fingerprint {
  return { memory: m.memory, cpus: m.vcpuFds.length, devices: [...statefulDevices(m.buses).keys()] };
}

/** Stop every device's threads touching guest memory (their positions kept): before saveMachine. */
export async function quiesceDevices(m: Pick<Machine, 'buses'>): Promise<void> {
  await Promise.all([...statefulDevices(m.buses).values()].map((d) => d.quiesce?.()));
}

export async function unquiesceDevices(m: Pick<Machine, 'buses'>): Promise<void> {
  await Promise.all([...statefulDevices(m.buses).values()].map((d) => d.unquiesce?.()));
}

/** The machine's state as a document. No vCPU may be running, and the devices must be quiesced (quiesceDevices). */
export function saveMachine(m: Machine): Uint8Array {
  const msrs = msrsToSave(m.kvmFd);
  const devices: Record<string, StateValue> = {};
  for (const [key, dev] of statefulDevices(m.buses)) devices[key] = dev.saveState!();
  return encodeState({
    fingerprint: fingerprint(m),
    vcpus: m.vcpuFds.map((fd) => saveVcpu(m.kvmFd, m.vmFd, fd, msrs)),
    vm: saveVm(m.vmFd),
    devices,
  });
}

/**
 * Restore a document into a machine freshly built with the same configuration (memory contents
 * restored beside it), before its vCPUs run. The document is checked whole before anything is
 * written (format, version, fingerprint, vCPU and VM parts); each device checks its own part as it
 * takes it, so a refusal there leaves the machine half restored: it must then be thrown away.
 * Resolves once the devices run. Every refusal is one UserError line.
 */
export async function restoreMachine(m: Machine, doc: Uint8Array): Promise<void> {
  const s = decodeState(doc, fingerprint(m));
  try {
    restoreVm(m.vmFd, s.vm);
    s.vcpus.forEach((v, i) => restoreVcpu(m.kvmFd, m.vcpuFds[i], v));
    const running: Array<void | Promise<void>> = [];
    for (const [key, dev] of statefulDevices(m.buses)) {
      const f = s.devices.get(key)!;
      running.push(dev.restoreState!(f));
    }
    await Promise.all(running);
  } catch (e) {
    if (e instanceof StateError) throw new UserError(`state: ${e.message}`);
    if (e instanceof Error && 'syscall' in e) throw new UserError(`state: KVM refused it: ${e.message}`);
    throw e;
  }
}
