// A stock Debian Linux guest's own virtio_net driver over tsvmm's device, a tap in a network namespace
// and the host's stack: the demo's Linux step (scripts/demo-linux.sh) as a test, once on the packed ring
// Linux takes when it is offered and once on the split ring. Each way moves a fixed amount with iperf3,
// which must complete: a receive path that stops (an interrupt never sent, a kick never asked for) fails
// within iperf3's 20 s receive timeout rather than at tsvmm's time limit. Needs the images of
// `npm run guest:linux` and the host's iperf3 (scripts/setup-host.sh).
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, haveKvm } from './helpers/env.js';

/** what iperf3 moves each way (-n) */
const BYTES = '256M';
/** VIRTIO_F_RING_PACKED */
const RING_PACKED = 34;

function demo(netOpts: string): { status: number | null; out: string } {
  const r = spawnSync('bash', [join(ROOT, 'scripts', 'demo-linux.sh')], {
    cwd: ROOT,
    // (a run takes under a minute in the emulated L1; a guest that hangs there is stopped long before)
    env: { ...process.env, DEMO_IPERF_BYTES: BYTES, DEMO_NET_OPTS: netOpts, DEMO_TIMEOUT: '240' },
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { status: r.status, out: `${r.stdout}\n${r.stderr}` };
}

function expectAllSteps(r: { status: number | null; out: string }, packed: boolean): void {
  const tail = `\nlast lines:\n${r.out.split('\n').slice(-30).join('\n')}`;
  // (the features the guest's driver took, bit 0 first, as Linux lists them in sysfs)
  const features = /guest: virtio features ([01]+)/.exec(r.out)?.[1];
  expect(features, `no feature line${tail}`).toBeDefined();
  expect(features![RING_PACKED], `packed ring bit${tail}`).toBe(packed ? '1' : '0');
  for (const step of ['PING', 'IPERF-TX', 'IPERF-RX']) expect(r.out, `${step}${tail}`).toMatch(new RegExp(`^DEMO-${step} 0$`, 'm'));
  expect(r.status, tail).toBe(0);
}

describe.runIf(haveKvm())('a stock Linux guest moves traffic both ways through tsvmm and a tap', () => {
  it(`on the packed ring (${BYTES} each way with iperf3, ping first)`, { timeout: 320_000 }, () => {
    expectAllSteps(demo(''), true);
  });

  it(`on the split ring (packed=off; ${BYTES} each way)`, { timeout: 320_000 }, () => {
    expectAllSteps(demo(',packed=off'), false);
  });
});
