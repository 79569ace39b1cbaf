// A snapshot directory: a paused VM's device state and guest memory, and a manifest saying what they are.
//   manifest.json        { format: 'tsvmm-snapshot', version, id, memoryFile, stateFile, memory: { size,
//                          regions, pagesWritten }, machine: { memory, cpus, cmdline, viommu, rng, net } }
//   memory-ID            guest memory, sparse (memory-file.ts); mapped copy-on-write by a restore
//   state-ID.msgpack     the device-state document (document.ts)
// The files of one snapshot share a fresh ID and the manifest, written last and renamed into place,
// names them: a snapshot taken over an older one replaces it whole or not at all, and a VM restored
// from the older one keeps its memory file (its mapping holds the file after it is unlinked).
// A manifest is input like any other: checked field by field, each refusal one line.
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { UserError } from '../../errors.js';
import { Fields, StateError } from '../../state/fields.js';
import type { MemoryRegion } from '../memory.js';
import type { GuestMemory } from '../memory.js';
import type { NetConfig, RngConfig } from '../config.js';
import { writeMemoryFile, type MemoryFileStats } from './memory-file.js';

export const SNAPSHOT_FORMAT = 'tsvmm-snapshot';
export const SNAPSHOT_VERSION = 1;
const MANIFEST = 'manifest.json';
const MAX_MANIFEST = 1 << 20;
const MAX_NETS = 64;
const MAX_REGIONS = 16;

/** The machine a snapshot was taken of: what a restore builds again. */
export interface SnapshotMachine {
  /** bytes of guest RAM */
  memory: number;
  cpus: number;
  cmdline: string;
  viommu: boolean;
  rng: RngConfig | false;
  /** each network device as configured, with its MAC, pairs and MTU made explicit */
  net: NetConfig[];
}

export interface SnapshotManifest {
  id: string;
  memoryFile: string;
  stateFile: string;
  memory: { size: number; regions: MemoryRegion[]; pagesWritten: number };
  machine: SnapshotMachine;
}

/** A snapshot read back: its manifest and the paths of its files (checked to be there). */
export interface Snapshot {
  dir: string;
  manifest: SnapshotManifest;
  memoryPath: string;
  state: Uint8Array;
}

function refuse(dir: string, why: string): never {
  throw new UserError(`snapshot ${dir}: ${why}`);
}

function readManifestFile(dir: string): unknown | undefined {
  let text: string;
  try {
    if (statSync(join(dir, MANIFEST)).size > MAX_MANIFEST) refuse(dir, `${MANIFEST} is larger than ${MAX_MANIFEST} bytes`);
    text = readFileSync(join(dir, MANIFEST), 'utf8');
  } catch (e) {
    if (e instanceof UserError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    refuse(dir, (e as Error).message);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    refuse(dir, `${MANIFEST} is not JSON (${(e as Error).message.split('\n')[0]})`);
  }
}

/**
 * Write a snapshot into `dir` (created if missing; if it exists it must be empty or hold a snapshot,
 * which is replaced). The VM must be paused and its devices quiesced.
 */
export function writeSnapshot(dir: string, parts: { state: Uint8Array; memory: GuestMemory; machine: SnapshotMachine }): { manifest: SnapshotManifest; memory: MemoryFileStats } {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    refuse(dir, `cannot make the directory: ${(e as Error).message}`);
  }
  const old = readManifestFile(dir);
  const oldFiles = old === undefined ? [] : checkManifest(dir, old);
  if (old === undefined && readdirSync(dir).length) refuse(dir, 'the directory is not empty and holds no snapshot (refusing to write into it)');
  const id = randomBytes(8).toString('hex');
  const memoryFile = `memory-${id}`;
  const stateFile = `state-${id}.msgpack`;
  const made: string[] = [];
  try {
    made.push(memoryFile);
    const stats = writeMemoryFile(join(dir, memoryFile), parts.memory);
    made.push(stateFile);
    writeFileSync(join(dir, stateFile), parts.state, { mode: 0o600, flag: 'wx' });
    const manifest: SnapshotManifest = {
      id,
      memoryFile,
      stateFile,
      memory: { size: stats.size, regions: parts.memory.table.regions.map((r) => ({ ...r })), pagesWritten: stats.written },
      machine: parts.machine,
    };
    const tmp = join(dir, `${MANIFEST}.${id}`);
    made.push(`${MANIFEST}.${id}`);
    const onDisk = { format: SNAPSHOT_FORMAT, version: SNAPSHOT_VERSION, ...manifest, machine: { ...manifest.machine, net: manifest.machine.net.map(encodeNet) } };
    writeFileSync(tmp, JSON.stringify(onDisk, null, 1) + '\n', { mode: 0o600, flag: 'wx' });
    renameSync(tmp, join(dir, MANIFEST));
    for (const f of oldFiles) rmSync(join(dir, f), { force: true });
    return { manifest, memory: stats };
  } catch (e) {
    for (const f of made) rmSync(join(dir, f), { force: true });
    if (e instanceof UserError) throw e;
    refuse(dir, `writing failed: ${(e as Error).message}`);
  }
}

