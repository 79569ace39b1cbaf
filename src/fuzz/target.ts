// What a fuzz target is to the runner (src/fuzz/run.ts): a fast-check property over generated cases,
// counters of what went through it, and the resources it holds across cases.
import { readdirSync } from 'node:fs';
import type fc from 'fast-check';

export interface FuzzTarget {
  readonly name: string;
  /** one line: what a case is */
  readonly about: string;
  /** share of a long run's time (the targets differ in cost per case) */
  readonly weight: number;
  /** what went through the code under test (cases, rings, messages...), summed over the run */
  readonly counts: Record<string, number>;
  /** a property whose failure is a finding (an exception escaping, or an invariant's message) */
  property(): fc.IRawProperty<any>;
  /** release what the target keeps between cases */
  close?(): void;
}

/** An invariant did not hold: the message says which and with what values. */
export function check(ok: unknown, what: string | (() => string)): asserts ok {
  if (!ok) throw new Error(typeof what === 'string' ? what : what());
}

/** Descriptors open in this process (to see a target leak them across cases). */
export function openFds(): number {
  // (readdir of /proc/self/fd counts the directory's own descriptor too: constant, harmless)
  return readdirSync('/proc/self/fd').length;
}

/**
 * Descriptors open now, looked at again for up to 10 s while more than `before`: a stopped worker
 * thread's own descriptors (its event loop's) close after its exit event, later still on a loaded host.
 */
export async function openFdsSettled(before: number): Promise<number> {
  let n = openFds();
  for (let i = 0; i < 1000 && n > before; i++) {
    await new Promise((r) => setTimeout(r, 10));
    n = openFds();
  }
  return n;
}

/** The parts, one after another, in one new array. */
export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
