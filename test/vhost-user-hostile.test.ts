// `tsvmm vhost-user` against frontends that bend or break the protocol: whatever a frontend does ends
// that connection (or breaks that ring) with one line on stderr; the process lives, leaks nothing, and
// serves the next frontend. The backend is the CLI in a child process (`--net null`: no interface).
import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, EFD_NONBLOCK, O_RDWR } from '../src/native.js';
import { REQ, FLAG_VERSION, HDR_SIZE, F_PROTOCOL_FEATURES } from '../src/vhost-user/protocol.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import { TestFrontend, u64 } from './helpers/vhost-user-frontend.js';
import { CliBackend } from './helpers/vhost-user-cli.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const FEATURES = (1n << 32n) | (1n << BigInt(F_PROTOCOL_FEATURES));
const [RX, TX] = [0, 1];
const EPOLLIN = 1;

/** A message as a hostile frontend sends it: any header size, any descriptors, whatever sendmsg says. */
function sendRaw(fd: number, request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = [], size = payload.length): void {
  const m = new Uint8Array(HDR_SIZE + payload.length);
  const v = new DataView(m.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, FLAG_VERSION, true);
  v.setUint32(8, size, true);
  m.set(payload, HDR_SIZE);
  native.sendmsg(fd, m, fds);
}

/** Read (and drop) replies until the backend closes the connection; false if it never does. */
async function closedByBackend(fd: number): Promise<boolean> {
  const buf = new Uint8Array(4096);
  for (let i = 0; i < 500; i++) {
    if (native.poll(fd, EPOLLIN, 0) > 0) {
      const n = native.recvmsg(fd, buf, new Int32Array(4));
      if (n <= 0 && n !== -11) return true;
    } else await sleep(10);
  }
  return false;
}

/** A frontend that sets up a queue pair and sends a frame through it; then it goes. */
async function servesAFrontend(b: CliBackend, ended: number): Promise<void> {
  const f = new TestFrontend(b.sock);
  try {
    await f.setup(FEATURES, 0n);
    sendFrame(f, f.mem.alloc(4096, 4096));
    await f.usedReaches(TX, f.rings[TX].availIdx);
  } finally {
    f.close();
  }
  await b.connectionsEnded(ended);
}

/** One frame to transmit, its header and 60 bytes at `gpa`. */
function sendFrame(f: TestFrontend, gpa: number): void {
  f.mem.bytes(gpa, NET_HDR_LEN + 60).fill(0);
  f.mem.bytes(gpa + NET_HDR_LEN, 60).fill(0xab);
  f.rings[TX].add([{ addr: gpa, len: NET_HDR_LEN + 60 }]);
  f.kick(TX);
}

/** A round trip (GET_QUEUE_NUM) the backend answers, or false when it closes the connection instead. */
async function answers(fd: number): Promise<boolean> {
  sendRaw(fd, REQ.GET_QUEUE_NUM);
  const buf = new Uint8Array(64);
  for (let i = 0; i < 500; i++) {
    if (native.poll(fd, EPOLLIN, 0) > 0) return native.recvmsg(fd, buf, new Int32Array(4)) > 0;
    await sleep(10);
  }
  throw new Error('neither an answer nor a closed connection');
}

function vringAddr(f: TestFrontend, i: number, descDelta = 0): Uint8Array {
  const c = f.rings[i].cfg;
  const a = new Uint8Array(40);
  const v = new DataView(a.buffer);
  v.setUint32(0, i, true);
  v.setBigUint64(8, BigInt(f.uaddr(c.desc) + descDelta), true);
  v.setBigUint64(16, BigInt(f.uaddr(c.used)), true);
  v.setBigUint64(24, BigInt(f.uaddr(c.avail)), true);
  return a;
}

