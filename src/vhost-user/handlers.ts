// The vhost-user requests (QEMU docs/interop/vhost-user.rst), one small handler each. A handler reads
// the payload, changes the backend's connection state and restarts what that affects; it answers with
// a reply, or with the reason the connection ends (a frontend breaking the protocol). Descriptors a
// message brought are the handler's to keep by taking them out of m.fds; the rest are closed after it.
import { native } from '../native.js';
import { F, MIN_MTU, bit, has } from '../virtio-net/features.js';
import { F_LOG_ALL, mapLog, type MappedLog } from './log.js';
import { FrontendMemory } from './memory.js';
import { closeFd, VRING_F_LOG, type Vring } from './rings.js';
import * as P from './protocol.js';
import * as V from './validate.js';

export interface Handled {
  reply?: Uint8Array;
  /** the frontend broke the protocol: close the connection */
  close?: string;
}

/** What the handlers see of the backend: its connection state and the operations that restart rings. */
export interface BackendCore {
  readonly features: bigint;
  readonly protocolFeatures: bigint;
  readonly queuePairs: number;
  acked: bigint;
  ackedProtocol: bigint;
  readonly vrings: Vring[];
  memory: FrontendMemory | undefined;
  /** the frontend's dirty log (SET_LOG_BASE), and the eventfd it gave for it (SET_LOG_FD) */
  log: MappedLog | undefined;
  logFd: number;
  /** the channel for requests to the frontend (IOTLB misses) */
  backendFd: number;
  readonly hasIotlb: boolean;
  /** the largest MTU NET_SET_MTU takes */
  readonly maxMtu: number;
  setMtu(mtu: number): Promise<void>;
  /** a line for the operator */
  say(line: string): void;
  /** switch features: threads restarted with them, the IOTLB made or dropped */
  applyFeatures(f: bigint): Promise<void>;
  setLog(log: MappedLog): Promise<void>;
  /** apply an IOTLB message: why it is refused, or why the connection ends once it is answered */
  iotlbMessage(msg: P.IotlbMsg): Promise<{ refused?: string; endAfter?: string }>;
  stopPair(pair: number): Promise<void>;
  stopAll(): Promise<void>;
  startReady(): Promise<void>;
  /** what GET_VRING_BASE answers for a stopped ring */
  reportedBase(r: Vring): number;
  /** (tracing) a ring stopped for GET_VRING_BASE */
  traceStopped?(i: number, r: Vring): void;
}

type Handler = (b: BackendCore, m: P.Message) => Handled | Promise<Handled>;

const fail = (why: string): Handled => ({ close: why });

/** Success, or failure: a REPLY_ACK reply when the frontend asked for one, else failure ends the connection. */
function ack(b: BackendCore, m: P.Message, ok: boolean): Handled {
  if (m.flags & P.FLAG_NEED_REPLY && b.ackedProtocol & (1n << BigInt(P.PROTOCOL_F.REPLY_ACK))) return { reply: P.encodeReply(m.request, P.u64Payload(ok ? 0n : 1n)) };
  return ok ? {} : { close: `request ${m.request} failed` };
}

const u64Reply = (m: P.Message, v: bigint): Handled => ({ reply: P.encodeReply(m.request, P.u64Payload(v)) });

async function setFeatures(b: BackendCore, m: P.Message): Promise<Handled> {
  if (m.payload.byteLength < 8) return fail('short feature message');
  const f = m.payload.getBigUint64(0, true);
  if (f & ~b.features) return fail('features we did not offer');
  // (sizes and bases set before are not checked against a new layout: a frontend sends them again
  // after its features, QEMU on every start; those not sent again are checked as their ring starts)
  if (f !== b.acked) await b.applyFeatures(f);
  return ack(b, m, true);
}

