// Target "vhost-reader": the vhost-user message reader (framing) on a real socket. A case is a byte
// stream sent in random pieces, with descriptors beside some of them: whole messages, headers whose
// size lies (more payload announced than sent, more than the protocol allows), short headers, and a
// frontend that may close half-way.
//
// Invariants: no exception escapes read(); the messages read are exactly the stream's messages, in
// order, byte for byte; the connection ends (with a reason) exactly where the stream breaks the
// framing or stops mid-message; after the session every descriptor that came in is closed. The
// coupling to the reader is this file only.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { MessageReader } from '../../vhost-user/reader.js';
import { HDR_SIZE, MAX_PAYLOAD } from '../../vhost-user/protocol.js';
import { native, AF_UNIX, SOCK_STREAM } from '../../native.js';
import { FdFactory, FD_KINDS, type FdKind } from '../fds.js';
import { check, concat, openFds, openFdsSettled, type FuzzTarget } from '../target.js';

const piece = fc.oneof(
  // a message whose header tells the truth
  { weight: 4, arbitrary: fc.record({ request: fc.nat(40), flags: fc.nat(15), payload: fc.uint8Array({ maxLength: 300 }), lie: fc.constant(undefined) }) },
  // one whose size says otherwise (over the limit, or more than follows)
  { weight: 1, arbitrary: fc.record({ request: fc.nat(40), flags: fc.nat(15), payload: fc.uint8Array({ maxLength: 64 }), lie: fc.oneof(fc.constantFrom(MAX_PAYLOAD, MAX_PAYLOAD + 1, 0xffffffff), fc.nat()) }) },
);

export const streamArb = fc.record({
  messages: fc.array(piece, { maxLength: 8 }),
  /** where the stream is cut into the writes that carry it (and, as the last cut, where it stops) */
  cuts: fc.array(fc.nat(4000), { maxLength: 6 }),
  /** descriptors beside each write */
  fds: fc.array(fc.array(fc.constantFrom<FdKind>(...FD_KINDS), { maxLength: 3 }), { maxLength: 7 }),
  /** the frontend stops after this many bytes (else it sends everything) */
  stopAt: fc.option(fc.nat(4000), { freq: 3 }),
  /** and then closes the connection */
  closes: fc.boolean(),
});
export type Stream = typeof streamArb extends fc.Arbitrary<infer T> ? T : never;

export class VhostReaderTarget implements FuzzTarget {
  readonly name = 'vhost-reader';
  readonly about = 'a byte stream in random pieces with descriptors, some headers lying about their size';
  readonly weight = 1;
  readonly counts = { sessions: 0, messages: 0, bytes: 0, ended: 0 };
  private readonly fds = new FdFactory();
  private readonly dir = mkdtempSync(join(tmpdir(), 'tsvmm-fuzz-sock-'));
  private readonly path = join(this.dir, 'sock');
  private readonly listenFd = native.socket(AF_UNIX, SOCK_STREAM, 0);

  constructor() {
    native.bindUnix(this.listenFd, this.path);
    native.listen(this.listenFd, 4);
  }

  property(): fc.IAsyncPropertyWithHooks<[Stream]> {
    return fc.asyncProperty(streamArb, (s) => this.run(s));
  }

  async run(s: Stream): Promise<void> {
    const before = openFds();
    this.counts.sessions++;
    // the stream, and the messages (and where framing breaks) a correct reader finds in it
    const parts: Uint8Array[] = [];
    const expected: Array<{ request: number; flags: number; payload: Uint8Array } | 'oversize'> = [];
    for (const m of s.messages) {
      const size = m.lie ?? m.payload.length;
      const h = new Uint8Array(HDR_SIZE);
      const v = new DataView(h.buffer);
      v.setUint32(0, m.request, true);
      v.setUint32(4, m.flags, true);
      v.setUint32(8, size, true);
      parts.push(h, m.payload);
    }
    const stream = concat(parts);
    const sent = Math.min(stream.length, s.stopAt ?? stream.length);
    for (let at = 0; at + HDR_SIZE <= sent; ) {
      const v = new DataView(stream.buffer, at);
      const size = v.getUint32(8, true);
      if (size > MAX_PAYLOAD) {
        expected.push('oversize');
        break;
      }
      if (at + HDR_SIZE + size > sent) break;
      expected.push({ request: v.getUint32(0, true), flags: v.getUint32(4, true), payload: stream.subarray(at + HDR_SIZE, at + HDR_SIZE + size) });
      at += HDR_SIZE + size;
    }
    const client = native.socket(AF_UNIX, SOCK_STREAM, 0);
    check(native.connectUnix(client, this.path) === 0, 'connect to the fuzz socket failed');
    const server = native.accept(this.listenFd);
    const reader = new MessageReader(server);
    let got = 0;
    let ended: string | undefined | null = null;
    const drain = () => {
      for (let r = reader.read(); r && ended === null; r = reader.read()) {
        if ('ended' in r) {
          ended = r.why;
          this.counts.ended++;
          break;
        }
        const want = expected[got++];
        check(want && want !== 'oversize', () => `read a message (request ${r.request}, ${r.payload.byteLength} bytes) where the stream has none`);
        check(r.request === want.request && r.flags === want.flags && r.payload.byteLength === want.payload.length, () => `message ${got}: read request ${r.request} flags ${r.flags} size ${r.payload.byteLength}, sent ${want.request} ${want.flags} ${want.payload.length}`);
        const p = new Uint8Array(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength);
        check(p.every((b, k) => b === want.payload[k]), () => `message ${got}: payload differs`);
        for (const fd of r.fds.splice(0)) native.close(fd);
        this.counts.messages++;
      }
    };
    try {
      const cuts = [...new Set(s.cuts.filter((c) => c > 0 && c < sent))].sort((a, b) => a - b);
      let prev = 0;
      for (const [k, c] of [...cuts, sent].entries()) {
        if (c <= prev && k > 0) continue;
        const kinds = s.fds[k] ?? [];
        const fds = kinds.map((kind) => this.fds.make(kind, 4096));
        const n = native.sendmsg(client, stream.subarray(prev, c), fds);
        for (const fd of fds) native.close(fd);
        check(n === c - prev, () => `sendmsg to the fuzz socket sent ${n} of ${c - prev}`);
        this.counts.bytes += c - prev;
        prev = c;
        drain();
      }
      if (s.closes) {
        native.close(client);
        drain();
        check(ended !== null, 'the frontend closed and the reader did not say the connection ended');
      }
      const whole = expected.filter((e) => e !== 'oversize').length;
      if (expected.includes('oversize')) check(ended !== null && got === whole, () => `a header announcing more than ${MAX_PAYLOAD} bytes did not end the connection after ${whole} messages (read ${got})`);
      else check(got === whole, () => `read ${got} of the ${whole} whole messages sent`);
    } finally {
      reader.discard();
      native.close(server);
      if (!s.closes) native.close(client);
    }
    const after = await openFdsSettled(before);
    check(after <= before, () => `the session left ${after - before} descriptors open`);
  }

  close(): void {
    native.close(this.listenFd);
    rmSync(this.dir, { recursive: true, force: true });
    this.fds.close();
  }
}
