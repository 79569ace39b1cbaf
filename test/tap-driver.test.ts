// The tap driver's queue on a real tap (in a namespace this file creates and deletes), driven directly
// with packet batches, through io_uring and through readv/writev: batches of frames byte-identical
// and in order both ways, and what it does with more segments than one readv/writev takes.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { NetNs, PKT, pkt, lastJson, patternFrame, runInNs } from './helpers/netns.js';
import { ROOT } from './helpers/env.js';
import { native, AF_UNIX, SOCK_STREAM, O_RDWR, O_NONBLOCK } from '../src/native.js';
import { TapQueue } from '../src/drivers/tap/queue.js';
import { openUring } from '../src/drivers/tap/uring.js';
import { create, openQueue } from '../src/drivers/tap/index.js';
import { UserError } from '../src/errors.js';
import { UringTapQueue, collectReads, HDR_STRIDE } from '../src/drivers/tap/uring-queue.js';
import { newPacketBatch, META, META_WORDS, META_NEEDS_CSUM, META_CSUM_VALID, GSO_UDP_L4, type DriverQueue, type PacketBatch } from '../src/drivers/api.js';
import { TUNSETOFFLOAD, TUN_F_CSUM, TUN_F_USO4, TUN_F_USO6 } from '../src/drivers/tap/tun.js';

const TAP = 'tdrv0';
const PROBE = join(ROOT, 'test', 'helpers', 'tap-uring-probe.mjs');
const DIST = join(ROOT, 'dist');
const POLLIN = 1;

/** Opens a queue of the tap inside the namespace and sends its fd to the unix socket at argv[1]. */
const OPEN_QUEUE = `
import fcntl, os, socket, struct, sys
fd = os.open('/dev/net/tun', os.O_RDWR | os.O_NONBLOCK)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH22x', sys.argv[2].encode(), 0x0002 | 0x1000 | 0x4000 | 0x0100))
fcntl.ioctl(fd, 0x400454d8, struct.pack('i', 12))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
socket.send_fds(s, [b'q'], [fd])
`;

/** A queue fd of `tap` in `ns`, opened there by OPEN_QUEUE and passed back over a unix socket. */
function openTapQueue(ns: NetNs, tap: string): number {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-tapq-'));
  const path = join(dir, 'sock');
  const srv = native.socket(AF_UNIX, SOCK_STREAM, 0);
  try {
    native.bindUnix(srv, path);
    native.listen(srv, 1);
    ns.exec('python3', '-c', OPEN_QUEUE, path, tap);
    const conn = native.accept(srv);
    const fds = new Int32Array(2);
    native.recvmsg(conn, new Uint8Array(1), fds);
    native.close(conn);
    return fds[0];
  } finally {
    native.close(srv);
    rmSync(dir, { recursive: true });
  }
}

/** A frame for the tap to deliver: broadcast, an ethertype of its own, then byte i = i & 0xff. */
function frame(len: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = i & 0xff;
  f.fill(0xff, 0, 6);
  f.set([0x02, 0, 0, 0, 0, 1], 6);
  f.set([0x88, 0xb5], 12);
  return f;
}

/** One packet of `segments` segments of `size` bytes each, laid out back to back from offset 0. */
function batch(segments: number, size: number): PacketBatch {
  const b = newPacketBatch(1, segments);
  for (let k = 0; k < segments; k++) b.iov.set([0, k * size, size], 3 * k);
  b.iovStart[0] = 0;
  b.iovStart[1] = segments;
  b.count = 1;
  return b;
}

const SRC = '02:00:00:00:00:0a';
const DST = '02:00:00:00:00:0b';

