// The API socket: HTTP/1.1 with JSON bodies on a unix socket, Node's own http server. Whoever connects
// is treated as hostile: bodies are capped (413), slow senders are cut off (headers and whole-request
// deadlines), connections are limited, and every failure is one line of JSON ({"error": "..."}) with its
// status; nothing a request does can throw out of here. The endpoints are in routes.ts.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { claimSocketPath, listenPrivate, removeSocket } from '../socket-path.js';
import { route, ApiError, type ApiTarget, type Reply } from './routes.js';

export interface ApiServerOptions {
  path: string;
  target: ApiTarget;
  /** one line per request refused for the client's fault is not logged; server-side failures are */
  log?: (line: string) => void;
  /** the request line and headers must have arrived within this (ms; default 5000) */
  headersTimeoutMs?: number;
  /** the whole request within this (ms; default 10000) */
  requestTimeoutMs?: number;
  /** largest body accepted (bytes; default 64 KiB) */
  maxBodyBytes?: number;
  /** connections open at once (default 16): more are closed at once */
  maxConnections?: number;
}

export const API_DEFAULTS = { headersTimeoutMs: 5000, requestTimeoutMs: 10_000, maxBodyBytes: 65536, maxConnections: 16 } as const;
/** how long close() waits for answers under way */
const CLOSE_GRACE_MS = 2000;
/** the largest request line and headers (Node's limit, lowered: no request here needs more) */
const MAX_HEADER_BYTES = 8192;

export class ApiServer {
  private readonly sockets = new Set<Socket>();
  /** requests being answered (close() lets them finish: the answer to a migration is sent as the VM ends) */
  private readonly answering = new Set<Promise<void>>();
  private ino = -1;
  private closed = false;

  private constructor(
    private readonly server: Server,
    private readonly o: ApiServerOptions,
  ) {}

  /** Claim the path (refused while another process listens there) and listen on it. */
  static async open(o: ApiServerOptions): Promise<ApiServer> {
    await claimSocketPath(o.path);
    const headersTimeout = o.headersTimeoutMs ?? API_DEFAULTS.headersTimeoutMs;
    const requestTimeout = Math.max(o.requestTimeoutMs ?? API_DEFAULTS.requestTimeoutMs, headersTimeout);
    const server = createServer({
      headersTimeout,
      requestTimeout,
      keepAliveTimeout: headersTimeout,
      maxHeaderSize: MAX_HEADER_BYTES,
      // how often the deadlines above are looked at (Node's default, 30 s, would let a slow sender sit that long)
      connectionsCheckingInterval: Math.max(50, Math.min(1000, headersTimeout >> 2)),
    });
    const api = new ApiServer(server, o);
    server.maxConnections = o.maxConnections ?? API_DEFAULTS.maxConnections;
    server.on('connection', (s: Socket) => {
      api.sockets.add(s);
      s.once('close', () => api.sockets.delete(s));
    });
    server.on('request', (req: IncomingMessage, res: ServerResponse) => void api.serve(req, res));
    server.on('clientError', (e: NodeJS.ErrnoException, s: Socket) => clientError(e, s));
    api.ino = await listenPrivate(server, o.path);
    return api;
  }

  get path(): string {
    return this.o.path;
  }

  /** Stop listening, let the answers under way go out (for up to CLOSE_GRACE_MS), end every connection, remove the socket file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = new Promise<void>((r) => this.server.close(() => r()));
    if (this.answering.size) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(this.answering), new Promise((r) => (timer = setTimeout(r, CLOSE_GRACE_MS)))]);
      clearTimeout(timer);
    }
    for (const s of this.sockets) s.destroy();
    await done;
    removeSocket(this.o.path, this.ino);
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const answered = new Promise<void>((r) => {
      res.once('finish', r);
      res.once('close', r);
    });
    this.answering.add(answered);
    void answered.then(() => this.answering.delete(answered));
    let reply: Reply;
    try {
      const body = await readBody(req, this.o.maxBodyBytes ?? API_DEFAULTS.maxBodyBytes);
      reply = await route(this.o.target, req.method ?? '', req.url ?? '/', body);
    } catch (e) {
      if (e instanceof ApiError) reply = { status: e.status, json: { error: e.message }, headers: e.headers };
      else {
        const line = (e instanceof Error ? e.message : String(e)).split('\n')[0];
        this.o.log?.(`api: ${req.method} ${req.url}: ${line}`);
        reply = { status: 500, json: { error: line } };
      }
    }
    send(res, reply);
  }
}

/** The request's body, at most `max` bytes (413 beyond: the connection is then closed, the rest unread). */
function readBody(req: IncomingMessage, max: number): Promise<string> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > max) return Promise.reject(new ApiError(413, `body of ${declared} bytes; at most ${max} accepted`, { Connection: 'close' }));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        req.removeAllListeners('data');
        req.pause();
        reject(new ApiError(413, `body over ${max} bytes`, { Connection: 'close' }));
      } else chunks.push(c);
    });
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', (e) => reject(new ApiError(400, `reading the body: ${e.message}`)));
    // (gone before its body was whole: nothing is done, nobody to answer)
    req.once('close', () => reject(new ApiError(400, 'connection closed before the body was complete')));
  });
}

function send(res: ServerResponse, r: Reply): void {
  if (res.headersSent || res.destroyed) return;
  const body = r.text !== undefined ? r.text : r.json !== undefined ? JSON.stringify(r.json) + '\n' : '';
  const headers: Record<string, string | number> = { ...(r.headers ?? {}) };
  if (body) {
    headers['Content-Type'] = r.contentType ?? 'application/json';
    headers['Content-Length'] = Buffer.byteLength(body);
  }
  res.writeHead(r.status, headers);
  res.end(body);
  // a body left unread (413): the connection cannot carry another request
  if (headers.Connection === 'close') res.once('finish', () => res.socket?.destroy());
}

/** What Node's parser refused (bad syntax, headers too large, a deadline): one JSON line, then close. */
function clientError(e: NodeJS.ErrnoException, s: Socket): void {
  if (!s.writable || e.code === 'ECONNRESET') {
    s.destroy();
    return;
  }
  const [status, text] =
    e.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'Request Timeout']
      : e.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'Request Header Fields Too Large']
        : [400, 'Bad Request'];
  const body = JSON.stringify({ error: status === 408 ? 'request not complete in time' : status === 431 ? 'headers too large' : `malformed request (${e.code ?? e.message})` }) + '\n';
  s.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}
