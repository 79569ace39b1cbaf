// The API socket against hostile clients, on a real server (Node's http on a unix socket) controlling a
// real vhost-user backend (null driver; no frontend needed): malformed JSON, huge bodies, slow senders,
// unknown fields, methods and paths each get their status and one line of JSON, and the server (and
// what it controls) goes on serving. Also the socket file's life: mode 0600, refused while live, a stale
// file replaced, removed on close; and the CLI's --api-socket refusal.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { request } from 'node:http';
import { mkdtempSync, rmSync, statSync, existsSync, writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiServer, API_DEFAULTS } from '../src/api/server.js';
import { ctlSend } from '../src/api/ctl.js';
import { backendTarget } from '../src/api/targets.js';
import { VhostUserBackend } from '../src/vhost-user/backend.js';
import { VhostUserServer } from '../src/vhost-user/server.js';
import { createDriver } from '../src/drivers/registry.js';
import { CLI } from './helpers/env.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HEADERS_TIMEOUT_MS = 400;
const MAX_BODY = 4096;

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function call(path: string, method: string, url: string, body?: string | Buffer, headers: Record<string, string | number> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: path, method, path: url, headers: body !== undefined ? { 'Content-Type': 'application/json', ...headers } : headers }, (res) => {
      let b = '';
      res.on('data', (c: Buffer) => (b += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: b }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Raw bytes on a fresh connection; resolves with all the server sent once it closed (or after `ms`). */
function raw(path: string, send: (s: Socket) => void, ms = 5000): Promise<{ data: string; closed: boolean; afterMs: number }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = connect(path);
    let data = '';
    let done = false;
    const end = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ data, closed, afterMs: Date.now() - t0 });
    };
    const timer = setTimeout(() => end(false), ms);
    s.on('data', (d: Buffer) => (data += d.toString()));
    s.on('close', () => end(true));
    s.on('error', () => end(true));
    s.on('connect', () => send(s));
  });
}

/** An error answer: its status and exactly one line of JSON {"error": "..."}. */
function expectError(a: { status: number; body: string }, status: number, match?: RegExp): void {
  expect(a.status, a.body).toBe(status);
  expect(a.body.endsWith('\n') && a.body.indexOf('\n') === a.body.length - 1, a.body).toBe(true);
  const j = JSON.parse(a.body) as { error: string };
  expect(Object.keys(j)).toEqual(['error']);
  if (match) expect(j.error).toMatch(match);
}

function rawStatus(data: string): { status: number; body: string } {
  const m = /^HTTP\/1\.1 (\d{3}) [^\r]*\r\n[\s\S]*?\r\n\r\n([\s\S]*)$/.exec(data);
  if (!m) throw new Error(`not an HTTP answer: ${JSON.stringify(data.slice(0, 300))}`);
  return { status: Number(m[1]), body: m[2] };
}