describe.each([
  ['io_uring', true],
  ['readv/writev', false],
])('tap driver queue (%s)', (_mode, uring) => {
  let ns: NetNs;
  let fd = -1;
  let q: DriverQueue;
  const mem = new SharedArrayBuffer(1 << 20);

  beforeAll(() => {
    ns = new NetNs(`tapdrv${uring ? 'u' : 'v'}`);
    ns.addTap(TAP);
    fd = openTapQueue(ns, TAP);
    q = openQueue({ fd, uring });
  });

  afterAll(() => {
    q?.close();
    if (fd >= 0) native.close(fd);
    ns?.delete();
  });

  /** The tap transmits `f` (from the namespace's side): it is then the one frame waiting on the queue. */
  function arrive(f: Uint8Array): void {
    const scratch = new Uint8Array(70000);
    while (native.read(fd, scratch) > 0);
    execFileSync('ip', ['netns', 'exec', ns.name, 'python3', PKT, 'raw', TAP, Buffer.from(f).toString('hex')]);
    expect(native.poll(fd, POLLIN, 10_000) & POLLIN).toBe(POLLIN);
  }

  it('receives a frame into the first segments of a packet offered more than readv takes', () => {
    const f = frame(60);
    arrive(f);
    const b = batch(1100, 8);
    expect(q.receive(b, mem)).toBe(1);
    expect(b.len[0]).toBe(60);
    expect([...new Uint8Array(mem, 0, 60)]).toEqual([...f]);
  });

  it('consumes and reports empty a frame those first segments cannot hold whole', () => {
    arrive(frame(1500));
    const b = batch(1100, 1); // the first 1023 segments hold 1023 bytes
    expect(q.receive(b, mem)).toBe(1);
    expect(b.len[0]).toBe(0);
    expect(q.receive(batch(1, 2048), mem)).toBe(0); // nothing left waiting
  });

  it('receives a frame into a packet offered one segment more than readv takes beside its header', () => {
    const f = frame(1500);
    arrive(f);
    const b = batch(1024, 2);
    expect(q.receive(b, mem)).toBe(1);
    expect(b.len[0]).toBe(1500);
    expect([...new Uint8Array(mem, 0, 1500)]).toEqual([...f]);
  });

  it('counts as a drop a packet to send in more segments than writev takes, and sends the next', () => {
    const b = newPacketBatch(2, 1100);
    for (let k = 0; k < 1024; k++) b.iov.set([0, k, 1], 3 * k);
    b.iov.set([0, 0, 60], 3 * 1024);
    new Uint8Array(mem).set(frame(60));
    b.iovStart.set([0, 1024, 1025]);
    b.len.set([1024, 60]);
    b.count = 2;
    const before = q.drops;
    expect(q.transmit(b, mem)).toBe(2);
    expect(q.drops).toBe(before + 1);
  });

  it(`is ${uring ? '' : 'not '}the io_uring queue`, () => {
    expect(q instanceof UringTapQueue).toBe(uring);
  });

  it('sends a batch of frames in several segments each, byte-identical and in order', async () => {
    const sizes = Array.from({ length: 40 }, (_, i) => [60, 1514, 333, 1000, 64][i % 5]);
    const b = newPacketBatch(sizes.length, sizes.length * 3);
    const u8 = new Uint8Array(mem);
    const digest = createHash('sha256');
    let at = 0;
    let seg = 0;
    sizes.forEach((size, i) => {
      const f = patternFrame(i, size, SRC, DST);
      digest.update(f);
      b.iovStart[i] = seg;
      // three segments (the first holds the Ethernet header whole), with gaps between them in memory
      for (const [from, to] of [[0, 14], [14, size >> 1], [size >> 1, size]]) {
        u8.set(f.subarray(from, to), at);
        b.iov.set([0, at, to - from], 3 * seg++);
        at += to - from + 7;
      }
      b.len[i] = size;
    });
    b.iovStart[sizes.length] = seg;
    b.meta.fill(0);
    b.count = sizes.length;
    const capture = pkt(ns, ['capture', TAP, String(sizes.length), '10']);
    await capture.waitFor('READY');
    expect(q.transmit(b, mem)).toBe(sizes.length);
    expect(q.wouldBlock).toBe(false);
    const seen = lastJson((await capture.done).stdout);
    expect(seen).toMatchObject({ frames: sizes.length, bad: 0, in_order: true, first: 0, last: sizes.length - 1, sha256: digest.digest('hex') });
  }, 20_000);

  it('receives frames in batches, byte-identical and in order, and only as many as are waiting', () => {
    const scratch = new Uint8Array(70000);
    while (native.read(fd, scratch) > 0);
    const count = 20;
    const size = 700;
    execFileSync('ip', ['netns', 'exec', ns.name, 'python3', PKT, 'send', TAP, String(count), String(size), SRC, DST]);
    expect(native.poll(fd, POLLIN, 10_000) & POLLIN).toBe(POLLIN);
    // 8 packets per call, each two segments of 1024 bytes
    const b = newPacketBatch(8, 16);
    for (let k = 0; k < 16; k++) b.iov.set([0, k * 1024, 1024], 3 * k);
    for (let i = 0; i <= 8; i++) b.iovStart[i] = 2 * i;
    const got: Buffer[] = [];
    const calls: number[] = [];
    for (let tries = 0; got.length < count && tries < 100; tries++) {
      b.count = 8;
      const n = q.receive(b, mem);
      if (n === 0) continue;
      calls.push(n);
      for (let i = 0; i < n; i++) got.push(Buffer.from(new Uint8Array(mem, 2048 * i, b.len[i])));
    }
    expect(got.length).toBe(count);
    got.forEach((f, seq) => expect(f.equals(patternFrame(seq, size, SRC, DST))).toBe(true));
    expect(calls).toEqual([8, 8, 4]);
    b.count = 8;
    expect(q.receive(b, mem)).toBe(0);
  }, 20_000);

  it('drops and counts frames the kernel refuses with an error other than EAGAIN (EBADFD: a tun fd attached to no interface), and goes on', () => {
    const loose = native.open('/dev/net/tun', O_RDWR | O_NONBLOCK);
    let ring: ReturnType<typeof openUring> | undefined;
    try {
      let lq: DriverQueue;
      if (uring) {
        ring = openUring(128);
        if (typeof ring === 'string') throw new Error(ring);
        lq = new UringTapQueue(loose, ring);
      } else lq = new TapQueue(loose);
      const b = newPacketBatch(3, 3);
      new Uint8Array(mem).set(frame(60));
      for (let i = 0; i < 3; i++) b.iov.set([0, 0, 60], 3 * i);
      b.iovStart.set([0, 1, 2, 3]);
      b.len.set([60, 60, 60]);
      b.meta.fill(0);
      for (const count of [3, 1]) {
        b.count = count;
        const before = lq.drops;
        expect(lq.transmit(b, mem)).toBe(count);
        expect([lq.drops - before, lq.wouldBlock]).toEqual([count, false]);
      }
    } finally {
      if (ring && typeof ring !== 'string') ring.close();
      native.close(loose);
    }
  });
});

