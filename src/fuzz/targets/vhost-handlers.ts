// Target "vhost-handlers": the vhost-user backend's request handlers (VhostUserBackend.handle) on
// random message sequences, each message with random descriptors, of the kind it takes or of a wrong
// one (a blocking eventfd, one at its maximum count, /dev/null, a regular file, a memfd, a socket).
// A case is one frontend's session: its messages, then the connection's end (backend.close()).
//
// Invariants: no exception escapes handle(); a reply is a well-formed reply to its request; after
// the session nothing the frontend passed stays open (the process has the descriptors it had before)
// and no dataplane thread runs. The coupling to the backend is this file only.
import fc from 'fast-check';
import { VhostUserBackend } from '../../vhost-user/backend.js';
import * as P from '../../vhost-user/protocol.js';
import { create as nullDriver } from '../../drivers/null/index.js';
import { F_LOG_ALL } from '../../vhost-user/backend.js';
import { VIRTIO_F_ACCESS_PLATFORM as F_ACCESS_PLATFORM } from '../../virtio/device.js';
import { FdFactory, FD_KINDS, type FdKind } from '../fds.js';
import { check, openFds, openFdsSettled, type FuzzTarget } from '../target.js';

/** the frontend's memory: where its regions are in its address space */
const UADDR = 0x7f0000000000;
const MEM = 65536;

const u64 = fc.oneof(fc.constantFrom(0n, 1n, 0xffffffffffffffffn), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }));
const addr = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: MEM - 1 }).map((o) => BigInt(UADDR + o)) },
  { weight: 1, arbitrary: u64 },
);
const ringIndex = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 0, max: 1 }) }, { weight: 1, arbitrary: fc.nat() });
const fdKinds = (n: number) => fc.array(fc.oneof({ weight: 12, arbitrary: fc.constant<FdKind>('eventfd') }, { weight: 1, arbitrary: fc.constantFrom(...FD_KINDS) }), { minLength: n, maxLength: n });

interface Msg {
  request: number;
  needReply: boolean;
  payload: Uint8Array;
  fds: FdKind[];
  /** memfd size, for SET_MEM_TABLE and SET_LOG_BASE */
  memSize?: number;
}

const bytes = (...parts: Array<[number, bigint | number]>): Uint8Array => {
  const len = parts.reduce((s, [w]) => s + w, 0);
  const b = new Uint8Array(len);
  const v = new DataView(b.buffer);
  let at = 0;
  for (const [w, x] of parts) {
    if (w === 8) v.setBigUint64(at, BigInt(x), true);
    else v.setUint32(at, Number(x) >>> 0, true);
    at += w;
  }
  return b;
};

const features = fc.oneof(fc.constant(0n), u64, fc.constantFrom((1n << 32n) | (1n << 29n) | (1n << 28n) | (1n << 15n) | (1n << 30n), (1n << 32n) | (1n << BigInt(F_LOG_ALL)) | (1n << BigInt(F_ACCESS_PLATFORM)), (1n << 32n) | (1n << 34n) | (1n << 29n) | (1n << 15n)));

