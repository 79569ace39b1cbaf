// Packed rings (VIRTIO_F_RING_PACKED) over vhost-user with a frontend under the test's exact control:
// frames both ways on a ring whose size is no power of two, where a ring resumes from the base the
// frontend gives (only the available half, as DPDK's virtio-user gives it, or both, as QEMU does), what
// GET_VRING_BASE answers, and a frontend whose descriptors break the ring. The backend is the CLI in a
// child process (`--net null`: it takes what is sent and generates what is received).
import { describe, it, expect, afterEach } from 'vitest';
import { REQ, F_PROTOCOL_FEATURES } from '../src/vhost-user/protocol.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import { TestFrontend, state } from './helpers/vhost-user-frontend.js';
import { CliBackend } from './helpers/vhost-user-cli.js';
import { P_NEXT, type PackedTestDriver } from './helpers/packed-driver.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** VERSION_1, PROTOCOL_FEATURES, RING_PACKED, EVENT_IDX */
const PACKED = (1n << 32n) | (1n << BigInt(F_PROTOCOL_FEATURES)) | (1n << 34n) | (1n << 29n);
const [RX, TX] = [0, 1];

/** Until the backend has used `n` more chains of ring `r` (collected into `got`). */
async function used(r: PackedTestDriver, n: number, got: Array<{ id: number; len: number }> = []): Promise<Array<{ id: number; len: number }>> {
  for (const end = Date.now() + 5000; got.length < n && Date.now() < end; await sleep(5)) got.push(...r.takeUsed());
  if (got.length < n) throw new Error(`${got.length} of ${n} chains used`);
  return got;
}

/** A frame to transmit (its header and 60 bytes) in a fresh buffer; the ring is kicked. */
function send(f: TestFrontend, chains = 1): void {
  for (let k = 0; k < chains; k++) {
    const gpa = f.mem.alloc(NET_HDR_LEN + 60, 16);
    f.mem.bytes(gpa, NET_HDR_LEN).fill(0);
    f.mem.bytes(gpa + NET_HDR_LEN, 60).fill(0xab);
    f.packed[TX].add([{ addr: gpa, len: NET_HDR_LEN + 60 }]);
  }
  f.kick(TX);
}

describe('vhost-user packed rings with a scripted frontend', () => {
  let b: CliBackend | undefined;
  afterEach(async () => {
    await b?.stop();
    b = undefined;
  });

  it('moves frames both ways on rings of 100 descriptors, around the ring twice, and GET_VRING_BASE says where they stopped', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    try {
      await f.setup(PACKED, 0n, 1, 100, undefined, {});
      // 250 frames out, in batches that straddle the ring's end (the wrap counters flip twice)
      for (let sent = 0; sent < 250; sent += 25) {
        send(f, 25);
        await used(f.packed[TX], 25);
      }
      // generated frames in: each in its own receive buffer, the header and a broadcast frame
      const rx = f.packed[RX];
      const bufs = Array.from({ length: 30 }, () => f.mem.alloc(2048, 16));
      for (const gpa of bufs) rx.add([{ addr: gpa, len: 2048, write: true }]);
      f.kick(RX);
      const got = await used(rx, 30);
      for (const u of got) expect(u.len).toBeGreaterThan(NET_HDR_LEN + 14);
      expect([...f.mem.bytes(bufs[0] + NET_HDR_LEN, 6)]).toEqual([255, 255, 255, 255, 255, 255]);
      // TX stopped at position 250 % 100 = 50, both counters wrapped twice (set again): both halves alike
      const base = await f.call(REQ.GET_VRING_BASE, state(TX, 0));
      expect(base.getUint32(4, true)).toBe((0x8000 | 50) * 0x10001);
      expect([f.packed[TX].nextUsed, f.packed[TX].usedWrap]).toEqual([50, true]);
    } finally {
      f.close();
    }
    await b.connectionsEnded(1);
    expect(b.reports()).toEqual([]);
  });

  it('resumes where a frontend that gives only the available half says (DPDK virtio-user)', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    try {
      // the ring stands at position 70 of the second lap (wrap counters clear)
      await f.setup(PACKED, 0n, 1, 100, undefined, { base: 70 });
      const tx = f.packed[TX];
      [tx.nextAvail, tx.availWrap, tx.nextUsed, tx.usedWrap] = [70, false, 70, false];
      send(f, 40);
      await used(tx, 40);
      expect([tx.nextUsed, tx.usedWrap]).toEqual([10, true]);
    } finally {
      f.close();
    }
    await b.connectionsEnded(1);
    expect(b.reports()).toEqual([]);
  });

  it('resumes at the used position a frontend gives (QEMU), taking again what was made available and never used', async () => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    try {
      // avail half 60, used half 50: ten chains were available and never used when the last backend went
      await f.setup(PACKED, 0n, 1, 100, undefined, { base: (0x8000 | 50) * 0x10000 + (0x8000 | 60) });
      const tx = f.packed[TX];
      [tx.nextAvail, tx.nextUsed] = [50, 50];
      send(f, 10);
      await sleep(100);
      send(f, 5);
      // every one of the 15 is used, in order
      const got = await used(tx, 15);
      expect(got.length).toBe(15);
      expect([tx.nextUsed, tx.usedWrap]).toEqual([65, true]);
    } finally {
      f.close();
    }
    await b.connectionsEnded(1);
    expect(b.reports()).toEqual([]);
  });

  it.each([
    ['a buffer outside its memory', (f: TestFrontend) => f.packed[TX].raw([{ addr: 0x7f000000, len: 64, flags: 0 }]), /buffer outside guest memory/],
    ['a chain that runs into a descriptor it did not make available', (f: TestFrontend) => f.packed[TX].raw([{ addr: f.mem.alloc(64, 16), len: 64, flags: P_NEXT }, { addr: f.mem.alloc(64, 16), len: 64, flags: 0, bits: 0 }]), /unavailable descriptor/],
    ['a buffer id past the ring', (f: TestFrontend) => f.packed[TX].raw([{ addr: f.mem.alloc(64, 16), len: 64, flags: 0 }], 100), /buffer id out of range/],
  ])('breaks the ring of a frontend that gives %s, says so once, and serves the next frontend', async (_what, chain, why) => {
    b = await CliBackend.start();
    const f = new TestFrontend(b.sock);
    try {
      await f.setup(PACKED, 0n, 1, 100, undefined, {});
      chain(f);
      f.kick(TX);
      for (let i = 0; i < 200 && b.reports().length === 0; i++) await sleep(10);
      expect(b.reports()).toEqual([expect.stringMatching(why)]);
    } finally {
      f.close();
    }
    await b.connectionsEnded(1);
    const g = new TestFrontend(b.sock);
    try {
      await g.setup(PACKED, 0n, 1, 100, undefined, {});
      send(g, 3);
      await used(g.packed[TX], 3);
    } finally {
      g.close();
    }
    await b.connectionsEnded(2);
    expect(b.reports().length).toBe(1);
  });
});
