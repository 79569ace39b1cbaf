// The native shim: errors name the operation and errno; shared memory is shared across threads.
import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { native, EFD_NONBLOCK, EPOLLIN, EPOLL_CTL_ADD, AF_UNIX, SOCK_STREAM } from '../src/native.js';
import { GuestMemory, MemoryTable } from '../src/vmm/memory.js';

describe('native shim', () => {
  it('throws errors carrying the errno name and the operation', () => {
    try {
      native.open('/nonexistent/file', 0);
      expect.unreachable();
    } catch (e) {
      expect(e).toMatchObject({ code: 'ENOENT', errno: 2, syscall: 'open /nonexistent/file' });
      expect((e as Error).message).toBe('open /nonexistent/file: No such file or directory (ENOENT)');
    }
    expect(() => native.ioctl(-1, 0xae00, 0, 'KVM_GET_API_VERSION')).toThrow(/^KVM_GET_API_VERSION: Bad file descriptor \(EBADF\)$/);
  });

  it('reports EAGAIN on an empty non-blocking eventfd as -11, and wakes epoll when written', () => {
    const efd = native.eventfd(0, EFD_NONBLOCK);
    const ep = native.epollCreate();
    native.epollCtl(ep, EPOLL_CTL_ADD, efd, EPOLLIN, 42);
    const buf = new BigUint64Array(1);
    expect(native.read(efd, buf)).toBe(-11);
    const events = new Uint32Array(3 * 4);
    expect(native.epollWait(ep, events, 0)).toBe(0);
    native.write(efd, new BigUint64Array([3n]));
    expect(native.epollWait(ep, events, 1000)).toBe(1);
    expect(events[0] & EPOLLIN).toBe(EPOLLIN);
    expect(events[1]).toBe(42);
    expect(native.read(efd, buf)).toBe(8);
    expect(buf[0]).toBe(3n);
    native.close(ep);
    native.close(efd);
  });

  it('maps guest memory once and shares it with workers, Atomics included', async () => {
    const mem = new GuestMemory([{ gpa: 0, size: 1 << 20, offset: 0 }, { gpa: 4 * 2 ** 30, size: 1 << 20, offset: 1 << 20 }]);
    expect(mem.buffer).toBeInstanceOf(SharedArrayBuffer);
    mem.write(4 * 2 ** 30 + 16, new Uint8Array([1, 2, 3]));
    const worker = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
       const a = new Int32Array(workerData.buffer);
       const seen = new Uint8Array(workerData.buffer)[workerData.off + 17];
       Atomics.store(a, 0, 1234); Atomics.notify(a, 0);
       parentPort.postMessage(seen);`,
      { eval: true, workerData: { buffer: mem.buffer, off: mem.table.translate(4 * 2 ** 30, 1) } },
    );
    const seen = await new Promise((r) => worker.once('message', r));
    expect(seen).toBe(2);
    expect(Atomics.load(new Int32Array(mem.buffer), 0)).toBe(1234);
    await worker.terminate();
    mem.release();
    expect(mem.bytes.u8(17 + (1 << 20))).toBe(0); // anonymous pages now, not the guest's
  });
});

/** iovec triples [buffer, offset, length] the shim must refuse for 64-byte buffers: not whole numbers, no such buffer, outside it */
const BAD_TRIPLES = [
  [0, NaN, 8],
  [0, 0, NaN],
  [NaN, 0, 8],
  [0.5, 0, 8],
  [2, 0, 8],
  [-1, 0, 8],
  [0, -8, 8],
  [0, 60, 8],
  [0, Infinity, 8],
  [0, 0, Infinity],
];

describe('native shim: memory safety of what it is handed', () => {
  it('refuses iovec entries with NaN, out-of-range or negative fields before any system call', () => {
    const efd = native.eventfd(0, EFD_NONBLOCK);
    const mem = new SharedArrayBuffer(64);
    const scratch = new ArrayBuffer(64);
    native.write(efd, new BigUint64Array([1n]));
    for (const bad of BAD_TRIPLES) {
      expect(() => native.readv(efd, new Float64Array(bad), 1, mem, scratch), `readv ${bad}`).toThrow(new TypeError('readv: bad iovec table'));
      expect(() => native.writev(efd, new Float64Array(bad), 1, mem, scratch), `writev ${bad}`).toThrow(new TypeError('writev: bad iovec table'));
    }
    // (the eventfd's count is untouched: none of those reached the kernel)
    expect(native.readv(efd, new Float64Array([1, 8, 8]), 1, mem, scratch)).toBe(8);
    expect(new BigUint64Array(scratch, 8, 1)[0]).toBe(1n);
    native.close(efd);
  });

  it('fills iovec tables with real addresses only from triples inside their buffers, and only inside the table', () => {
    const mem = new SharedArrayBuffer(64);
    const scratch = new ArrayBuffer(64);
    const out = new ArrayBuffer(4 * 16);
    const words = new BigUint64Array(out);
    expect(native.fillIovecs(out, 1, new Float64Array([0, 8, 16, 1, 60, 4]), 2, mem, scratch)).toBe(2);
    expect([...words]).toEqual([0n, 0n, native.addressOf(new Uint8Array(mem)) + 8n, 16n, native.addressOf(scratch) + 60n, 4n, 0n, 0n]);
    words.fill(0n);
    for (const bad of [...BAD_TRIPLES, [1, 57, 8]])
      expect(native.fillIovecs(out, 0, new Float64Array(bad), 1, mem, scratch), `${bad}`).toBe(-1);
    // past the table's end, a negative or fractional place, more triples than the table of them holds
    expect(native.fillIovecs(out, 4, new Float64Array([0, 0, 8]), 1, mem)).toBe(-1);
    expect(native.fillIovecs(out, 3, new Float64Array([0, 0, 8, 0, 0, 8]), 2, mem)).toBe(-1);
    expect(native.fillIovecs(out, -1, new Float64Array([0, 0, 8]), 1, mem)).toBe(-1);
    expect(native.fillIovecs(out, 0, new Float64Array([0, 0, 8]), 2, mem)).toBe(-1);
    expect([...words].every((w) => w === 0n)).toBe(true);
    // a table the kernel would read misaligned
    expect(() => native.fillIovecs(new Uint8Array(out, 4) as unknown as ArrayBuffer, 0, new Float64Array([0, 0, 8]), 1, mem)).toThrow(TypeError);
  });

  it('refuses an ioctl buffer shorter than the size its request encodes', () => {
    const fd = native.open('/dev/null', 0);
    // _IOR('x', 1, 64 bytes) with 8 bytes: the kernel could write 56 bytes past the buffer
    const req = (2 << 30) | (64 << 16) | (0x78 << 8) | 1;
    const big = new Uint8Array(16).fill(0xaa);
    expect(() => native.ioctl(fd, req, big.subarray(0, 8), 'IOR64')).toThrow(new TypeError("ioctl: buffer smaller than the request's size"));
    // long enough: it reaches the kernel, which has no such request for /dev/null
    expect(() => native.ioctl(fd, req, new Uint8Array(64), 'IOR64')).toThrow(/^IOR64: Inappropriate ioctl for device \(ENOTTY\)$/);
    // requests that encode no direction or size (legacy socket ones) take any buffer
    expect(() => native.ioctl(fd, 0x8913, new Uint8Array(1), 'SIOCGIFFLAGS')).toThrow(/ENOTTY/);
    native.close(fd);
  });
});

describe('native shim: unix sockets and foreign memory (the vhost-user plumbing)', () => {
  it('passes file descriptors over a unix socket', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsvmm-unix-'));
    const path = join(dir, 'sock');
    const srv = native.socket(AF_UNIX, SOCK_STREAM, 0);
    native.bindUnix(srv, path);
    native.listen(srv, 4);
    const cli = native.socket(AF_UNIX, SOCK_STREAM, 0);
    expect(native.connectUnix(cli, path)).toBe(0);
    const conn = native.accept(srv);
    expect(conn).toBeGreaterThan(0);
    const efd = native.eventfd(0, EFD_NONBLOCK);
    expect(native.sendmsg(cli, new Uint8Array([1, 2, 3]), [efd])).toBe(3);
    const buf = new Uint8Array(16);
    const fds = new Int32Array(8);
    expect(native.recvmsg(conn, buf, fds)).toBe(3);
    expect([...buf.subarray(0, 3)]).toEqual([1, 2, 3]);
    const got = fds[0];
    expect(got).toBeGreaterThan(0);
    expect(fds[1]).toBe(-1);
    // the received descriptor is the same eventfd
    native.write(got, new BigUint64Array([5n]));
    const v = new BigUint64Array(1);
    native.read(efd, v);
    expect(v[0]).toBe(5n);
    native.close(cli);
    expect(native.recvmsg(conn, buf, fds)).toBe(0); // peer closed
    for (const fd of [got, efd, conn, srv]) native.close(fd);
    rmSync(dir, { recursive: true });
  });

  it('maps another file into a reserved shared buffer at a chosen offset', () => {
    const res = native.reserveShared(4 << 20);
    const mfd = native.memfdCreate('region', 0);
    native.ftruncate(mfd, 1 << 20);
    native.mmapFixed(res.address + BigInt(2 << 20), 1 << 20, mfd, 0);
    const other = native.mmapShared(mfd, 1 << 20);
    new Uint8Array(other.buffer)[100] = 0x5a;
    expect(new Uint8Array(res.buffer)[(2 << 20) + 100]).toBe(0x5a);
    native.close(mfd);
  });
});

describe('memory table', () => {
  const t = new MemoryTable([{ gpa: 0, size: 0x1000, offset: 0 }, { gpa: 0x10000, size: 0x2000, offset: 0x1000 }]);
  it('translates ranges wholly inside one region', () => {
    expect(t.translate(0, 0x1000)).toBe(0);
    expect(t.translate(0x10010, 0x10)).toBe(0x1010);
    expect(t.translate(0x11fff, 1)).toBe(0x2fff);
  });
  it('refuses ranges outside RAM, across regions, or with bad numbers', () => {
    expect(t.translate(0xfff, 2)).toBe(-1);
    expect(t.translate(0x12000, 1)).toBe(-1);
    expect(t.translate(0x5000, 1)).toBe(-1);
    expect(t.translate(-1, 1)).toBe(-1);
    expect(t.translate(NaN, 1)).toBe(-1);
    expect(t.translate(0, -1)).toBe(-1);
    expect(() => new MemoryTable([{ gpa: 0, size: 0x2000, offset: 0 }, { gpa: 0x1000, size: 0x1000, offset: 0 }])).toThrow(/overlap/);
  });
});

describe('native copy', () => {
  it('moves bytes between any two buffers (shared included) and refuses ranges outside either', async () => {
    const { native } = await import('../src/native.js');
    const dst = new Uint8Array(new SharedArrayBuffer(16));
    const src = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
    native.copy(dst, 4, src, 2, 8);
    expect([...dst]).toEqual([0, 0, 0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0]);
    expect(() => native.copy(dst, 10, src, 0, 8)).toThrow(/outside a buffer/);
    expect(() => native.copy(dst, 0, src, 12, 8)).toThrow(/outside a buffer/);
    expect(() => native.copy(dst, -1, src, 0, 1)).toThrow(/outside a buffer/);
  });

  it('gives a thread a non-shared view of guest memory: the same bytes, mapped as long as the view lives', async () => {
    const mem = new GuestMemory([{ gpa: 0, size: 1 << 20, offset: 0 }]);
    const plain = native.plainView(mem.buffer);
    expect(plain).toBeInstanceOf(ArrayBuffer);
    expect(plain.byteLength).toBe(1 << 20);
    new Uint8Array(plain).set([7, 8, 9], 100);
    expect([...new Uint8Array(mem.buffer, 100, 3)]).toEqual([7, 8, 9]);
    expect(() => native.plainView(plain as unknown as SharedArrayBuffer)).toThrow(/SharedArrayBuffer expected/);
    // a worker maps memory of its own, keeps only the plain view and collects the shared buffer: the
    // mapping stays (an unmapped one would crash the process here), the bytes still there
    const addon = join(dirname(fileURLToPath(import.meta.url)), '..', 'build', 'Release', 'tsvmm_native.node');
    const worker = new Worker(
      `const { parentPort } = require('node:worker_threads');
       require('node:v8').setFlagsFromString('--expose-gc');
       const gc = require('node:vm').runInNewContext('gc');
       const native = require(${JSON.stringify(addon)});
       const fd = native.memfdCreate('plain-view-test', 0);
       native.ftruncate(fd, 1 << 20);
       let p;
       (() => {
         const shared = native.mmapShared(fd, 1 << 20).buffer;
         new Uint8Array(shared)[5000] = 42;
         p = new Uint8Array(native.plainView(shared));
       })();
       (async () => {
         // (array buffers are swept after the collection: give the sweeper its turns)
         for (let i = 0; i < 3; i++) { gc(); await new Promise((r) => setTimeout(r, 10)); }
         p.fill(1, 0, 4096);
         parentPort.postMessage(p[5000] + p[4095]);
       })();`,
      { eval: true },
    );
    expect(await new Promise((r) => worker.once('message', r))).toBe(43);
    await worker.terminate();
    mem.release();
    expect(new Uint8Array(plain)[100]).toBe(0); // anonymous pages now, through either view
  });

  it('copies a list of ranges between two buffers in one call, each range checked inside its buffer', () => {
    const a = new Uint8Array(new SharedArrayBuffer(64)).map((_, i) => i);
    const b = new Uint8Array(32);
    // a[8..12) → b[0..4), b[0..2) → a[60..62), a[0..4) → a[2..6) (overlapping: a memmove)
    native.copyv(Float64Array.of(1, 0, 0, 8, 4, 0, 60, 1, 0, 2, 0, 2, 0, 0, 4), 3, a.buffer, b);
    expect([...b.subarray(0, 4)]).toEqual([8, 9, 10, 11]);
    expect([...a.subarray(60, 62)]).toEqual([8, 9]);
    expect([...a.subarray(0, 6)]).toEqual([0, 1, 0, 1, 2, 3]);
    // the entries before a bad one are made, nothing after it
    const list = Float64Array.of(1, 4, 0, 5, 1, 1, 31, 0, 0, 2, 1, 8, 0, 5, 1);
    expect(() => native.copyv(list, 3, a.buffer, b)).toThrow(/copyv: range outside a buffer/);
    expect(b[4]).toBe(3);
    expect(b[8]).toBe(0);
    expect(() => native.copyv(Float64Array.of(2, 0, 0, 0, 1), 1, a, b)).toThrow(/buffer index not 0 or 1/);
    expect(() => native.copyv(Float64Array.of(1, 0, 0, 0, 1), 1, a)).toThrow(/range outside a buffer/);
    expect(() => native.copyv(Float64Array.of(0, 0, 0, 0, 1), 2, a)).toThrow(/count beyond the list/);
  });
});
