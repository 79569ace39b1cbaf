// A dataplane thread that never comes back (stuck in a plugin driver) must not hold the vhost-user
// control loop, or a guest's UNMAP, for good: past TSVMM_STUCK_THREAD_MS the thread is ended, the
// request completes once it has exited (it then holds no translation), one line says so, the counters
// count it, and the backend serves the next frontend. The CLI backend runs as a child process (a
// backend that blocks must not block the test), with a plugin driver whose transmit never returns.
import { describe, it, expect, afterEach } from 'vitest';
import { existsSync, rmSync, readdirSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { native, EFD_NONBLOCK } from '../src/native.js';
import { VirtioIommu, S, IOMMU_F } from '../src/viommu/device.js';
import { VirtioNet } from '../src/virtio-net/device.js';
import type { GuestMemory } from '../src/vmm/memory.js';
import type { DriverModule } from '../src/drivers/api.js';
import { TestDriver, TestMemory } from './helpers/virtq-driver.js';
import { iommuRequests } from './helpers/iommu-requests.js';
import { CliBackend } from './helpers/vhost-user-cli.js';
import { TestFrontend } from './helpers/vhost-user-frontend.js';
import { REQ, F_PROTOCOL_FEATURES, PROTOCOL_F, FLAG_VERSION, FLAG_NEED_REPLY, IOTLB } from '../src/vhost-user/protocol.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import { IommuTable, MAP_READ, MAP_WRITE } from '../src/viommu/table.js';

const STUCK_DRIVER = fileURLToPath(new URL('./helpers/stuck-driver.mjs', import.meta.url));
const LIMIT_MS = 400;
const TX = 1;
/** IOVA = guest-physical + this */
const IOVA_OFFSET = 0x5000000000;
const ACCESS_PLATFORM = 1n << 33n;
const FEATURES = (1n << 32n) | (1n << BigInt(F_PROTOCOL_FEATURES));
const REPLY_ACK = 1n << BigInt(PROTOCOL_F.REPLY_ACK);

describe('a dataplane thread stuck in its driver (vhost-user)', () => {
  let backend: CliBackend | undefined;
  let fe: TestFrontend | undefined;
  afterEach(async () => {
    fe?.close();
    fe = undefined;
    await backend?.stop();
    backend = undefined;
  });

  /** An IOTLB message with REPLY_ACK; resolves with the reply's status. */
  async function iotlb(f: TestFrontend, type: number, gpa: number, size: number): Promise<number> {
    const p = new Uint8Array(32);
    const v = new DataView(p.buffer);
    v.setBigUint64(0, BigInt(gpa + IOVA_OFFSET), true);
    v.setBigUint64(8, BigInt(size), true);
    v.setBigUint64(16, BigInt(type === IOTLB.UPDATE ? f.uaddr(gpa) : 0), true);
    v.setUint8(24, MAP_READ | MAP_WRITE);
    v.setUint8(25, type);
    return Number((await f.call(REQ.IOTLB_MSG, p, [], FLAG_VERSION | FLAG_NEED_REPLY)).getBigUint64(0, true));
  }

  /** Queue one frame on TX and wait until the driver is stuck sending it. */
  async function getStuck(f: TestFrontend, b: CliBackend, iova = 0): Promise<void> {
    const at = f.mem.alloc(NET_HDR_LEN + 60);
    f.rings[TX].add([{ addr: at + iova, len: NET_HDR_LEN + 60 }]);
    f.kick(TX);
    await b.line(/stuck-driver: transmit blocks/);
  }

  function stats(b: CliBackend): { stuckThreads: number } {
    const line = b.lines.find((l) => l.startsWith('TSVMM-STATS '));
    return JSON.parse(line!.slice('TSVMM-STATS '.length)).vhostUser;
  }

  it('answers an IOTLB invalidation after the limit, ends the thread and that connection, and serves the next frontend', async () => {
    backend = await CliBackend.start(STUCK_DRIVER, { args: ['--stats'], env: { TSVMM_STUCK_THREAD_MS: String(LIMIT_MS) } });
    fe = new TestFrontend(backend.sock);
    fe.iovaOffset = IOVA_OFFSET;
    await fe.setup(FEATURES | ACCESS_PLATFORM, REPLY_ACK);
    // the whole memory in the IOTLB: the rings translate and the pair starts
    expect(await iotlb(fe, IOTLB.UPDATE, fe.base, fe.mem.size)).toBe(0);
    await getStuck(fe, backend, IOVA_OFFSET);
    const t0 = Date.now();
    expect(await iotlb(fe, IOTLB.INVALIDATE, fe.base, fe.mem.size)).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(LIMIT_MS);
    await backend.connectionsEnded(1);
    const said = backend.reports().filter((l) => !l.startsWith('stuck-driver'));
    expect(said).toHaveLength(1);
    expect(said[0]).toMatch(/pair 0: its dataplane thread kept an IOTLB invalidation waiting over 400 ms .*ended/);
    fe.close();
    // the next frontend is served
    fe = new TestFrontend(backend.sock);
    await fe.setup(FEATURES, REPLY_ACK);
    expect((await fe.call(REQ.GET_FEATURES)).getBigUint64(0, true) & ACCESS_PLATFORM).toBe(ACCESS_PLATFORM);
    fe.close();
    fe = undefined;
    expect(await backend.stop()).toBe(143);
    expect(stats(backend).stuckThreads).toBe(1);
  }, 30_000);

  it('stops a ring whose thread is stuck (GET_VRING_BASE) after the limit, and says so', async () => {
    backend = await CliBackend.start(STUCK_DRIVER, { args: ['--stats'], env: { TSVMM_STUCK_THREAD_MS: String(LIMIT_MS) } });
    fe = new TestFrontend(backend.sock);
    await fe.setup(FEATURES, REPLY_ACK);
    await getStuck(fe, backend);
    const t0 = Date.now();
    const ring = new Uint8Array(8); // vhost_vring_state: index, num
    ring[0] = TX;
    const base = await fe.call(REQ.GET_VRING_BASE, ring);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(LIMIT_MS);
    // the chain the thread never finished is not used: the ring stands before it
    expect(base.getUint32(4, true)).toBe(0);
    await backend.line(/pair 0: its dataplane thread did not stop within 400 ms .*ended/);
    fe.close();
    fe = undefined;
    expect(await backend.stop()).toBe(143);
    expect(stats(backend).stuckThreads).toBe(1);
  }, 30_000);
});

describe('a dataplane thread stuck while the vIOMMU unmaps (the table)', () => {
  it('tells whoever owns the thread after the limit, and completes once that thread has exited', async () => {
    const t = new IommuTable();
    t.setEndpoint(1, 1);
    const iova = 0x100000;
    t.map(1, iova, iova + 0xfff, 0x5000, MAP_READ | MAP_WRITE);
    // the reader enters and then never returns; the unmapping side (the request thread's role) runs
    // in a thread of its own, as it does in the VMM, and asks us (its owner's role) to end the reader
    const slot = t.newThreadSlot();
    const reader = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
       import(workerData.table).then(({ IommuReader }) => {
         const r = new IommuReader(workerData.buffer, 1, workerData.slot);
         r.enter();
         r.translate(workerData.iova, 64, 1);
         parentPort.postMessage('holding');
         Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
       });`,
      { eval: true, workerData: { buffer: t.buffer, slot, iova, table: new URL('../dist/viommu/table.js', import.meta.url).href } },
    );
    await new Promise((r) => reader.once('message', r));
    t.unmap(1, iova, iova + 0xfff);
    const unmapper = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
       import(workerData.table).then(({ IommuTable }) => {
         const t = new IommuTable(workerData.buffer);
         const start = Date.now();
         t.quiescentSync(t.generation, undefined, 1000, { limitMs: workerData.limit, onStuck: (thread, ms) => parentPort.postMessage({ stuck: thread, ms }) });
         parentPort.postMessage({ done: Date.now() - start });
       });`,
      { eval: true, workerData: { buffer: t.buffer, limit: LIMIT_MS, table: new URL('../dist/viommu/table.js', import.meta.url).href } },
    );
    const said: unknown[] = [];
    let readerGone = false;
    const done = new Promise<number>((resolve) =>
      unmapper.on('message', async (m: { stuck?: number; done?: number }) => {
        said.push(m);
        if (m.stuck !== undefined) {
          // the owner's part (VirtioNet.endStuckThread through Dataplane.terminate): end, wait, release
          await reader.terminate();
          readerGone = true;
          const { releaseThreadSlot } = await import('../src/viommu/table.js');
          releaseThreadSlot(t.buffer, m.stuck);
        }
        if (m.done !== undefined) resolve(m.done);
      }),
    );
    const waited = await done;
    await unmapper.terminate();
    // complete only once the reader was gone, and it was taken for stuck only after the limit (a lower
    // bound: a slow host makes it longer, never shorter)
    expect(readerGone).toBe(true);
    expect(said[0]).toMatchObject({ stuck: slot });
    expect(waited).toBeGreaterThanOrEqual(LIMIT_MS);
  }, 30_000);
});

