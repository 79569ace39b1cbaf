// Metrics in Prometheus's text exposition format (version 0.0.4): one HELP and one TYPE line per
// family, then its samples; label values escaped (backslash, double quote, newline).
import type { Metrics, QueueMetrics } from '../dataplane/metrics.js';

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

type Labels = Record<string, string>;
interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'untyped';
  samples: Array<[Labels, number]>;
}

const QUEUE_FAMILIES: Array<[keyof Omit<QueueMetrics, 'queue' | 'dropsByCause'>, string]> = [
  ['frames', 'Frames (or requests) the queue carried.'],
  ['bytes', 'Bytes the queue carried.'],
  ['drops', 'Frames the queue dropped.'],
  ['kicks', 'Notifications the queue took from the guest or frontend.'],
  ['interrupts', 'Interrupts the queue sent.'],
  ['batches', 'Driver calls (batches of frames) the queue made.'],
  ['waits', 'Times the queue waited for its driver (its wire was full).'],
  ['rateLimited', 'Times the queue stopped because its rate limit had no tokens left.'],
  ['rateLimitedMs', 'Milliseconds the queue waited for its rate limit\'s tokens.'],
];

export function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function sample(name: string, labels: Labels, value: number): string {
  const l = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  const v = Number.isFinite(value) ? String(value) : Number.isNaN(value) ? 'NaN' : value > 0 ? '+Inf' : '-Inf';
  return `${name}${l.length ? `{${l.join(',')}}` : ''} ${v}`;
}

function migrationFamilies(g: NonNullable<Metrics['migration']>): Family[] {
  const l = { direction: g.direction };
  return [
    { name: 'tsvmm_migration_info', help: 'The VM\'s live migration: its direction, URL and state (listening, active, completed, failed).', type: 'gauge', samples: [[{ ...l, url: g.url, state: g.state }, 1]] },
    { name: 'tsvmm_migration_pass', help: 'The migration\'s pass over the pages written meanwhile (0: the first copy of all memory).', type: 'gauge', samples: [[l, g.pass]] },
    { name: 'tsvmm_migration_pages_total', help: 'Pages the migration sent (or received).', type: 'counter', samples: [[l, g.pages]] },
    { name: 'tsvmm_migration_pages_left', help: 'Pages written since they were sent, as of the last pass.', type: 'gauge', samples: [[l, g.pagesLeft]] },
    { name: 'tsvmm_migration_bytes_per_second', help: 'The migration\'s rate so far.', type: 'gauge', samples: [[l, g.bytesPerSec]] },
  ];
}

export function toPrometheus(m: Metrics): string {
  const families: Family[] = QUEUE_FAMILIES.map(([key, help]) => ({
    name: `tsvmm_queue_${key.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())}_total`,
    help,
    type: 'counter',
    samples: m.devices.flatMap((d) => d.queues.map((q): [Labels, number] => [{ device: d.id, kind: d.kind, queue: q.queue }, q[key]])),
  }));
  families.push({
    name: 'tsvmm_queue_drops_by_cause_total',
    help: 'Frames the queue dropped, by cause (filtered, tooBig, malformed, wire).',
    type: 'counter',
    samples: m.devices.flatMap((d) => d.queues.flatMap((q) => Object.entries(q.dropsByCause ?? {}).map(([cause, v]): [Labels, number] => [{ device: d.id, kind: d.kind, queue: q.queue, cause }, v]))),
  });
  families.push({ name: 'tsvmm_device_broken', help: 'Whether the device stopped serving its rings until the guest resets it.', type: 'gauge', samples: m.devices.filter((d) => d.broken !== undefined).map((d) => [{ device: d.id }, d.broken ? 1 : 0]) });
  families.push({ name: 'tsvmm_device_busy_poll_spins_total', help: 'Passes of the dataplane threads that looked at the rings without sleeping.', type: 'counter', samples: m.devices.filter((d) => d.busyPollSpins !== undefined).map((d) => [{ device: d.id }, d.busyPollSpins!]) });
  families.push({ name: 'tsvmm_device_stuck_threads_total', help: 'Dataplane threads ended because they did not stop in time.', type: 'counter', samples: m.devices.filter((d) => d.stuckThreads !== undefined).map((d) => [{ device: d.id }, d.stuckThreads!]) });
  families.push({ name: 'tsvmm_driver_counter', help: "A driver's own counter (name in the counter label).", type: 'untyped', samples: m.devices.flatMap((d) => Object.entries(d.driver ?? {}).map(([k, v]): [Labels, number] => [{ device: d.id, counter: k }, v])) });
  families.push({ name: 'tsvmm_iommu_counter', help: 'vIOMMU (or vhost-user IOTLB) counter (name in the counter label).', type: 'untyped', samples: Object.entries(m.iommu ?? {}).map(([k, v]) => [{ counter: k }, v]) });
  if (m.vhostUser) families.push({ name: 'tsvmm_vhost_user_errors', help: 'Problems the vhost-user backend kept (the latest ones).', type: 'gauge', samples: [[{}, m.vhostUser.errors.length]] });
  if (m.vhostUser?.connections !== undefined) families.push({ name: 'tsvmm_vhost_user_connections_total', help: 'Frontend connections served.', type: 'counter', samples: [[{}, m.vhostUser.connections]] });
  if (m.migration) families.push(...migrationFamilies(m.migration));
  const lines: string[] = [];
  for (const f of families) {
    if (f.samples.length === 0) continue;
    lines.push(`# HELP ${f.name} ${f.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${f.name} ${f.type}`);
    for (const [labels, v] of f.samples) lines.push(sample(f.name, labels, v));
  }
  return lines.join('\n') + '\n';
}
