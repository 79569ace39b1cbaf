// Live migration's plumbing, without KVM: the URL (one line for each way it can be wrong), the
// endpoints (a private unix socket taken once and removed, TCP on the loopback, one line when nothing
// listens), the stream over them, the CLI's refusals, PUT /migrate and tsvmm ctl migrate, and how
// progress reads in the metrics and on stderr.
import { describe, it, expect, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseMigrationUrl, formatMigrationUrl } from '../src/vmm/migration/url.js';
import { connectTo, listenOn } from '../src/vmm/migration/endpoint.js';
import { migrateIn } from '../src/vmm/migration/destination.js';
import { migrateOut } from '../src/vmm/migration/source.js';
import { MigrationStatus, describeMigration, type MigrationState } from '../src/vmm/migration/status.js';
import { GuestMemory } from '../src/vmm/memory.js';
import { UserError } from '../src/errors.js';
import { route, ApiError, type ApiTarget } from '../src/api/routes.js';
import { ctlRequest, CtlUsageError } from '../src/api/ctl.js';
import { toPrometheus } from '../src/api/prometheus.js';
import { CLI } from './helpers/env.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-migplumb-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('migration URLs', () => {
  it.each([
    ['unix:/run/vm.sock', { kind: 'unix', path: '/run/vm.sock' }],
    ['unix:rel/vm.sock', { kind: 'unix', path: 'rel/vm.sock' }],
    ['tcp:10.0.0.2:4444', { kind: 'tcp', host: '10.0.0.2', port: 4444 }],
    ['tcp:dest-host.example:1', { kind: 'tcp', host: 'dest-host.example', port: 1 }],
    ['tcp:[::1]:65535', { kind: 'tcp', host: '::1', port: 65535 }],
  ])('%s', (text, url) => {
    expect(parseMigrationUrl(text, '--incoming')).toEqual(url);
    expect(formatMigrationUrl(parseMigrationUrl(text, 'x'))).toBe(text);
  });

  it.each([
    ['', 'is not a migration URL'],
    ['unix:', 'names no socket path'],
    [`unix:/${'a'.repeat(120)}`, 'longer than a unix socket takes'],
    ['tcp:10.0.0.2', 'is not tcp:HOST:PORT'],
    ['tcp:10.0.0.2:0', 'has port 0, not 1..65535'],
    ['tcp:10.0.0.2:70000', 'has port 70000, not 1..65535'],
    ['tcp::4444', 'has no usable host'],
    ['tcp:bad_host!:4444', 'has no usable host'],
    ['tcp:[nonsense]:4444', 'has no usable host'],
    ['tcp:::1:4444', 'is not tcp:HOST:PORT'],
    ['http://host:80', 'is not a migration URL'],
    [42, 'is not a migration URL'],
  ])('refuses %j with one line', (text, why) => {
    let e: unknown;
    try {
      parseMigrationUrl(text, '--incoming');
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(UserError);
    const msg = (e as Error).message;
    expect(msg).toMatch(/^--incoming: /);
    expect(msg).toContain(why);
    expect(msg).toMatch(/\(unix:PATH or tcp:HOST:PORT\)$/);
    expect(msg).not.toContain('\n');
  });
});

