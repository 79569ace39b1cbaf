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
import { TestFrontend, state, u64 } from './helpers/vhost-user-frontend.js';
import { CliBackend } from './helpers/vhost-user-cli.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const FEATURES = (1n << 32n) | (1n << BigInt(F_PROTOCOL_FEATURES));
/** FEATURES and VIRTIO_F_RING_PACKED */
const PACKED = FEATURES | (1n << 34n);
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

describe('vhost-user ring sizes and bases a frontend may not give (split and packed)', () => {
  let b: CliBackend | undefined;
  afterEach(async () => {
    await b?.stop();
    b = undefined;
  });

  /** A frontend that negotiates `features` and sends `msgs` (request, ring, value) on ring state. */
  async function frontend(features: bigint, msgs: Array<[number, number, number]>): Promise<TestFrontend> {
    const f = new TestFrontend(b!.sock);
    await f.call(REQ.GET_FEATURES);
    f.send(REQ.SET_FEATURES, u64(features));
    for (const [request, ring, value] of msgs) f.send(request, state(ring, value));
    return f;
  }

  it.each([
    ['split: a size that is not a power of two', FEATURES, [[REQ.SET_VRING_NUM, TX, 255]], /power of two/],
    ['split: a size of 0', FEATURES, [[REQ.SET_VRING_NUM, TX, 0]], /bad size 0/],
    ['packed: a size over 32768', PACKED, [[REQ.SET_VRING_NUM, TX, 32769]], /bad size 32769/],
    ['packed: a base position at the ring size', PACKED, [[REQ.SET_VRING_NUM, TX, 256], [REQ.SET_VRING_BASE, TX, 0x8000 | 256]], /position 256 is not below the ring size 256/],
    ['packed: every base bit set (positions 32767, both wrap counters)', PACKED, [[REQ.SET_VRING_NUM, TX, 256], [REQ.SET_VRING_BASE, TX, 0xffffffff]], /position 32767/],
    ['packed: a used half past the ring (the avail half fine)', PACKED, [[REQ.SET_VRING_NUM, TX, 100], [REQ.SET_VRING_BASE, TX, 0x8000 | ((0x8000 | 100) << 16)]], /position 100 is not below the ring size 100/],
    ['packed: the size first, then a base past it', PACKED, [[REQ.SET_VRING_NUM, RX, 128], [REQ.SET_VRING_BASE, RX, 0x8000 | 200]], /position 200 is not below the ring size 128/],
  ] as Array<[string, bigint, Array<[number, number, number]>, RegExp]>)('ends the connection of a frontend that sends %s, with one line', async (_what, features, msgs, why) => {
    b = await CliBackend.start();
    const from = b.lines.length;
    const f = await frontend(features, msgs);
    expect(await closedByBackend(f.fd)).toBe(true);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports(from)).toEqual([expect.stringMatching(why)]);
    await servesAFrontend(b, 2);
  });

  it('ends the connection of a frontend that shrinks a running packed ring below where it stands, as the ring restarts', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    await f.setup(PACKED, 0n, 1, 256, undefined, { base: 0x8000 | 200 });
    const from = b.lines.length;
    f.send(REQ.SET_VRING_NUM, state(RX, 128));
    // (new addresses restart the pair: with 128 descriptors, from position 200)
    f.setAddr(RX);
    expect(await closedByBackend(f.fd)).toBe(true);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports(from)).toEqual([expect.stringMatching(/ring 0: base 0x80c880c8: position 200 is not below the ring size 128/)]);
    await servesAFrontend(b, 2);
  });

  it('takes a switch of ring layout whose sizes and bases come after the features (a guest that renegotiates)', async () => {
    b = await CliBackend.start();
    const f = await frontend(PACKED, [[REQ.SET_VRING_NUM, RX, 100], [REQ.SET_VRING_BASE, RX, 0x8000 | 99]]);
    f.send(REQ.SET_FEATURES, u64(FEATURES));
    f.send(REQ.SET_VRING_NUM, state(RX, 256));
    f.send(REQ.SET_VRING_BASE, state(RX, 0x1234));
    f.send(REQ.SET_FEATURES, u64(PACKED));
    f.send(REQ.SET_VRING_NUM, state(RX, 100));
    f.send(REQ.SET_VRING_BASE, state(RX, 0x8000 | 42));
    expect(await answers(f.fd)).toBe(true);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports()).toEqual([]);
  });

  it('takes packed sizes that are not powers of two, and positions below them', async () => {
    b = await CliBackend.start();
    const f = await frontend(PACKED, [[REQ.SET_VRING_NUM, RX, 100], [REQ.SET_VRING_BASE, RX, 0x8000 | 99], [REQ.SET_VRING_NUM, TX, 1], [REQ.SET_VRING_BASE, TX, 0]]);
    expect(await answers(f.fd)).toBe(true);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports()).toEqual([]);
  });

  it.each([
    // DPDK's virtio-user gives only the avail half (0x8000 for a fresh ring): both resume there
    ['only the avail half', 0x8000 | 7, 0x80078007],
    // QEMU gives both: the ring resumes at the used position, taking again what was never used
    ['both halves', (0x8000 | 5) << 16 | 9, 0x80058005],
    ['both halves, the used wrap counter clear', 5 << 16 | 0x8000 | 9, 0x00050005],
  ])('answers GET_VRING_BASE on a packed ring given %s with where it would resume, both halves alike', async (_what, base, reported) => {
    b = await CliBackend.start();
    const f = await frontend(PACKED, [[REQ.SET_VRING_NUM, TX, 64], [REQ.SET_VRING_BASE, TX, base >>> 0]]);
    const r = await f.call(REQ.GET_VRING_BASE, state(TX, 0));
    expect(r.getUint32(4, true)).toBe(reported >>> 0);
    f.close();
    await b.connectionsEnded(1);
    expect(b.reports()).toEqual([]);
  });
});
