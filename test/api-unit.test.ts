// The API's pure parts: Firecracker's rate limiter JSON mapped onto NetRateLimits and refused when bad,
// the Prometheus exposition (HELP/TYPE per family, escaped labels), and tsvmm ctl's command parsing.
import { describe, it, expect } from 'vitest';
import { rateLimitsFromJson } from '../src/api/rate-limit-json.js';
import { toPrometheus, escapeLabel } from '../src/api/prometheus.js';
import { ctlRequest, CtlUsageError } from '../src/api/ctl.js';
import type { Metrics } from '../src/dataplane/metrics.js';

describe('rate limiter JSON (Firecracker shape)', () => {
  it('maps both limiters and both buckets onto NetRateLimits', () => {
    expect(
      rateLimitsFromJson({
        rx_rate_limiter: { bandwidth: { size: 1_000_000, one_time_burst: 500_000, refill_time: 1000 }, ops: { size: 1000, refill_time: 100 } },
        tx_rate_limiter: { ops: { size: 50, refill_time: 10 } },
      }),
    ).toEqual({
      rx: { bandwidth: { size: 1_000_000, oneTimeBurst: 500_000, refillTimeMs: 1000 }, ops: { size: 1000, oneTimeBurst: 0, refillTimeMs: 100 } },
      tx: { ops: { size: 50, oneTimeBurst: 0, refillTimeMs: 10 } },
    });
  });

  it('reads a bucket of size 0 or refill_time 0, and null, as no limit; {} removes a direction\'s limits', () => {
    expect(rateLimitsFromJson({ rx_rate_limiter: { bandwidth: { size: 0, refill_time: 100 }, ops: { size: 10, refill_time: 0 } } })).toEqual({ rx: { bandwidth: null, ops: null } });
    expect(rateLimitsFromJson({ tx_rate_limiter: { bandwidth: null } })).toEqual({ tx: { bandwidth: null } });
    expect(rateLimitsFromJson({ tx_rate_limiter: {} })).toEqual({ tx: {} });
  });

  it('is undefined when the request has no limiter', () => {
    expect(rateLimitsFromJson({ link: 'up' })).toBeUndefined();
  });

  it.each([
    [{ rx_rate_limiter: 5 }, 'rx_rate_limiter: expected an object'],
    [{ rx_rate_limiter: [] }, 'rx_rate_limiter: expected an object'],
    [{ rx_rate_limiter: { bandwith: {} } }, 'rx_rate_limiter: unknown field "bandwith" (bandwidth, ops)'],
    [{ rx_rate_limiter: { bandwidth: { size: 1, refill_time: 1, extra: 1 } } }, 'rx_rate_limiter.bandwidth: unknown field "extra"'],
    [{ rx_rate_limiter: { bandwidth: { size: 100 } } }, 'rx_rate_limiter.bandwidth: size and refill_time are required'],
    [{ rx_rate_limiter: { bandwidth: { size: -1, refill_time: 100 } } }, 'rx_rate_limiter.bandwidth.size: expected an integer from 1 to'],
    [{ tx_rate_limiter: { ops: { size: 1.5, refill_time: 100 } } }, 'tx_rate_limiter.ops.size: expected an integer'],
    [{ tx_rate_limiter: { ops: { size: '100', refill_time: 100 } } }, 'tx_rate_limiter.ops.size: expected an integer'],
    [{ tx_rate_limiter: { ops: { size: 2 ** 41, refill_time: 100 } } }, 'tx_rate_limiter.ops.size: expected an integer from 1 to 1099511627776'],
    [{ tx_rate_limiter: { ops: { size: 10, refill_time: -5 } } }, 'tx_rate_limiter.ops.refill_time: expected an integer from 1 to 86400000'],
    [{ tx_rate_limiter: { ops: { size: 10, refill_time: 1e12 } } }, 'tx_rate_limiter.ops.refill_time: expected an integer'],
    [{ tx_rate_limiter: { ops: { size: 10, refill_time: 10, one_time_burst: -1 } } }, 'tx_rate_limiter.ops.one_time_burst: expected an integer from 0'],
  ])('refuses %j: %s', (body, msg) => {
    expect(() => rateLimitsFromJson(body as Record<string, unknown>)).toThrow(msg);
  });
});

