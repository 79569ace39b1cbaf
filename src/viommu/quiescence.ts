// Quiescence: waiting until no dataplane thread can still use a translation the vIOMMU table (or a
// vhost-user frontend's IOTLB kept in it) no longer has. Each reader thread publishes, in a word of its
// own, the table generation it works under, or 0 while it holds no translation (table.ts); a writer that
// changed the table waits until every such word is 0 or past its change.
import { writeSync } from 'node:fs';

/** The reader threads' words: thread t's is i32[at + t], for t < count(). */
export interface ReaderWords {
  i32: Int32Array;
  at: number;
  count(): number;
}

/**
 * Returns once every reader thread is idle or works under a generation at least `generation`: no
 * translation made before it can still be in use. Blocks (the request thread waits; a few µs when the
 * dataplane threads are busy) with no time limit: completing an UNMAP, or acknowledging a vhost-user
 * invalidation, while a thread may still write through the old mapping lets the guest reuse memory
 * the device then writes (Linux ignores an UNMAP's error status and frees the pages all the same). A
 * thread that is not scheduled for a while on a loaded host is slow, not gone; one that ends marks
 * itself idle. `onSlow` hears of a wait past `slowMs` twice: once it passes it (which thread, for how
 * long so far, `done` false), and when it ends (how long in all, `done` true).
 *
 * A thread that stays behind past `stuck.limitMs` is stuck (a plugin driver that never returns), not
 * slow: `stuck.onStuck` is told once per such thread, and the wait goes on until whoever owns that
 * thread has ended it and released its slot (table.ts: `releaseThreadSlot`): the guarantee holds, the harm is
 * bounded by the limit.
 */
export function quiescentSync(w: ReaderWords, generation: number, onSlow?: SlowWait, slowMs = 1000, stuck?: StuckPolicy): void {
  const start = Date.now();
  let slowThread = -1;
  for (let t = 0; t < w.count(); t++) {
    let told = false;
    for (;;) {
      const g = Atomics.load(w.i32, w.at + t);
      if (g === 0 || g >= generation) break;
      const ms = Date.now() - start;
      if (slowThread < 0 && onSlow && ms > slowMs) {
        slowThread = t;
        onSlow(t, ms, false);
      }
      if (stuck && !told && ms > stuck.limitMs) {
        told = true;
        stuck.onStuck(t, ms);
      }
      Atomics.wait(w.i32, w.at + t, g, 1);
    }
  }
  if (slowThread >= 0) onSlow!(slowThread, Date.now() - start, true);
}

/**
 * quiescentSync for a thread that must keep its event loop (the vhost-user control loop): waits
 * without blocking it once a first few milliseconds have passed, and gives up after `limitMs`.
 * Resolves with the threads still behind then (empty: quiescent); the caller ends those threads and
 * releases their slots before it acts as if they were idle.
 */
export async function quiescentAsync(w: ReaderWords, generation: number, limitMs: number, onSlow?: SlowWait, slowMs = 1000): Promise<number[]> {
  const start = Date.now();
  let slowThread = -1;
  const behind: number[] = [];
  for (let t = 0; t < w.count(); t++) {
    for (;;) {
      const g = Atomics.load(w.i32, w.at + t);
      if (g === 0 || g >= generation) break;
      const ms = Date.now() - start;
      if (ms > limitMs) {
        behind.push(t);
        break;
      }
      if (slowThread < 0 && onSlow && ms > slowMs) {
        slowThread = t;
        onSlow(t, ms, false);
      }
      // (a busy thread moves on within microseconds: that wait blocks; a longer one yields)
      if (ms < SYNC_WAIT_MS) Atomics.wait(w.i32, w.at + t, g, 1);
      else {
        const waiting = Atomics.waitAsync(w.i32, w.at + t, g, Math.min(50, limitMs - ms + 1));
        if (waiting.async) await waiting.value;
      }
    }
  }
  if (slowThread >= 0) onSlow!(slowThread, Date.now() - start, true);
  return behind;
}

/** Told of a quiescence wait past its `slowMs`: as it passes it (`done` false), and when it ends. */
export type SlowWait = (thread: number, ms: number, done: boolean) => void;

/** What quiescentSync does about a thread behind for longer than `limitMs`: tells `onStuck`, once. */
export interface StuckPolicy {
  limitMs: number;
  onStuck(thread: number, ms: number): void;
}

/** how long quiescentAsync blocks before it waits without blocking */
const SYNC_WAIT_MS = 20;

/**
 * How long a dataplane thread may keep an UNMAP, an IOTLB invalidation or a stop waiting before it is
 * taken for stuck and ended (TSVMM_STUCK_THREAD_MS). 10 s by default: a thread that is merely slow must
 * never be ended (its device breaks), and inside the emulated L1 of this project's tests waits of
 * about 1.3 s were seen for threads that were only not scheduled; a thread stuck in a plugin driver
 * holds the guest's or the frontend's request that long at most.
 */
export function stuckThreadMs(): number {
  const v = Number(process.env.TSVMM_STUCK_THREAD_MS);
  return Number.isFinite(v) && v > 0 ? v : 10_000;
}

/**
 * An `onSlow` for quiescentSync that says so on stderr (`who`: which device waited): that it waits, and
 * how long it waited in all (how long an UNMAP can take on a loaded host is worth knowing).
 */
export function sayWaitIsSlow(who: string): SlowWait {
  // (written to fd 2 at once: the request and dataplane threads never return to their event loop, where
  // a worker's process.stderr would send all but its first write; the rest came out when the VM ended)
  return (thread, ms, done) =>
    writeSync(
      2,
      done
        ? `tsvmm: ${who}: waited ${ms} ms in all for the dataplane threads to leave the old mappings\n`
        : `tsvmm: ${who}: waiting over ${ms} ms for dataplane thread ${thread} to leave the old mappings (a loaded host, or a stuck thread)\n`,
    );
}
