// A vhost-user *frontend* for tests: what QEMU or DPDK's virtio-user does, in a few calls — memory in a
// memfd handed over by SET_MEM_TABLE, split rings driven with TestDriver, kicks through eventfds — so
// backend behaviour that needs exact control (which page was written when) can be checked directly.
import { expect } from 'vitest';
import { native, AF_UNIX, SOCK_STREAM, EFD_NONBLOCK } from '../../src/native.js';
import { REQ, FLAG_VERSION, HDR_SIZE } from '../../src/vhost-user/protocol.js';
import { TestDriver, TestMemory } from './virtq-driver.js';
import { PackedTestDriver } from './packed-driver.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export const u64 = (v: bigint): Uint8Array => {
  const p = new Uint8Array(8);
  new DataView(p.buffer).setBigUint64(0, v, true);
  return p;
};

/** the frontend's virtual address of guest-physical `base` (any value: the backend only translates it) */
const UADDR = 0x7f1200000000;

export class TestFrontend {
  readonly fd: number;
  private readonly ep: number;
  readonly mem: TestMemory;
  private readonly memfd: number;
  readonly rings: TestDriver[] = [];
  /** the rings when setup() was asked for packed ones */
  readonly packed: PackedTestDriver[] = [];
  /** (packed) the used descriptors usedReaches() has taken from each ring, oldest first */
  readonly packedUsed: Array<Array<{ id: number; len: number }>> = [];
  readonly kicks: number[] = [];
  readonly calls: number[] = [];

  /**
   * With ACCESS_PLATFORM the rings are given by IOVA: `iovaOffset` is added to guest-physical
   * addresses to make them (and the frontend must answer the backend's IOTLB misses).
   */
  iovaOffset?: number;

  /**
   * Connect to `sock`; guest memory is `size` bytes at guest-physical `base`. `layout.regionSize`: the
   * memory table claims this much (a sparse file; the test touches only the first `size` bytes);
   * `layout.splitAt`: the table gives the memory as two regions split at this offset, the upper one first;
   * `layout.touchAt`: the `size` bytes the test uses (rings, buffers) start this far into the region
   * (page-aligned), e.g. above 4 GiB of a larger sparse region.
   */
  constructor(sock: string, size = 2 << 20, readonly base = 0x100000, private readonly layout: { regionSize?: number; splitAt?: number; touchAt?: number } = {}) {
    this.fd = native.socket(AF_UNIX, SOCK_STREAM, 0);
    expect(native.connectUnix(this.fd, sock)).toBe(0);
    this.ep = native.epollCreate();
    native.epollCtl(this.ep, 1, this.fd, 1, 0);
    this.memfd = native.memfdCreate('test-frontend', 0);
    native.ftruncate(this.memfd, layout.regionSize ?? size);
    const at = layout.touchAt ?? 0;
    this.mem = new TestMemory(size, base + at, native.mmapShared(this.memfd, size, at).buffer);
  }

  /** SET_MEM_TABLE's payload and descriptors for the memory (see `layout`) */
  private memTable(): [Uint8Array, number[]] {
    const size = this.layout.regionSize ?? this.mem.size + (this.layout.touchAt ?? 0);
    const split = this.layout.splitAt;
    // [guest-physical, size, file offset] per region
    const regions = split === undefined ? [[this.base, size, 0]] : [[this.base + split, size - split, split], [this.base, split, 0]];
    const t = new Uint8Array(8 + 32 * regions.length);
    const v = new DataView(t.buffer);
    v.setUint32(0, regions.length, true);
    regions.forEach(([gpa, len, offset], i) => {
      v.setBigUint64(8 + 32 * i, BigInt(gpa), true);
      v.setBigUint64(16 + 32 * i, BigInt(len), true);
      v.setBigUint64(24 + 32 * i, BigInt(this.uaddr(gpa)), true);
      v.setBigUint64(32 + 32 * i, BigInt(offset), true);
    });
    return [t, regions.map(() => this.memfd)];
  }

  send(request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = [], flags = FLAG_VERSION): void {
    const m = new Uint8Array(HDR_SIZE + payload.length);
    const v = new DataView(m.buffer);
    v.setUint32(0, request, true);
    v.setUint32(4, flags, true);
    v.setUint32(8, payload.length, true);
    m.set(payload, HDR_SIZE);
    expect(native.sendmsg(this.fd, m, fds)).toBe(m.length);
  }

  /** Send and wait for the reply's payload (the backend runs on this event loop: poll, don't block). */
  async call(request: number, payload?: Uint8Array, fds: number[] = [], flags = FLAG_VERSION): Promise<DataView> {
    this.send(request, payload, fds, flags);
    const ev = new Uint32Array(3);
    const buf = new Uint8Array(4096);
    for (const end = Date.now() + 5000; Date.now() < end; ) {
      await sleep(5);
      if (native.epollWait(this.ep, ev, 0) === 0) continue;
      const n = native.recvmsg(this.fd, buf, new Int32Array(4));
      if (n <= 0) throw new Error(`backend closed the connection on request ${request}`);
      const v = new DataView(buf.buffer, 0, n);
      expect(v.getUint32(0, true)).toBe(request);
      return new DataView(buf.buffer.slice(HDR_SIZE, n));
    }
    throw new Error(`no reply to request ${request}`);
  }

