// The sending side of a live migration: iterative pre-copy. Every non-zero page goes first while the
// guest runs (the destination's memory starts zeroed; only pages the guest may have touched are read); then, pass after pass, the pages written
// meanwhile (KVM's dirty log and the dataplane's, through `takeDirty`), until what is left would go
// in less than the downtime allowed at the rate measured so far, or the passes run out. Then the VM
// pauses, the device state is taken (which stops the devices' threads, so nothing writes guest memory
// any more), the pages written up to then and the state go, and the source waits for the destination
// to say it restored them before telling it to go: up to that point any failure resumes the source,
// which keeps running as if nothing happened.
import type { Duplex } from 'node:stream';
import type { GuestMemory } from '../memory.js';
import type { Fingerprint } from '../state/document.js';
import { touchedRanges } from '../state/memory-file.js';
import { MIGRATION_FORMAT, MIGRATION_VERSION, PAGE, RUN_PAGES, MessageReader, sendMessage } from './wire.js';

export interface MigrationSource {
  readonly memory: GuestMemory;
  readonly fingerprint: Fingerprint;
  /** Start logging the guest's and the devices' writes (on once it resolves); takeDirty then returns those since the last call. */
  startDirtyLog(): void | Promise<void>;
  /** Guest-physical addresses of the pages written since the last call, ascending. */
  takeDirty(): number[];
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** The device state document (called while paused): once it returns, nothing writes guest memory. */
  saveState(): Uint8Array | Promise<Uint8Array>;
}

export interface MigrationProgress {
  /** 0: the first copy of all memory; then one per pass over the pages written meanwhile */
  pass: number;
  /** pages sent so far (zero pages included in later passes, as a `zero` run) */
  pagesSent: number;
  /** pages written since they were last sent, as of this pass */
  pagesLeft: number;
  /** bytes per second over the passes so far */
  bytesPerSec: number;
  /** true once the VM is paused for the last pages */
  stopped: boolean;
}

export interface MigrateOptions {
  /** the pause the guest may see for the last pages, in ms (default 300) */
  maxDowntimeMs?: number;
  /** passes over written pages before pausing regardless (default 30) */
  maxPasses?: number;
  onProgress?(p: MigrationProgress): void;
}

export interface MigrationSummary extends MigrationProgress {
  /** how long the VM was paused before the destination took it over, in ms */
  downtimeMs: number;
  totalMs: number;
}

export async function migrateOut(conn: Duplex, src: MigrationSource, opts: MigrateOptions = {}): Promise<MigrationSummary> {
  const maxDowntimeMs = opts.maxDowntimeMs ?? 300;
  const maxPasses = opts.maxPasses ?? 30;
  const reader = new MessageReader(conn);
  const t0 = performance.now();
  const p: MigrationProgress = { pass: 0, pagesSent: 0, pagesLeft: 0, bytesPerSec: 0, stopped: false };
  const sent = (pages: number) => {
    p.pagesSent += pages;
    p.bytesPerSec = (p.pagesSent * PAGE) / Math.max((performance.now() - t0) / 1000, 1e-3);
  };
  await sendMessage(conn, { t: 'hello', format: MIGRATION_FORMAT, version: MIGRATION_VERSION, fingerprint: src.fingerprint });
  await reader.expect('ready');

  await src.startDirtyLog();
  sent(await sendAll(conn, src.memory));
  let dirty = src.takeDirty();
  p.pagesLeft = dirty.length;
  opts.onProgress?.({ ...p });
  while (p.pass < maxPasses && (dirty.length * PAGE) / p.bytesPerSec > maxDowntimeMs / 1000) {
    p.pass++;
    sent(await sendPages(conn, src.memory, dirty));
    dirty = src.takeDirty();
    p.pagesLeft = dirty.length;
    opts.onProgress?.({ ...p });
  }

  await src.pause();
  const paused = performance.now();
  try {
    p.stopped = true;
    const state = await src.saveState();
    const last = [...new Set([...dirty, ...src.takeDirty()])].sort((a, b) => a - b);
    p.pagesLeft = last.length;
    opts.onProgress?.({ ...p });
    sent(await sendPages(conn, src.memory, last));
    p.pagesLeft = 0;
    await sendMessage(conn, { t: 'state', data: state });
    await sendMessage(conn, { t: 'end' });
    await reader.expect('restored');
  } catch (e) {
    // the destination does not have the VM: this side goes on
    await src.resume();
    throw e;
  }
  // from here the destination runs the guest; this side must not
  await sendMessage(conn, { t: 'go' });
  await new Promise<void>((r) => conn.end(r));
  const end = performance.now();
  return { ...p, downtimeMs: end - paused, totalMs: end - t0 };
}

const ZERO_PAGE = new Uint8Array(PAGE);

/** (Buffer.compare is one memcmp; a loop over the words of a view of shared memory is many times slower) */
function isZero(page: Uint8Array): boolean {
  return Buffer.compare(page, ZERO_PAGE) === 0;
}

/**
 * Every non-zero page of RAM (the destination's memory starts zeroed); returns pages sent. Only the
 * ranges the guest may have touched are read (state/memory-file.ts): reading a hole of the memfd would
 * allocate a page for it, and a large, mostly untouched guest would be made whole on this host.
 */
async function sendAll(conn: Duplex, mem: GuestMemory): Promise<number> {
  let n = 0;
  let run = -1;
  let count = 0;
  const flush = async () => {
    if (count) await sendMessage(conn, { t: 'pages', gpa: run, data: mem.slice(run, count * PAGE) });
    n += count;
    count = 0;
  };
  const touched = touchedRanges(mem);
  for (const r of mem.table.regions) {
    for (const [from, to] of touched) {
      const start = Math.max(from, r.offset);
      const end = Math.min(to, r.offset + r.size);
      for (let gpa = r.gpa + start - r.offset; gpa < r.gpa + end - r.offset; gpa += PAGE) {
        if (isZero(mem.slice(gpa, PAGE))) {
          await flush();
          continue;
        }
        if (count === 0) run = gpa;
        if (++count === RUN_PAGES) await flush();
      }
      await flush();
    }
  }
  return n;
}

/** `pages` (ascending guest-physical addresses) as runs of contiguous pages, zero runs as `zero`. */
async function sendPages(conn: Duplex, mem: GuestMemory, pages: number[]): Promise<number> {
  let start = -1;
  let count = 0;
  let zero = false;
  const flush = async () => {
    if (count === 0) return;
    if (zero) await sendMessage(conn, { t: 'zero', gpa: start, count });
    else await sendMessage(conn, { t: 'pages', gpa: start, data: mem.slice(start, count * PAGE) });
    count = 0;
  };
  for (const gpa of pages) {
    // (a page outside RAM in a log is a bug on this side: slice throws, and the migration ends)
    const z = isZero(mem.slice(gpa, PAGE));
    const contiguous = count > 0 && gpa === start + count * PAGE && z === zero && mem.table.translate(start, (count + 1) * PAGE) >= 0;
    if (!contiguous || count === RUN_PAGES) {
      await flush();
      start = gpa;
      zero = z;
    }
    count++;
  }
  await flush();
  return pages.length;
}
