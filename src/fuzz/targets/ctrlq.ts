// Target "ctrlq": the virtio-net control queue (VirtioNet.kick on the control queue's notification)
// on a fresh ring with random negotiated features and queue pairs: commands of every class, well-formed
// and not (tables whose counts lie, wrong lengths, multicast MACs, pairs out of range), laid out over
// random buffers, and in hostile cases a driver that corrupts its ring.
//
// Invariants: no exception escapes; nothing written outside the buffers and ring the guest gave; a
// well-behaved driver's ring never breaks and each command comes back with one byte, the ack the
// spec's rules give (a model here), and a MAC set is the one the config space shows. No dataplane
// thread runs (only the control queue is enabled). The coupling to the device is this file only.
import fc from 'fast-check';
import { VirtioNet } from '../../virtio-net/device.js';
import { F, bit, has } from '../../virtio-net/features.js';
import { create as nullDriver } from '../../drivers/null/index.js';
import type { GuestMemory } from '../../vmm/memory.js';
import { ScriptedMemory, ScriptedRing, cutInto, RAM_A } from '../guest.js';
import { check, type FuzzTarget } from '../target.js';

const CTRL_RX = 0;
const CTRL_MAC = 1;
const CTRL_MQ = 4;

const mac = fc.uint8Array({ minLength: 6, maxLength: 6 });
const table = fc.tuple(fc.array(mac, { maxLength: 70 }), fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat(1100) })).map(([macs, lie]) => {
  const out = new Uint8Array(4 + 6 * macs.length);
  new DataView(out.buffer).setUint32(0, lie ?? macs.length, true);
  macs.forEach((m, i) => out.set(m, 4 + 6 * i));
  return out;
});
const command = fc.oneof(
  fc.tuple(fc.constant(CTRL_RX), fc.nat(7), fc.uint8Array({ maxLength: 2 })),
  fc.tuple(fc.constant(CTRL_MAC), fc.constant(1), fc.oneof(mac, fc.uint8Array({ maxLength: 8 }))),
  fc.tuple(fc.constant(CTRL_MAC), fc.constant(0), fc.tuple(table, table, fc.uint8Array({ maxLength: 2 })).map(([a, b, tail]) => Uint8Array.from([...a, ...b, ...tail]))),
  fc.tuple(fc.constant(CTRL_MQ), fc.nat(1), fc.oneof(fc.integer({ min: 0, max: 5 }).map((n) => Uint8Array.of(n, 0)), fc.uint8Array({ maxLength: 3 }))),
  fc.tuple(fc.nat(255), fc.nat(255), fc.uint8Array({ maxLength: 16 })),
);

const opArb = fc.oneof(
  { weight: 5, arbitrary: fc.record({ k: fc.constant('cmd' as const), cmd: command, cuts: fc.array(fc.nat(64), { maxLength: 2 }), ack: fc.oneof({ weight: 5, arbitrary: fc.constant([1]) }, { weight: 1, arbitrary: fc.array(fc.nat(3), { maxLength: 2 }) }) }) },
  { weight: 3, arbitrary: fc.constant({ k: 'kick' as const }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('poke' as const), where: fc.nat(), value: fc.nat(255) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('jump' as const), by: fc.integer({ min: 1, max: 0xffff }) }) },
);

export const ctrlCase = fc.record({
  /** CTRL_RX, CTRL_MAC_ADDR, MQ, EVENT_IDX, INDIRECT (CTRL_VQ always: without it there is no queue) */
  features: fc.array(fc.boolean(), { minLength: 5, maxLength: 5 }),
  pairs: fc.integer({ min: 1, max: 4 }),
  sizeLog: fc.integer({ min: 0, max: 6 }),
  hostile: fc.boolean(),
  ops: fc.array(opArb, { maxLength: 12 }),
});
export type CtrlCase = typeof ctrlCase extends fc.Arbitrary<infer T> ? T : never;

/** The ack the spec's rules (and this device's limits) give a command. */
export function expectedAck(features: bigint, pairs: number, cls: number, cmd: number, data: Uint8Array): number {
  if (cls === CTRL_RX && has(features, F.CTRL_RX)) return cmd <= 5 && data.length === 1 ? 0 : 1;
  if (cls === CTRL_MAC && cmd === 1 && has(features, F.CTRL_MAC_ADDR)) return data.length === 6 && !(data[0] & 1) ? 0 : 1;
  if (cls === CTRL_MAC && cmd === 0 && has(features, F.CTRL_RX)) {
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    let o = 0;
    for (let t = 0; t < 2; t++) {
      if (o + 4 > data.length) return 1;
      const n = v.getUint32(o, true);
      o += 4;
      if (n > 1024 || o + 6 * n > data.length) return 1;
      o += 6 * n;
    }
    return o === data.length ? 0 : 1;
  }
  if (cls === CTRL_MQ && cmd === 0 && has(features, F.MQ)) return data.length === 2 && (data[0] | (data[1] << 8)) >= 1 && (data[0] | (data[1] << 8)) <= pairs ? 0 : 1;
  return 1;
}