describe('io_uring reads collected in order', () => {
  const HDR = 12;
  /** a batch of `packets` packets of two segments of `seg` bytes each, packet i's at i * 1000 */
  function rxBatch(packets: number, seg: number): PacketBatch {
    const b = newPacketBatch(packets, 2 * packets);
    for (let i = 0; i < packets; i++) {
      b.iov.set([0, i * 1000, seg, 0, i * 1000 + 500, seg], 6 * i);
      b.iovStart[i] = 2 * i;
    }
    b.iovStart[packets] = 2 * packets;
    b.count = packets;
    return b;
  }
  /** put frame f where the reads put it: into packet i's two segments */
  function place(mem: SharedArrayBuffer, b: PacketBatch, i: number, f: Uint8Array): void {
    const seg = b.iov[6 * i + 2];
    new Uint8Array(mem, i * 1000, Math.min(seg, f.length)).set(f.subarray(0, seg));
    if (f.length > seg) new Uint8Array(mem, i * 1000 + 500, f.length - seg).set(f.subarray(seg));
  }
  function read(mem: SharedArrayBuffer, b: PacketBatch, i: number, len: number): Buffer {
    const seg = b.iov[6 * i + 2];
    const first = Buffer.from(new Uint8Array(mem, i * 1000, Math.min(seg, len)));
    return len > seg ? Buffer.concat([first, Buffer.from(new Uint8Array(mem, i * 1000 + 500, len - seg))]) : first;
  }

  it('moves a frame read after an empty read down, with its header, so packets [0, got) are the frames in order', () => {
    const mem = new SharedArrayBuffer(1 << 16);
    const b = rxBatch(4, 200);
    const a = patternFrame(1, 300, SRC, DST);
    const c = patternFrame(2, 60, SRC, DST);
    place(mem, b, 1, a);
    place(mem, b, 3, c);
    const hdrs = new DataView(new ArrayBuffer(4 * HDR_STRIDE));
    hdrs.setUint8(1 * HDR_STRIDE, 1); // NEEDS_CSUM
    hdrs.setUint16(1 * HDR_STRIDE + 6, 34, true);
    hdrs.setUint16(1 * HDR_STRIDE + 8, 16, true);
    hdrs.setUint8(3 * HDR_STRIDE, 2); // DATA_VALID
    const res = new Int32Array([-11, HDR + a.length, -11, HDR + c.length]);
    expect(collectReads(b, mem, 4, res, new Float64Array([400, 400, 400, 400]), hdrs)).toBe(2);
    expect([b.len[0], b.len[1]]).toEqual([300, 60]);
    expect(read(mem, b, 0, 300).equals(a)).toBe(true);
    expect(read(mem, b, 1, 60).equals(c)).toBe(true);
    expect([...b.meta.subarray(0, META_WORDS)]).toEqual([META_NEEDS_CSUM, 34, 16, 0, 0, 0]);
    expect(b.meta[META_WORDS + META.FLAGS]).toBe(META_CSUM_VALID);
  });

  it('reports empty a frame that the packet it moves into cannot hold', () => {
    const mem = new SharedArrayBuffer(1 << 16);
    const b = rxBatch(2, 200);
    b.iov[2] = 50; // packet 0: 50 + 200 bytes
    b.iov[5] = 200;
    place(mem, b, 1, patternFrame(1, 300, SRC, DST));
    const res = new Int32Array([-11, HDR + 300]);
    expect(collectReads(b, mem, 2, res, new Float64Array([250, 400]), new DataView(new ArrayBuffer(2 * HDR_STRIDE)))).toBe(1);
    expect(b.len[0]).toBe(0);
  });
});

