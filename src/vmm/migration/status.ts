// What a VM's migration, out or in, is doing or did: kept by the Vm for the API's metrics, and said
// once per change (a pass, the hand-over, a failure) to whoever listens (the CLI's stderr lines).
import type { MigrationProgress, MigrationSummary } from './source.js';
import type { IncomingSummary } from './destination.js';
import type { MigrationMetrics } from '../../dataplane/metrics.js';

/** (the API's metrics show it as it is) */
export type MigrationState = MigrationMetrics;

export class MigrationStatus {
  readonly state: MigrationState;

  constructor(
    direction: 'out' | 'in',
    url: string,
    private readonly changed: (s: MigrationState) => void,
  ) {
    this.state = { direction, url, state: direction === 'out' ? 'active' : 'listening', pass: 0, pages: 0, pagesLeft: 0, bytesPerSec: 0, stopped: false };
  }

  private set(s: Partial<MigrationState>): void {
    Object.assign(this.state, s);
    this.changed({ ...this.state });
  }

  listening(): void {
    this.set({ state: 'listening' });
  }

  progress(p: MigrationProgress): void {
    this.set({ state: 'active', pass: p.pass, pages: p.pagesSent, pagesLeft: p.pagesLeft, bytesPerSec: p.bytesPerSec, stopped: p.stopped });
  }

  completed(s: MigrationSummary): void {
    this.set({ state: 'completed', pass: s.pass, pages: s.pagesSent, pagesLeft: 0, bytesPerSec: s.bytesPerSec, downtimeMs: Math.round(s.downtimeMs), totalMs: Math.round(s.totalMs) });
  }

  received(s: IncomingSummary): void {
    this.set({ state: 'completed', pages: s.pages + s.zeroPages, pagesLeft: 0 });
  }

  failed(e: Error): void {
    this.set({ state: 'failed', error: e.message.split('\n')[0] });
  }
}

/** One line on a migration's state, as the CLI prints it. */
export function describeMigration(s: MigrationState): string {
  const where = s.direction === 'out' ? `migration to ${s.url}` : `incoming migration on ${s.url}`;
  const rate = `${(s.bytesPerSec / (1 << 20)).toFixed(1)} MiB/s`;
  switch (s.state) {
    case 'listening':
      return `waiting for a migration on ${s.url}`;
    case 'active':
      return s.stopped ? `${where}: paused for the last ${s.pagesLeft} pages and the device state` : `${where}: pass ${s.pass}, ${s.pages} pages sent, ${s.pagesLeft} pages left, ${rate}`;
    case 'completed':
      return s.direction === 'out'
        ? `${where}: handed over after ${s.pass} passes, ${s.pages} pages, ${s.totalMs} ms (the guest was held ${s.downtimeMs} ms)`
        : `${where}: ${s.pages} pages received; the guest runs here`;
    case 'failed':
      return `${where} failed: ${s.error}${s.direction === 'out' ? '; the VM runs on here' : ''}`;
  }
}
