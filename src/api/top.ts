// tsvmm top: per-queue rates from the API socket's metrics, refreshed every interval (on a terminal the
// screen is redrawn; otherwise one block per interval, for logs and tests).
import { ctlSend } from './ctl.js';
import type { Metrics } from '../dataplane/metrics.js';

export const TOP_USAGE = 'usage: tsvmm top --api-socket PATH [--interval SECS] [--count N]';

function rate(now: number, before: number, secs: number): string {
  const r = Math.max(0, now - before) / secs;
  return r >= 1e6 ? `${(r / 1e6).toFixed(2)}M` : r >= 1e3 ? `${(r / 1e3).toFixed(1)}k` : r.toFixed(0);
}

/** One screen: a line per queue with its rates since the previous reading. */
export function topLines(now: Metrics, before: Metrics | undefined, secs: number): string[] {
  const lines = [`${'device'.padEnd(8)}${'queue'.padEnd(10)}${'frames/s'.padStart(10)}${'Mbit/s'.padStart(10)}${'drops/s'.padStart(9)}${'kicks/s'.padStart(9)}${'irqs/s'.padStart(9)}`];
  for (const d of now.devices) {
    for (const q of d.queues) {
      const p = before?.devices.find((x) => x.id === d.id)?.queues.find((x) => x.queue === q.queue) ?? q;
      const mbit = (Math.max(0, q.bytes - p.bytes) * 8) / secs / 1e6;
      lines.push(`${d.id.padEnd(8)}${q.queue.padEnd(10)}${rate(q.frames, p.frames, secs).padStart(10)}${mbit.toFixed(1).padStart(10)}${rate(q.drops, p.drops, secs).padStart(9)}${rate(q.kicks, p.kicks, secs).padStart(9)}${rate(q.interrupts, p.interrupts, secs).padStart(9)}`);
    }
  }
  return lines;
}

export async function top(argv: string[], out: (s: string) => void, err: (s: string) => void, tty: boolean): Promise<number> {
  let sock: string | undefined;
  let interval = 1;
  let count = Infinity;
  for (let i = 0; i < argv.length; i++) {
    const [k, v] = argv[i].includes('=') ? argv[i].split(/=(.*)/s, 2) : [argv[i], argv[i + 1]];
    if (!argv[i].includes('=') && ['--api-socket', '--interval', '--count'].includes(k)) i++;
    if (k === '--api-socket') sock = v;
    else if (k === '--interval' && Number(v) >= 0.1 && Number(v) <= 3600) interval = Number(v);
    else if (k === '--count' && /^\d+$/.test(v ?? '') && Number(v) > 0) count = Number(v);
    else {
      err(`tsvmm: top: bad argument "${argv[i]}"\n${TOP_USAGE}\n`);
      return 2;
    }
  }
  if (!sock) {
    err(`tsvmm: top: --api-socket PATH is required\n${TOP_USAGE}\n`);
    return 2;
  }
  let before: Metrics | undefined;
  let at = Date.now();
  for (let n = 0; n < count; n++) {
    let m: Metrics;
    try {
      const r = await ctlSend(sock, { method: 'GET', path: '/metrics' });
      if (r.status !== 200) throw new Error(`${r.status} ${r.body.trim()}`);
      m = JSON.parse(r.body) as Metrics;
    } catch (e) {
      err(`tsvmm: top: ${sock}: ${(e as Error).message.split('\n')[0]}\n`);
      return 1;
    }
    const now = Date.now();
    const lines = topLines(m, before, Math.max(0.001, (now - at) / 1000));
    out((tty ? '\x1b[H\x1b[2J' : '') + lines.join('\n') + '\n' + (tty ? '' : '\n'));
    before = m;
    at = now;
    if (n + 1 < count) await new Promise((r) => setTimeout(r, interval * 1000));
  }
  return 0;
}