describe('tap driver where the kernel refuses io_uring', () => {
  // test/helpers/no-uring.c runs a command under a seccomp filter that answers io_uring_setup with
  // EPERM, as kernel.io_uring_disabled does (the host's sysctl is left alone); the probe sends and
  // receives frames through a queue of the driver, and is run once with io_uring, once refused
  let ns: NetNs;
  let dir: string;
  let noUring: string;
  const probe = (launcher: string[]) => {
    const r = spawnSync('ip', ['netns', 'exec', ns.name, ...launcher, process.execPath, PROBE, DIST, PKT, 'tnour0'], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) throw new Error(`probe failed (${r.status}): ${r.stderr}`);
    return { out: lastJson(r.stdout) as { queue: string; counters: Record<string, number>; tx: Record<string, unknown> & { seen: Record<string, unknown> }; rx: Record<string, unknown> }, stderr: r.stderr };
  };
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-nouring-'));
    noUring = join(dir, 'no-uring');
    execFileSync('cc', ['-O2', '-Wall', '-o', noUring, new URL('./helpers/no-uring.c', import.meta.url).pathname]);
    ns = new NetNs('tapnouring');
    ns.addTap('tnour0');
  });
  afterAll(() => {
    ns?.delete();
    if (dir) rmSync(dir, { recursive: true });
  });

  it('falls back to readv/writev, says so once on stderr, counts it, and moves the same frames byte for byte both ways', () => {
    const on = probe([]);
    const off = probe([noUring]);
    expect(on.out.queue).toBe('UringTapQueue');
    expect(on.out.counters).toMatchObject({ uringQueues: 1, uringFallbacks: 0 });
    expect(on.stderr).not.toContain('io_uring');
    expect(off.out.queue).toBe('TapQueue');
    expect(off.out.counters).toMatchObject({ uringQueues: 0, uringFallbacks: 1, uringRxFrames: 0 });
    expect(off.stderr.split('\n').filter((l) => l.includes('io_uring'))).toEqual(['tsvmm: tap tnour0: io_uring refused by the kernel (EPERM); using readv/writev, a system call per frame']);
    for (const r of [on, off]) {
      expect(r.out.tx).toMatchObject({ sent: r.out.tx.offered, drops: 0 });
      expect(r.out.tx.seen).toMatchObject({ frames: r.out.tx.offered, bad: 0, in_order: true, sha256: r.out.tx.sha256 });
      expect(r.out.rx).toMatchObject({ frames: 20, sha256: r.out.rx.expected });
    }
    // the same frames both ways, whichever path moved them
    expect([off.out.tx.sha256, off.out.rx.sha256]).toEqual([on.out.tx.sha256, on.out.rx.sha256]);
  }, 120_000);
});