function setProtocolFeatures(b: BackendCore, m: P.Message): Handled {
  if (m.payload.byteLength < 8) return fail('short feature message');
  const f = m.payload.getBigUint64(0, true);
  if (f & ~b.protocolFeatures) return fail('features we did not offer');
  b.ackedProtocol = f;
  return ack(b, m, true);
}

async function setMemTable(b: BackendCore, m: P.Message): Promise<Handled> {
  const regions = P.parseMemTable(m.payload);
  if (!regions) return fail('malformed SET_MEM_TABLE');
  await b.stopAll();
  b.memory?.release();
  b.memory = undefined;
  // map() takes the descriptors over (and closes them), whatever it decides
  const mem = FrontendMemory.map(regions, m.fds.splice(0));
  if (typeof mem === 'string') return fail(`SET_MEM_TABLE: ${mem}`);
  b.memory = mem;
  await b.startReady();
  return ack(b, m, true);
}

/** A vhost_vring_state message's ring and value, or why the message is refused. */
function vringState(b: BackendCore, m: P.Message): { i: number; r: Vring; num: number } | string {
  const p = m.payload;
  if (p.byteLength < 8) return 'short vring state';
  const i = p.getUint32(0, true);
  const r = i < b.vrings.length ? b.vrings[i] : undefined;
  if (!r) return `ring ${i} does not exist`;
  return { i, r, num: p.getUint32(4, true) };
}

/** A vring state handler: `apply` sets the ring (or says why not); ready rings then start. */
function vringStateHandler(apply: (b: BackendCore, s: { i: number; r: Vring; num: number }) => string | undefined | Promise<string | undefined>): Handler {
  return async (b, m) => {
    const s = vringState(b, m);
    if (typeof s === 'string') return fail(s);
    const problem = await apply(b, s);
    if (problem) return fail(problem);
    await b.startReady();
    return ack(b, m, true);
  };
}

/**
 * Why ring `i`'s size and base do not go together under `features`, or undefined (no size yet: no
 * problem yet). Checked as a base arrives and as the ring starts, not as a size arrives: QEMU sends
 * the size first, while the base is still the one of the ring's last start (perhaps of another layout).
 */
export function ringProblem(i: number, r: Vring, features: bigint): string | undefined {
  if (r.num === 0 || !has(features, F.RING_PACKED)) return undefined;
  const problem = V.packedBaseProblem(r.base, r.num);
  return problem && `ring ${i}: ${problem}`;
}

const setVringNum = vringStateHandler((b, { i, r, num }) => {
  const bad = V.ringSizeProblem(num, has(b.acked, F.RING_PACKED));
  if (bad) return `ring ${i}: ${bad}`;
  r.num = num;
  return undefined;
});

/** (split: the next available index, 16 bits; packed: both positions and their wrap counters, kept whole) */
const setVringBase = vringStateHandler((b, { i, r, num }) => {
  r.base = num;
  return ringProblem(i, r, b.acked);
});

const setVringEnable = vringStateHandler(async (b, { i, r, num }) => {
  r.enabled = num === 1;
  if (!r.enabled) await b.stopPair(i >> 1);
  return undefined;
});

async function setVringAddr(b: BackendCore, m: P.Message): Promise<Handled> {
  const a = P.parseVringAddr(m.payload);
  if (!a) return fail('malformed SET_VRING_ADDR');
  const r = a.index < b.vrings.length ? b.vrings[a.index] : undefined;
  if (!r) return fail(`ring ${a.index} does not exist`);
  const misaligned = V.ringMisalignment(a, has(b.acked, F.RING_PACKED));
  if (misaligned) return fail(`ring ${a.index}: ${misaligned}`);
  // a live ring moving (or starting to log) restarts its pair with the new addresses
  await b.stopPair(a.index >> 1);
  r.logGpa = a.flags & VRING_F_LOG ? a.log : undefined;
  r.desc = a.desc;
  r.avail = a.avail;
  r.used = a.used;
  await b.startReady();
  return ack(b, m, true);
}