describe('API socket', () => {
  let dir: string;
  let sock: string;
  let api: ApiServer;
  let backend: VhostUserBackend;
  let stopped = 0;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tsvmm-api-'));
    sock = join(dir, 'api.sock');
    const driver = await createDriver('null', { rx: '0' });
    backend = new VhostUserBackend(driver, { queuePairs: 1 });
    const server = new VhostUserServer(backend, { path: join(dir, 'vu.sock') });
    api = await ApiServer.open({ path: sock, target: backendTarget(backend, server, () => stopped++), headersTimeoutMs: HEADERS_TIMEOUT_MS, requestTimeoutMs: 2 * HEADERS_TIMEOUT_MS, maxBodyBytes: MAX_BODY, maxConnections: 4 });
  });
  afterAll(async () => {
    await api?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The server still answers, and what it controls still works. */
  async function stillServing(): Promise<void> {
    const a = await call(sock, 'GET', '/vm');
    expect(a.status).toBe(200);
    expect(JSON.parse(a.body)).toMatchObject({ kind: 'vhost-user', state: 'running' });
  }

  it('creates its socket with mode 0600', () => {
    expect(statSync(sock).isSocket()).toBe(true);
    expect(statSync(sock).mode & 0o777).toBe(0o600);
  });

  it('answers GET /vm and GET /metrics (JSON and Prometheus)', async () => {
    await stillServing();
    const m = await call(sock, 'GET', '/metrics');
    expect(m.headers['content-type']).toBe('application/json');
    expect(JSON.parse(m.body)).toMatchObject({ devices: [{ id: '0', kind: 'net', queues: [{ queue: 'rx0', frames: 0 }, { queue: 'tx0', frames: 0 }] }], vhostUser: { connections: 0, errors: [] } });
    const p = await call(sock, 'GET', '/metrics?format=prometheus');
    expect(p.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(p.body).toContain('# TYPE tsvmm_queue_frames_total counter\ntsvmm_queue_frames_total{device="0",kind="net",queue="rx0"} 0\n');
  });

  it('pauses and resumes what it controls', async () => {
    expect((await call(sock, 'PUT', '/vm/pause')).status).toBe(204);
    expect(backend.paused).toBe(true);
    expect(JSON.parse((await call(sock, 'GET', '/vm')).body)).toMatchObject({ state: 'paused' });
    expect((await call(sock, 'PUT', '/vm/resume', '{}')).status).toBe(204);
    expect(backend.paused).toBe(false);
    await stillServing();
  });

  it.each([
    ['{"link":', /^malformed JSON/],
    ['[1,2]', /must be a JSON object/],
    ['"up"', /must be a JSON object/],
    ['null', /must be a JSON object/],
    ['\u0000\u00ff', /^malformed JSON/],
  ])('refuses malformed JSON %j with 400', async (body, msg) => {
    expectError(await call(sock, 'PATCH', '/net/0', body), 400, msg);
    await stillServing();
  });

  it('refuses unknown fields and bad values with 400, changing nothing', async () => {
    expectError(await call(sock, 'PUT', '/vm/pause', '{"now":true}'), 400, /unknown field "now"/);
    expect(backend.paused).toBe(false);
    expectError(await call(sock, 'PATCH', '/net/0', '{"speed":10}'), 400, /unknown field "speed"/);
    expectError(await call(sock, 'PATCH', '/net/0', '{}'), 400, /nothing to change/);
    expectError(await call(sock, 'PATCH', '/net/0', '{"iface_id":"eth7","link":"up"}'), 400, /iface_id "eth7" is not "0"/);
    expectError(await call(sock, 'PATCH', '/net/0', '{"link":"sideways"}'), 400, /link: expected "up" or "down"/);
    // the link of a vhost-user device is the frontend's
    expectError(await call(sock, 'PATCH', '/net/0', '{"link":"down"}'), 400, /does not control its link/);
    expectError(await call(sock, 'PATCH', '/net/0', '{"rx_rate_limiter":{"bandwidth":{"size":-5,"refill_time":100}}}'), 400, /rx_rate_limiter.bandwidth.size: expected an integer/);
    expectError(await call(sock, 'PATCH', '/net/0', '{"tx_rate_limiter":{"ops":{"size":1e300,"refill_time":100}}}'), 400, /tx_rate_limiter.ops.size/);
    expectError(await call(sock, 'GET', '/metrics?format=xml'), 400, /format/);
    expectError(await call(sock, 'GET', '/vm?verbose=1'), 400, /unknown query parameter "verbose"/);
    await stillServing();
  });

  it('sets rate limits in Firecracker\'s shape, changes nothing on a bad one, and shows them in GET /vm', async () => {
    const limits = { rx_rate_limiter: { bandwidth: { size: 1_000_000, one_time_burst: 500, refill_time: 1000 } }, tx_rate_limiter: { ops: { size: 100, refill_time: 10 } } };
    expect((await call(sock, 'PATCH', '/net/0', JSON.stringify(limits))).status).toBe(204);
    const want = { rx: { bandwidth: { size: 1_000_000, oneTimeBurst: 500, refillTimeMs: 1000 } }, tx: { ops: { size: 100, oneTimeBurst: 0, refillTimeMs: 10 } } };
    expect(backend.rateLimit).toMatchObject(want);
    // a bad field anywhere: nothing changes
    expectError(await call(sock, 'PATCH', '/net/0', '{"rx_rate_limiter":{},"tx_rate_limiter":{"ops":{"size":-1,"refill_time":10}}}'), 400);
    expect(backend.rateLimit).toMatchObject(want);
    expect(JSON.parse((await call(sock, 'GET', '/vm')).body)).toMatchObject({ config: { net: [{ id: '0', rateLimit: want }] } });
    // removed: {} per direction
    expect((await call(sock, 'PATCH', '/net/0', '{"rx_rate_limiter":{},"tx_rate_limiter":{}}')).status).toBe(204);
    expect(backend.rateLimit.rx?.bandwidth ?? null).toBeNull();
    expect(backend.rateLimit.tx?.ops ?? null).toBeNull();
  });

  it('answers unknown paths with 404 and wrong methods with 405 (and Allow)', async () => {
    for (const p of ['/', '/vms', '/vm/pause/now', '/net', '/net/0/x', '/../etc/passwd', '/%ff%fe']) expectError(await call(sock, 'GET', p), 404);
    expectError(await call(sock, 'PATCH', '/net/9', '{"link":"up"}'), 404, /no network device "9"/);
    expectError(await call(sock, 'PATCH', '/net/%ff', '{"link":"up"}'), 404, /no network device/);
    const a = await call(sock, 'DELETE', '/vm');
    expectError(a, 405, /DELETE is not allowed on \/vm \(allowed: GET\)/);
    expect(a.headers.allow).toBe('GET');
    expectError(await call(sock, 'GET', '/vm/pause'), 405);
    expectError(await call(sock, 'POST', '/metrics', '{}'), 405);
    expectError(await call(sock, 'PUT', '/net/0', '{"link":"up"}'), 405);
    await stillServing();
  });

  it('refuses a body over the cap with 413: announced, or streamed without a length', async () => {
    // announced: refused before it is read
    const announced = await raw(sock, (s) => s.write(`PATCH /net/0 HTTP/1.1\r\nHost: x\r\nContent-Length: ${100 * 1024 * 1024}\r\n\r\n{"link":`));
    expectError(rawStatus(announced.data), 413, /at most 4096/);
    expect(announced.closed).toBe(true);
    // chunked, without end
    const streamed = await raw(sock, (s) => {
      s.write('PATCH /net/0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
      const chunk = 'x'.repeat(1024);
      for (let i = 0; i < 8; i++) s.write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
    });
    expectError(rawStatus(streamed.data), 413, /over 4096 bytes/);
    expect(streamed.closed).toBe(true);
    await stillServing();
  });

  it('cuts off a slow sender (slowloris) and a silent connection at the headers deadline (408)', async () => {
    const slow = raw(
      sock,
      (s) => {
        s.write('GET /vm HTTP/1.1\r\nHost: x\r\n');
        let n = 0;
        const t = setInterval(() => (s.destroyed ? clearInterval(t) : s.write(`X-Slow-${n++}: y\r\n`)), 50);
        s.on('close', () => clearInterval(t));
      },
      10_000,
    );
    const silent = raw(sock, () => {}, 10_000);
    const [a, b] = await Promise.all([slow, silent]);
    for (const r of [a, b]) {
      expect(r.closed).toBe(true);
      expect(r.afterMs).toBeLessThan(HEADERS_TIMEOUT_MS * 6);
    }
    expectError(rawStatus(a.data), 408);
    await stillServing();
  });

  it('refuses a malformed request line and oversized headers, then closes', async () => {
    const bad = await raw(sock, (s) => s.write('HELLO THERE\r\n\r\n'));
    expectError(rawStatus(bad.data), 400, /malformed request/);
    expect(bad.closed).toBe(true);
    const big = await raw(sock, (s) => s.write(`GET /vm HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`));
    expectError(rawStatus(big.data), 431);
    await stillServing();
  });

  it('closes connections over its limit and serves again once they are gone', async () => {
    const held = await Promise.all(Array.from({ length: 4 }, () => new Promise<Socket>((r) => { const s = connect(sock); s.on('connect', () => r(s)); })));
    const extra = await raw(sock, (s) => s.write('GET /vm HTTP/1.1\r\nHost: x\r\n\r\n'), 3000);
    expect(extra.closed).toBe(true);
    expect(extra.data).toBe('');
    for (const s of held) s.destroy();
    await sleep(100);
    await stillServing();
  });

  it('is reached by tsvmm ctl: the body on stdout, a refusal as one line and exit 1, bad usage exit 2', async () => {
    const ctl = (...args: string[]) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const p = execFile(process.execPath, [CLI, 'ctl', ...args], (_e, stdout, stderr) => resolve({ code: p.exitCode, stdout, stderr }));
      });
    const got = await ctl('--api-socket', sock, 'get', 'vm');
    expect(got.code).toBe(0);
    expect(JSON.parse(got.stdout)).toMatchObject({ kind: 'vhost-user', state: 'running' });
    const prom = await ctl('--api-socket', sock, 'get', 'metrics', 'prometheus');
    expect(prom.stdout).toContain('# TYPE tsvmm_queue_frames_total counter\n');
    const refused = await ctl('--api-socket', sock, 'net', '0', 'link', 'down');
    expect(refused).toMatchObject({ code: 1, stdout: '', stderr: 'tsvmm: ctl: PATCH /net/0: 400 link: this device does not control its link\n' });
    const missing = await ctl('--api-socket', join(dir, 'none.sock'), 'pause');
    expect(missing).toMatchObject({ code: 1, stderr: `tsvmm: ctl: ${join(dir, 'none.sock')}: no such socket\n` });
    const usage = await ctl('--api-socket', sock, 'net', '0', 'link', 'sideways');
    expect(usage.code).toBe(2);
    expect(usage.stderr.trim().split('\n')).toHaveLength(1);
    await stillServing();
  });

  it('answers PUT /vm/shutdown with 202 and asks the target to end; a bad deadline is refused first', async () => {
    expectError(await call(sock, 'PUT', '/vm/shutdown', '{"deadline_ms":-1}'), 400, /deadline_ms: expected an integer from 0 to 2147483647, got -1/);
    expectError(await call(sock, 'PUT', '/vm/shutdown', '{"deadline_ms":"soon"}'), 400, /deadline_ms/);
    expectError(await call(sock, 'PUT', '/vm/shutdown', '{"deadline":5}'), 400, /unknown field "deadline"/);
    expect(stopped).toBe(0);
    const a = await call(sock, 'PUT', '/vm/shutdown', '{"deadline_ms":5000}');
    expect(a.status).toBe(202);
    expect(stopped).toBe(1);
  });

  it('refuses a path another process listens on, replaces a stale socket file, removes its own on close', async () => {
    // live: refused
    await expect(ApiServer.open({ path: sock, target: backendTarget(backend, new VhostUserServer(backend, { path: join(dir, 'x.sock') }), () => {}) })).rejects.toThrow(/another process is listening on it/);
    expect(statSync(sock).isSocket()).toBe(true);
    // not a socket: refused, left alone
    const file = join(dir, 'plain');
    writeFileSync(file, 'keep');
    await expect(ApiServer.open({ path: file, target: backendTarget(backend, new VhostUserServer(backend, { path: join(dir, 'y.sock') }), () => {}) })).rejects.toThrow(/exists and is not a socket/);
    // stale: a socket file nobody listens on (its server closed without removing it)
    const stale = join(dir, 'stale.sock');
    // (bound, never listening, and the process gone: as a crashed process leaves its socket)
    await new Promise<void>((r, j) => execFile('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', stale], (e) => (e ? j(e) : r())));
    expect(existsSync(stale)).toBe(true);
    const other = await ApiServer.open({ path: stale, target: backendTarget(backend, new VhostUserServer(backend, { path: join(dir, 'z.sock') }), () => {}) });
    expect((await call(stale, 'GET', '/vm')).status).toBe(200);
    await other.close();
    expect(existsSync(stale)).toBe(false);
  });
});