const message: fc.Arbitrary<Msg> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ request: fc.constantFrom(P.REQ.GET_FEATURES, P.REQ.GET_PROTOCOL_FEATURES, P.REQ.GET_QUEUE_NUM, P.REQ.SET_OWNER, P.REQ.RESET_OWNER), needReply: fc.boolean(), payload: fc.constant(new Uint8Array(0)), fds: fc.oneof({ weight: 10, arbitrary: fc.constant<FdKind[]>([]) }, { weight: 1, arbitrary: fdKinds(1) }) }) },
  fc.record({ request: fc.constantFrom(P.REQ.SET_FEATURES, P.REQ.SET_PROTOCOL_FEATURES), needReply: fc.boolean(), payload: features.map((f) => bytes([8, f])), fds: fc.constant<FdKind[]>([]) }),
  { weight: 3, arbitrary: fc.record({ request: fc.constantFrom(P.REQ.SET_VRING_NUM, P.REQ.SET_VRING_BASE, P.REQ.SET_VRING_ENABLE, P.REQ.GET_VRING_BASE), needReply: fc.boolean(), payload: fc.tuple(ringIndex, fc.oneof(fc.constantFrom(0, 1, 8, 100, 256, 32768, 65536, 0x80008000, 0xffffffff), fc.nat())).map(([i, n]) => bytes([4, i], [4, n])), fds: fc.constant<FdKind[]>([]) }) },
  fc.record({ request: fc.constant(P.REQ.SET_VRING_ADDR), needReply: fc.boolean(), payload: fc.tuple(ringIndex, fc.nat(3), addr, addr, addr, u64).map(([i, f, d, u, a, l]) => bytes([4, i], [4, f], [8, d], [8, u], [8, a], [8, l])), fds: fc.constant<FdKind[]>([]) }),
  fc.record({ request: fc.constantFrom(P.REQ.SET_VRING_KICK, P.REQ.SET_VRING_CALL, P.REQ.SET_VRING_ERR), needReply: fc.boolean(), payload: fc.tuple(ringIndex, fc.boolean()).map(([i, nofd]) => bytes([8, (i & 0xff) | (nofd ? P.VRING_NOFD : 0)])), fds: fc.oneof({ weight: 5, arbitrary: fdKinds(1) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 3 }).chain(fdKinds) }) }),
  fc.record({
    request: fc.constant(P.REQ.SET_MEM_TABLE),
    needReply: fc.boolean(),
    memSize: fc.constantFrom(MEM, 4096, 0),
    payload: fc.array(fc.tuple(fc.oneof(fc.constant(0n), u64), fc.oneof(fc.constantFrom(BigInt(MEM), 4096n, 0n), u64), fc.oneof(fc.constant(BigInt(UADDR)), u64), fc.oneof(fc.constant(0n), fc.constant(4096n), u64)), { minLength: 0, maxLength: 9 }).map((rs) => bytes([4, rs.length], [4, 0], ...rs.flatMap(([g, s, u, o]) => [[8, g], [8, s], [8, u], [8, o]] as Array<[number, bigint]>))),
    fds: fc.oneof({ weight: 4, arbitrary: fc.constant<FdKind[]>(['memfd']) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 9 }).chain((n) => fc.array(fc.constantFrom<FdKind>(...FD_KINDS), { minLength: n, maxLength: n })) }),
  }),
  fc.record({ request: fc.constant(P.REQ.SET_LOG_BASE), needReply: fc.boolean(), memSize: fc.constantFrom(4096, 0), payload: fc.tuple(fc.oneof(fc.constant(4096n), u64), fc.oneof(fc.constant(0n), u64)).map(([s, o]) => bytes([8, s], [8, o])), fds: fc.oneof(fc.constant<FdKind[]>(['memfd']), fdKinds(1), fc.constant<FdKind[]>([])) }),
  fc.record({ request: fc.constantFrom(P.REQ.SET_LOG_FD, P.REQ.SET_BACKEND_REQ_FD), needReply: fc.boolean(), payload: fc.constant(new Uint8Array(8)), fds: fc.integer({ min: 0, max: 2 }).chain(fdKinds) }),
  fc.record({ request: fc.constant(P.REQ.IOTLB_MSG), needReply: fc.boolean(), payload: fc.tuple(addr, fc.oneof(fc.constantFrom(4096n, 0n), u64), addr, fc.nat(3), fc.nat(5)).map(([iova, size, uaddr, perm, type]) => { const b = bytes([8, iova], [8, size], [8, uaddr], [8, 0]); b[24] = perm; b[25] = type; return b; }), fds: fc.constant<FdKind[]>([]) }),
  // anything at all: an unknown request, a payload of any length
  { weight: 1, arbitrary: fc.record({ request: fc.integer({ min: 0, max: 40 }), needReply: fc.boolean(), payload: fc.uint8Array({ maxLength: 64 }), fds: fc.integer({ min: 0, max: 2 }).chain(fdKinds) }) },
);

/**
 * A frontend's usual opening: features, the memory table, and both rings of pair 0 placed; with
 * `running` their kick and call descriptors too, and the pair runs (its dataplane thread starts).
 */