async function getVringBase(b: BackendCore, m: P.Message): Promise<Handled> {
  const s = vringState(b, m);
  if (typeof s === 'string') return fail(s === 'short vring state' ? 'short GET_VRING_BASE' : s);
  const { i, r } = s;
  // the ring stops; its thread says where it stood (stopPair keeps it in r.base)
  await b.stopPair(i >> 1);
  r.kickFd = closeFd(r.kickFd);
  r.callFd = closeFd(r.callFd);
  b.traceStopped?.(i, r);
  return { reply: P.encodeReply(m.request, P.vringState(i, b.reportedBase(r))) };
}

/** SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR: a ring's eventfd (or none, VRING_NOFD). */
async function setVringFd(b: BackendCore, m: P.Message): Promise<Handled> {
  if (m.payload.byteLength < 8) return fail('short vring fd message');
  const v = Number(m.payload.getBigUint64(0, true));
  const i = v & P.VRING_INDEX_MASK;
  const r = i < b.vrings.length ? b.vrings[i] : undefined;
  const nofd = (v & P.VRING_NOFD) !== 0;
  if (!r || (!nofd && m.fds.length !== 1) || (nofd && m.fds.length !== 0)) return fail('bad vring fd message');
  // (SET_VRING_ERR's descriptor is not used: handle() closes it)
  if (m.request === P.REQ.SET_VRING_ERR) return ack(b, m, true);
  const kick = m.request === P.REQ.SET_VRING_KICK;
  const unfit = nofd ? undefined : V.eventfdProblem(m.fds[0]);
  if (unfit) return fail(`ring ${i}: the ${kick ? 'kick' : 'call'} descriptor is ${unfit}`);
  const fd = nofd ? -1 : m.fds.splice(0)[0];
  // a running pair's thread uses these descriptors: stop it before they change (frontends do
  // replace call fds on a live ring, e.g. QEMU when the guest switches interrupt modes)
  await b.stopPair(i >> 1);
  if (kick) {
    closeFd(r.kickFd);
    r.kickFd = fd;
    // without PROTOCOL_FEATURES a ring is enabled by its kick fd (vhost-user.rst, "Starting and stopping rings")
    if (!(b.acked & bit(P.F_PROTOCOL_FEATURES))) r.enabled = true;
  } else {
    closeFd(r.callFd);
    r.callFd = fd;
  }
  await b.startReady();
  return ack(b, m, true);
}

async function setLogBase(b: BackendCore, m: P.Message): Promise<Handled> {
  if (!(b.ackedProtocol & (1n << BigInt(P.PROTOCOL_F.LOG_SHMFD)))) return fail('dirty logging was not negotiated');
  if (m.payload.byteLength < 16 || m.fds.length !== 1) return fail('malformed SET_LOG_BASE');
  const size = Number(m.payload.getBigUint64(0, true));
  const offset = Number(m.payload.getBigUint64(8, true));
  const fd = m.fds.splice(0)[0];
  let mapped: MappedLog | string;
  try {
    mapped = mapLog(fd, size, offset);
  } finally {
    native.close(fd);
  }
  if (typeof mapped === 'string') return fail(`SET_LOG_BASE: ${mapped}`);
  await b.setLog(mapped);
  b.say(`vhost-user: dirty log of ${size} bytes from the frontend (migration)${has(b.acked, F_LOG_ALL) ? '; logging' : ''}`);
  await b.startReady();
  // the frontend waits for this reply (whatever REPLY_ACK says): the log is in use once it comes
  return { reply: P.encodeReply(m.request, P.u64Payload(0n)) };
}

/** SET_LOG_FD: an eventfd the backend may signal after logging; writes land in the shared log
 * synchronously, so nothing needs signalling, but the descriptor is the frontend's to replace */
function setLogFd(b: BackendCore, m: P.Message): Handled {
  if (m.fds.length !== 1) return fail('SET_LOG_FD without its descriptor');
  closeFd(b.logFd);
  b.logFd = m.fds.splice(0)[0];
  return ack(b, m, true);
}