describe('tsvmm vhost-user --api-socket', () => {
  it('refuses a socket path another process listens on: one line, non-zero exit', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsvmm-api-cli-'));
    const path = join(dir, 'busy.sock');
    const busy = createNetServer();
    await new Promise<void>((r) => busy.listen(path, r));
    try {
      const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const p = execFile(process.execPath, [CLI, 'vhost-user', '--socket', join(dir, 'vu.sock'), '--net', 'null', '--api-socket', path], (e) => resolve({ code: p.exitCode, stderr: String(stderrText) }));
        let stderrText = '';
        p.stderr!.on('data', (d: Buffer) => (stderrText += d.toString()));
      });
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`tsvmm: --api-socket ${path}: another process is listening on it\n`);
    } finally {
      busy.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('ctlSend against a server in another process', () => {
  it('a request made after the caller was blocked past the keep-alive timeout still gets through', async () => {
    // The server ends an idle kept-alive connection after its headers timeout (5 s by default); a
    // caller whose event loop was blocked meanwhile (spawnSync of `tsvmm ctl`, in a test) must not send
    // its next request on that closed connection (EPIPE)
    const dir = mkdtempSync(join(tmpdir(), 'tsvmm-api-ka-'));
    const path = join(dir, 'api.sock');
    const p = execFile(process.execPath, [CLI, 'vhost-user', '--socket', join(dir, 'vu.sock'), '--net', 'null', '--api-socket', path]);
    try {
      for (let i = 0; i < 100 && !existsSync(path); i++) await sleep(100);
      expect((await ctlSend(path, { method: 'GET', path: '/vm' })).status).toBe(200);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, API_DEFAULTS.headersTimeoutMs + 1000);
      // (the server's end of the old connection is closed by now; this process has not looked yet)
      expect((await ctlSend(path, { method: 'GET', path: '/vm' })).status).toBe(200);
    } finally {
      p.kill();
      await new Promise((r) => p.on('close', r));
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});