function opening(running: boolean, features: bigint): Msg[] {
  const ring = (i: number, at: number): Msg[] => [
    { request: P.REQ.SET_VRING_NUM, needReply: false, payload: bytes([4, i], [4, 8]), fds: [] },
    { request: P.REQ.SET_VRING_ADDR, needReply: false, payload: bytes([4, i], [4, 0], [8, UADDR + at], [8, UADDR + at + 256], [8, UADDR + at + 128], [8, 0]), fds: [] },
    ...(running
      ? [
          { request: P.REQ.SET_VRING_CALL, needReply: false, payload: bytes([8, i]), fds: ['eventfd'] },
          { request: P.REQ.SET_VRING_KICK, needReply: false, payload: bytes([8, i]), fds: ['eventfd'] },
        ]
      : []),
  ] as Msg[];
  return [
    { request: P.REQ.SET_FEATURES, needReply: false, payload: bytes([8, features]), fds: [] },
    { request: P.REQ.SET_MEM_TABLE, needReply: false, memSize: MEM, payload: bytes([4, 1], [4, 0], [8, 0], [8, MEM], [8, UADDR], [8, 0]), fds: ['memfd'] },
    ...ring(0, 0),
    ...ring(1, 1024),
  ];
}

/** features a frontend of this backend negotiates: VERSION_1, EVENT_IDX, INDIRECT, MRG_RXBUF, maybe PROTOCOL_FEATURES, LOG_ALL, RING_PACKED */
const goodFeatures = fc.tuple(fc.boolean(), fc.boolean(), fc.boolean()).map(([proto, log, packed]) => (1n << 32n) | (1n << 29n) | (1n << 28n) | (1n << 15n) | (proto ? 1n << 30n : 0n) | (log ? 1n << BigInt(F_LOG_ALL) : 0n) | (packed ? 1n << 34n : 0n));

export const sessionArb = fc.record({
  /** from scratch, after the usual opening, or (rarely: a thread starts) with pair 0 running */
  start: fc.oneof({ weight: 200, arbitrary: fc.constant('scratch' as const) }, { weight: 200, arbitrary: fc.constant('opened' as const) }, { weight: 1, arbitrary: fc.constant('running' as const) }),
  features: goodFeatures,
  messages: fc.array(message, { maxLength: 24 }),
});
export type Session = typeof sessionArb extends fc.Arbitrary<infer T> ? T : never;

export class VhostHandlersTarget implements FuzzTarget {
  readonly name = 'vhost-handlers';
  readonly about = "one frontend's session: random vhost-user messages with random descriptors, then the connection's end";
  readonly weight = 3;
  readonly counts = { sessions: 0, messages: 0, closedByBackend: 0, whileRunning: 0 };
  private readonly fds = new FdFactory();
  private readonly backend = new VhostUserBackend(nullDriver({ rx: '0' }), { queuePairs: 1 });

  property(): fc.IAsyncPropertyWithHooks<[Session]> {
    return fc.asyncProperty(sessionArb, (s) => this.run(s));
  }

  async run(s: Session): Promise<void> {
    const before = openFds();
    this.counts.sessions++;
    const msgs = s.start === 'scratch' ? s.messages : [...opening(s.start === 'running', s.features), ...s.messages];
    for (const msg of msgs) {
      const fds = msg.fds.map((k) => this.fds.make(k, msg.memSize));
      const m: P.Message = { request: msg.request, flags: P.FLAG_VERSION | (msg.needReply ? P.FLAG_NEED_REPLY : 0), payload: new DataView(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength), fds };
      this.counts.messages++;
      const h = await this.backend.handle(m);
      check(m.fds.length === 0, () => `request ${msg.request}: handle() left ${m.fds.length} descriptors to the caller`);
      if (h.reply) {
        const v = new DataView(h.reply.buffer, h.reply.byteOffset, h.reply.byteLength);
        check(h.reply.length >= P.HDR_SIZE && v.getUint32(0, true) === msg.request && v.getUint32(4, true) & P.FLAG_REPLY && v.getUint32(8, true) === h.reply.length - P.HDR_SIZE, () => `request ${msg.request}: malformed reply`);
      }
      if (this.backend.activePairs > 0) this.counts.whileRunning++;
      if (h.close) {
        this.counts.closedByBackend++;
        break;
      }
    }
    await this.backend.close();
    check(this.backend.activePairs === 0, 'a dataplane thread runs after the session ended');
    const after = await openFdsSettled(before);
    check(after <= before, () => `the session left ${after - before} descriptors open`);
  }

  close(): void {
    this.fds.close();
  }
}