describe('vhost-user backend with a hostile frontend', () => {
  let b: CliBackend | undefined;
  afterEach(async () => {
    await b?.stop();
    b = undefined;
  });

  it('closes the descriptors that come with messages that take none, and ends that connection', async () => {
    b = await CliBackend.start();
    // (the first dataplane thread leaves the process with descriptors it keeps: count after one)
    await servesAFrontend(b, 1);
    const before = b.fdCount();
    const from = b.lines.length;
    const f = new TestFrontend(b.sock);
    for (let i = 0; i < 24; i++) {
      const fds = Array.from({ length: 8 }, () => native.eventfd(0, EFD_NONBLOCK));
      sendRaw(f.fd, [REQ.SET_OWNER, REQ.GET_QUEUE_NUM, REQ.GET_FEATURES][i % 3], new Uint8Array(0), fds);
      for (const fd of fds) native.close(fd);
    }
    expect(await closedByBackend(f.fd)).toBe(true);
    f.close();
    await b.connectionsEnded(2);
    expect(b.fdCount()).toBe(before);
    expect(b.reports(from)).toEqual([expect.stringMatching(/descriptor/)]);
    await servesAFrontend(b, 3);
    expect(b.fdCount()).toBe(before);
  });

  it('survives a memory table over 4 GiB (a sparse region of 4097 MiB): the pair runs or that connection ends', async () => {
    b = await CliBackend.start();
    const from = b.lines.length;
    const f = new TestFrontend(b.sock, 2 << 20, 0x100000, { regionSize: 4097 * 2 ** 20 });
    try {
      await f.setup(FEATURES, 0n);
      sendFrame(f, f.mem.alloc(4096, 4096));
      await f.usedReaches(TX, 1);
    } catch (e) {
      expect((e as Error).message).toMatch(/closed the connection/);
    } finally {
      f.close();
    }
    await b.connectionsEnded(1);
    expect(b.reports(from).length).toBeLessThanOrEqual(1);
    await servesAFrontend(b, 2);
  });

  it('ends the connection of a frontend whose descriptor table is not 16-byte aligned', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    await f.setup(FEATURES, 0n);
    const from = b.lines.length;
    sendRaw(f.fd, REQ.SET_VRING_ADDR, vringAddr(f, TX, 8));
    expect(await closedByBackend(f.fd)).toBe(true);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports(from)).toEqual([expect.stringMatching(/align/)]);
    await servesAFrontend(b, 2);
  });

  it.each([
    ['/dev/null', () => native.open('/dev/null', O_RDWR)],
    ['a regular file', () => {
      const dir = mkdtempSync(join(tmpdir(), 'tsvmm-kick-'));
      writeFileSync(join(dir, 'f'), '');
      const fd = native.open(join(dir, 'f'), O_RDWR);
      rmSync(dir, { recursive: true });
      return fd;
    }],
    ['a memfd', () => native.memfdCreate('kick', 0)],
  ])('ends the connection of a frontend whose kick descriptor is %s (epoll cannot watch it)', async (_what, open) => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    await f.setup(FEATURES, 0n);
    const from = b.lines.length;
    const fd = open();
    sendRaw(f.fd, REQ.SET_VRING_KICK, u64(BigInt(TX)), [fd]);
    native.close(fd);
    expect(await closedByBackend(f.fd)).toBe(true);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports(from)).toEqual([expect.stringMatching(/kick/)]);
    await servesAFrontend(b, 2);
  });

  it('ends the connection of a frontend that leaves a reply unread, sends part of a payload and closes', async () => {
    b = await CliBackend.start();
    const from = b.lines.length;
    const f = new TestFrontend(b.sock);
    sendRaw(f.fd, REQ.GET_FEATURES);
    // the reply is there (and stays unread): closing now resets the backend's end
    for (let i = 0; i < 500 && native.poll(f.fd, EPOLLIN, 0) <= 0; i++) await sleep(10);
    sendRaw(f.fd, REQ.SET_FEATURES, new Uint8Array(4), [], 8);
    await sleep(50);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports(from)).toHaveLength(1);
    await servesAFrontend(b, 2);
  });

  it('waits for the rest of a payload without blocking the process (SIGTERM still ends it)', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    sendRaw(f.fd, REQ.SET_FEATURES, new Uint8Array(4), [], 8);
    // the rest of the message comes later: the backend answers once it is whole
    await sleep(50);
    native.sendmsg(f.fd, new Uint8Array(4));
    expect((await f.call(REQ.GET_QUEUE_NUM)).getBigUint64(0, true)).toBe(1n);
    sendRaw(f.fd, REQ.SET_FEATURES, new Uint8Array(4), [], 8);
    await sleep(50);
    expect(await b.stop()).toBe(143);
    f.close();
  });

  it('ends the connection of a frontend whose call eventfd would block the dataplane thread (blocking, at its maximum)', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    await f.setup(FEATURES, 0n);
    const from = b.lines.length;
    const call = native.eventfd(0, 0);
    native.write(call, new BigUint64Array([0xfffffffffffffffen]));
    sendRaw(f.fd, REQ.SET_VRING_CALL, u64(BigInt(TX)), [call]);
    native.close(call);
    // a frame makes the thread signal the call fd (after it published the used entry); GET_VRING_BASE
    // then needs the thread stopped
    const answer = await (async () => {
      if (!(await answers(f.fd))) return 'closed';
      sendFrame(f, f.mem.alloc(4096, 4096));
      await f.usedReaches(TX, 1);
      await f.call(REQ.GET_VRING_BASE, u64(BigInt(TX)));
      return 'answered';
    })().catch((e: Error) => e.message);
    expect(answer).toMatch(/^(answered|closed)$/);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports(from).length).toBeLessThanOrEqual(1);
    if (answer === 'closed') expect(b.reports(from)).toEqual([expect.stringMatching(/call descriptor/)]);
    await servesAFrontend(b, 2);
  });

  it('serves a frontend whose non-blocking call eventfd is at its maximum', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    await f.setup(FEATURES, 0n);
    const call = native.eventfd(0, EFD_NONBLOCK);
    native.write(call, new BigUint64Array([0xfffffffffffffffen]));
    f.send(REQ.SET_VRING_CALL, u64(BigInt(TX)), [call]);
    native.close(call);
    sendFrame(f, f.mem.alloc(4096, 4096));
    await f.usedReaches(TX, 1);
    const base = await f.call(REQ.GET_VRING_BASE, u64(BigInt(TX)));
    expect(base.getUint32(4, true)).toBe(1);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports()).toEqual([]);
  });

  it('answers GET_VRING_BASE with where its thread stood, whatever the used index in memory says', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    await f.setup(FEATURES, 0n);
    for (let i = 0; i < 3; i++) sendFrame(f, f.mem.alloc(4096, 4096));
    await f.usedReaches(TX, 3);
    // the used ring is the frontend's (and its guest's) memory: a scribbled index tells nothing
    f.mem.dv.setUint16(f.rings[TX].cfg.used - f.base + 2, 0x1234, true);
    const base = await f.call(REQ.GET_VRING_BASE, u64(BigInt(TX)));
    expect(base.getUint32(4, true)).toBe(3);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports()).toEqual([]);
  });

  // (before the ring was broken for it, the thread dropped a generated frame into the same buffer over
  // and over, at ~80 % of a CPU)
  it('breaks the RX ring of a frontend whose receive buffers can hold no frame (13-25 bytes, no MRG_RXBUF)', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    await f.setup(FEATURES, 0n);
    const from = b.lines.length;
    for (let i = 0; i < 8; i++) f.rings[RX].add([{ addr: f.mem.alloc(64), len: NET_HDR_LEN + 8, write: true }]);
    f.kick(RX);
    await b.line(/pair 0: .*receive buffer/);
    expect(b.reports(from)).toEqual([expect.stringMatching(/receive buffer too small for any frame/)]);
    // the ring is broken, the connection and its TX ring are not
    sendFrame(f, f.mem.alloc(4096, 4096));
    await f.usedReaches(TX, 1);
    f.close();
    await b.connectionsEnded(1);
    await servesAFrontend(b, 2);
  });

  it('moves frames through buffers that span two guest-physically contiguous memory regions', async () => {
    b = await CliBackend.start();
    const split = 1 << 20;
    const f = new TestFrontend(b.sock, 2 << 20, 0x100000, { splitAt: split });
    try {
      await f.setup(FEATURES, 0n);
      // a TX frame from 30 bytes below the regions' boundary, an RX buffer from 40 below it
      sendFrame(f, f.base + split - 30);
      await f.usedReaches(TX, 1);
      const rx = f.base + split - 40;
      f.rings[RX].add([{ addr: rx, len: 2048, write: true }]);
      f.kick(RX);
      await f.usedReaches(RX, 1);
      expect([...f.mem.bytes(rx + NET_HDR_LEN, 6)]).toEqual([255, 255, 255, 255, 255, 255]);
      // the ring still works
      sendFrame(f, f.mem.alloc(4096, 4096));
      await f.usedReaches(TX, 2);
    } finally {
      f.close();
    }
    await b.connectionsEnded(1);
    expect(b.reports()).toEqual([]);
  });
});
