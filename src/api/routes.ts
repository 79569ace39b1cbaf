// The API's endpoints over whatever it controls (a VM or a vhost-user backend: targets.ts). Every
// request is checked whole before anything changes: unknown fields, bad values and wrong methods are
// refused with their status and a one-line reason.
import type { Metrics } from '../dataplane/metrics.js';
import type { NetRateLimits } from '../dataplane/rate-limit.js';
import { rateLimitsFromJson } from './rate-limit-json.js';
import { toPrometheus, PROMETHEUS_CONTENT_TYPE } from './prometheus.js';
import { parseMigrationUrl } from '../vmm/migration/url.js';

/** A network device as the API changes it; an operation the device cannot do is absent. */
export interface ApiNet {
  setLink?(up: boolean): void;
  setRateLimit?(limits: NetRateLimits): unknown;
}

/** What the API controls. */
export interface ApiTarget {
  /** GET /vm: state (running, paused, stopped and its exit), config, uptime */
  info(): Record<string, unknown>;
  metrics(): Metrics;
  /** Errors thrown (e.g. "not running") are the client's: 400 with their message */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** PUT /vm/shutdown: begins an orderly end (stopped after `deadlineMs` if given); absent where not
   * available (501) */
  shutdown?(o: { deadlineMs?: number }): Promise<unknown>;
  net(id: string): ApiNet | undefined;
  /** PUT /snapshot: write the VM into directory `path` and go on (or stop: resume false); absent where
   * not available (501). Errors (not running, a directory that cannot be written) are the client's. */
  snapshot?(o: { path: string; resume: boolean }): Promise<unknown>;
  /** PUT /migrate: move the VM to the tsvmm listening at `url` (checked); resolves once it runs there
   * (this VM then ends). Absent where not available (501). Errors (not running, the destination
   * unreachable or refusing) are the client's: the VM runs on. */
  migrate?(o: { url: string; maxDowntimeMs?: number }): Promise<unknown>;
}

export interface Reply {
  status: number;
  json?: unknown;
  text?: string;
  contentType?: string;
  headers?: Record<string, string>;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers?: Record<string, string>,
  ) {
    super(message);
  }
}

const NO_CONTENT: Reply = { status: 204 };
/** how long PUT /vm/shutdown waits for the shutdown to be refused before it answers 202 */
const SHUTDOWN_REFUSAL_MS = 200;

interface Route {
  pattern: RegExp;
  methods: Record<string, (t: ApiTarget, body: Record<string, unknown> | undefined, m: RegExpExecArray, q: URLSearchParams) => Reply | Promise<Reply>>;
  /** query parameters accepted */
  query?: string[];
}

const ROUTES: Route[] = [
  { pattern: /^\/vm$/, methods: { GET: (t) => ({ status: 200, json: t.info() }) } },
  { pattern: /^\/metrics$/, methods: { GET: metrics }, query: ['format'] },
  { pattern: /^\/vm\/pause$/, methods: { PUT: (t, b) => (noFields(b), clientFault(() => t.pause())) } },
  { pattern: /^\/vm\/resume$/, methods: { PUT: (t, b) => (noFields(b), clientFault(() => t.resume())) } },
  { pattern: /^\/vm\/shutdown$/, methods: { PUT: shutdown } },
  { pattern: /^\/net\/([^/]+)$/, methods: { PATCH: patchNet } },
  { pattern: /^\/snapshot$/, methods: { PUT: snapshot } },
  { pattern: /^\/migrate$/, methods: { PUT: migrate } },
];

