// Where a VM that ended in a triple fault inside the emulated L1 was. AMD's KVM resets the vCPU before
// it reports the shutdown, so the VMM cannot say; L1 keeps KVM's trace of that exit (its rip) and of
// the exceptions KVM injected before it (scripts/l1/init.sh), tagged with the VMM's process id.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';

const TRACE = '/sys/kernel/tracing/trace';

/** '0x… is symbol+0x…' from the ELF's symbols, or '' (no such file, no symbol below it). */
export function symbolize(elf: string, rip: bigint): string {
  if (!existsSync(elf)) return '';
  let best: [bigint, string] | undefined;
  for (const line of execFileSync('nm', ['-n', elf], { encoding: 'utf8' }).split('\n')) {
    const m = /^([0-9a-f]+) [tTwW] (\S+)$/.exec(line);
    if (!m) continue;
    const at = BigInt(`0x${m[1]}`);
    if (at > rip) break;
    best = [at, m[2]];
  }
  return best ? `0x${rip.toString(16)} is ${best[1]}+0x${(rip - best[0]).toString(16)}` : '';
}

/**
 * For a process (`pid`) whose VM ended in a triple fault inside L1: KVM's trace lines of that process,
 * and where the shutdown's rip is in `elf`; '' outside L1 or without a trace.
 */
export function l1TripleReport(pid: number | undefined, elf?: string): string {
  if (!process.env.TSVMM_IN_L1 || pid === undefined || !existsSync(TRACE)) return '';
  const mine = new RegExp(`\\(\\s*${pid}\\)`);
  const lines = readFileSync(TRACE, 'utf8').split('\n').filter((l) => !l.startsWith('#') && mine.test(l)).slice(-20);
  if (!lines.length) return '';
  const rip = /reason shutdown rip (0x[0-9a-f]+)/.exec(lines.filter((l) => l.includes('shutdown')).at(-1) ?? '')?.[1];
  const where = rip && elf ? symbolize(elf, BigInt(rip)) : '';
  return `\nL1's KVM trace of this VM (the exceptions KVM injected, then the shutdown exit):\n${lines.map((l) => `  ${l.trim()}`).join('\n')}${where ? `\nshutdown at ${where}` : ''}\n`;
}
