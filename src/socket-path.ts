// A unix socket's path for a server of ours (the API socket, an incoming migration's): refused while
// something listens on it, replaced when it is a stale socket file (a process that died without
// removing it), created with mode 0600 (only its owner may talk to the VMM), removed when the server
// closes. Refusals are one line naming the option (`what`) and the path.
import { lstatSync, unlinkSync, chmodSync } from 'node:fs';
import { connect, type Server } from 'node:net';
import { UserError } from './errors.js';

/** Whether something accepts connections on the unix socket `path`. */
function live(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** Make `path` free for our socket, or throw a UserError saying why it cannot be. */
export async function claimSocketPath(path: string, what = '--api-socket'): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new UserError(`${what} ${path}: ${(e as Error).message}`);
  }
  if (!st.isSocket()) throw new UserError(`${what} ${path}: exists and is not a socket`);
  if (await live(path)) throw new UserError(`${what} ${path}: another process is listening on it`);
  unlinkSync(path);
}

/** Listen on `path` with mode 0600 from the start: Node binds within listen(), under a umask that
 * leaves only the owner's bits; chmod then makes sure. Resolves with the socket file's inode. */
export function listenPrivate(server: Server, path: string, what = '--api-socket'): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(new UserError(`${what} ${path}: ${e.message}`));
    server.once('error', onError);
    const old = process.umask(0o177);
    try {
      server.listen(path, () => {
        server.removeListener('error', onError);
        chmodSync(path, 0o600);
        resolve(lstatSync(path).ino);
      });
    } finally {
      process.umask(old);
    }
  });
}

/** Remove our socket file (not one another process has put there since). */
export function removeSocket(path: string, ino: number): void {
  try {
    if (lstatSync(path).ino === ino) unlinkSync(path);
  } catch {
    // already gone
  }
}