  /**
   * Features, memory table and `pairs` queue pairs of `size` entries, enabled. `packed`: the rings are
   * packed (`features` must say so), each given `packed.base` (default: position 0, both wrap counters set).
   */
  async setup(features: bigint, protocolFeatures: bigint, pairs = 1, size = 256, backendFd?: number, packed?: { base?: number }): Promise<void> {
    await this.call(REQ.GET_FEATURES);
    this.send(REQ.SET_FEATURES, u64(features));
    await this.call(REQ.GET_PROTOCOL_FEATURES);
    this.send(REQ.SET_PROTOCOL_FEATURES, u64(protocolFeatures));
    this.send(REQ.SET_OWNER);
    // the channel the backend asks us things on (IOTLB misses)
    if (backendFd !== undefined) this.send(REQ.SET_BACKEND_REQ_FD, new Uint8Array(0), [backendFd]);
    this.send(REQ.SET_MEM_TABLE, ...this.memTable());
    for (let i = 0; i < 2 * pairs; i++) {
      // each ring from a fresh page: a test can then tell which ring's pages were written
      this.mem.alloc(1, 4096);
      if (packed) this.packed.push(new PackedTestDriver(this.mem, size, true));
      else this.rings.push(new TestDriver(this.mem, size));
      this.send(REQ.SET_VRING_NUM, state(i, size));
      this.setAddr(i);
      this.send(REQ.SET_VRING_BASE, state(i, packed ? (packed.base ?? 0x80008000) : 0));
      this.kicks.push(native.eventfd(0, EFD_NONBLOCK));
      this.calls.push(native.eventfd(0, EFD_NONBLOCK));
      this.send(REQ.SET_VRING_KICK, u64(BigInt(i)), [this.kicks[i]]);
      this.send(REQ.SET_VRING_CALL, u64(BigInt(i)), [this.calls[i]]);
      this.send(REQ.SET_VRING_ENABLE, state(i, 1));
    }
    // a round trip: everything above has been handled once this returns
    await this.call(REQ.GET_QUEUE_NUM);
  }

  /** SET_VRING_ADDR for ring i; `logGpa` asks for used-ring logging there (VHOST_VRING_F_LOG). */
  setAddr(i: number, logGpa?: number): void {
    const c = (this.rings[i] ?? this.packed[i]).cfg;
    const a = new Uint8Array(40);
    const v = new DataView(a.buffer);
    v.setUint32(0, i, true);
    v.setUint32(4, logGpa === undefined ? 0 : 1, true);
    v.setBigUint64(8, BigInt(this.va(c.desc)), true);
    v.setBigUint64(16, BigInt(this.va(c.used)), true);
    v.setBigUint64(24, BigInt(this.va(c.avail)), true);
    v.setBigUint64(32, BigInt(logGpa ?? 0), true);
    this.send(REQ.SET_VRING_ADDR, a);
  }

  /** the address a device sees for `gpa`: an IOVA behind the IOTLB, else the frontend's own address */
  private va(gpa: number): number {
    return this.iovaOffset !== undefined ? gpa + this.iovaOffset : this.uaddr(gpa);
  }

  /** the frontend's virtual address of guest-physical `gpa` */
  uaddr(gpa: number): number {
    return UADDR + (gpa - this.base);
  }

  kick(i: number): void {
    native.write(this.kicks[i], u64(1n));
  }

  /** Wait until ring i's used index reaches `idx` (packed: until `idx` chains were used in all). */
  async usedReaches(i: number, idx: number): Promise<void> {
    const p = this.packed[i];
    if (p) {
      const got = (this.packedUsed[i] ??= []);
      for (const end = Date.now() + 5000; Date.now() < end; await sleep(5)) {
        got.push(...p.takeUsed());
        if (got.length >= idx) return;
      }
      throw new Error(`ring ${i}: ${got.length} chains used, never ${idx}`);
    }
    const r = this.rings[i];
    for (const end = Date.now() + 5000; Date.now() < end; await sleep(5)) {
      if (this.mem.dv.getUint16(r.cfg.used - this.mem.base + 2, true) === (idx & 0xffff)) return;
    }
    throw new Error(`ring ${i}: used index never reached ${idx}`);
  }

  close(): void {
    native.close(this.fd);
    native.close(this.ep);
    native.close(this.memfd);
    for (const fd of [...this.kicks, ...this.calls]) native.close(fd);
  }
}

export function state(index: number, num: number): Uint8Array {
  const p = new Uint8Array(8);
  const v = new DataView(p.buffer);
  v.setUint32(0, index, true);
  v.setUint32(4, num, true);
  return p;
}
