// The vhost-user front door against a hostile or broken frontend, in-process: malformed and
// out-of-order messages get a closed connection (never a crash), and the backend serves the next one.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, AF_UNIX, SOCK_STREAM, EFD_NONBLOCK } from '../src/native.js';
import { createDriver } from '../src/drivers/registry.js';
import { VhostUserBackend } from '../src/vhost-user/backend.js';
import { VhostUserServer } from '../src/vhost-user/server.js';
import { REQ, FLAG_VERSION, FLAG_NEED_REPLY, HDR_SIZE } from '../src/vhost-user/protocol.js';
import { ROOT } from './helpers/env.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function message(request: number, payload: Uint8Array = new Uint8Array(0), flags = FLAG_VERSION, size = payload.length): Uint8Array {
  const m = new Uint8Array(HDR_SIZE + payload.length);
  const v = new DataView(m.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  m.set(payload, HDR_SIZE);
  return m;
}

const u64 = (v: bigint) => {
  const p = new Uint8Array(8);
  new DataView(p.buffer).setBigUint64(0, v, true);
  return p;
};

describe('vhost-user protocol robustness', () => {
  let dir: string;
  let sock: string;
  let server: VhostUserServer;
  let running: Promise<void>;
  let backend: VhostUserBackend;
  const logs: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-vup-'));
    sock = join(dir, 'vu.sock');
    const driver = await createDriver(join(ROOT, 'examples', 'drivers', 'null-driver.mjs'), {});
    backend = new VhostUserBackend(driver, { queuePairs: 1, log: (l) => logs.push(l) });
    server = new VhostUserServer(backend, { path: sock, log: (l) => logs.push(l) });
    running = server.run();
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(10);
  });
  afterAll(async () => {
    server.stop();
    await running;
    rmSync(dir, { recursive: true, force: true });
  });

  /** Connect, send, and read until the backend replies or closes. */
  async function exchange(msgs: Uint8Array[], fds: number[][] = []): Promise<{ replies: DataView[]; closed: boolean }> {
    const fd = native.socket(AF_UNIX, SOCK_STREAM, 0);
    expect(native.connectUnix(fd, sock)).toBe(0);
    const replies: DataView[] = [];
    let closed = false;
    msgs.forEach((m, i) => native.sendmsg(fd, m, fds[i]));
    const buf = new Uint8Array(512);
    const got = new Int32Array(4);
    const epDeadline = Date.now() + 2000;
    // non-blocking reads through a short poll: the server runs on this same event loop
    const ep = native.epollCreate();
    native.epollCtl(ep, 1, fd, 1, 0);
    const ev = new Uint32Array(3);
    while (Date.now() < epDeadline) {
      await sleep(20);
      if (native.epollWait(ep, ev, 0) === 0) continue;
      const n = native.recvmsg(fd, buf, got);
      if (n <= 0) {
        closed = true;
        break;
      }
      for (let o = 0; o + HDR_SIZE <= n; ) {
        const size = new DataView(buf.buffer, o + 8, 4).getUint32(0, true);
        replies.push(new DataView(buf.buffer.slice(o + HDR_SIZE, o + HDR_SIZE + size)));
        o += HDR_SIZE + size;
      }
      if (replies.length >= msgs.length) break;
    }
    native.close(ep);
    native.close(fd);
    return { replies, closed };
  }

  it('answers GET_FEATURES and acknowledges on request (REPLY_ACK)', async () => {
    const r = await exchange([
      message(REQ.GET_FEATURES),
      message(REQ.GET_PROTOCOL_FEATURES),
      message(REQ.SET_PROTOCOL_FEATURES, u64(1n << 3n)),
      message(REQ.SET_OWNER, new Uint8Array(0), FLAG_VERSION | FLAG_NEED_REPLY),
    ]);
    expect(r.replies).toHaveLength(3);
    expect((r.replies[0].getBigUint64(0, true) >> 32n) & 1n).toBe(1n); // VERSION_1
    expect(r.replies[1].getBigUint64(0, true) & (1n << 3n)).toBe(1n << 3n); // REPLY_ACK offered
    expect(r.replies[2].getBigUint64(0, true)).toBe(0n); // SET_OWNER acknowledged: success
  });

  it("takes the frontend's MTU (NET_SET_MTU) from 68 up to what the driver's wire carries, and refuses the rest", async () => {
    const ack = FLAG_VERSION | FLAG_NEED_REPLY;
    const r = await exchange([
      message(REQ.GET_FEATURES),
      message(REQ.GET_PROTOCOL_FEATURES),
      message(REQ.SET_PROTOCOL_FEATURES, u64((1n << 3n) | (1n << 4n)), ack),
      message(REQ.NET_SET_MTU, u64(1400n), ack),
      message(REQ.NET_SET_MTU, u64(1501n), ack),
      message(REQ.NET_SET_MTU, u64(67n), ack),
      message(REQ.NET_SET_MTU, u64(1n << 40n), ack),
    ]);
    expect(r.closed).toBe(false);
    expect(r.replies.map((v) => v.getBigUint64(0, true))).toEqual([expect.any(BigInt), expect.any(BigInt), 0n, 0n, 1n, 1n, 1n]);
    expect(r.replies[0].getBigUint64(0, true) & (1n << 3n)).toBe(1n << 3n); // VIRTIO_NET_F_MTU
    expect(r.replies[1].getBigUint64(0, true) & (1n << 4n)).toBe(1n << 4n); // VHOST_USER_PROTOCOL_F_NET_MTU
    expect(backend.mtu).toBe(1400);
    expect(logs.filter((l) => /the frontend's MTU \d+ refused \(this backend's wire takes 68 to 1500/.test(l))).toHaveLength(3);
  });

  it('refuses a memory region larger than the file behind it (touching it would fault the VMM)', async () => {
    const mfd = native.memfdCreate('small', 0);
    native.ftruncate(mfd, 1 << 20);
    const p = new Uint8Array(8 + 32);
    const v = new DataView(p.buffer);
    v.setUint32(0, 1, true);
    v.setBigUint64(16, BigInt(4 << 20), true); // 4 MiB claimed over a 1 MiB memfd
    v.setBigUint64(24, 0x7f0000000000n, true);
    const bad = await exchange([message(REQ.SET_MEM_TABLE, p)], [[mfd]]);
    native.close(mfd);
    expect(bad.closed).toBe(true);
    expect(logs.some((l) => l.includes('past the end of its file'))).toBe(true);
    const good = await exchange([message(REQ.GET_QUEUE_NUM)]);
    expect(good.replies).toHaveLength(1);
  });

  it('refuses a dirty log larger than the file behind it', async () => {
    const lfd = native.memfdCreate('small-log', 0);
    native.ftruncate(lfd, 4096);
    const p = new Uint8Array(16);
    new DataView(p.buffer).setBigUint64(0, 1n << 20n, true); // 1 MiB claimed over 4 KiB
    const bad = await exchange([message(REQ.SET_PROTOCOL_FEATURES, u64(1n << 1n)), message(REQ.SET_LOG_BASE, p)], [[], [lfd]]);
    native.close(lfd);
    expect(bad.closed).toBe(true);
    expect(logs.some((l) => l.includes('log extends past the end of its file'))).toBe(true);
    const good = await exchange([message(REQ.GET_QUEUE_NUM)]);
    expect(good.replies).toHaveLength(1);
  });

  it.each([
    ['a truncated SET_FEATURES', [message(REQ.SET_FEATURES, new Uint8Array(3))]],
    ['features never offered', [message(REQ.SET_FEATURES, u64(1n << 60n))]],
    ['a ring that does not exist', [message(REQ.SET_VRING_NUM, new Uint8Array([9, 0, 0, 0, 0, 1, 0, 0]))]],
    ['a ring size that is no power of two', [message(REQ.SET_VRING_NUM, new Uint8Array([0, 0, 0, 0, 3, 0, 0, 0]))]],
    ['a memory table with no regions', [message(REQ.SET_MEM_TABLE, new Uint8Array(8))]],
    ['a memory table whose descriptors are missing', [message(REQ.SET_MEM_TABLE, (() => { const p = new Uint8Array(8 + 32); p[0] = 1; p[16] = 0x10; return p; })())]],
    ['dirty logging that was not negotiated', [message(REQ.SET_LOG_BASE, new Uint8Array(16))]],
    ['a kick without its descriptor', [message(REQ.SET_VRING_KICK, u64(0n))]],
    ['an MTU without the MTU protocol feature', [message(REQ.NET_SET_MTU, u64(1500n))]],
    ['a payload larger than any message', [message(REQ.GET_FEATURES, new Uint8Array(0), FLAG_VERSION, 1 << 20)]],
  ])('closes the connection on %s, and serves the next frontend', async (_what, msgs) => {
    const bad = await exchange(msgs as Uint8Array[]);
    expect(bad.closed).toBe(true);
    const good = await exchange([message(REQ.GET_QUEUE_NUM)]);
    expect(good.replies).toHaveLength(1);
    expect(good.replies[0].getBigUint64(0, true)).toBe(1n);
  });
});