/** Answer one request (`body` as received). Throws ApiError for the client's faults. */
export async function route(t: ApiTarget, method: string, url: string, body: string): Promise<Reply> {
  let u: URL;
  try {
    u = new URL(url, 'http://localhost');
  } catch {
    throw new ApiError(400, 'malformed request target');
  }
  const r = ROUTES.find((x) => x.pattern.test(u.pathname));
  if (!r) throw new ApiError(404, `no such resource: ${u.pathname.slice(0, 100)}`);
  const handler = Object.hasOwn(r.methods, method) ? r.methods[method] : undefined;
  const allow = Object.keys(r.methods).join(', ');
  if (!handler) throw new ApiError(405, `${method.slice(0, 20)} is not allowed on ${u.pathname} (allowed: ${allow})`, { Allow: allow });
  for (const k of u.searchParams.keys()) if (!(r.query ?? []).includes(k)) throw new ApiError(400, `unknown query parameter "${k.slice(0, 50)}"`);
  return handler(t, method === 'GET' ? undefined : parseBody(body), r.pattern.exec(u.pathname)!, u.searchParams);
}

function parseBody(body: string): Record<string, unknown> | undefined {
  if (body.trim() === '') return undefined;
  let v: unknown;
  try {
    v = JSON.parse(body);
  } catch (e) {
    throw new ApiError(400, `malformed JSON: ${(e as Error).message.split('\n')[0].slice(0, 200)}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ApiError(400, 'the body must be a JSON object');
  return v as Record<string, unknown>;
}

function noFields(b: Record<string, unknown> | undefined): void {
  const k = Object.keys(b ?? {});
  if (k.length) throw new ApiError(400, `unknown field "${k[0].slice(0, 50)}" (this request takes none)`);
}

/** Run an operation whose errors are the request's (not running, ...): 400 with the message. */
async function clientFault(f: () => Promise<unknown>): Promise<Reply> {
  try {
    await f();
  } catch (e) {
    throw new ApiError(400, (e instanceof Error ? e.message : String(e)).split('\n')[0]);
  }
  return NO_CONTENT;
}

function metrics(t: ApiTarget, _b: unknown, _m: RegExpExecArray, q: URLSearchParams): Reply {
  const format = q.get('format') ?? 'json';
  if (format === 'json') return { status: 200, json: t.metrics() };
  if (format === 'prometheus') return { status: 200, text: toPrometheus(t.metrics()), contentType: PROMETHEUS_CONTENT_TYPE };
  throw new ApiError(400, `format: "${format.slice(0, 50)}" is not json or prometheus`);
}

/** the longest shutdown deadline accepted (a timer's limit, about 24 days) */
const MAX_DEADLINE_MS = 2 ** 31 - 1;

async function shutdown(t: ApiTarget, b: Record<string, unknown> | undefined): Promise<Reply> {
  const { deadline_ms: deadline, ...rest } = b ?? {};
  noFields(rest);
  if (deadline !== undefined && !(typeof deadline === 'number' && Number.isInteger(deadline) && deadline >= 0 && deadline <= MAX_DEADLINE_MS))
    throw new ApiError(400, `deadline_ms: expected an integer from 0 to ${MAX_DEADLINE_MS}, got ${JSON.stringify(deadline)?.slice(0, 50)}`);
  if (!t.shutdown) throw new ApiError(501, 'shutdown is not available here');
  const begun = t.shutdown(deadline === undefined ? {} : { deadlineMs: deadline });
  // refused at once (not running): the client's fault; otherwise it goes on after this answer
  const refused = await Promise.race([begun.then(() => undefined, (e: unknown) => e), new Promise((r) => setTimeout(r, SHUTDOWN_REFUSAL_MS, undefined))]);
  if (refused) throw new ApiError(400, (refused instanceof Error ? refused.message : String(refused)).split('\n')[0]);
  begun.catch(() => undefined);
  return { status: 202, json: { shutdown: 'begun' } };
}

async function snapshot(t: ApiTarget, b: Record<string, unknown> | undefined): Promise<Reply> {
  const { path, resume, ...rest } = b ?? {};
  noFields(rest);
  if (typeof path !== 'string' || path === '' || path.length > 4096) throw new ApiError(400, `path: expected the snapshot directory's path, got ${JSON.stringify(path)?.slice(0, 50)}`);
  if (resume !== undefined && typeof resume !== 'boolean') throw new ApiError(400, `resume: expected true or false, got ${JSON.stringify(resume).slice(0, 50)}`);
  if (!t.snapshot) throw new ApiError(501, 'snapshots are not available here');
  let info: unknown;
  try {
    info = await t.snapshot({ path, resume: resume ?? true });
  } catch (e) {
    throw new ApiError(400, (e instanceof Error ? e.message : String(e)).split('\n')[0]);
  }
  return { status: 200, json: info };
}

/** the longest pause a migration may be asked to keep the guest to (a minute) */
const MAX_DOWNTIME_MS = 60_000;

async function migrate(t: ApiTarget, b: Record<string, unknown> | undefined): Promise<Reply> {
  const { url, max_downtime_ms: downtime, ...rest } = b ?? {};
  noFields(rest);
  try {
    parseMigrationUrl(url, 'url');
  } catch (e) {
    throw new ApiError(400, (e as Error).message);
  }
  if (downtime !== undefined && !(typeof downtime === 'number' && Number.isInteger(downtime) && downtime >= 0 && downtime <= MAX_DOWNTIME_MS))
    throw new ApiError(400, `max_downtime_ms: expected an integer from 0 to ${MAX_DOWNTIME_MS}, got ${JSON.stringify(downtime)?.slice(0, 50)}`);
  if (!t.migrate) throw new ApiError(501, 'migration is not available here');
  let summary: unknown;
  try {
    summary = await t.migrate({ url: url as string, ...(downtime !== undefined ? { maxDowntimeMs: downtime } : {}) });
  } catch (e) {
    throw new ApiError(400, (e instanceof Error ? e.message : String(e)).split('\n')[0]);
  }
  return { status: 200, json: summary };
}

const NET_FIELDS = ['link', 'rx_rate_limiter', 'tx_rate_limiter', 'iface_id'];

async function patchNet(t: ApiTarget, b: Record<string, unknown> | undefined, m: RegExpExecArray): Promise<Reply> {
  let id = m[1];
  try {
    id = decodeURIComponent(id);
  } catch {
    // (not percent-encoded UTF-8: no device is named so)
  }
  const net = t.net(id);
  if (!net) throw new ApiError(404, `no network device "${id.slice(0, 50)}"`);
  const body = b ?? {};
  for (const k of Object.keys(body)) if (!NET_FIELDS.includes(k)) throw new ApiError(400, `unknown field "${k.slice(0, 50)}" (${NET_FIELDS.join(', ')})`);
  if (Object.keys(body).length === 0) throw new ApiError(400, `nothing to change (${NET_FIELDS.join(', ')})`);
  // (Firecracker's requests name the device in the body too: it must be this one)
  if (body.iface_id !== undefined && body.iface_id !== id) throw new ApiError(400, `iface_id "${String(body.iface_id).slice(0, 50)}" is not "${id}"`);
  let up: boolean | undefined;
  if (body.link !== undefined) {
    if (body.link !== 'up' && body.link !== 'down') throw new ApiError(400, `link: expected "up" or "down", got ${JSON.stringify(body.link).slice(0, 50)}`);
    if (!net.setLink) throw new ApiError(400, 'link: this device does not control its link');
    up = body.link === 'up';
  }
  let limits: NetRateLimits | undefined;
  try {
    limits = rateLimitsFromJson(body);
  } catch (e) {
    throw new ApiError(400, (e as Error).message);
  }
  if (limits && !net.setRateLimit) throw new ApiError(501, 'rate limits are not available on this device');
  // everything checked: now change
  if (limits) {
    try {
      await net.setRateLimit!(limits);
    } catch (e) {
      throw new ApiError(400, (e instanceof Error ? e.message : String(e)).split('\n')[0]);
    }
  }
  if (up !== undefined) net.setLink!(up);
  return NO_CONTENT;
}
