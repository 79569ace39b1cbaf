// vhost-user with VIRTIO_F_ACCESS_PLATFORM: ring and buffer addresses are IOVAs that only the
// frontend's IOTLB can translate. The backend keeps the IOTLB in the vIOMMU's shared table (read by the
// dataplane threads directly), asks the frontend for what it misses (BACKEND_REQ IOTLB MISS), waits for
// the UPDATE without breaking the queue, and answers an INVALIDATE only once no thread can still use the
// entry. The frontend is a test one, so every address and message is known.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, AF_UNIX, SOCK_STREAM } from '../src/native.js';
import { createDriver } from '../src/drivers/registry.js';
import { VhostUserBackend } from '../src/vhost-user/backend.js';
import { VhostUserServer } from '../src/vhost-user/server.js';
import { REQ, F_PROTOCOL_FEATURES, PROTOCOL_F, HDR_SIZE, FLAG_VERSION, FLAG_NEED_REPLY, IOTLB } from '../src/vhost-user/protocol.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import { TestFrontend } from './helpers/vhost-user-frontend.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const [RX, TX] = [0, 1];
/** IOVA = guest-physical + this: neither the frontend's address nor the physical one */
const IOVA_OFFSET = 0x5000000000;

describe.each(['split', 'packed'])('vhost-user IOTLB (ACCESS_PLATFORM), %s rings', (layout) => {
  let dir: string;
  let server: VhostUserServer;
  let running: Promise<void>;
  let fe: TestFrontend;
  let chan: number; // our end of the backend's request channel
  let chanEp: number;
  let listenFd: number;
  /** ring i, whichever its layout */
  const ring = (i: number) => (layout === 'packed' ? fe.packed[i] : fe.rings[i]);
  const logs: string[] = [];

  /** IOTLB MISS requests the backend sent since the last call: [iova, perm] */
  function misses(): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    const buf = new Uint8Array(4096);
    const ev = new Uint32Array(3);
    for (;;) {
      if (native.epollWait(chanEp, ev, 0) === 0) return out;
      const n = native.recvmsg(chan, buf, new Int32Array(4));
      if (n <= 0) return out;
      for (let o = 0; o + HDR_SIZE <= n; ) {
        const v = new DataView(buf.buffer, o);
        const size = v.getUint32(8, true);
        expect(v.getUint32(0, true)).toBe(1); // BACKEND_IOTLB_MSG
        expect(v.getUint8(HDR_SIZE + 25)).toBe(IOTLB.MISS);
        out.push([Number(v.getBigUint64(HDR_SIZE, true)), v.getUint8(HDR_SIZE + 24)]);
        o += HDR_SIZE + size;
      }
    }
  }

  /** Wait for misses, then answer each with an UPDATE of its page (guest-physical = IOVA - offset). */
  async function serveMisses(perm = 3, waitMs = 1000): Promise<Array<[number, number]>> {
    let got: Array<[number, number]> = [];
    for (let i = 0; i < waitMs / 5 && got.length === 0; i++) {
      await sleep(5);
      got = misses();
    }
    for (const [iova] of got) await update(Math.floor(iova / 4096) * 4096, 4096, perm);
    return got;
  }

  async function iotlb(type: number, iova: number | bigint, size: number | bigint, perm: number): Promise<number> {
    const p = new Uint8Array(32);
    const v = new DataView(p.buffer);
    v.setBigUint64(0, BigInt(iova), true);
    v.setBigUint64(8, BigInt(size), true);
    v.setBigUint64(16, BigInt(type === IOTLB.UPDATE ? fe.uaddr(Number(iova) - IOVA_OFFSET) : 0), true);
    v.setUint8(24, perm);
    v.setUint8(25, type);
    // with REPLY_ACK: 0 = done
    return Number((await fe.call(REQ.IOTLB_MSG, p, [], FLAG_VERSION | FLAG_NEED_REPLY)).getBigUint64(0, true));
  }
  const update = (iova: number, size: number, perm: number) => iotlb(IOTLB.UPDATE, iova, size, perm);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), `tsvmm-iotlb-${layout}-`));
    const sock = join(dir, 'vu.sock');
    const driver = await createDriver('null', { size: '200' });
    server = new VhostUserServer(new VhostUserBackend(driver, { queuePairs: 1 }), { path: sock, log: (l) => logs.push(l) });
    running = server.run();
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(10);
    // the backend channel: a connected pair of unix sockets, one end handed over
    const chanPath = join(dir, 'chan.sock');
    listenFd = native.socket(AF_UNIX, SOCK_STREAM, 0);
    native.bindUnix(listenFd, chanPath);
    native.listen(listenFd, 1);
    const theirs = native.socket(AF_UNIX, SOCK_STREAM, 0);
    expect(native.connectUnix(theirs, chanPath)).toBe(0);
    chan = native.accept(listenFd);
    native.close(listenFd);
    chanEp = native.epollCreate();
    native.epollCtl(chanEp, 1, chan, 1, 0);
    fe = new TestFrontend(sock);
    fe.iovaOffset = IOVA_OFFSET;
    const packed = layout === 'packed' ? 1n << 34n : 0n;
    await fe.setup((1n << 32n) | (1n << 33n) | (1n << BigInt(F_PROTOCOL_FEATURES)) | packed, (1n << BigInt(PROTOCOL_F.BACKEND_REQ)) | (1n << BigInt(PROTOCOL_F.REPLY_ACK)), 1, 256, theirs, packed ? {} : undefined);
    native.close(theirs);
  });
  afterAll(async () => {
    fe?.close();
    native.close(chan);
    native.close(chanEp);
    server.stop();
    await running;
    rmSync(dir, { recursive: true, force: true });
  });

  it('asks for the rings it cannot translate, and starts once the frontend has answered', async () => {
    const asked = await serveMisses();
    // every ring area of both queues: desc and avail read, used written (possibly more as they start)
    const rings = [...fe.rings, ...fe.packed].flatMap((r) => [r.cfg.desc, r.cfg.avail, r.cfg.used]).map((g) => Math.floor((g + IOVA_OFFSET) / 4096));
    // (the rings' areas are asked for one miss at a time, as each translation is tried)
    for (let more = asked; more.length; ) asked.push(...(more = await serveMisses(3, 200)));
    for (const page of rings) expect(asked.map(([iova]) => Math.floor(iova / 4096))).toContain(page);
    expect(logs.filter((l) => /closed/.test(l))).toEqual([]);
  });

  it('transmits from an IOVA it had to ask for: the queue waits for the update, then completes', async () => {
    const tx = fe.mem.alloc(4096, 4096);
    fe.mem.bytes(tx + NET_HDR_LEN, 100).fill(0x5a);
    ring(TX).add([{ addr: tx + IOVA_OFFSET, len: NET_HDR_LEN + 100 }]);
    fe.kick(TX);
    const asked = await serveMisses(1);
    expect(asked).toContainEqual([tx + IOVA_OFFSET, 1]); // a read the device wants to do
    await fe.usedReaches(TX, 1);
  });

  it('receives into an IOVA it had to ask for (a write)', async () => {
    const rx = fe.mem.alloc(4096, 4096);
    ring(RX).add([{ addr: rx + IOVA_OFFSET, len: 2048, write: true }]);
    fe.kick(RX);
    const asked = await serveMisses(2);
    expect(asked).toContainEqual([rx + IOVA_OFFSET, 2]);
    await fe.usedReaches(RX, 1);
    expect(layout === 'packed' ? fe.packedUsed[RX].at(-1)!.len : fe.rings[RX].takeUsed()[0].len).toBe(200 + NET_HDR_LEN);
    expect(fe.mem.bytes(rx + NET_HDR_LEN, 6)).toEqual(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
  });

  it('answers INVALIDATE, after which the device asks again', async () => {
    const tx = fe.mem.alloc(4096, 4096);
    ring(TX).add([{ addr: tx + IOVA_OFFSET, len: NET_HDR_LEN + 60 }]);
    fe.kick(TX);
    await serveMisses(1);
    await fe.usedReaches(TX, 2);
    expect(await iotlb(IOTLB.INVALIDATE, tx + IOVA_OFFSET, 4096, 0)).toBe(0);
    ring(TX).add([{ addr: tx + IOVA_OFFSET, len: NET_HDR_LEN + 60 }]);
    fe.kick(TX);
    const asked = await serveMisses(1);
    expect(asked).toContainEqual([tx + IOVA_OFFSET, 1]);
    await fe.usedReaches(TX, 3);
    expect(logs.filter((l) => /closed|fail/i.test(l))).toEqual([]);
  });

  it('takes an invalidation of everything (QEMU sends one reaching 2^64 - 1 for a guest device-TLB flush)', async () => {
    const tx = fe.mem.alloc(4096, 4096);
    ring(TX).add([{ addr: tx + IOVA_OFFSET, len: NET_HDR_LEN + 60 }]);
    fe.kick(TX);
    await serveMisses(1);
    await fe.usedReaches(TX, 4);
    // as QEMU's intel-iommu splits it around the interrupt window: [0, 0xfee00000) and the rest
    expect(await iotlb(IOTLB.INVALIDATE, 0, 0xfee00000, 0)).toBe(0);
    expect(await iotlb(IOTLB.INVALIDATE, 0xfef00000n, 2n ** 64n - 0xfef00000n, 0)).toBe(0);
    // every entry went, the rings' too: they are asked for again, then the same buffer
    ring(TX).add([{ addr: tx + IOVA_OFFSET, len: NET_HDR_LEN + 60 }]);
    fe.kick(TX);
    const asked: Array<[number, number]> = [];
    for (let i = 0; i < 5 && !asked.some(([a]) => a === tx + IOVA_OFFSET); i++) asked.push(...(await serveMisses(3)));
    expect(asked).toContainEqual([tx + IOVA_OFFSET, 1]);
    expect(asked.length).toBeGreaterThan(1);
    await fe.usedReaches(TX, 5);
    expect(logs.filter((l) => /closed|fail/i.test(l))).toEqual([]);
  });
});