/** Read and check a snapshot directory: one UserError line for a missing, foreign or damaged one. */
export function readSnapshot(dir: string): Snapshot {
  try {
    if (!statSync(dir).isDirectory()) refuse(dir, 'not a directory');
  } catch (e) {
    if (e instanceof UserError) throw e;
    refuse(dir, (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such directory' : (e as Error).message);
  }
  const raw = readManifestFile(dir);
  if (raw === undefined) refuse(dir, `no ${MANIFEST}: not a tsvmm snapshot`);
  checkManifest(dir, raw);
  const manifest = readManifest(dir, raw);
  const memoryPath = join(dir, manifest.memoryFile);
  let size: number;
  let state: Uint8Array;
  try {
    size = statSync(memoryPath).size;
    state = readFileSync(join(dir, manifest.stateFile));
  } catch (e) {
    refuse(dir, `${(e as NodeJS.ErrnoException).code === 'ENOENT' ? `${(e as NodeJS.ErrnoException).path ?? 'a file'} is missing` : (e as Error).message}`);
  }
  if (size !== manifest.memory.size) refuse(dir, `${manifest.memoryFile} is ${size} bytes, the manifest says ${manifest.memory.size}`);
  return { dir, manifest, memoryPath, state };
}

/** The format and version, and the names of the files the manifest owns. */
function checkManifest(dir: string, raw: unknown): string[] {
  const m = raw as Record<string, unknown> | null;
  if (typeof m !== 'object' || m === null || m.format !== SNAPSHOT_FORMAT) refuse(dir, `${MANIFEST} is not a tsvmm snapshot's`);
  if (m.version !== SNAPSHOT_VERSION) refuse(dir, `a snapshot of version ${JSON.stringify(m.version)}, this tsvmm reads version ${SNAPSHOT_VERSION}`);
  return [m.memoryFile, m.stateFile].filter((f): f is string => typeof f === 'string' && /^(memory|state)-[0-9a-f]{16}(\.msgpack)?$/.test(f));
}

function readManifest(dir: string, raw: unknown): SnapshotManifest {
  try {
    const f = new Fields(raw, '');
    f.any('format');
    f.any('version');
    const id = f.str('id', 16);
    if (!/^[0-9a-f]{16}$/.test(id)) throw new StateError('id: not 16 hex digits');
    const memoryFile = f.str('memoryFile');
    const stateFile = f.str('stateFile');
    if (memoryFile !== `memory-${id}` || stateFile !== `state-${id}.msgpack`) throw new StateError('memoryFile, stateFile: not this snapshot\'s names');
    const mf = f.obj('memory');
    const memory = {
      size: mf.uint('size', Number.MAX_SAFE_INTEGER),
      regions: mf.list('regions', MAX_REGIONS, (v, path) => {
        const r = new Fields(v, path);
        const region = { gpa: r.uint('gpa', Number.MAX_SAFE_INTEGER), size: r.uint('size', Number.MAX_SAFE_INTEGER), offset: r.uint('offset', Number.MAX_SAFE_INTEGER) };
        r.done();
        return region;
      }),
      pagesWritten: mf.uint('pagesWritten', Number.MAX_SAFE_INTEGER),
    };
    mf.done();
    const machine = readMachine(f.obj('machine'));
    f.done();
    if (machine.memory !== memory.size) throw new StateError(`machine.memory: ${machine.memory}, the memory file holds ${memory.size}`);
    return { id, memoryFile, stateFile, memory, machine };
  } catch (e) {
    if (e instanceof StateError) refuse(dir, `${MANIFEST}: ${e.message}`);
    throw e;
  }
}

function readMachine(f: Fields): SnapshotMachine {
  const rng = f.any('rng');
  if (rng !== false && (typeof rng !== 'object' || rng === null || Object.keys(rng).some((k) => k !== 'packed'))) throw new StateError(`${f.path}.rng: not false or { packed }`);
  const m: SnapshotMachine = {
    memory: f.uint('memory', Number.MAX_SAFE_INTEGER),
    cpus: f.uint('cpus', 1024),
    cmdline: f.str('cmdline', 1 << 16),
    viommu: f.bool('viommu'),
    rng: rng as RngConfig | false,
    net: f.list('net', MAX_NETS, (v, path) => readNet(new Fields(v, path))),
  };
  f.done();
  return m;
}

/** A NetConfig in the manifest: the driver and its options apart from the device's settings (a restore may name another driver or tap). */
function encodeNet(n: NetConfig): Record<string, unknown> {
  const { driver, options, ...device } = n;
  return { driver, options: options ?? {}, device };
}

/** A saved NetConfig: its strings checked here, its device settings by plugNet (checkNetConfig) as for any config. */
function readNet(f: Fields): NetConfig {
  const n: NetConfig = { driver: f.str('driver', 4096) };
  const opt = f.obj('options');
  n.options = {};
  for (const k of Object.keys(f.any('options') as object)) n.options[k] = opt.str(k, 4096);
  opt.done();
  const raw = f.any('device') as Record<string, unknown>;
  const d = new Fields(raw, `${f.path}.device`);
  for (const k of Object.keys(raw)) d.any(k);
  const dev = raw as Partial<NetConfig>;
  // (no MAC: the device's default, from its index, as when it was configured)
  if (dev.mac !== undefined && typeof dev.mac !== 'string') throw new StateError(`${f.path}.device.mac: not a string`);
  for (const k of ['queues', 'threads', 'busyPollUs'] as const) if (dev[k] !== undefined) d.uint(k, 1 << 16);
  const known = ['mac', 'queues', 'threads', 'busyPollUs', 'packed', 'mergeable', 'mtu', 'speed', 'duplex', 'rateLimit'];
  for (const k of Object.keys(raw)) if (!known.includes(k)) throw new StateError(`${f.path}.device.${k}: unexpected field`);
  f.done();
  return { ...n, ...dev };
}