function setBackendReqFd(b: BackendCore, m: P.Message): Handled {
  if (m.fds.length !== 1) return fail('SET_BACKEND_REQ_FD without its descriptor');
  closeFd(b.backendFd);
  b.backendFd = m.fds.splice(0)[0];
  return ack(b, m, true);
}

async function iotlbMsg(b: BackendCore, m: P.Message): Promise<Handled> {
  const msg = P.parseIotlb(m.payload);
  if (!msg) return fail('malformed IOTLB_MSG');
  if (!b.hasIotlb) return fail('IOTLB message without ACCESS_PLATFORM');
  const r = await b.iotlbMessage(msg);
  if (r.refused) return fail(`IOTLB_MSG: ${r.refused}`);
  const done = ack(b, m, true);
  // (a thread stuck during the invalidation was ended: the request completes, then the connection)
  if (r.endAfter) done.close = r.endAfter;
  return done;
}

/** The frontend device's MTU (QEMU's host_mtu): from 68 up to what the driver's wire carries, else refused. */
async function netSetMtu(b: BackendCore, m: P.Message): Promise<Handled> {
  if (!(b.ackedProtocol & (1n << BigInt(P.PROTOCOL_F.MTU)))) return fail('NET_SET_MTU without the MTU protocol feature');
  if (m.payload.byteLength < 8) return fail('short NET_SET_MTU');
  const mtu = m.payload.getBigUint64(0, true);
  if (mtu < BigInt(MIN_MTU) || mtu > BigInt(b.maxMtu)) {
    b.say(`vhost-user: the frontend's MTU ${mtu} refused (this backend's wire takes ${MIN_MTU} to ${b.maxMtu}; --net ...,mtu=N raises a tap's)`);
    return ack(b, m, false);
  }
  await b.setMtu(Number(mtu));
  return ack(b, m, true);
}

export const HANDLERS: ReadonlyMap<number, Handler> = new Map<number, Handler>([
  [P.REQ.GET_FEATURES, (b, m) => u64Reply(m, b.features)],
  [P.REQ.SET_FEATURES, setFeatures],
  [P.REQ.GET_PROTOCOL_FEATURES, (b, m) => u64Reply(m, b.protocolFeatures)],
  [P.REQ.SET_PROTOCOL_FEATURES, setProtocolFeatures],
  [P.REQ.GET_QUEUE_NUM, (b, m) => u64Reply(m, BigInt(b.queuePairs))],
  [P.REQ.SET_OWNER, (b, m) => ack(b, m, true)],
  [
    P.REQ.RESET_OWNER,
    async (b, m) => {
      await b.stopAll();
      return ack(b, m, true);
    },
  ],
  [P.REQ.SET_MEM_TABLE, setMemTable],
  [P.REQ.SET_VRING_NUM, setVringNum],
  [P.REQ.SET_VRING_BASE, setVringBase],
  [P.REQ.SET_VRING_ENABLE, setVringEnable],
  [P.REQ.SET_VRING_ADDR, setVringAddr],
  [P.REQ.GET_VRING_BASE, getVringBase],
  [P.REQ.SET_VRING_KICK, setVringFd],
  [P.REQ.SET_VRING_CALL, setVringFd],
  [P.REQ.SET_VRING_ERR, setVringFd],
  [P.REQ.SET_LOG_BASE, setLogBase],
  [P.REQ.SET_LOG_FD, setLogFd],
  [P.REQ.SET_BACKEND_REQ_FD, setBackendReqFd],
  [P.REQ.IOTLB_MSG, iotlbMsg],
  [P.REQ.NET_SET_MTU, netSetMtu],
]);

/** A request no handler knows: refused (an error reply, or the connection's end without REPLY_ACK). */
export const unknownRequest: Handler = (b, m) => ack(b, m, false);