describe('tap driver options', () => {
  it('takes uring=on or uring=off and names anything else before it opens anything', () => {
    expect(() => create({ ifname: 'tdrvx0', uring: 'maybe' })).toThrow(new UserError('--net tap: uring must be on or off'));
  });
});

describe('tap driver MTU', () => {
  // create() acts on the namespace it runs in: a node of its own inside the test's namespace
  const probe = (options: Record<string, string>) =>
    ns.exec(process.execPath, '--input-type=module', '-e', `
      const { create } = await import(${JSON.stringify(new URL('../dist/drivers/tap/index.js', import.meta.url).href)});
      try {
        const d = create(${JSON.stringify({ uring: 'off', ...options })});
        d.close();
        console.log(JSON.stringify({ caps: d.caps.mtu }));
      } catch (e) { console.log(JSON.stringify({ error: e.message })); }`);
  const result = (options: Record<string, string>) => JSON.parse(probe(options).trim().split('\n').at(-1)!) as { caps?: number; error?: string };
  const linkMtu = (name: string) => Number(ns.exec('cat', `/sys/class/net/${name}/mtu`).trim());
  let ns: NetNs;
  beforeAll(() => {
    ns = new NetNs('tapmtu');
    ns.addTap('tmtu0');
  });
  afterAll(() => ns?.delete());

  it("reports the tap's own MTU (not a fixed 1500)", () => {
    ns.exec('ip', 'link', 'set', 'tmtu0', 'mtu', '9000');
    expect(result({ ifname: 'tmtu0' })).toEqual({ caps: 9000 });
    ns.exec('ip', 'link', 'set', 'tmtu0', 'mtu', '1500');
    expect(result({ ifname: 'tmtu0' })).toEqual({ caps: 1500 });
  });

  it('raises the tap to mtu=N, never lowers it, and names an MTU the kernel refuses', () => {
    ns.exec('ip', 'link', 'set', 'tmtu0', 'mtu', '1500');
    expect(result({ ifname: 'tmtu0', mtu: '9000' })).toEqual({ caps: 9000 });
    expect(linkMtu('tmtu0')).toBe(9000);
    expect(result({ ifname: 'tmtu0', mtu: '4000' })).toEqual({ caps: 9000 });
    expect(linkMtu('tmtu0')).toBe(9000);
    expect(result({ ifname: 'tmtu0', mtu: '65535' })).toEqual({ error: '--net tap: tmtu0 cannot take mtu=65535 (the kernel refused it; a tap\'s largest is 65521)' });
    expect(result({ ifname: 'tmtu0', mtu: 'x' })).toEqual({ error: '--net tap: mtu must be a whole number from 68 to 65535' });
  });
});