describe('Prometheus exposition', () => {
  const m: Metrics = {
    devices: [
      { id: '0', kind: 'net', queues: [{ queue: 'rx0', frames: 5, bytes: 300, drops: 1, dropsByCause: { filtered: 1, tooBig: 0, malformed: 0, wire: 0 }, kicks: 2, interrupts: 3, batches: 4, waits: 0, rateLimited: 6, rateLimitedMs: 70 }], broken: null, stuckThreads: 0, driver: { 'we"ird\\name\n': 7 } },
      { id: 'rng', kind: 'rng', queues: [{ queue: 'requests', frames: 9, bytes: 900, drops: 0, dropsByCause: { filtered: 0, tooBig: 0, malformed: 0, wire: 0 }, kicks: 9, interrupts: 9, batches: 9, waits: 0, rateLimited: 0, rateLimitedMs: 0 }] },
    ],
    iommu: { faults: 2 },
  };
  const text = toPrometheus(m);
  const lines = text.trimEnd().split('\n');

  it('gives every family one HELP and one TYPE line, before its samples', () => {
    const names = new Set(lines.filter((l) => !l.startsWith('#')).map((l) => /^([a-z_]+)[{ ]/.exec(l)![1]));
    for (const n of names) {
      const help = lines.findIndex((l) => l.startsWith(`# HELP ${n} `));
      const type = lines.findIndex((l) => l.startsWith(`# TYPE ${n} `));
      const first = lines.findIndex((l) => l.startsWith(`${n}{`) || l.startsWith(`${n} `));
      expect(lines.filter((l) => l.startsWith(`# HELP ${n} `))).toHaveLength(1);
      expect(lines.filter((l) => l.startsWith(`# TYPE ${n} `))).toHaveLength(1);
      expect(help).toBeLessThan(type);
      expect(type).toBe(first - 1);
    }
    expect(text.endsWith('\n')).toBe(true);
  });

  it('has the counters with their labels and types', () => {
    expect(lines).toContain('# TYPE tsvmm_queue_frames_total counter');
    expect(lines).toContain('tsvmm_queue_frames_total{device="0",kind="net",queue="rx0"} 5');
    expect(lines).toContain('tsvmm_queue_bytes_total{device="rng",kind="rng",queue="requests"} 900');
    expect(lines).toContain('tsvmm_device_broken{device="0"} 0');
    expect(lines).toContain('tsvmm_queue_rate_limited_total{device="0",kind="net",queue="rx0"} 6');
    expect(lines).toContain('tsvmm_queue_rate_limited_ms_total{device="0",kind="net",queue="rx0"} 70');
    expect(lines).toContain('tsvmm_iommu_counter{counter="faults"} 2');
    expect(lines).toContain('# TYPE tsvmm_queue_drops_by_cause_total counter');
    expect(lines).toContain('tsvmm_queue_drops_by_cause_total{device="0",kind="net",queue="rx0",cause="filtered"} 1');
    expect(lines).toContain('tsvmm_queue_drops_by_cause_total{device="0",kind="net",queue="rx0",cause="wire"} 0');
    // every sample line: name, optional labels, a number
    for (const l of lines.filter((x) => !x.startsWith('#'))) expect(l).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\\\|\\"|\\n)*",?)*\})? -?[0-9.e+]+$/);
  });

  it('escapes backslash, double quote and newline in label values', () => {
    expect(escapeLabel('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    expect(lines).toContain('tsvmm_driver_counter{device="0",counter="we\\"ird\\\\name\\n"} 7');
  });
});

describe('tsvmm ctl commands', () => {
  it.each([
    [['get', 'vm'], { method: 'GET', path: '/vm' }],
    [['get', 'metrics'], { method: 'GET', path: '/metrics' }],
    [['get', 'metrics', 'prometheus'], { method: 'GET', path: '/metrics?format=prometheus' }],
    [['pause'], { method: 'PUT', path: '/vm/pause' }],
    [['resume'], { method: 'PUT', path: '/vm/resume' }],
    [['shutdown'], { method: 'PUT', path: '/vm/shutdown' }],
    [['shutdown', 'deadline-ms=5000'], { method: 'PUT', path: '/vm/shutdown', body: { deadline_ms: 5000 } }],
    [['net', '0', 'link', 'down'], { method: 'PATCH', path: '/net/0', body: { link: 'down' } }],
    [
      ['net', '1', 'limit', 'rx-bytes=1000000', 'tx-ops=off', 'rx-ops=500'],
      { method: 'PATCH', path: '/net/1', body: { rx_rate_limiter: { bandwidth: { size: 1000000, refill_time: 1000 }, ops: { size: 500, refill_time: 1000 } }, tx_rate_limiter: { ops: null } } },
    ],
  ])('%j', (args, want) => {
    expect(ctlRequest(args)).toEqual(want);
  });

  it.each([[[]], [['get']], [['get', 'nothing']], [['pause', 'now']], [['shutdown', 'now']], [['shutdown', 'deadline-ms=-1']], [['net']], [['net', '0', 'link', 'sideways']], [['net', '0', 'limit']], [['net', '0', 'limit', 'rx-bytes=-5']], [['net', '0', 'limit', 'up-bytes=5']], [['net', '../x', 'link', 'up']], [['frobnicate']]])('refuses %j', (args) => {
    expect(() => ctlRequest(args)).toThrow(CtlUsageError);
  });
});
