// A vCPU thread hands one device access at a time to the device thread (the main thread, which owns
// every device model) through a few shared words, and sleeps until it is answered. No message cloning,
// no event-loop task per access on the vCPU side: Atomics.wait there, Atomics.waitAsync here.

const STATE = 0;
const SPACE = 1;
const WRITE = 2;
const SIZE = 3;
const ADDR_LO = 4;
const ADDR_HI = 5;
const DATA_LO = 6;
const DATA_HI = 7;
export const MAILBOX_WORDS = 8;

const IDLE = 0;
const REQUEST = 1;
const ANSWERED = 2;
const CLOSED = 3;

export function newMailbox(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(MAILBOX_WORDS * 4));
}

/** vCPU side: post the access, block until answered. Returns the value read (or 0n for writes). */
export function mailboxCall(mb: Int32Array, space: 'pio' | 'mmio', write: boolean, addr: number, size: number, value: bigint): bigint {
  mb[SPACE] = space === 'pio' ? 0 : 1;
  mb[WRITE] = write ? 1 : 0;
  mb[SIZE] = size;
  mb[ADDR_LO] = addr % 2 ** 32 | 0;
  mb[ADDR_HI] = Math.floor(addr / 2 ** 32);
  mb[DATA_LO] = Number(value & 0xffffffffn) | 0;
  mb[DATA_HI] = Number((value >> 32n) & 0xffffffffn) | 0;
  Atomics.store(mb, STATE, REQUEST);
  Atomics.notify(mb, STATE);
  for (;;) {
    const s = Atomics.load(mb, STATE);
    if (s === ANSWERED) break;
    if (s === CLOSED) return 0n;
    Atomics.wait(mb, STATE, s);
  }
  const out = (BigInt(mb[DATA_HI] >>> 0) << 32n) | BigInt(mb[DATA_LO] >>> 0);
  Atomics.store(mb, STATE, IDLE);
  return out;
}

/** requests served back to back before the serving loop lets the rest of the event loop run */
const YIELD_EVERY = 16;

export type MailboxHandler = (space: 'pio' | 'mmio', write: boolean, addr: number, size: number, value: bigint) => bigint;

/** Device-thread side: answer requests until close(). */
export class MailboxServer {
  private closed = false;
  readonly done: Promise<void>;

  constructor(
    private readonly mb: Int32Array,
    private readonly handler: MailboxHandler,
    private readonly onError: (e: unknown) => void,
  ) {
    this.done = this.serve();
  }

  private async serve(): Promise<void> {
    const mb = this.mb;
    let inARow = 0;
    while (!this.closed) {
      const s = Atomics.load(mb, STATE);
      if (s !== REQUEST) {
        inARow = 0;
        const w = Atomics.waitAsync(mb, STATE, s);
        if (w.async) await w.value;
        continue;
      }
      // A guest that polls a register makes its next request before we look again: without this the
      // loop never awaits, and the event loop it runs on starves — a device's thread start (promise
      // work after DRIVER_OK) or a 'broken' message from a dataplane thread waits for the polling to
      // stop (seen in CI: a hostile guest polling for DEVICE_NEEDS_RESET that never came).
      if (++inARow % YIELD_EVERY === 0) {
        await new Promise((r) => setImmediate(r));
        if (this.closed) break;
      }
      let result = 0n;
      try {
        const addr = (mb[ADDR_HI] >>> 0) * 2 ** 32 + (mb[ADDR_LO] >>> 0);
        const value = (BigInt(mb[DATA_HI] >>> 0) << 32n) | BigInt(mb[DATA_LO] >>> 0);
        result = this.handler(mb[SPACE] === 0 ? 'pio' : 'mmio', mb[WRITE] === 1, addr, mb[SIZE], value);
      } catch (e) {
        this.onError(e);
      }
      mb[DATA_LO] = Number(result & 0xffffffffn) | 0;
      mb[DATA_HI] = Number((result >> 32n) & 0xffffffffn) | 0;
      Atomics.store(mb, STATE, ANSWERED);
      Atomics.notify(mb, STATE);
    }
  }

  /** Stop serving; a vCPU still waiting gets 0 and goes on to notice the stop. */
  close(): Promise<void> {
    this.closed = true;
    Atomics.store(this.mb, STATE, CLOSED);
    Atomics.notify(this.mb, STATE);
    return this.done;
  }
}
