// The vhost-user socket: accept (or connect to) frontends, read messages with their descriptors, hand
// them to a backend and write the replies. The control path polls the sockets from the event loop
// (epoll with a short timeout, then yield), so dataplane thread events still reach this thread.
import { existsSync, unlinkSync } from 'node:fs';
import { native, AF_UNIX, SOCK_STREAM, EPOLLIN, EPOLL_CTL_ADD, EPOLL_CTL_DEL } from '../native.js';
import { MessageReader, errnoName } from './reader.js';
import type { VhostUserBackend } from './backend.js';

export interface ServerOptions {
  path: string;
  /** connect to the frontend's socket (and reconnect when it goes) instead of listening */
  client?: boolean;
  log?: (line: string) => void;
}

const yieldToLoop = () => new Promise((r) => setImmediate(r));
const POLLOUT = 4;

export class VhostUserServer {
  private stopped = false;
  private listenFd = -1;
  private conn = -1;
  private reader?: MessageReader;
  private readonly ep = native.epollCreate();
  /** connections served so far (for tests and logs) */
  connections = 0;

  constructor(
    private readonly backend: VhostUserBackend,
    private readonly o: ServerOptions,
  ) {}

  private log(s: string): void {
    this.o.log?.(s);
  }

  stop(): void {
    this.stopped = true;
  }

  async run(): Promise<void> {
    if (!this.o.client) {
      if (existsSync(this.o.path)) unlinkSync(this.o.path);
      this.listenFd = native.socket(AF_UNIX, SOCK_STREAM, 0);
      native.bindUnix(this.listenFd, this.o.path);
      native.listen(this.listenFd, 4);
      native.epollCtl(this.ep, EPOLL_CTL_ADD, this.listenFd, EPOLLIN, 0);
    }
    // the backend's own events (a dataplane thread needs the frontend asked something) wake us too
    native.epollCtl(this.ep, EPOLL_CTL_ADD, this.backend.eventFd, EPOLLIN, 2);
    const events = new Uint32Array(3 * 8);
    try {
      while (!this.stopped) {
        if (this.o.client && this.conn < 0) await this.connect();
        const n = native.epollWait(this.ep, events, 20);
        for (let k = 0; k < n && !this.stopped; k++) {
          const tag = events[3 * k + 1];
          if (tag === 0) this.accept();
          else if (tag === 2) await this.backendEvent();
          else await this.serveOne();
        }
        await yieldToLoop();
      }
    } finally {
      await this.drop();
      if (this.listenFd >= 0) native.close(this.listenFd);
      native.close(this.ep);
      if (!this.o.client && existsSync(this.o.path)) unlinkSync(this.o.path);
    }
  }

  private async connect(): Promise<void> {
    while (!this.stopped) {
      const fd = native.socket(AF_UNIX, SOCK_STREAM, 0);
      if (native.connectUnix(fd, this.o.path) === 0) {
        this.adopt(fd);
        return;
      }
      native.close(fd);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  private accept(): void {
    const fd = native.accept(this.listenFd);
    if (fd < 0) return;
    if (this.conn >= 0) {
      // one frontend per backend: its driver's queues are in use
      this.log('vhost-user: a second frontend connected; refused (one per backend)');
      native.close(fd);
      return;
    }
    this.adopt(fd);
  }

  private adopt(fd: number): void {
    this.conn = fd;
    this.reader = new MessageReader(fd);
    this.connections++;
    native.epollCtl(this.ep, EPOLL_CTL_ADD, fd, EPOLLIN, 1);
    this.log(`vhost-user: frontend connected (${this.connections})`);
  }

  /** End the connection; `why` (the frontend's fault) is said on stderr. */
  private async drop(why?: string): Promise<void> {
    if (this.conn < 0) return;
    if (why) this.log(`vhost-user: ${why}; connection closed`);
    native.epollCtl(this.ep, EPOLL_CTL_DEL, this.conn, 0, 0);
    native.close(this.conn);
    this.conn = -1;
    this.reader?.discard();
    this.reader = undefined;
    try {
      await this.backend.close();
    } catch (e) {
      this.log(`vhost-user: releasing the frontend's resources failed: ${firstLine(e)}`);
    }
    this.log('vhost-user: frontend gone; the backend waits for the next one');
  }

  /** The socket is readable: take a message if it is whole, and let the backend answer it. */
  private async serveOne(): Promise<void> {
    const m = this.reader!.read();
    if (!m) return;
    if ('ended' in m) return this.drop(m.why);
    let close: string | undefined;
    try {
      const h = await this.backend.handle(m);
      if (h.reply) close = this.reply(h.reply);
      close = h.close ?? close;
    } catch (e) {
      close = `request ${m.request}: ${firstLine(e)}`;
    } finally {
      for (const fd of m.fds.splice(0)) native.close(fd);
    }
    if (close) await this.drop(close);
  }

  /** Send a reply; why the connection must end if it cannot be sent now. */
  private reply(r: Uint8Array): string | undefined {
    // a frontend that leaves its replies unread would fill the socket, and a blocking send would stall
    // this thread: it gets its connection closed instead
    const ready = native.poll(this.conn, POLLOUT, 0);
    if (!(ready > 0 && ready & POLLOUT)) return ready > 0 ? 'the frontend is gone' : 'the frontend does not read its replies';
    const n = native.sendmsg(this.conn, r);
    if (n === r.length) return undefined;
    return n < 0 ? `sending a reply: ${errnoName(-n)}` : 'reply cut short';
  }

  /** A dataplane thread needs the frontend asked something. */
  private async backendEvent(): Promise<void> {
    try {
      this.backend.onEvent();
    } catch (e) {
      await this.drop(`asking the frontend: ${firstLine(e)}`);
    }
  }
}

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0];
}
