// The vhost-user socket: accept (or connect to) frontends, read messages with their descriptors, hand
// them to a backend and write the replies. The control path polls the sockets from the event loop
// (epoll with a short timeout, then yield), so dataplane thread events still reach this thread.
import { existsSync, unlinkSync } from 'node:fs';
import { native, AF_UNIX, SOCK_STREAM, EPOLLIN, EPOLL_CTL_ADD, EPOLL_CTL_DEL } from '../native.js';
import { HDR_SIZE, MAX_PAYLOAD, parseMessage } from './protocol.js';
import type { VhostUserBackend } from './backend.js';

export interface ServerOptions {
  path: string;
  /** connect to the frontend's socket (and reconnect when it goes) instead of listening */
  client?: boolean;
  log?: (line: string) => void;
}

const yieldToLoop = () => new Promise((r) => setImmediate(r));

export class VhostUserServer {
  private stopped = false;
  private listenFd = -1;
  private conn = -1;
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
    const hdr = new Uint8Array(HDR_SIZE);
    const fds = new Int32Array(33);
    try {
      while (!this.stopped) {
        if (this.o.client && this.conn < 0) await this.connect();
        const n = native.epollWait(this.ep, events, 20);
        for (let k = 0; k < n && !this.stopped; k++) {
          const tag = events[3 * k + 1];
          if (tag === 0) this.accept();
          else if (tag === 2) this.backend.onEvent();
          else await this.serveOne(hdr, fds);
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
    this.connections++;
    native.epollCtl(this.ep, EPOLL_CTL_ADD, fd, EPOLLIN, 1);
    this.log(`vhost-user: frontend connected (${this.connections})`);
  }

  private async drop(): Promise<void> {
    if (this.conn < 0) return;
    native.epollCtl(this.ep, EPOLL_CTL_DEL, this.conn, 0, 0);
    native.close(this.conn);
    this.conn = -1;
    await this.backend.close();
    this.log('vhost-user: frontend gone; the backend waits for the next one');
  }

  /** Read one message (its descriptors arrive with the header), let the backend answer it. */
  private async serveOne(hdr: Uint8Array, fds: Int32Array): Promise<void> {
    const r = native.recvmsg(this.conn, hdr, fds);
    if (r === -11) return;
    if (r !== HDR_SIZE) return this.drop();
    const got: number[] = [];
    for (let i = 0; i < fds.length && fds[i] >= 0; i++) got.push(fds[i]);
    const size = new DataView(hdr.buffer).getUint32(8, true);
    if (size > MAX_PAYLOAD) {
      for (const fd of got) native.close(fd);
      this.log('vhost-user: message too large; connection closed');
      return this.drop();
    }
    const msg = new Uint8Array(HDR_SIZE + size);
    msg.set(hdr);
    let have = 0;
    while (have < size) {
      const n = native.read(this.conn, msg.subarray(HDR_SIZE + have));
      if (n <= 0) {
        for (const fd of got) native.close(fd);
        return this.drop();
      }
      have += n;
    }
    const m = parseMessage(msg, got);
    if (!m) return this.drop();
    const h = await this.backend.handle(m);
    if (h.reply) native.sendmsg(this.conn, h.reply);
    if (h.close) {
      this.log(`vhost-user: ${h.close}; connection closed`);
      await this.drop();
    }
  }
}
