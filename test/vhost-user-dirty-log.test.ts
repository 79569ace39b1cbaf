// Dirty logging over vhost-user (LOG_SHMFD + VHOST_F_LOG_ALL), what live migration of a VM whose
// network runs in our backend depends on: once the frontend switches logging on, every page the
// dataplane writes — received frames, their headers, used rings — has its bit set in the frontend's
// log, and pages it does not write stay clear. The frontend is a test one, so every page is known.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../src/native.js';
import { createDriver } from '../src/drivers/registry.js';
import { VhostUserBackend, F_LOG_ALL } from '../src/vhost-user/backend.js';
import { VhostUserServer } from '../src/vhost-user/server.js';
import { REQ, F_PROTOCOL_FEATURES, PROTOCOL_F } from '../src/vhost-user/protocol.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import { TestFrontend, u64 } from './helpers/vhost-user-frontend.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const PAGE = 4096;
const FRAME = 1500; // what the null driver generates: crosses a page in the buffers placed below

describe('vhost-user dirty logging', () => {
  let dir: string;
  let server: VhostUserServer;
  let running: Promise<void>;
  let fe: TestFrontend;
  let logFd: number;
  let log: Uint8Array;
  const logs: string[] = [];
  const features = (1n << 32n) | (1n << BigInt(F_PROTOCOL_FEATURES));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-vulog-'));
    const sock = join(dir, 'vu.sock');
    const driver = await createDriver('null', { size: String(FRAME) });
    server = new VhostUserServer(new VhostUserBackend(driver, { queuePairs: 1 }), { path: sock, log: (l) => logs.push(l) });
    running = server.run();
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(10);
    fe = new TestFrontend(sock);
    await fe.setup(features, 1n << BigInt(PROTOCOL_F.LOG_SHMFD));
    const logSize = Math.ceil((fe.base + fe.mem.size) / PAGE / 8);
    logFd = native.memfdCreate('test-log', 0);
    native.ftruncate(logFd, logSize);
    log = new Uint8Array(native.mmapShared(logFd, logSize).buffer);
  });
  afterAll(async () => {
    fe?.close();
    server.stop();
    await running;
    native.close(logFd);
    rmSync(dir, { recursive: true, force: true });
  });

  const page = (gpa: number) => Math.floor(gpa / PAGE);
  const dirty = (gpa: number) => (log[page(gpa) >> 3] >> (page(gpa) & 7)) & 1;
  const [RX, TX] = [0, 1];

  /** Post `n` receive buffers (2 KiB from 3 KiB into a fresh page: a frame crosses into the next one)
   * and `n` frames to transmit (each in its own page); wait for the backend to complete them all. */
  async function traffic(n: number): Promise<{ rxBufs: number[]; txBufs: number[] }> {
    const rxBufs: number[] = [];
    const txBufs: number[] = [];
    for (let i = 0; i < n; i++) {
      const rx = fe.mem.alloc(2 * PAGE, PAGE) + 3 * 1024;
      rxBufs.push(rx);
      fe.rings[RX].add([{ addr: rx, len: 2048, write: true }]);
      const tx = fe.mem.alloc(PAGE, PAGE);
      txBufs.push(tx);
      fe.mem.bytes(tx + NET_HDR_LEN, 60).fill(0xab);
      fe.rings[TX].add([{ addr: tx, len: NET_HDR_LEN + 60 }]);
    }
    fe.kick(RX);
    fe.kick(TX);
    await fe.usedReaches(RX, fe.rings[RX].availIdx);
    await fe.usedReaches(TX, fe.rings[TX].availIdx);
    return { rxBufs, txBufs };
  }

  let before: { rxBufs: number[]; txBufs: number[] };

  it('logs nothing before the frontend asks', async () => {
    before = await traffic(4);
    expect(fe.rings[RX].takeUsed().map((u) => u.len)).toEqual([FRAME + NET_HDR_LEN, FRAME + NET_HDR_LEN, FRAME + NET_HDR_LEN, FRAME + NET_HDR_LEN]);
    expect(log.every((b) => b === 0)).toBe(true);
  });

  it('with LOG_ALL and a log: every page written is logged, and only those', async () => {
    fe.send(REQ.SET_FEATURES, u64(features | (1n << BigInt(F_LOG_ALL))));
    fe.setAddr(RX, fe.rings[RX].cfg.used);
    fe.setAddr(TX, fe.rings[TX].cfg.used);
    const p = new Uint8Array(16);
    new DataView(p.buffer).setBigUint64(0, BigInt(log.length), true);
    const reply = await fe.call(REQ.SET_LOG_BASE, p, [logFd]);
    expect(reply.getBigUint64(0, true)).toBe(0n);

    const now = await traffic(4);
    const used = fe.rings[RX].takeUsed();
    expect(used).toHaveLength(4);
    fe.rings[TX].takeUsed();
    // received frames (header + 1500 bytes from 3 KiB into a page: both pages) and both used rings
    for (const rx of now.rxBufs) {
      expect(dirty(rx)).toBe(1);
      expect(dirty(rx + NET_HDR_LEN + FRAME - 1)).toBe(1);
    }
    expect(dirty(fe.rings[RX].cfg.used)).toBe(1);
    expect(dirty(fe.rings[TX].cfg.used)).toBe(1);
    // never written by the device: what it only reads, and buffers filled before logging began
    for (const tx of [...before.txBufs, ...now.txBufs]) expect(dirty(tx)).toBe(0);
    for (const rx of before.rxBufs) expect(dirty(rx)).toBe(0);
    expect(dirty(fe.rings[RX].cfg.desc)).toBe(0);
    expect(dirty(fe.rings[TX].cfg.desc)).toBe(0);
    expect(logs.filter((l) => /closed|fail/i.test(l))).toEqual([]);
  });

  it('logs used-ring writes at the log address the frontend gave (VHOST_VRING_F_LOG)', async () => {
    const alias = fe.base + fe.mem.size - PAGE; // a page the device never writes otherwise
    fe.setAddr(RX, alias);
    await fe.call(REQ.GET_QUEUE_NUM);
    // (cleared once the pair restarted: a thread stopping writes its ring flags, and logs that)
    log.fill(0);
    await traffic(1);
    fe.rings[RX].takeUsed();
    fe.rings[TX].takeUsed();
    expect(dirty(alias)).toBe(1);
    expect(dirty(fe.rings[RX].cfg.used)).toBe(0);
    expect(dirty(fe.rings[TX].cfg.used)).toBe(1);
  });

  it('stops logging when the frontend switches LOG_ALL off', async () => {
    fe.send(REQ.SET_FEATURES, u64(features));
    await fe.call(REQ.GET_QUEUE_NUM);
    log.fill(0);
    await traffic(2);
    expect(fe.rings[RX].takeUsed()).toHaveLength(2);
    expect(log.every((b) => b === 0)).toBe(true);
  });
});
