// Frontend memory over 4 GiB through `tsvmm vhost-user --net null,loop=1` (a child process): a memory
// table of 4.25 GiB and one of 68 GiB (sparse memfds: only the pages the test touches cost anything),
// with rings and buffers above 4 GiB and across the boundary between two of the dataplane's memory
// windows. Every frame sent comes back byte for byte, and the backend stays up.
import { describe, it, expect, afterEach } from 'vitest';
import { F_PROTOCOL_FEATURES } from '../src/vhost-user/protocol.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import { TestFrontend } from './helpers/vhost-user-frontend.js';
import { CliBackend } from './helpers/vhost-user-cli.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const FEATURES = (1n << 32n) | (1n << BigInt(F_PROTOCOL_FEATURES));
const [RX, TX] = [0, 1];
const BASE = 0x100000;

/** Frames of these lengths, each at a TX address and received into an RX buffer the test chose. */
async function loopBack(f: TestFrontend, frames: Array<{ len: number; tx: number; rx: number }>): Promise<void> {
  const data = frames.map(({ len }, k) => Uint8Array.from({ length: len }, (_, i) => (i * (k + 5) + 3) & 0xff));
  for (const fr of frames) f.rings[RX].add([{ addr: fr.rx, len: NET_HDR_LEN + 2048, write: true }]);
  f.kick(RX);
  frames.forEach((fr, k) => {
    f.mem.bytes(fr.tx, NET_HDR_LEN).fill(0);
    f.mem.bytes(fr.tx + NET_HDR_LEN, fr.len).set(data[k]);
    const half = fr.len >> 1;
    f.rings[TX].add([{ addr: fr.tx, len: NET_HDR_LEN + half }, { addr: fr.tx + NET_HDR_LEN + half, len: fr.len - half }]);
  });
  f.kick(TX);
  await f.usedReaches(TX, f.rings[TX].availIdx);
  await f.usedReaches(RX, f.rings[RX].availIdx);
  const used = f.rings[RX].takeUsed();
  expect(used.map((u) => u.len)).toEqual(frames.map((fr) => fr.len + NET_HDR_LEN));
  // (the loop gives frames back in order, into the RX buffers in the order they were offered)
  used.forEach((u, k) => {
    expect([...f.mem.bytes(frames[k].rx, NET_HDR_LEN)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    expect(Buffer.from(f.mem.bytes(frames[k].rx + NET_HDR_LEN, frames[k].len))).toEqual(Buffer.from(data[k]));
  });
}

describe('vhost-user frontend memory over 4 GiB', () => {
  let b: CliBackend | undefined;
  let f: TestFrontend | undefined;
  afterEach(async () => {
    f?.close();
    f = undefined;
    await b?.stop();
    b = undefined;
  });

  async function frontend(layout: { regionSize: number; splitAt?: number; touchAt: number }, size = 4 * MiB): Promise<TestFrontend> {
    b = await CliBackend.start('null,loop=1');
    f = new TestFrontend(b.sock, size, BASE, layout);
    await f.setup(FEATURES, 0n);
    return f;
  }

  it('a 4.25 GiB region: rings and buffers above 4 GiB', async () => {
    const fe = await frontend({ regionSize: 4 * GiB + 256 * MiB, touchAt: 4 * GiB + 64 * MiB });
    expect(fe.rings[TX].cfg.desc).toBeGreaterThan(4 * GiB);
    const at = (k: number) => fe.mem.alloc(4096, 4096) + k;
    await loopBack(fe, [
      { len: 60, tx: at(0), rx: at(0) },
      { len: 1514, tx: at(7), rx: at(3) },
      { len: 777, tx: at(0), rx: at(1) },
    ]);
    expect(b!.running).toBe(true);
    expect(b!.reports()).toEqual([]);
  });

  it('a 4.25 GiB region: headers and frames across the 4 GiB window boundary', async () => {
    // the touched 4 MiB straddle buffer offset 4 GiB (guest-physical BASE + 4 GiB)
    const fe = await frontend({ regionSize: 4 * GiB + 256 * MiB, touchAt: 4 * GiB - 2 * MiB });
    const edge = BASE + 4 * GiB;
    // one buffer at a time can cross it: TX header split by it, then an RX header, then frames split
    await loopBack(fe, [{ len: 1514, tx: edge - 5, rx: edge + 8192 }]);
    await loopBack(fe, [{ len: 1514, tx: edge + 8192, rx: edge - 7 }]);
    await loopBack(fe, [{ len: 1000, tx: edge - 600, rx: edge + 8192 }]);
    await loopBack(fe, [{ len: 1000, tx: edge + 8192, rx: edge - 30 }]);
    expect(b!.running).toBe(true);
    expect(b!.reports()).toEqual([]);
  });

  it('a 68 GiB table (two regions, the upper one first): rings and buffers at 67 GiB', async () => {
    const fe = await frontend({ regionSize: 68 * GiB, splitAt: 3 * GiB, touchAt: 67 * GiB });
    expect(fe.rings[RX].cfg.used).toBeGreaterThan(67 * GiB);
    const at = (k: number) => fe.mem.alloc(4096, 4096) + k;
    await loopBack(fe, [
      { len: 60, tx: at(0), rx: at(0) },
      { len: 1514, tx: at(9), rx: at(2) },
      { len: 333, tx: at(0), rx: at(0) },
    ]);
    expect(b!.running).toBe(true);
    expect(b!.reports()).toEqual([]);
  });
});