describe('tap driver UDP segmentation offload (USO)', () => {
  const USO_TAP = 'tuso0';
  let ns: NetNs;
  let fd = -1;
  let q: DriverQueue;
  const mem = new SharedArrayBuffer(1 << 20);
  /** the driver made in the namespace (create() acts on the one it runs in): its offloads, after setGuestOffloads(`guest`) */
  const offloads = (guest: Record<string, boolean>) =>
    JSON.parse(
      ns
        .exec(process.execPath, '--input-type=module', '-e', `
      const { create } = await import(${JSON.stringify(new URL('../dist/drivers/tap/index.js', import.meta.url).href)});
      const d = create({ ifname: ${JSON.stringify(USO_TAP)}, uring: 'off' });
      d.setGuestOffloads(${JSON.stringify(guest)});
      d.close();
      console.log(JSON.stringify(d.caps.offloads));`)
        .trim()
        .split('\n')
        .at(-1)!,
    ) as Record<string, boolean>;
  const udpSegmentation = () => /tx-udp-segmentation: (on|off)/.exec(ns.exec('ethtool', '-k', USO_TAP))?.[1];

  beforeAll(() => {
    ns = new NetNs('tapuso');
    ns.addTap(USO_TAP);
    ns.exec('ip', 'addr', 'add', '10.9.0.1/24', 'dev', USO_TAP);
    ns.exec('ip', 'neigh', 'add', '10.9.0.2', 'lladdr', '02:00:00:00:00:0b', 'dev', USO_TAP);
    fd = openTapQueue(ns, USO_TAP);
    q = openQueue({ fd, uring: false });
  });

  afterAll(() => {
    q?.close();
    if (fd >= 0) native.close(fd);
    ns?.delete();
  });

  it('is offered where the kernel takes TUN_F_USO4/6 (Linux 6.2 on), and passed to the tap with the guest taking both', () => {
    const on = offloads({ rxCsum: true, rxTso4: true, rxTso6: true, rxTsoEcn: false, rxUso4: true, rxUso6: true });
    const [major, minor] = execFileSync('uname', ['-r'], { encoding: 'utf8' }).split('.').map(Number);
    const uso = major > 6 || (major === 6 && minor >= 2);
    expect([on.txUso, on.rxUso4, on.rxUso6]).toEqual([uso, uso, uso]);
    if (!uso) return;
    expect(udpSegmentation()).toBe('on');
    // a guest that takes UDP GSO frames over one IP version only gets none (the kernel does both or neither)
    offloads({ rxCsum: true, rxTso4: true, rxTso6: true, rxTsoEcn: false, rxUso4: true, rxUso6: false });
    expect(udpSegmentation()).toBe('off');
  }, 20_000);

  it('sends a UDP GSO packet (GSO_UDP_L4) that the kernel segments into datagrams of GSO_SIZE, intact', async () => {
    const payload = Buffer.alloc(4000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 3) & 0xff;
    const tapMac = Buffer.from(ns.exec('cat', `/sys/class/net/${USO_TAP}/address`).trim().replace(/:/g, ''), 'hex');
    const f = udpFrame(tapMac, Buffer.from('02000000000b', 'hex'), [10, 9, 0, 2], [10, 9, 0, 1], 4000, 5001, payload);
    new Uint8Array(mem).set(f, 0);
    const b = batch(1, f.length);
    b.len[0] = f.length;
    b.meta.fill(0);
    b.meta[META.FLAGS] = META_NEEDS_CSUM;
    b.meta[META.CSUM_START] = 34;
    b.meta[META.CSUM_OFFSET] = 6;
    b.meta[META.GSO_TYPE] = GSO_UDP_L4;
    b.meta[META.GSO_SIZE] = 1000;
    b.meta[META.HDR_LEN] = 42;
    const recv = runInNs(ns, ['python3', '-c', UDP_RECEIVE, '10.9.0.1', '5001', '4']);
    await recv.waitFor('READY');
    expect(q.transmit(b, mem)).toBe(1);
    const seen = lastJson((await recv.done).stdout);
    expect(seen).toEqual({ sizes: [1000, 1000, 1000, 1000], sha256: createHash('sha256').update(payload).digest('hex') });
  }, 20_000);

  it('receives what the kernel sends with UDP_SEGMENT as one GSO frame (GSO_UDP_L4) while USO is on', () => {
    // what the driver's setGuestOffloads does for a guest that takes both
    native.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6, 'TUNSETOFFLOAD');
    const scratch = new Uint8Array(70000);
    while (native.read(fd, scratch) > 0);
    ns.exec('python3', '-c', UDP_SEGMENT_SEND, '10.9.0.2', '5002', '1000', '4000');
    expect(native.poll(fd, POLLIN, 10_000) & POLLIN).toBe(POLLIN);
    const b = newPacketBatch(1, 1);
    b.iov.set([0, 0, 65536], 0);
    b.iovStart[0] = 0;
    b.iovStart[1] = 1;
    let got = 0;
    for (let tries = 0; got === 0 && tries < 100; tries++) {
      b.count = 1;
      got = q.receive(b, mem);
    }
    expect(got).toBe(1);
    expect([b.len[0], b.meta[META.GSO_TYPE], b.meta[META.GSO_SIZE], b.meta[META.FLAGS] & META_NEEDS_CSUM]).toEqual([14 + 20 + 8 + 4000, GSO_UDP_L4, 1000, META_NEEDS_CSUM]);
    native.ioctl(fd, TUNSETOFFLOAD, 0, 'TUNSETOFFLOAD');
  }, 20_000);
});

