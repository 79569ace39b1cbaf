// A snapshot's files without KVM: guest memory to a sparse file (only non-zero pages written, holes
// elsewhere, untouched memory never read), that file mapped back copy-on-write (the file never
// written, later snapshots of it complete), the directory's manifest, and every refusal of a missing,
// foreign, damaged or mismatched snapshot as one line (library and CLI); the API's PUT /snapshot and
// tsvmm ctl snapshot.
import { describe, it, expect, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../src/vmm/memory.js';
import { PAGE, residentRanges, seekDataRanges, touchedRanges, unionRanges, writeMemoryFile } from '../src/vmm/state/memory-file.js';
import { readSnapshot, writeSnapshot, type SnapshotMachine } from '../src/vmm/state/snapshot.js';
import { restoredConfig } from '../src/vmm/state/restore-config.js';
import { ramRegions } from '../src/boot/layout.js';
import { CLI } from './helpers/env.js';
import { route, ApiError, type ApiTarget } from '../src/api/routes.js';
import { ctlRequest, CtlUsageError } from '../src/api/ctl.js';

const MiB = 1 << 20;
const root = mkdtempSync(join(tmpdir(), 'tsvmm-snap-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(root, `d${n++}`);

/** bytes of disk a file takes (its blocks), against its size */
const diskBytes = (p: string) => statSync(p).blocks * 512;

function memory(size = 32 * MiB, file?: string): GuestMemory {
  return new GuestMemory(ramRegions(size), file ? { file } : {});
}

const MACHINE: SnapshotMachine = { memory: 32 * MiB, cpus: 2, cmdline: 'mode=hello', viommu: false, rng: false, net: [{ driver: 'tap', options: { ifname: 'tap0' }, queues: 1, mtu: 1500, mac: '52:54:00:12:34:56' }] };

describe('guest memory to a sparse file', () => {
  it('writes the non-zero pages only, at their offsets; touched zero pages and untouched memory stay holes', () => {
    const mem = memory();
    try {
      mem.bytes.setU8(5, 0x11); // page 0
      mem.bytes.setU8(1000 * PAGE + PAGE - 1, 0x22); // the last byte of page 1000
      mem.bytes.setU8(1001 * PAGE, 0x33); // page 1001: a run with 1000
      mem.bytes.setU8(3000 * PAGE + 7, 0); // touched, still zero
      const path = join(fresh() + '.mem');
      const s = writeMemoryFile(path, mem);
      expect(s).toMatchObject({ size: 32 * MiB, written: 3 });
      // only touched pages were looked at (tmpfs allocated 4 pages; SEEK_DATA may round to its blocks)
      expect(s.scanned).toBeGreaterThanOrEqual(4);
      expect(s.scanned).toBeLessThan(2048);
      expect(statSync(path).size).toBe(32 * MiB);
      expect(diskBytes(path)).toBeLessThanOrEqual(64 * 1024);
      const back = readFileSync(path);
      expect([back[5], back[1000 * PAGE + PAGE - 1], back[1001 * PAGE], back.reduce((a, b) => a + (b ? 1 : 0), 0)]).toEqual([0x11, 0x22, 0x33, 3]);
      expect(() => writeMemoryFile(path, mem)).toThrow(/EEXIST/);
    } finally {
      mem.release();
    }
  });

  it('ranges: data of a memfd, pages resident in this process, and their union', () => {
    const mem = memory(16 * MiB);
    try {
      expect(seekDataRanges(mem.fd, 16 * MiB)).toEqual([]);
      mem.bytes.setU8(8 * MiB + 1, 1);
      const data = seekDataRanges(mem.fd, 16 * MiB);
      expect(data.length).toBe(1);
      expect(data[0][0]).toBeLessThanOrEqual(8 * MiB);
      expect(data[0][1]).toBeGreaterThan(8 * MiB);
      const resident = residentRanges(mem.hostAddress, 16 * MiB);
      expect(resident.some(([s, e]) => s <= 8 * MiB && e > 8 * MiB)).toBe(true);
      expect(unionRanges([[0, 4096], [8192, 12288]], [[4096, 8192], [20480, 24576]])).toEqual([[0, 12288], [20480, 24576]]);
    } finally {
      mem.release();
    }
  });

  it('maps a memory file copy-on-write: the guest sees it, its writes never reach it, and a second snapshot holds both', () => {
    const a = memory();
    const first = fresh() + '.mem';
    const second = fresh() + '.mem';
    try {
      a.bytes.setU8(10 * PAGE, 0xaa);
      a.bytes.setU8(20 * PAGE, 0xbb);
      writeMemoryFile(first, a);
    } finally {
      a.release();
    }
    const b = memory(32 * MiB, first);
    try {
      expect(b.copyOnWrite).toBe(true);
      expect([b.bytes.u8(10 * PAGE), b.bytes.u8(20 * PAGE)]).toEqual([0xaa, 0xbb]);
      b.bytes.setU8(10 * PAGE, 0xcc); // over file data
      b.bytes.setU8(20 * PAGE, 0); // the page becomes all zero
      b.bytes.setU8(30 * MiB, 0xdd); // over a hole of the file
      // the file is as it was
      const f = readFileSync(first);
      expect([f[10 * PAGE], f[20 * PAGE], f[30 * MiB]]).toEqual([0xaa, 0xbb, 0]);
      // the guest's copies are found (resident) besides the file's data
      const touched = touchedRanges(b);
      expect(touched.some(([s, e]) => s <= 30 * MiB && e > 30 * MiB)).toBe(true);
      const s = writeMemoryFile(second, b);
      expect(s.written).toBe(2);
      const g = readFileSync(second);
      expect([g[10 * PAGE], g[20 * PAGE], g[30 * MiB]]).toEqual([0xcc, 0, 0xdd]);
    } finally {
      b.release();
    }
  });

  it('refuses a memory file of another size, or none, with one line', () => {
    const p = fresh() + '.mem';
    writeFileSync(p, new Uint8Array(PAGE));
    expect(() => memory(32 * MiB, p)).toThrow(`memory file ${p}: 4096 bytes, the memory is ${32 * MiB}`);
    expect(() => memory(32 * MiB, p + '.none')).toThrow(`memory file ${p}.none: no such file`);
  });
});

describe('the snapshot directory', () => {
  const state = new Uint8Array([1, 2, 3]);

  function snapshotInto(dir: string) {
    const mem = memory();
    try {
      mem.bytes.setU8(123, 45);
      return writeSnapshot(dir, { state, memory: mem, machine: MACHINE });
    } finally {
      mem.release();
    }
  }

  it('holds a manifest, the memory and the state, read back as written', () => {
    const dir = fresh();
    const w = snapshotInto(dir);
    expect(readdirSync(dir).sort()).toEqual(['manifest.json', `memory-${w.manifest.id}`, `state-${w.manifest.id}.msgpack`]);
    const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    expect(m).toMatchObject({ format: 'tsvmm-snapshot', version: 1, memory: { size: 32 * MiB, pagesWritten: 1 } });
    expect(m.machine.net[0]).toEqual({ driver: 'tap', options: { ifname: 'tap0' }, device: { queues: 1, mtu: 1500, mac: '52:54:00:12:34:56' } });
    const r = readSnapshot(dir);
    expect(r.manifest.machine).toEqual(MACHINE);
    expect([...r.state]).toEqual([1, 2, 3]);
    expect(r.memoryPath).toBe(join(dir, `memory-${w.manifest.id}`));
  });

  it('keeps a network device configured without a MAC that way (its default comes from its index again)', () => {
    const dir = fresh();
    const machine: SnapshotMachine = { ...MACHINE, net: [{ driver: 'tap', options: { ifname: 'tap0' }, queues: 1, mtu: 1500 }] };
    const mem = memory();
    try {
      writeSnapshot(dir, { state, memory: mem, machine });
    } finally {
      mem.release();
    }
    expect(readSnapshot(dir).manifest.machine).toEqual(machine);
  });

  it('a second snapshot into the same directory replaces the first whole', () => {
    const dir = fresh();
    const one = snapshotInto(dir).manifest.id;
    const two = snapshotInto(dir).manifest.id;
    expect(two).not.toBe(one);
    expect(readdirSync(dir).sort()).toEqual(['manifest.json', `memory-${two}`, `state-${two}.msgpack`]);
    expect(readSnapshot(dir).manifest.id).toBe(two);
  });

  it('refuses to write into a directory holding other things', () => {
    const dir = fresh();
    mkdirSync(dir);
    writeFileSync(join(dir, 'notes.txt'), 'mine');
    expect(() => snapshotInto(dir)).toThrow(`snapshot ${dir}: the directory is not empty and holds no snapshot (refusing to write into it)`);
    expect(readdirSync(dir)).toEqual(['notes.txt']);
  });

  it('refuses a missing, foreign, damaged or other-version snapshot with one line', () => {
    const none = fresh();
    expect(() => readSnapshot(none)).toThrow(`snapshot ${none}: no such directory`);
    const empty = fresh();
    mkdirSync(empty);
    expect(() => readSnapshot(empty)).toThrow(`snapshot ${empty}: no manifest.json: not a tsvmm snapshot`);
    const cases: Array<[(dir: string, id: string) => void, string]> = [
      [(d) => writeFileSync(join(d, 'manifest.json'), '{"format":"qemu"}'), "manifest.json is not a tsvmm snapshot's"],
      [(d) => writeFileSync(join(d, 'manifest.json'), '{ not json'), 'manifest.json is not JSON'],
      [(d) => edit(d, (m) => (m.version = 2)), 'a snapshot of version 2, this tsvmm reads version 1'],
      [(d) => edit(d, (m) => (m.extra = 1)), 'manifest.json: extra: unexpected field'],
      [(d) => edit(d, (m) => ((m.machine as Record<string, unknown>).cpus = 'two')), 'manifest.json: machine.cpus: not an integer'],
      [(d) => edit(d, (m) => (m.memoryFile = '../../etc/passwd')), "manifest.json: memoryFile, stateFile: not this snapshot's names"],
      [(d, id) => truncateSync(join(d, `memory-${id}`), 4096), `is 4096 bytes, the manifest says ${32 * MiB}`],
      [(d, id) => rmSync(join(d, `state-${id}.msgpack`)), 'is missing'],
    ];
    for (const [damage, why] of cases) {
      const dir = fresh();
      const id = snapshotInto(dir).manifest.id;
      damage(dir, id);
      let msg = '';
      try {
        readSnapshot(dir);
      } catch (e) {
        msg = (e as Error).message;
      }
      expect(msg).toContain(`snapshot ${dir}: `);
      expect(msg).toContain(why);
      expect(msg).not.toContain('\n');
    }
  });

  function edit(dir: string, f: (m: Record<string, unknown>) => void): void {
    const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    f(m);
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
  }
});

describe('the configuration a restore builds', () => {
  it("is the snapshot's machine; --net given replaces the driver and options and keeps the saved device settings", () => {
    const c = restoredConfig({ net: [{ driver: 'tap', options: { ifname: 'tap9' } }] }, MACHINE);
    expect(c).toMatchObject({ memory: 32 * MiB, cpus: 2, viommu: false, rng: undefined });
    expect(c.net).toEqual([{ driver: 'tap', options: { ifname: 'tap9', queues: '1' }, queues: 1, mtu: 1500, mac: '52:54:00:12:34:56' }]);
    expect(restoredConfig({}, MACHINE).net).toEqual(MACHINE.net);
  });

  it('refuses another shape with one line', () => {
    expect(() => restoredConfig({ memory: '64M' }, MACHINE)).toThrow(`--mem: the snapshot's VM has ${32 * MiB} bytes of memory, not ${64 * MiB}`);
    expect(() => restoredConfig({ cpus: 1 }, MACHINE)).toThrow("--cpus: the snapshot's VM has 2 vCPUs, not 1");
    expect(() => restoredConfig({ net: [] }, MACHINE)).toThrow("--net: the snapshot's VM has 1 network device, 0 given");
    expect(() => restoredConfig({ viommu: true }, MACHINE)).toThrow("--viommu: the snapshot's VM has no virtio-iommu");
    expect(() => restoredConfig({ rng: true }, MACHINE)).toThrow("--rng: the snapshot's VM has no virtio-rng");
  });
});

describe('tsvmm run --restore refusals (before KVM is opened)', () => {
  const run = (args: string[]) => spawnSync(process.execPath, [CLI, 'run', ...args], { encoding: 'utf8', timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });
  const oneLine = (r: ReturnType<typeof run>, want: string) => {
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
    expect(r.stderr.trim()).toBe(`tsvmm: ${want}`);
  };

  it('a missing or foreign directory, another --mem or --cpus, a kernel besides', () => {
    const none = fresh();
    oneLine(run(['--restore', none]), `snapshot ${none}: no such directory`);
    const foreign = fresh();
    mkdirSync(foreign);
    writeFileSync(join(foreign, 'manifest.json'), '{"format":"firecracker"}');
    oneLine(run(['--restore', foreign]), `snapshot ${foreign}: manifest.json is not a tsvmm snapshot's`);
    const dir = fresh();
    const mem = memory();
    try {
      writeSnapshot(dir, { state: new Uint8Array(1), memory: mem, machine: MACHINE });
    } finally {
      mem.release();
    }
    oneLine(run(['--restore', dir, '--mem', '64M']), `--mem: the snapshot's VM has ${32 * MiB} bytes of memory, not ${64 * MiB}`);
    oneLine(run(['--restore', dir, '--cpus', '3']), "--cpus: the snapshot's VM has 2 vCPUs, not 3");
    oneLine(run(['--restore', dir, '--kernel', '/x']), "run: --restore starts the snapshot's kernel where it was: --kernel, --initrd and --cmdline do not go with it");
    oneLine(run([]), 'run: --kernel FILE is required (or --restore DIR, or --incoming URL)');
  });
});

describe('PUT /snapshot and tsvmm ctl snapshot', () => {
  const target = (calls: Array<{ path: string; resume: boolean }>, fail?: string) =>
    ({
      info: () => ({}),
      metrics: () => ({}) as never,
      pause: async () => undefined,
      resume: async () => undefined,
      net: () => undefined,
      snapshot: async (o: { path: string; resume: boolean }) => {
        if (fail) throw new Error(fail);
        calls.push(o);
        return { dir: o.path, pagesWritten: 3 };
      },
    }) as ApiTarget;

  it('takes a path and resume (default true) and answers with what was written', async () => {
    const calls: Array<{ path: string; resume: boolean }> = [];
    expect(await route(target(calls), 'PUT', '/snapshot', '{"path":"/s/a"}')).toEqual({ status: 200, json: { dir: '/s/a', pagesWritten: 3 } });
    await route(target(calls), 'PUT', '/snapshot', '{"path":"/s/b","resume":false}');
    expect(calls).toEqual([
      { path: '/s/a', resume: true },
      { path: '/s/b', resume: false },
    ]);
  });

  it.each([
    ['', 400, 'path: expected'],
    ['{"path":""}', 400, 'path: expected'],
    ['{"path":5}', 400, 'path: expected'],
    ['{"path":"/s","resume":"no"}', 400, 'resume: expected true or false'],
    ['{"path":"/s","keep":1}', 400, 'unknown field "keep"'],
  ])('refuses %s', async (body, status, msg) => {
    const calls: Array<{ path: string; resume: boolean }> = [];
    const e = await route(target(calls), 'PUT', '/snapshot', body).catch((x: ApiError) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect([(e as ApiError).status, (e as ApiError).message]).toEqual([status, expect.stringContaining(msg)]);
    expect(calls).toEqual([]);
  });

  it("passes the snapshot's own refusal on as one line, and says where there are no snapshots", async () => {
    const e = (await route(target([], 'snapshot /x: the directory is not empty\nsecond line'), 'PUT', '/snapshot', '{"path":"/x"}').catch((x) => x)) as ApiError;
    expect([e.status, e.message]).toEqual([400, 'snapshot /x: the directory is not empty']);
    const none = { ...target([]), snapshot: undefined };
    expect(((await route(none, 'PUT', '/snapshot', '{"path":"/x"}').catch((x) => x)) as ApiError).status).toBe(501);
    expect(((await route(target([]), 'GET', '/snapshot', '').catch((x) => x)) as ApiError).status).toBe(405);
  });

  it('ctl: snapshot DIR [stop], the directory made absolute', () => {
    expect(ctlRequest(['snapshot', '/s/a'])).toEqual({ method: 'PUT', path: '/snapshot', body: { path: '/s/a' } });
    expect(ctlRequest(['snapshot', 'rel', 'stop'])).toEqual({ method: 'PUT', path: '/snapshot', body: { path: join(process.cwd(), 'rel'), resume: false } });
    for (const bad of [['snapshot'], ['snapshot', '/s', 'now'], ['snapshot', '/s', 'stop', 'x']]) expect(() => ctlRequest(bad)).toThrow(CtlUsageError);
  });
});