describe('migration endpoints', () => {
  const REGIONS = [{ gpa: 0, size: 2 << 20, offset: 0 }];
  const FP = { memory: 2 << 20, cpus: 1, devices: ['pio:com1'] };

  /** The stream over a listener and a connection made from `url`: the destination's memory ends as the source's. */
  async function moveOver(url: string): Promise<void> {
    const src = new GuestMemory(REGIONS);
    const dst = new GuestMemory(REGIONS);
    try {
      src.slice(0x3000, 4096).fill(7);
      const u = parseMigrationUrl(url, 'test');
      const incoming = await listenOn(u);
      let ran = false;
      const inbound = incoming.accepted.then((c) => migrateIn(c, { memory: dst, fingerprint: FP, restoreState: () => undefined, start: () => void (ran = true) }));
      const conn = await connectTo(u);
      await migrateOut(conn, { memory: src, fingerprint: FP, startDirtyLog: () => undefined, takeDirty: () => [], pause: async () => undefined, resume: async () => undefined, saveState: () => new Uint8Array([1]) });
      await inbound;
      expect(ran).toBe(true);
      expect(dst.slice(0x3000, 4096).every((b) => b === 7)).toBe(true);
    } finally {
      src.release();
      dst.release();
    }
  }

  it('unix: a socket of mode 0600 while it waits, removed once a source has spoken', async () => {
    const path = join(dir, 'in.sock');
    const incoming = await listenOn(parseMigrationUrl(`unix:${path}`, 'x'));
    expect(statSync(path).mode & 0o777).toBe(0o600);
    // one listener per path (the second one's check, a connection that sends nothing, is not taken for a source)
    await expect(listenOn(parseMigrationUrl(`unix:${path}`, 'x'))).rejects.toThrow(`--incoming ${path}: another process is listening on it`);
    expect(existsSync(path)).toBe(true);
    const conn = await connectTo(parseMigrationUrl(`unix:${path}`, 'x'));
    conn.write('hello');
    const accepted = await incoming.accepted;
    expect((await new Promise<Buffer>((r) => accepted.once('data', r))).toString()).toBe('hello');
    expect(existsSync(path)).toBe(false);
    conn.destroy();
    accepted.destroy();
    await moveOver(`unix:${join(dir, 'm.sock')}`);
  });

  it('tcp: on the loopback', async () => {
    await moveOver(`tcp:127.0.0.1:${20000 + (process.pid % 20000)}`);
  });

  it('stopped before anyone connected, a listener says so; nothing listening is one line for the source', async () => {
    const path = join(dir, 'gone.sock');
    const incoming = await listenOn(parseMigrationUrl(`unix:${path}`, 'x'));
    incoming.close();
    await expect(incoming.accepted).rejects.toThrow('stopped before a source connected');
    expect(existsSync(path)).toBe(false);
    await expect(connectTo(parseMigrationUrl(`unix:${path}`, 'x'))).rejects.toThrow(`cannot reach unix:${path}: no such socket`);
  });
});

describe('tsvmm run --incoming refusals (before KVM is opened)', () => {
  const run = (args: string[]) => spawnSync(process.execPath, [CLI, 'run', ...args], { encoding: 'utf8', timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });
  it.each([
    [['--incoming', 'nowhere'], '--incoming: "nowhere" is not a migration URL (unix:PATH or tcp:HOST:PORT)'],
    [['--incoming', 'tcp:host:99999'], '--incoming: "tcp:host:99999" has port 99999, not 1..65535 (unix:PATH or tcp:HOST:PORT)'],
    [['--incoming', 'unix:/x.sock', '--kernel', '/k'], "run: --incoming takes the source's guest where it runs: --kernel, --initrd and --cmdline do not go with it"],
    [['--incoming', 'unix:/x.sock', '--cmdline', 'quiet'], "run: --incoming takes the source's guest where it runs: --kernel, --initrd and --cmdline do not go with it"],
    [['--incoming', 'unix:/x.sock', '--restore', '/snap'], 'run: --restore and --incoming: a VM starts from one or the other'],
  ])('%j', (args, line) => {
    const r = run(args);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
    expect(r.stderr.trim()).toBe(`tsvmm: ${line}`);
  });
});

