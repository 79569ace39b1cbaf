// The live-migration stream without KVM: real guest memory (memfd) on both sides of a unix socket, a
// "guest" that keeps writing pages between passes, and the destination's memory compared with the
// source's page by page at the hand-over; then every way the stream can be refused.
import { describe, it, expect, afterAll } from 'vitest';
import { createServer, connect, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encode } from '@msgpack/msgpack';
import { GuestMemory, type MemoryRegion } from '../src/vmm/memory.js';
import { migrateOut, type MigrationSource, type MigrationProgress } from '../src/vmm/migration/source.js';
import { migrateIn, type MigrationTarget } from '../src/vmm/migration/destination.js';
import { PAGE, MAX_FRAME } from '../src/vmm/migration/wire.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-mig-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let socks = 0;

// two regions, as a VM with a hole below 4 GiB has
const REGIONS: MemoryRegion[] = [
  { gpa: 0, size: 6 << 20, offset: 0 },
  { gpa: 16 << 20, size: 2 << 20, offset: 6 << 20 },
];
const FINGERPRINT = { memory: 8 << 20, cpus: 1, devices: ['pio:com1'] };
const pagesOf = (m: GuestMemory) => m.table.regions.flatMap((r) => Array.from({ length: r.size / PAGE }, (_, i) => r.gpa + i * PAGE));

/** A connected pair of unix sockets. */
async function socketPair(): Promise<[Socket, Socket]> {
  const path = join(dir, `m${++socks}.sock`);
  const server = createServer();
  await new Promise<void>((r) => server.listen(path, r));
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const a = connect(path);
  const b = await accepted;
  server.close();
  return [a, b];
}

/** A source whose "guest" writes `perPass` pages (and zeroes one) each time its log is taken, until paused. */
function fakeSource(perPass: number) {
  const memory = new GuestMemory(REGIONS);
  const all = pagesOf(memory);
  // a third of the pages hold data, the rest stay zero (not sent on the first copy)
  all.forEach((gpa, i) => i % 3 === 0 && memory.slice(gpa, PAGE).fill((i % 251) + 1));
  const dirty = new Set<number>();
  let logging = false;
  let writes = 0;
  const events: string[] = [];
  /** the guest goes on writing while a pass is sent (after the log was taken, as a real one does) */
  const guestWrites = () => {
    if (src.paused || !logging) return;
    for (let k = 0; k < perPass; k++) {
      const gpa = all[(writes * 7919) % all.length];
      memory.slice(gpa, PAGE).fill(writes & 0xff || 1);
      dirty.add(gpa);
      writes++;
    }
    const zeroed = all[(writes * 31) % all.length];
    memory.slice(zeroed, PAGE).fill(0);
    dirty.add(zeroed);
  };
  const src: MigrationSource & { paused: boolean; events: string[]; saved?: Uint8Array } = {
    memory,
    fingerprint: FINGERPRINT,
    paused: false,
    events,
    startDirtyLog: () => {
      logging = true;
      guestWrites();
    },
    takeDirty: () => {
      const out = [...dirty].sort((a, b) => a - b);
      dirty.clear();
      guestWrites();
      return out;
    },
    pause: async () => {
      src.paused = true;
      events.push('pause');
    },
    resume: async () => {
      src.paused = false;
      events.push('resume');
    },
    saveState: () => (src.saved = encode({ format: 'test-state', at: writes })),
  };
  return src;
}

function fakeTarget(fingerprint = FINGERPRINT) {
  const t: MigrationTarget & { state?: Uint8Array; started: boolean; memory: GuestMemory } = {
    memory: new GuestMemory(REGIONS),
    fingerprint,
    started: false,
    restoreState: (doc) => {
      t.state = doc;
    },
    start: () => {
      t.started = true;
    },
  };
  return t;
}

