// The two ends of a migration's connection: the source connects to the URL, the destination listens
// there and takes one source (a unix socket is made with mode 0600 and removed once taken: whoever
// connects could hand this VMM a guest). Either side's connection is cut after IDLE_MS without a byte
// moving, so a peer that hangs cannot hold a paused source for good.
import { createServer, connect, type Socket } from 'node:net';
import { UserError } from '../../errors.js';
import { claimSocketPath, listenPrivate, removeSocket } from '../../socket-path.js';
import { MigrationError } from './wire.js';
import { formatMigrationUrl, type MigrationUrl } from './url.js';

/** the longest either side waits for the other without a byte moving (a restore in a slow VM included) */
export const IDLE_MS = 60_000;

function guard(s: Socket): Socket {
  // (a failure is the stream reader's to see and say; none may end the process)
  s.on('error', () => undefined);
  s.setNoDelay?.(true);
  s.setTimeout(IDLE_MS, () => s.destroy(new Error(`nothing moved for ${IDLE_MS / 1000} s`)));
  return s;
}

/** Connect to the destination; MigrationError (one line) when nothing listens there. */
export function connectTo(url: MigrationUrl): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = url.kind === 'unix' ? connect(url.path) : connect(url.port, url.host);
    const refused = (e: NodeJS.ErrnoException) => {
      const why = e.code === 'ENOENT' ? 'no such socket' : e.code === 'ECONNREFUSED' ? 'nothing listens there' : e.message;
      reject(new MigrationError(`cannot reach ${formatMigrationUrl(url)}: ${why}`));
    };
    s.once('error', refused);
    s.once('connect', () => {
      s.removeListener('error', refused);
      resolve(guard(s));
    });
  });
}

/** A listener for one incoming connection. */
export interface Incoming {
  /** the connection, once a source has connected and sent its first bytes (the listener is closed then) */
  accepted: Promise<Socket>;
  /** stop listening (a pending `accepted` rejects) */
  close(): void;
}

/** Listen on `url`; resolves once listening (UserError, one line, if it cannot). */
export async function listenOn(url: MigrationUrl, what = '--incoming'): Promise<Incoming> {
  const server = createServer();
  let ino = -1;
  if (url.kind === 'unix') {
    await claimSocketPath(url.path, what);
    ino = await listenPrivate(server, url.path, what);
  } else {
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new UserError(`${what} ${formatMigrationUrl(url)}: ${e.message}`)));
      server.listen(url.port, url.host, () => resolve());
    });
  }
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    server.close();
    if (url.kind === 'unix' && ino >= 0) removeSocket(url.path, ino);
  };
  // The source is the first connection to send something: one that closes first (another tsvmm
  // checking whether the path is taken, say) is no source, and the listener stays.
  const accepted = new Promise<Socket>((resolve, reject) => {
    server.on('connection', (s: Socket) => {
      guard(s);
      const first = () => {
        s.removeListener('readable', first);
        if (closed || s.readableLength === 0) {
          s.destroy();
          return;
        }
        close();
        resolve(s);
      };
      s.on('readable', first);
    });
    server.once('close', () => reject(new MigrationError('stopped before a source connected')));
  });
  // (a close before anyone connected leaves the rejection to whoever awaits it, or to nobody)
  accepted.catch(() => undefined);
  return { accepted, close };
}
