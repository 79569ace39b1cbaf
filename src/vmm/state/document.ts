// The state document: one msgpack map holding a machine's whole device state, versioned.
//   { format: 'tsvmm-state', version, fingerprint: { memory, cpus, devices }, vcpus: [...], vm: {...},
//     devices: { 'pio:com1': ..., 'pio:pci-host': ... } }
// A document is untrusted input: decodeState checks the format, the version and that it was saved
// from a machine like this one (fingerprint) before anything is restored, and every field as it is
// read (src/state/fields.ts). Each refusal is one line (UserError).
import { encode, decode } from '@msgpack/msgpack';
import { UserError } from '../../errors.js';
import { Fields, StateError, type StateValue } from '../../state/fields.js';
import { encodeVcpu, encodeVm, readVcpu, readVm, type VcpuState, type VmState } from './kvm-state.js';

export const STATE_FORMAT = 'tsvmm-state';
/** The layout of the document and of every device's part in it; a change of either changes this. */
export const STATE_VERSION = 3;
const MAX_CPUS = 1024;
const MAX_DEVICES = 256;

/** What must be the same on both sides: RAM size in bytes, vCPUs, the names of the devices with state. */
export interface Fingerprint {
  memory: number;
  cpus: number;
  devices: string[];
}

export interface StateDocument {
  fingerprint: Fingerprint;
  vcpus: VcpuState[];
  vm: VmState;
  devices: Record<string, StateValue>;
}

/** What decodeState hands back: the machine parts checked, each device's part to be read by that device. */
export interface DecodedState {
  vcpus: VcpuState[];
  vm: VmState;
  devices: Map<string, Fields>;
}

export function encodeState(doc: StateDocument): Uint8Array {
  return encode({
    format: STATE_FORMAT,
    version: STATE_VERSION,
    fingerprint: { memory: doc.fingerprint.memory, cpus: doc.fingerprint.cpus, devices: doc.fingerprint.devices },
    vcpus: doc.vcpus.map(encodeVcpu),
    vm: encodeVm(doc.vm),
    devices: doc.devices,
  });
}

/** Decode and check a document against this machine's fingerprint: UserError (one line) if it cannot be restored here. */
export function decodeState(bytes: Uint8Array, here: Fingerprint): DecodedState {
  let raw: unknown;
  // A Node Buffer (a file read) is seen as a plain Uint8Array: msgpack hands out its byte fields as
  // views of its input, and a Buffer's slice() is another view, not the copy the readers take with it
  const input = Buffer.isBuffer(bytes) ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : bytes;
  try {
    raw = decode(input, { maxStrLength: 1 << 20, maxBinLength: 1 << 24, maxArrayLength: 1 << 16, maxMapLength: 1 << 16 });
  } catch (e) {
    throw new UserError(`state: not a readable state document (msgpack: ${(e as Error).message})`);
  }
  try {
    const f = new Fields(raw, '');
    if (f.any('format') !== STATE_FORMAT) throw new StateError(`not a tsvmm state document`);
    const version = f.any('version');
    if (version !== STATE_VERSION) throw new StateError(`a document of version ${JSON.stringify(version)}, this tsvmm reads version ${STATE_VERSION}`);
    checkFingerprint(f.obj('fingerprint'), here);
    const vcpus = f.list('vcpus', MAX_CPUS, (v, path) => readVcpu(new Fields(v, path)));
    if (vcpus.length !== here.cpus) throw new StateError(`vcpus: ${vcpus.length} saved for ${here.cpus} vCPUs`);
    const vm = readVm(f.obj('vm'));
    const d = f.obj('devices');
    const devices = new Map(here.devices.map((name) => [name, d.obj(name)]));
    d.done();
    f.done();
    return { vcpus, vm, devices };
  } catch (e) {
    if (e instanceof StateError) throw new UserError(`state: ${e.message}`);
    throw e;
  }
}

/** Refuse (StateError) a fingerprint that is not this machine's. */
export function checkFingerprint(f: Fields, here: Fingerprint): void {
  const memory = f.uint('memory', Number.MAX_SAFE_INTEGER);
  const cpus = f.uint('cpus', MAX_CPUS);
  const devices = f.list('devices', MAX_DEVICES, (v, path) => {
    if (typeof v !== 'string' || v.length > 256) throw new StateError(`${path}: not a device name`);
    return v;
  });
  f.done();
  if (memory !== here.memory) throw new StateError(`saved from a VM with ${memory} bytes of memory, this one has ${here.memory}`);
  if (cpus !== here.cpus) throw new StateError(`saved from a VM with ${cpus} vCPUs, this one has ${here.cpus}`);
  if (devices.join(',') !== here.devices.join(',')) throw new StateError(`saved from a VM with devices ${devices.join(',') || 'none'}, this one has ${here.devices.join(',') || 'none'}`);
}

