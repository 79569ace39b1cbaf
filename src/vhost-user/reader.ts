// Messages off a frontend's socket, never blocking: a message may arrive in pieces (a header now, its
// payload later), and each read happens only once poll says it cannot block, so a frontend that stops
// half-way holds its own connection and nothing else. Descriptors that arrive with any piece belong to
// the message; whoever ends the connection discards what a partial message holds.
import { constants } from 'node:os';
import { native } from '../native.js';
import { HDR_SIZE, MAX_PAYLOAD, parseMessage, type Message } from './protocol.js';

const POLLIN = 1;
const EAGAIN = 11;
const EINTR = 4;

/** the connection is over: `why` is for the operator, undefined for a frontend that closed between messages */
export interface Ended {
  ended: true;
  why?: string;
}

export function errnoName(errno: number): string {
  const e = Object.entries(constants.errno).find(([, v]) => v === errno);
  return e ? e[0] : `errno ${errno}`;
}

export class MessageReader {
  /** the message being read: its header (and size) first, then header and payload */
  private buf = new Uint8Array(HDR_SIZE);
  private have = 0;
  private fds: number[] = [];
  private readonly fdsIn = new Int32Array(33);

  constructor(private readonly fd: number) {}

  /** A whole message, undefined while the rest of one has not arrived, or the connection's end. */
  read(): Message | Ended | undefined {
    for (;;) {
      if (this.have === this.buf.length) {
        if (this.buf.length === HDR_SIZE) {
          const size = new DataView(this.buf.buffer).getUint32(8, true);
          if (size > MAX_PAYLOAD) return { ended: true, why: `message of ${size} bytes (at most ${MAX_PAYLOAD})` };
          const whole = new Uint8Array(HDR_SIZE + size);
          whole.set(this.buf);
          this.buf = whole;
        }
        if (this.have === this.buf.length) return this.take();
      }
      if (native.poll(this.fd, POLLIN, 0) <= 0) return undefined;
      // (recvmsg leaves the array as it was when it fails)
      this.fdsIn[0] = -1;
      const n = native.recvmsg(this.fd, this.buf.subarray(this.have), this.fdsIn);
      for (let i = 0; i < this.fdsIn.length && this.fdsIn[i] >= 0; i++) this.fds.push(this.fdsIn[i]);
      if (n === -EAGAIN || n === -EINTR) return undefined;
      if (n === 0) return { ended: true, why: this.have > 0 ? 'frontend closed the connection in the middle of a message' : undefined };
      if (n < 0) return { ended: true, why: `reading a message: ${errnoName(-n)}` };
      this.have += n;
    }
  }

  private take(): Message | Ended {
    const m = parseMessage(this.buf, this.fds);
    this.buf = new Uint8Array(HDR_SIZE);
    this.have = 0;
    this.fds = [];
    return m ?? { ended: true, why: 'malformed message' };
  }

  /** Close the descriptors a partial message holds. */
  discard(): void {
    for (const fd of this.fds.splice(0)) native.close(fd);
    this.have = 0;
    this.buf = new Uint8Array(HDR_SIZE);
  }
}