describe('a dataplane thread stuck while the guest unmaps (a net device behind the virtio-iommu)', () => {
  it('completes the UNMAP after the limit, once the device\'s threads have been ended; the device needs a reset', async () => {
    process.env.TSVMM_STUCK_THREAD_MS = String(LIMIT_MS);
    const NET = 0x18;
    const SIZE = 1 << 20;
    const mem = new TestMemory(SIZE, 0);
    const memory = { buffer: mem.buffer, table: mem.view.table, view: new DataView(mem.buffer) } as unknown as GuestMemory;
    const kicks = [0, 1, 2].map(() => native.eventfd(0, EFD_NONBLOCK));
    const flag = join(tmpdir(), `tsvmm-stuck-${process.pid}`);
    // the VMM's wiring (Vm): the request thread's "stuck" goes to the device owning that thread
    const iommu = new VirtioIommu(memory, { endpoints: [NET], thread: true });
    const driver = ((await import(STUCK_DRIVER)) as DriverModule).create({ flag });
    const net = new VirtioNet(memory, { driver, mac: new Uint8Array([2, 0, 0, 0, 0, 9]), queuePairs: 1, iommu: { table: iommu.table, endpoint: NET } });
    iommu.onStuckThread = (slot, ms) => net.endStuckThread(slot, ms);
    try {
      const rq = new TestDriver(mem, 64);
      const eq = new TestDriver(mem, 16);
      const features = (1n << 32n) | (1n << BigInt(IOMMU_F.MAP_UNMAP));
      const none = () => {};
      await iommu.activate({ features, queues: [{ index: 0, ...rq.cfg, kickFd: kicks[0], callFd: -1 }, { index: 1, ...eq.cfg, kickFd: -1, callFd: -1 }], needsReset: none, configChanged: none });
      /** requests through the request thread */
      const req = iommuRequests(mem, rq, () => native.write(kicks[0], new BigUint64Array([1n])));
      // the guest: its net device in domain 1, all memory mapped at IOVA = guest-physical
      expect((await req.attach(1, NET)).status).toBe(S.OK);
      expect((await req.map(1, 0, SIZE - 1, 0, MAP_READ | MAP_WRITE)).status).toBe(S.OK);
      const rx = new TestDriver(mem, 64);
      const tx = new TestDriver(mem, 64);
      const resets: string[] = [];
      await net.activate({
        features: (1n << 32n) | (1n << 33n),
        queues: [{ index: 0, ...rx.cfg, kickFd: kicks[1], callFd: -1 }, { index: 1, ...tx.cfg, kickFd: kicks[2], callFd: -1 }],
        needsReset: (r) => resets.push(r),
        configChanged: none,
      });
      // a frame to send: the thread gets stuck in the driver, holding its translations
      const at = mem.alloc(NET_HDR_LEN + 60);
      tx.add([{ addr: at, len: NET_HDR_LEN + 60 }]);
      native.write(kicks[2], new BigUint64Array([1n]));
      for (let i = 0; i < 500 && !existsSync(flag); i++) await new Promise((r) => setTimeout(r, 10));
      expect(existsSync(flag)).toBe(true);
      const t0 = Date.now();
      expect((await req.unmap(1, 0, SIZE - 1)).status).toBe(S.OK);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(LIMIT_MS);
      expect(net.stuckThreads).toBe(1);
      expect(resets).toEqual([expect.stringMatching(/stuck during an UNMAP/)]);
      // the descriptor the driver's queue opened on the thread went with it
      const open = readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`) === `${flag}.own`;
        } catch {
          return false;
        }
      });
      expect(open).toEqual([]);
    } finally {
      await net.reset();
      await iommu.reset();
      kicks.forEach((fd) => native.close(fd));
      rmSync(flag, { force: true });
      rmSync(`${flag}.own`, { force: true });
      delete process.env.TSVMM_STUCK_THREAD_MS;
    }
  }, 30_000);
});
