// The live-migration stream: length-prefixed msgpack messages over a byte stream (a unix or TCP
// socket). Each frame is a u32 little-endian length and one msgpack map with a type `t`:
//   source → destination: hello {format, version, fingerprint}, pages {gpa, data}, zero {gpa, count},
//                         state {data}, end {}, go {}
//   destination → source: ready {}, restored {}, error {message}
// The other side is untrusted: a frame longer than MAX_FRAME, a message of an unknown type or with a
// field missing, extra or of the wrong type ends the migration with one line (MigrationError).
import { encode, decode } from '@msgpack/msgpack';
import type { Duplex } from 'node:stream';
import { Fields, StateError } from '../../state/fields.js';

export const MIGRATION_FORMAT = 'tsvmm-migration';
/** The stream's layout; the device state inside it carries its own version (STATE_VERSION). */
export const MIGRATION_VERSION = 1;
export const PAGE = 4096;
/** pages per `pages` message: 1 MiB, a size the writer's backpressure handles smoothly */
export const RUN_PAGES = 256;
/** the largest frame either side accepts: a state document (vCPUs' XSAVE, vIOMMU mappings) fits */
export const MAX_FRAME = 32 << 20;

export class MigrationError extends Error {
  override name = 'MigrationError';
}

export type Message =
  | { t: 'hello'; format: string; version: number; fingerprint: unknown }
  | { t: 'pages'; gpa: number; data: Uint8Array }
  | { t: 'zero'; gpa: number; count: number }
  | { t: 'state'; data: Uint8Array }
  | { t: 'end' }
  | { t: 'go' }
  | { t: 'ready' }
  | { t: 'restored' }
  | { t: 'error'; message: string };

/** Check a decoded message's shape (its values' meaning is the receiver's to check). */
export function readMessage(raw: unknown): Message {
  try {
    const f = new Fields(raw, 'message');
    const t = f.any('t');
    let m: Message;
    switch (t) {
      case 'hello': {
        const format = f.any('format');
        const version = f.any('version');
        if (typeof format !== 'string' || typeof version !== 'number') throw new StateError('hello: format and version expected');
        m = { t, format, version, fingerprint: f.any('fingerprint') };
        break;
      }
      case 'pages':
        m = { t, gpa: f.uint('gpa', Number.MAX_SAFE_INTEGER), data: f.bytes('data', { min: PAGE, max: RUN_PAGES * PAGE, multiple: PAGE }) };
        break;
      case 'zero':
        m = { t, gpa: f.uint('gpa', Number.MAX_SAFE_INTEGER), count: f.uint('count', Number.MAX_SAFE_INTEGER) };
        break;
      case 'state':
        m = { t, data: f.bytes('data', { min: 1, max: MAX_FRAME }) };
        break;
      case 'error': {
        const message = f.any('message');
        m = { t, message: typeof message === 'string' ? message.slice(0, 500) : 'an unreadable error' };
        break;
      }
      case 'end':
      case 'go':
      case 'ready':
      case 'restored':
        m = { t };
        break;
      default:
        throw new StateError(`a message of unknown type ${JSON.stringify(t)?.slice(0, 40)}`);
    }
    f.done();
    return m;
  } catch (e) {
    if (e instanceof StateError) throw new MigrationError(`the stream is not a tsvmm migration (${e.message})`);
    throw e;
  }
}

/** Write one message, waiting while the stream's buffer is full. */
export async function sendMessage(out: Duplex, m: Message): Promise<void> {
  // (a write to a closed stream says nothing more: no drain, close or error follows)
  if (out.destroyed || out.writableEnded) throw new MigrationError('the connection closed');
  const body = encode(m);
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length, 0);
  out.write(head);
  if (!out.write(body)) await waitDrain(out);
}

function waitDrain(out: Duplex): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (e?: Error) => {
      out.off('drain', ok);
      out.off('close', closed);
      out.off('error', done);
      if (e) reject(new MigrationError(`the connection failed (${e.message})`));
      else resolve();
    };
    const ok = () => done();
    const closed = () => done(new Error('closed by the other side'));
    out.on('drain', ok);
    out.on('close', closed);
    out.on('error', done);
  });
}

/** The messages arriving on `input`, in order; throws MigrationError on a bad frame or a cut stream. */
export class MessageReader {
  private chunks: Buffer[] = [];
  private held = 0;
  private waiting?: () => void;
  private ended?: Error;

  constructor(input: Duplex) {
    input.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.held += d.length;
      // a sender that outruns the receiver is held back by TCP/unix flow control, not by our memory
      if (this.held > 2 * MAX_FRAME) input.pause();
      this.wake();
    });
    input.on('end', () => this.finish(new MigrationError('the other side closed the connection')));
    input.on('close', () => this.finish(new MigrationError('the connection closed')));
    input.on('error', (e) => this.finish(new MigrationError(`the connection failed (${e.message})`)));
    this.input = input;
  }

  private readonly input: Duplex;

  private finish(e: Error): void {
    this.ended ??= e;
    this.wake();
  }

  private wake(): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
  }

  /** The next `n` bytes (held already): a view of the first chunk when it has them all, else one copy of just those. */
  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0];
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      for (let at = 0; at < n; ) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.held -= n;
    if (this.held <= MAX_FRAME) this.input.resume();
    return out;
  }

  private async need(n: number): Promise<void> {
    while (this.held < n) {
      if (this.ended) throw this.ended;
      await new Promise<void>((r) => (this.waiting = r));
    }
  }

  async next(): Promise<Message> {
    await this.need(4);
    const len = this.take(4).readUInt32LE(0);
    if (len === 0 || len > MAX_FRAME) throw new MigrationError(`the stream is not a tsvmm migration (a frame of ${len} bytes)`);
    await this.need(len);
    let raw: unknown;
    try {
      raw = decode(this.take(len), { maxStrLength: 1 << 16, maxBinLength: MAX_FRAME, maxArrayLength: 1 << 16, maxMapLength: 1 << 10 });
    } catch (e) {
      throw new MigrationError(`the stream is not a tsvmm migration (msgpack: ${(e as Error).message})`);
    }
    return readMessage(raw);
  }

  /** The next message, which must be of type `t` (an `error` from the other side is thrown as its line). */
  async expect<T extends Message['t']>(t: T): Promise<Extract<Message, { t: T }>> {
    const m = await this.next();
    if (m.t === 'error') throw new MigrationError(`the other side: ${m.message}`);
    if (m.t !== t) throw new MigrationError(`expected ${t} from the other side, got ${m.t}`);
    return m as Extract<Message, { t: T }>;
  }
}