/** Receives `count` UDP datagrams on addr:port (5 s at most): their sizes and the sha256 of their payloads in order, as JSON. */
const UDP_RECEIVE = `
import hashlib, json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
print('READY', flush=True)
sizes, h = [], hashlib.sha256()
try:
    while len(sizes) < int(sys.argv[3]):
        d = s.recv(70000)
        sizes.append(len(d)); h.update(d)
except socket.timeout:
    pass
print(json.dumps({'sizes': sizes, 'sha256': h.hexdigest()}))
`;

/** Sends one UDP_SEGMENT write (segments of argv[3] bytes, argv[4] bytes in all) to addr:port. */
const UDP_SEGMENT_SEND = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, int(sys.argv[3]))  # UDP_SEGMENT
s.sendto(bytes(i & 0xff for i in range(int(sys.argv[4]))), (sys.argv[1], int(sys.argv[2])))
`;

/** An Ethernet/IPv4/UDP frame with `payload`, its UDP checksum left partial (the pseudo-header sum, as for NEEDS_CSUM). */
function udpFrame(dst: Buffer, src: Buffer, sip: number[], dip: number[], sport: number, dport: number, payload: Buffer): Buffer {
  const f = Buffer.alloc(42 + payload.length);
  dst.copy(f, 0);
  src.copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  f[14] = 0x45;
  f.writeUInt16BE(20 + 8 + payload.length, 16);
  f[22] = 64;
  f[23] = 17;
  f.set(sip, 26);
  f.set(dip, 30);
  f.writeUInt16BE(fold(sum16(f.subarray(14, 34))) ^ 0xffff, 24);
  f.writeUInt16BE(sport, 34);
  f.writeUInt16BE(dport, 36);
  f.writeUInt16BE(8 + payload.length, 38);
  const pseudo = Buffer.alloc(12);
  pseudo.set(sip, 0);
  pseudo.set(dip, 4);
  pseudo[9] = 17;
  pseudo.writeUInt16BE(8 + payload.length, 10);
  f.writeUInt16BE(fold(sum16(pseudo)), 40);
  payload.copy(f, 42);
  return f;
}

function sum16(b: Buffer): number {
  let s = 0;
  for (let i = 0; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length & 1) s += b[b.length - 1] << 8;
  return s;
}

function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}
