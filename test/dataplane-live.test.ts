// The dataplane seen from the library, in-process: counters readable while traffic runs, pause and
// resume of the threads, with a driver plugin (no tap, no namespace needed).
import { describe, it, expect } from 'vitest';
import { join } from 'node:path';
import { Vm } from '../src/index.js';
import { ROOT, TEST_GUEST, guestResult, haveKvm } from './helpers/env.js';

const NULL_DRIVER = join(ROOT, 'examples', 'drivers', 'null-driver.mjs');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// Waits are long (software-emulated L1 runs the guest at a crawl); they end as soon as the value moves.
async function valueWithin<T>(get: () => T, done: (v: T) => boolean, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  let v = get();
  while (!done(v) && Date.now() < end) await sleep(10), (v = get());
  return v;
}

describe.runIf(haveKvm())('dataplane, live', () => {
  it('exposes per-queue counters while traffic runs, and pauses and resumes its thread', async () => {
    const count = 3_000_000;
    const vm = new Vm({ kernel: TEST_GUEST, memory: '64M', cmdline: `mode=net-tx count=${count} size=60`, net: [{ driver: NULL_DRIVER }] });
    let out = '';
    vm.serial.on('data', (d: Buffer) => (out += d.toString()));
    await vm.start();
    const net = vm.netDevices[0].net;
    const tx = () => net.queueStats(0).tx.packets;
    while (!out.includes('NET-START')) await sleep(10);
    // counters move while the guest is still sending
    const first = await valueWithin(tx, (n) => n > 0);
    const second = await valueWithin(tx, (n) => n > first);
    expect(second).toBeGreaterThan(first);
    expect(out).not.toContain('TSVMM-RESULT');

    await net.pause();
    const frozen = tx();
    await sleep(200);
    expect(tx()).toBe(frozen);
    expect(out).not.toContain('TSVMM-RESULT');

    net.resume();
    const exit = await vm.exited;
    expect(exit.status).toBe(0);
    expect(guestResult(out)).toMatchObject({ sent: count, ok: true });
    const s = net.queueStats(0).tx;
    expect(s.packets).toBe(count);
    expect(s.bytes).toBe(count * 60);
    expect(s.meanBatch).toBeGreaterThan(1); // batches of up to 64 per driver call
    expect(s.meanBatch).toBeLessThanOrEqual(64);
  });
});