describe('vhost-user backend bookkeeping', () => {
  it('keeps a bounded list of ring problems however often a frontend repeats the message behind one', async () => {
    // rings placed outside the frontend's memory: every message that looks for ready rings finds the
    // problem again (found by reading the handlers the vhost-handlers fuzz target drives)
    const backend = new VhostUserBackend(await createDriver('null', { rx: '0' }), { queuePairs: 1 });
    const msg = (request: number, p: Uint8Array, fds: number[] = []) => ({ request, flags: FLAG_VERSION, payload: new DataView(p.buffer), fds });
    const words = (...v: Array<[4 | 8, bigint]>) => {
      const p = new Uint8Array(v.reduce((s, [w]) => s + w, 0));
      const dv = new DataView(p.buffer);
      let at = 0;
      for (const [w, x] of v) {
        if (w === 8) dv.setBigUint64(at, x, true);
        else dv.setUint32(at, Number(x), true);
        at += w;
      }
      return p;
    };
    const U = 0x7f0000000000n;
    const mfd = native.memfdCreate('frontend', 0);
    native.ftruncate(mfd, 65536);
    const opening = [
      msg(REQ.SET_FEATURES, u64(1n << 32n)),
      msg(REQ.SET_MEM_TABLE, words([4, 1n], [4, 0n], [8, 0n], [8, 65536n], [8, U], [8, 0n]), [mfd]),
      ...[0n, 1n].flatMap((i) => [
        msg(REQ.SET_VRING_NUM, words([4, i], [4, 8n])),
        msg(REQ.SET_VRING_ADDR, words([4, i], [4, 0n], [8, U + 0x100000n], [8, U + 0x100400n], [8, U + 0x100200n], [8, 0n])),
        msg(REQ.SET_VRING_KICK, u64(i), [native.eventfd(0, EFD_NONBLOCK)]),
      ]),
    ];
    for (const m of opening) expect((await backend.handle(m)).close).toBeUndefined();
    for (let k = 0; k < 2000; k++) await backend.handle(msg(REQ.SET_VRING_BASE, words([4, 0n], [4, 0n])));
    expect(backend.errors.length).toBeGreaterThan(0);
    expect(backend.errors.length).toBeLessThanOrEqual(64);
    await backend.close();
  });
});
