// The null driver (benchmarks) through a real dataplane thread, behind the vhost-user front door with a
// test frontend: what the guest transmits is copied out and discarded; in loop mode it comes back
// byte for byte (the io-forwarding loopback benchmark depends on that); generated frames are whole.
import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDriver } from '../src/drivers/registry.js';
import { VhostUserBackend } from '../src/vhost-user/backend.js';
import { VhostUserServer } from '../src/vhost-user/server.js';
import { F_PROTOCOL_FEATURES } from '../src/vhost-user/protocol.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import { TestFrontend } from './helpers/vhost-user-frontend.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const [RX, TX] = [0, 1];

describe('null driver', () => {
  let cleanup: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanup.reverse()) await c();
    cleanup = [];
  });

  async function connect(options: Record<string, string>): Promise<{ fe: TestFrontend; backend: VhostUserBackend }> {
    const dir = mkdtempSync(join(tmpdir(), 'tsvmm-null-'));
    const sock = join(dir, 'vu.sock');
    const backend = new VhostUserBackend(await createDriver('null', options), { queuePairs: 1 });
    const server = new VhostUserServer(backend, { path: sock });
    const running = server.run();
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(10);
    const fe = new TestFrontend(sock);
    cleanup.push(async () => {
      fe.close();
      server.stop();
      await running;
      rmSync(dir, { recursive: true, force: true });
    });
    await fe.setup((1n << 32n) | (1n << BigInt(F_PROTOCOL_FEATURES)), 0n);
    return { fe, backend };
  }

  it('loop=1 gives back what was transmitted, byte for byte', async () => {
    const { fe } = await connect({ loop: '1' });
    const frames = [60, 1514, 777].map((n, k) => Uint8Array.from({ length: n }, (_, i) => (i * (k + 3) + 11) & 0xff));
    const rxBufs = frames.map(() => fe.mem.alloc(2048));
    for (const b of rxBufs) fe.rings[RX].add([{ addr: b, len: 2048, write: true }]);
    fe.kick(RX);
    for (const f of frames) {
      const tx = fe.mem.alloc(NET_HDR_LEN + f.length);
      fe.mem.bytes(tx + NET_HDR_LEN, f.length).set(f);
      // header and frame in separate descriptors, the frame split in two
      const half = f.length >> 1;
      fe.rings[TX].add([{ addr: tx, len: NET_HDR_LEN }, { addr: tx + NET_HDR_LEN, len: half }, { addr: tx + NET_HDR_LEN + half, len: f.length - half }]);
    }
    fe.kick(TX);
    await fe.usedReaches(TX, 3);
    await fe.usedReaches(RX, 3);
    const used = fe.rings[RX].takeUsed();
    expect(used.map((u) => u.len)).toEqual(frames.map((f) => f.length + NET_HDR_LEN));
    used.forEach((u, i) => expect(Buffer.from(fe.mem.bytes(rxBufs[u.id] + NET_HDR_LEN, frames[i].length))).toEqual(Buffer.from(frames[i])));
  });

  it('loop=1 with its held frames full leaves the rest in the guest\'s TX ring until receive drains them', async () => {
    const { fe, backend } = await connect({ loop: '1' });
    const send = (from: number, to: number) => {
      for (let id = from; id < to; id++) {
        const at = fe.mem.alloc(NET_HDR_LEN + 60);
        new DataView(fe.mem.buffer).setUint16(at - fe.mem.base + NET_HDR_LEN, id, true);
        fe.rings[TX].add([{ addr: at, len: NET_HDR_LEN + 60 }]);
      }
      fe.kick(TX);
    };
    // 512 frames fill what the driver holds (two rings' worth); 100 more must wait
    send(0, 256);
    await fe.usedReaches(TX, 256);
    send(256, 512);
    await fe.usedReaches(TX, 512);
    send(512, 612);
    await sleep(200);
    expect(fe.mem.dv.getUint16(fe.rings[TX].cfg.used - fe.mem.base + 2, true)).toBe(512);
    expect(backend.queueStats(0).tx.waits).toBeGreaterThan(0);
    expect(backend.queueStats(0).tx.drops).toBe(0);
    // receive buffers drain the held frames, and the waiting ones follow
    const rxBufs = Array.from({ length: 256 }, () => fe.mem.alloc(2048));
    for (const b of rxBufs) fe.rings[RX].add([{ addr: b, len: 2048, write: true }]);
    fe.kick(RX);
    await fe.usedReaches(RX, 256);
    await fe.usedReaches(TX, 612);
    const ids = fe.rings[RX].takeUsed().map((u) => new DataView(fe.mem.buffer).getUint16(rxBufs[u.id] - fe.mem.base + NET_HDR_LEN, true));
    expect(ids).toEqual(Array.from({ length: 256 }, (_, i) => i));
    expect(backend.queueStats(0).tx).toMatchObject({ packets: 612, drops: 0 });
  });

  it('generates whole frames of the size asked for, and counts what it discards', async () => {
    const { fe, backend } = await connect({ size: '1000' });
    const buf = fe.mem.alloc(2048);
    fe.rings[RX].add([{ addr: buf, len: 2048, write: true }]);
    fe.kick(RX);
    await fe.usedReaches(RX, 1);
    expect(fe.rings[RX].takeUsed()[0].len).toBe(1000 + NET_HDR_LEN);
    const f = fe.mem.bytes(buf + NET_HDR_LEN, 1000);
    expect([...f.subarray(0, 6)]).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    expect(f[999]).toBe(999 & 0xff);
    const tx = fe.mem.alloc(NET_HDR_LEN + 100);
    fe.rings[TX].add([{ addr: tx, len: NET_HDR_LEN + 100 }]);
    fe.kick(TX);
    await fe.usedReaches(TX, 1);
    for (let i = 0; i < 50 && backend.queueStats(0).tx.packets < 1; i++) await sleep(10);
    expect(backend.queueStats(0).tx).toMatchObject({ packets: 1, bytes: 100, drops: 0 });
  });
});