export class CtrlqTarget implements FuzzTarget {
  readonly name = 'ctrlq';
  readonly about = 'control-queue commands of every class over random buffers, random features and pairs';
  readonly weight = 1;
  readonly counts = { cases: 0, rings: 0, commands: 0, acksOk: 0 };
  private readonly m = new ScriptedMemory();
  private readonly driver = nullDriver({ rx: '0', queues: '4' });

  property(): fc.IAsyncPropertyWithHooks<[CtrlCase]> {
    return fc.asyncProperty(ctrlCase, (c) => this.run(c));
  }

  async run(c: CtrlCase): Promise<void> {
    const m = this.m;
    m.reset();
    this.counts.cases++;
    this.counts.rings++;
    const memory = { buffer: m.buffer, table: m.table, bytes: m.view.bytes } as unknown as GuestMemory;
    const dev = new VirtioNet(memory, { driver: this.driver, mac: Uint8Array.of(2, 0, 0, 0, 0, 1), queuePairs: c.pairs, queueSize: 64 });
    const [rxMode, macAddr, mq, eventIdx, indirect] = c.features;
    let features = bit(F.VERSION_1) | bit(F.CTRL_VQ);
    if (rxMode) features |= bit(F.CTRL_RX);
    if (macAddr) features |= bit(F.CTRL_MAC_ADDR);
    if (mq && c.pairs > 1) features |= bit(F.MQ);
    if (eventIdx) features |= bit(F.EVENT_IDX);
    if (indirect) features |= bit(F.INDIRECT_DESC);
    const ring = new ScriptedRing(m, 1 << c.sizeLog, 0, eventIdx, false);
    let placeAt = ring.end;
    const place = (len: number): number | undefined => (placeAt + len <= RAM_A ? (placeAt += len) - len : undefined);
    let broken: string | undefined;
    /** commands in flight by head: the ack expected (undefined: any, the driver was not well-behaved) */
    const acks = new Map<number, { ack: number; mac?: Uint8Array }>();
    await dev.activate({ features, queues: [{ index: 2 * c.pairs, size: ring.size, desc: ring.desc, avail: ring.avail, used: ring.used, kickFd: -1, callFd: -1 }], needsReset: (r) => (broken ??= r), configChanged: () => {} });
    try {
      for (const op of c.ops) {
        if (op.k === 'cmd') {
          const [cls, cmd, data] = op.cmd;
          const body = Uint8Array.from([cls, cmd, ...data]);
          const sizes = cutInto(body.length, op.cuts);
          const wellFormed = op.ack.length === 1 && op.ack[0] === 1;
          if (!c.hostile && !wellFormed) continue;
          const bufs = [];
          let at = 0;
          for (const len of sizes) {
            const addr = place(len);
            if (addr === undefined) break;
            m.u8.set(body.subarray(at, at + len), m.off(addr, len));
            at += len;
            bufs.push({ addr, len, write: false });
          }
          for (const len of op.ack) {
            const addr = place(len);
            if (addr !== undefined) bufs.push({ addr, len, write: true });
          }
          if (at < body.length || bufs.length > ring.size) continue;
          if (ring.add(bufs)) {
            const head = [...ring.inFlight.keys()].pop()!;
            if (wellFormed) acks.set(head, { ack: expectedAck(features, c.pairs, cls, cmd, data), mac: cls === CTRL_MAC && cmd === 1 ? data : undefined });
          }
        } else if (op.k === 'kick') {
          m.clearWritable();
          ring.allowFromTable();
          m.snapshot();
          dev.kick(2 * c.pairs);
          // a hostile table may lie in a buffer it gives the device: an ack written there changes a
          // descriptor the device reads next, so what the table names after the kick was given too
          ring.allowFromTable();
          const bad = m.diff();
          check(!bad, () => bad!);
          if (!c.hostile) this.checkAcks(ring, acks, dev, broken);
        } else if (c.hostile) {
          if (op.k === 'poke') ring.poke(op.where, op.value);
          else ring.jumpAvail(op.by);
        }
      }
    } finally {
      await dev.reset();
    }
  }

  private checkAcks(ring: ScriptedRing, acks: Map<number, { ack: number; mac?: Uint8Array }>, dev: VirtioNet, broken: string | undefined): void {
    check(broken === undefined, () => `a well-behaved driver's control queue broke: ${broken}`);
    const used = ring.reclaim();
    check(!ring.bad, () => `control queue: ${ring.bad}`);
    let lastMac: Uint8Array | undefined;
    for (const u of used) {
      this.counts.commands++;
      const want = acks.get(u.chain.head);
      acks.delete(u.chain.head);
      if (!want) continue;
      const ackBuf = u.chain.bufs[u.chain.bufs.length - 1];
      const got = this.m.u8[this.m.off(ackBuf.addr)];
      check(u.len === 1 && got === want.ack, () => `command ${u.chain.head}: used length ${u.len}, ack ${got}, expected length 1 and ack ${want.ack}`);
      if (got === 0) this.counts.acksOk++;
      if (want.ack === 0 && want.mac) lastMac = want.mac;
    }
    if (lastMac) {
      const shown = Array.from({ length: 6 }, (_, k) => dev.readConfig(k, 1));
      check(shown.every((b, k) => b === lastMac[k]), () => `MAC set to ${[...lastMac]} but the config space shows ${shown}`);
    }
  }
}