describe('PUT /migrate and tsvmm ctl migrate', () => {
  const target = (calls: string[], fail?: string) =>
    ({
      info: () => ({}),
      metrics: () => ({}) as never,
      pause: async () => undefined,
      resume: async () => undefined,
      net: () => undefined,
      migrate: async (o: { url: string; maxDowntimeMs?: number }) => {
        if (fail) throw new Error(fail);
        calls.push(o.url);
        if (o.url === 'unix:/m') expect(o.maxDowntimeMs).toBe(0);
        return { url: o.url, downtimeMs: 12 };
      },
    }) as ApiTarget;

  it('takes a URL and answers once the migration is done', async () => {
    const calls: string[] = [];
    expect(await route(target(calls), 'PUT', '/migrate', '{"url":"tcp:10.0.0.2:4444"}')).toEqual({ status: 200, json: { url: 'tcp:10.0.0.2:4444', downtimeMs: 12 } });
    await route(target(calls), 'PUT', '/migrate', '{"url":"unix:/m","max_downtime_ms":0}');
    expect(calls).toEqual(['tcp:10.0.0.2:4444', 'unix:/m']);
  });

  it.each([
    ['', 400, 'url: undefined is not a migration URL'],
    ['{"url":5}', 400, 'url: 5 is not a migration URL'],
    ['{"url":"unix:"}', 400, 'url: "unix:" names no socket path'],
    ['{"url":"tcp:h:1","now":true}', 400, 'unknown field "now"'],
    ['{"url":"tcp:h:1","max_downtime_ms":-1}', 400, 'max_downtime_ms: expected an integer from 0 to 60000, got -1'],
    ['{"url":"tcp:h:1","max_downtime_ms":"5"}', 400, 'max_downtime_ms: expected an integer'],
  ])('refuses %s before anything moves', async (body, status, msg) => {
    const calls: string[] = [];
    const e = await route(target(calls), 'PUT', '/migrate', body).catch((x: ApiError) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect([(e as ApiError).status, (e as ApiError).message]).toEqual([status, expect.stringContaining(msg)]);
    expect(calls).toEqual([]);
  });

  it("passes the migration's own failure on as one line, and says where there is no migration", async () => {
    const e = (await route(target([], 'cannot reach unix:/x: no such socket\nmore'), 'PUT', '/migrate', '{"url":"unix:/x"}').catch((x) => x)) as ApiError;
    expect([e.status, e.message]).toEqual([400, 'cannot reach unix:/x: no such socket']);
    const none = { ...target([]), migrate: undefined };
    expect(((await route(none, 'PUT', '/migrate', '{"url":"unix:/x"}').catch((x) => x)) as ApiError).status).toBe(501);
    expect(((await route(target([]), 'GET', '/migrate', '').catch((x) => x)) as ApiError).status).toBe(405);
  });

  it('ctl: migrate URL (a relative unix path made absolute; no answer timeout); bad usage exits 2', () => {
    expect(ctlRequest(['migrate', 'tcp:10.0.0.2:4444'])).toEqual({ method: 'PUT', path: '/migrate', body: { url: 'tcp:10.0.0.2:4444' }, timeoutMs: 0 });
    expect(ctlRequest(['migrate', 'unix:rel.sock'])).toMatchObject({ body: { url: `unix:${join(process.cwd(), 'rel.sock')}` } });
    expect(ctlRequest(['migrate', 'unix:/a', 'downtime-ms=0'])).toMatchObject({ body: { url: 'unix:/a', max_downtime_ms: 0 } });
    for (const bad of [['migrate'], ['migrate', 'nowhere'], ['migrate', 'unix:/a', 'now'], ['migrate', 'unix:/a', 'downtime-ms=x'], ['migrate', 'unix:/a', 'downtime-ms=1', 'x']]) expect(() => ctlRequest(bad)).toThrow(CtlUsageError);
    const r = spawnSync(process.execPath, [CLI, 'ctl', '--api-socket', join(dir, 'none.sock'), 'migrate', 'tcp:h:0'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr.trim()).toBe('tsvmm: ctl: migrate: "tcp:h:0" has port 0, not 1..65535 (unix:PATH or tcp:HOST:PORT) (try: tsvmm ctl --help)');
  });
});

describe('migration progress', () => {
  it('is kept for the metrics and said on each change', () => {
    const said: MigrationState[] = [];
    const st = new MigrationStatus('out', 'unix:/m.sock', (s) => said.push(s));
    st.progress({ pass: 0, pagesSent: 300, pagesLeft: 40, bytesPerSec: 3 << 20, stopped: false });
    st.progress({ pass: 1, pagesSent: 340, pagesLeft: 5, bytesPerSec: 3 << 20, stopped: false });
    st.progress({ pass: 1, pagesSent: 340, pagesLeft: 5, bytesPerSec: 3 << 20, stopped: true });
    st.completed({ pass: 1, pagesSent: 345, pagesLeft: 0, bytesPerSec: 3 << 20, stopped: true, downtimeMs: 41.6, totalMs: 812.2 });
    expect(said.map(describeMigration)).toEqual([
      'migration to unix:/m.sock: pass 0, 300 pages sent, 40 pages left, 3.0 MiB/s',
      'migration to unix:/m.sock: pass 1, 340 pages sent, 5 pages left, 3.0 MiB/s',
      'migration to unix:/m.sock: paused for the last 5 pages and the device state',
      'migration to unix:/m.sock: handed over after 1 passes, 345 pages, 812 ms (the guest was held 42 ms)',
    ]);
    expect(st.state).toMatchObject({ direction: 'out', state: 'completed', pass: 1, pages: 345, pagesLeft: 0, downtimeMs: 42 });
    const text = toPrometheus({ devices: [], migration: st.state });
    expect(text).toContain('tsvmm_migration_info{direction="out",url="unix:/m.sock",state="completed"} 1');
    expect(text).toContain('tsvmm_migration_pages_total{direction="out"} 345');
    expect(text).toContain('tsvmm_migration_pass{direction="out"} 1');

    const inbound = new MigrationStatus('in', 'tcp:0.0.0.0:4444', (s) => said.push(s));
    inbound.listening();
    inbound.failed(new Error('the other side closed the connection\nmore'));
    expect(said.slice(-2).map(describeMigration)).toEqual(['waiting for a migration on tcp:0.0.0.0:4444', 'incoming migration on tcp:0.0.0.0:4444 failed: the other side closed the connection']);
  });
});
