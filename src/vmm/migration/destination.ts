// The receiving side of a live migration: a fresh VM of the same shape (its memory zeroed) takes the
// source's pages and device state. Everything the source sends is checked before use: the format,
// version and machine shape first, then every page run inside RAM; the state document is checked by
// restoreState. The guest starts only when the source says `go`, after it heard that the state was
// restored, so the two sides never run the guest at once.
import type { Duplex } from 'node:stream';
import type { GuestMemory } from '../memory.js';
import { native } from '../../native.js';
import { checkFingerprint, type Fingerprint } from '../state/document.js';
import { Fields, StateError } from '../../state/fields.js';
import { MIGRATION_FORMAT, MIGRATION_VERSION, PAGE, RUN_PAGES, MessageReader, MigrationError, sendMessage } from './wire.js';

export interface MigrationTarget {
  readonly memory: GuestMemory;
  readonly fingerprint: Fingerprint;
  /** Restore the device state document; throws (one line) if it cannot be. */
  restoreState(doc: Uint8Array): void | Promise<void>;
  /** Run the guest. */
  start(): void | Promise<void>;
}

export interface IncomingSummary {
  pages: number;
  zeroPages: number;
}

/** Receive a VM on `conn`; resolves once the guest runs here. MigrationError (one line) if it cannot. */
export async function migrateIn(conn: Duplex, target: MigrationTarget): Promise<IncomingSummary> {
  const reader = new MessageReader(conn);
  try {
    return await receive(conn, reader, target);
  } catch (e) {
    // tell the source why, so that it resumes saying so (it may be gone already)
    const message = e instanceof Error ? e.message : String(e);
    await Promise.race([sendMessage(conn, { t: 'error', message }).catch(() => undefined), new Promise((r) => setTimeout(r, 1000))]);
    conn.destroy();
    throw e instanceof MigrationError ? e : new MigrationError(message);
  }
}

async function receive(conn: Duplex, reader: MessageReader, target: MigrationTarget): Promise<IncomingSummary> {
  const hello = await reader.expect('hello');
  if (hello.format !== MIGRATION_FORMAT) throw new MigrationError('the stream is not a tsvmm migration');
  if (hello.version !== MIGRATION_VERSION) throw new MigrationError(`a migration stream of version ${hello.version}, this tsvmm takes version ${MIGRATION_VERSION}`);
  try {
    checkFingerprint(new Fields(hello.fingerprint, 'fingerprint'), target.fingerprint);
  } catch (e) {
    if (e instanceof StateError) throw new MigrationError(`the source VM is not like this one: ${e.message}`);
    throw e;
  }
  await sendMessage(conn, { t: 'ready' });

  const mem = target.memory;
  const summary: IncomingSummary = { pages: 0, zeroPages: 0 };
  let state: Uint8Array | undefined;
  for (;;) {
    const m = await reader.next();
    if (m.t === 'pages') {
      // (one memcpy: a typed array's set() into shared memory copies in small relaxed steps)
      native.copy(mem.buffer, ramOffset(mem, m.gpa, m.data.length), m.data, 0, m.data.length);
      summary.pages += m.data.length / PAGE;
    } else if (m.t === 'zero') {
      if (m.count < 1) throw new MigrationError('a zero run of no pages');
      ramOffset(mem, m.gpa, m.count * PAGE);
      for (let done = 0; done < m.count; done += RUN_PAGES) mem.slice(m.gpa + done * PAGE, Math.min(RUN_PAGES, m.count - done) * PAGE).fill(0);
      summary.zeroPages += m.count;
    } else if (m.t === 'state') {
      if (state) throw new MigrationError('the device state came twice');
      state = m.data;
    } else if (m.t === 'end') {
      break;
    } else if (m.t === 'error') {
      throw new MigrationError(`the source gave up: ${m.message}`);
    } else {
      throw new MigrationError(`a ${m.t} message in the middle of the stream`);
    }
  }
  if (!state) throw new MigrationError('the stream ended without the device state');
  await target.restoreState(state);
  await sendMessage(conn, { t: 'restored' });
  await reader.expect('go');
  await target.start();
  return summary;
}

/** Where RAM at [gpa, gpa+len) is in the memory buffer: page-aligned and inside one region, or MigrationError. */
function ramOffset(mem: GuestMemory, gpa: number, len: number): number {
  const off = gpa % PAGE === 0 ? mem.table.translate(gpa, len) : -1;
  if (off < 0) throw new MigrationError(`pages at 0x${gpa.toString(16)}+0x${len.toString(16)} are not this VM's RAM`);
  return off;
}
