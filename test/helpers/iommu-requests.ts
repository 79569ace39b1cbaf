// The guest's side of a virtio-iommu request queue in unit tests: a request written into test memory
// with room for its reply, made available, the device told (`kick`: its notification exit, or the
// request thread's ioeventfd), and its used entry waited for; and the requests tests send, laid out
// as struct virtio_iommu_req_attach/detach/map/unmap (little-endian fields after the 4-byte head).
import { expect } from 'vitest';
import { T } from '../../src/viommu/device.js';
import type { TestDriver, TestMemory } from './virtq-driver.js';

export interface IommuReply {
  /** the tail's status (VIRTIO_IOMMU_S_*) */
  status: number;
  /** every byte the device wrote: a PROBE's properties, then the tail */
  reply: Uint8Array;
}

/** `rq`: the request queue's ring as the guest drives it; `kick`: tells the device a request is there. */
export function iommuRequests(mem: TestMemory, rq: TestDriver, kick: () => void) {
  /** One request of `len` bytes (type, then `fields`), with `replyLen` bytes for its reply. */
  async function send(type: number, fields: (v: DataView) => void, len: number, replyLen = 4): Promise<IommuReply> {
    const req = mem.alloc(len);
    const v = new DataView(mem.buffer, req - mem.base, len);
    v.setUint8(0, type);
    fields(v);
    const out = mem.alloc(replyLen);
    rq.add([{ addr: req, len }, { addr: out, len: replyLen, write: true }]);
    kick();
    // (a request the request thread holds for quiescence may take a while: the stuck-thread limit)
    for (const end = Date.now() + 5000; Date.now() < end; await new Promise((r) => setTimeout(r, 2))) {
      const u = rq.takeUsed();
      if (u.length === 0) continue;
      expect(u[0].len).toBe(replyLen);
      const reply = mem.bytes(out, replyLen).slice();
      return { status: reply[replyLen - 4], reply };
    }
    throw new Error(`virtio-iommu request ${type} not completed`);
  }
  return {
    send,
    attach: (domain: number, endpoint: number, flags = 0) => send(T.ATTACH, (v) => (v.setUint32(4, domain, true), v.setUint32(8, endpoint, true), v.setUint32(12, flags, true)), 20),
    detach: (domain: number, endpoint: number) => send(T.DETACH, (v) => (v.setUint32(4, domain, true), v.setUint32(8, endpoint, true)), 20),
    map: (domain: number, start: number, end: number, phys: number, flags: number) =>
      send(T.MAP, (v) => (v.setUint32(4, domain, true), v.setBigUint64(8, BigInt(start), true), v.setBigUint64(16, BigInt(end), true), v.setBigUint64(24, BigInt(phys), true), v.setUint32(32, flags, true)), 36),
    unmap: (domain: number, start: number, end: number) => send(T.UNMAP, (v) => (v.setUint32(4, domain, true), v.setBigUint64(8, BigInt(start), true), v.setBigUint64(16, BigInt(end), true)), 28),
  };
}