function samePages(a: GuestMemory, b: GuestMemory): number {
  let differ = 0;
  for (const gpa of pagesOf(a)) if (Buffer.compare(a.slice(gpa, PAGE), b.slice(gpa, PAGE)) !== 0) differ++;
  return differ;
}

describe('live migration stream', () => {
  it('moves memory written during the passes and the device state; both sides equal at the hand-over', async () => {
    const [a, b] = await socketPair();
    const src = fakeSource(40);
    const dst = fakeTarget();
    const progress: MigrationProgress[] = [];
    const [out, inc] = await Promise.all([migrateOut(a, src, { maxDowntimeMs: 0, maxPasses: 5, onProgress: (p) => progress.push(p) }), migrateIn(b, dst)]);
    expect(samePages(src.memory, dst.memory)).toBe(0);
    expect(Buffer.from(dst.state!)).toEqual(Buffer.from(src.saved!));
    expect(dst.started).toBe(true);
    expect(src.events).toEqual(['pause']);
    // the first copy skipped the zero pages; the passes sent the pages written meanwhile
    // (a third of the pages hold data, and the guest wrote 40 more once the log started)
    const nonZero = Math.ceil(pagesOf(src.memory).length / 3);
    expect(progress[0]).toMatchObject({ pass: 0, stopped: false });
    expect(progress[0].pagesSent).toBeGreaterThanOrEqual(nonZero - 41);
    expect(progress[0].pagesSent).toBeLessThanOrEqual(nonZero + 40);
    expect(progress.filter((p) => !p.stopped).map((p) => p.pass)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(progress.at(-1)).toMatchObject({ stopped: true });
    expect(out.pass).toBe(5);
    expect(inc.zeroPages).toBeGreaterThan(0);
    expect(out.pagesSent).toBe(inc.pages + inc.zeroPages);
  });

  it('pauses at once when what is left fits in the downtime allowed', async () => {
    const [a, b] = await socketPair();
    const src = fakeSource(3);
    const dst = fakeTarget();
    const [out] = await Promise.all([migrateOut(a, src, { maxDowntimeMs: 60_000 }), migrateIn(b, dst)]);
    expect(out.pass).toBe(0);
    expect(samePages(src.memory, dst.memory)).toBe(0);
  });

  it('refuses a VM of another shape; the source goes on running', async () => {
    const [a, b] = await socketPair();
    const src = fakeSource(3);
    const dst = fakeTarget({ ...FINGERPRINT, memory: 16 << 20 });
    const [out, inc] = await Promise.allSettled([migrateOut(a, src), migrateIn(b, dst)]);
    expect(inc).toMatchObject({ status: 'rejected', reason: { message: expect.stringMatching(/^the source VM is not like this one: saved from a VM with 8388608 bytes of memory, this one has 16777216$/) } });
    expect(out).toMatchObject({ status: 'rejected', reason: { message: expect.stringMatching(/^the other side: the source VM is not like this one/) } });
    expect(src.events).toEqual([]);
    expect(dst.started).toBe(false);
  });

  it('a destination that refuses the device state leaves the source running', async () => {
    const [a, b] = await socketPair();
    const src = fakeSource(3);
    const dst = fakeTarget();
    dst.restoreState = () => {
      throw new Error('state: devices.pio:com1.ier: not an integer in [0, 255]');
    };
    const [out, inc] = await Promise.allSettled([migrateOut(a, src), migrateIn(b, dst)]);
    expect(inc.status).toBe('rejected');
    expect(out).toMatchObject({ status: 'rejected', reason: { message: 'the other side: state: devices.pio:com1.ier: not an integer in [0, 255]' } });
    expect(src.events).toEqual(['pause', 'resume']);
    expect(dst.started).toBe(false);
  });

  it('a connection cut after the pause resumes the source', async () => {
    const [a, b] = await socketPair();
    const src = fakeSource(3);
    const dst = fakeTarget();
    dst.restoreState = () => {
      b.destroy();
    };
    const [out] = await Promise.allSettled([migrateOut(a, src), migrateIn(b, dst)]);
    expect(out).toMatchObject({ status: 'rejected', reason: { name: 'MigrationError' } });
    expect(src.events).toEqual(['pause', 'resume']);
    expect(dst.started).toBe(false);
  });

  const frame = (m: unknown) => {
    const body = Buffer.from(encode(m));
    const head = Buffer.alloc(4);
    head.writeUInt32LE(body.length);
    return Buffer.concat([head, body]);
  };
  const page = new Uint8Array(PAGE).fill(0xab);

  it.each([
    ['pages outside RAM (the hole)', [frame({ t: 'pages', gpa: 8 << 20, data: page })], /^pages at 0x800000\+0x1000 are not this VM's RAM$/],
    ['pages across the end of a region', [frame({ t: 'pages', gpa: (6 << 20) - PAGE, data: new Uint8Array(2 * PAGE) })], /are not this VM's RAM/],
    ['an unaligned page', [frame({ t: 'pages', gpa: 100, data: page })], /are not this VM's RAM/],
    ['a page of the wrong length', [frame({ t: 'pages', gpa: 0, data: new Uint8Array(100) })], /not a tsvmm migration \(message\.data/],
    ['a zero run past RAM', [frame({ t: 'zero', gpa: 0, count: 1 << 20 })], /are not this VM's RAM/],
    ['an unknown message', [frame({ t: 'exec', cmd: 'rm -rf /' })], /a message of unknown type "exec"/],
    ['an extra field', [frame({ t: 'end', x: 1 })], /message\.x: unexpected field/],
    ['a frame too long', [Buffer.from([0xff, 0xff, 0xff, 0x7f])], new RegExp(`a frame of ${0x7fffffff} bytes`)],
    ['not msgpack', [Buffer.concat([Buffer.from([3, 0, 0, 0]), Buffer.from([0xc1, 0xc1, 0xc1])])], /msgpack/],
    ['no device state', [frame({ t: 'end' })], /ended without the device state/],
    ['the state twice', [frame({ t: 'state', data: new Uint8Array(4) }), frame({ t: 'state', data: new Uint8Array(4) })], /device state came twice/],
    ['a cut stream', [frame({ t: 'pages', gpa: 0, data: page }).subarray(0, 100)], /closed/],
  ])('refuses %s', async (_what, frames, pattern) => {
    const [a, b] = await socketPair();
    const dst = fakeTarget();
    a.on('error', () => undefined);
    a.write(frame({ t: 'hello', format: 'tsvmm-migration', version: 1, fingerprint: FINGERPRINT }));
    for (const f of frames as Buffer[]) a.write(f);
    if (/cut/.test(_what)) setTimeout(() => a.end(), 200);
    const r = await migrateIn(b, dst).then(
      () => 'accepted',
      (e: Error) => e.message,
    );
    a.destroy();
    expect(r).toMatch(pattern as RegExp);
    expect(r).not.toContain('\n');
    expect(dst.started).toBe(false);
  });

  it('refuses another format or version before taking any page', async () => {
    for (const [hello, pattern] of [
      [{ t: 'hello', format: 'qemu', version: 1, fingerprint: FINGERPRINT }, /not a tsvmm migration/],
      [{ t: 'hello', format: 'tsvmm-migration', version: 2, fingerprint: FINGERPRINT }, /version 2, this tsvmm takes version 1/],
      [{ t: 'pages', gpa: 0, data: page }, /expected hello from the other side, got pages/],
    ] as const) {
      const [a, b] = await socketPair();
      a.on('error', () => undefined);
      a.write(frame(hello));
      const dst = fakeTarget();
      const r = await migrateIn(b, dst).then(
        () => 'accepted',
        (e: Error) => e.message,
      );
      a.destroy();
      expect(r).toMatch(pattern);
    }
    expect(MAX_FRAME).toBeGreaterThan(RUN_BYTES);
  });
});

const RUN_BYTES = 256 * PAGE;
