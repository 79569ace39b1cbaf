// tsvmm ctl: a small client of the API socket. One request per invocation; the answer's body is printed
// (JSON as it came, Prometheus text as is); a refusal or a failure is one line on stderr and exit 1
// (2 for bad usage).
import { request } from 'node:http';
import { resolve as resolvePath } from 'node:path';
import { formatMigrationUrl, parseMigrationUrl, type MigrationUrl } from '../vmm/migration/url.js';

export const CTL_USAGE = `usage: tsvmm ctl --api-socket PATH COMMAND
  get vm                       state, config, uptime (JSON)
  get metrics [prometheus]     per device and queue counters (JSON, or Prometheus text)
  pause | resume               hold the vCPUs and dataplane threads / let them go on
  shutdown [deadline-ms=N]     ask the guest to power off (the VM's power button); stopped after N ms
                               (default the VM's: 30 s)
  snapshot DIR [stop]           write the VM into directory DIR (tsvmm run --restore DIR starts it
                               again) and go on, or with stop end the VM once it is written
  migrate URL [downtime-ms=N]  move the running VM to the tsvmm run --incoming URL waiting there
                               (unix:PATH or tcp:HOST:PORT), holding the guest for the last pages once
                               they would take at most N ms (default 300); answers once the guest runs
                               there and this VM has ended (exit status 3), or with why it did not (it
                               runs on)
  net ID link up|down          the device's link as the guest sees it
  net ID limit KEY=N...        rate limits per second: rx-bytes, rx-ops, tx-bytes, tx-ops (N=0 or off:
                               no limit); a bucket of N tokens refilled in one second, as Firecracker's`;

/** the longest a request may take (a pause in a slow nested VM takes a while) */
const CTL_TIMEOUT_MS = 60_000;

interface CtlRequest {
  method: string;
  path: string;
  body?: unknown;
  /** how long to wait for the answer (ms; default CTL_TIMEOUT_MS, 0: as long as it takes) */
  timeoutMs?: number;
}

export class CtlUsageError extends Error {}

/** The request a command asks for; throws CtlUsageError for what is not a command. */
export function ctlRequest(args: string[]): CtlRequest {
  const [cmd, ...rest] = args;
  const none = (r: CtlRequest) => {
    if (rest.length) throw new CtlUsageError(`${cmd}: unexpected "${rest[0]}"`);
    return r;
  };
  switch (cmd) {
    case 'get':
      if (rest[0] === 'vm' && rest.length === 1) return { method: 'GET', path: '/vm' };
      if (rest[0] === 'metrics' && rest.length === 1) return { method: 'GET', path: '/metrics' };
      if (rest[0] === 'metrics' && rest[1] === 'prometheus' && rest.length === 2) return { method: 'GET', path: '/metrics?format=prometheus' };
      throw new CtlUsageError('get: vm, metrics or metrics prometheus');
    case 'pause':
    case 'resume':
      return none({ method: 'PUT', path: `/vm/${cmd}` });
    case 'shutdown': {
      const m = rest.length === 1 ? /^deadline-ms=(\d{1,10})$/.exec(rest[0]) : undefined;
      if (rest.length > 1 || (rest.length === 1 && !m)) throw new CtlUsageError('shutdown: [deadline-ms=N]');
      return { method: 'PUT', path: '/vm/shutdown', ...(m ? { body: { deadline_ms: Number(m[1]) } } : {}) };
    }
    case 'snapshot':
      if (rest.length < 1 || rest.length > 2 || (rest.length === 2 && rest[1] !== 'stop')) throw new CtlUsageError('snapshot: DIR [stop]');
      return { method: 'PUT', path: '/snapshot', body: { path: resolvePath(rest[0]), ...(rest[1] === 'stop' ? { resume: false } : {}) } };
    case 'migrate': {
      const m = rest.length === 2 ? /^downtime-ms=(\d{1,5})$/.exec(rest[1]) : undefined;
      if (rest.length < 1 || rest.length > 2 || (rest.length === 2 && !m)) throw new CtlUsageError('migrate: URL (unix:PATH or tcp:HOST:PORT) [downtime-ms=N]');
      let url: MigrationUrl;
      try {
        url = parseMigrationUrl(rest[0], 'migrate');
      } catch (e) {
        throw new CtlUsageError((e as Error).message);
      }
      // (the path is the server's: a relative one is made absolute here, as snapshot's DIR)
      if (url.kind === 'unix') url = { kind: 'unix', path: resolvePath(url.path) };
      // (a migration takes as long as memory takes to move)
      return { method: 'PUT', path: '/migrate', body: { url: formatMigrationUrl(url), ...(m ? { max_downtime_ms: Number(m[1]) } : {}) }, timeoutMs: 0 };
    }
    case 'net':
      return netRequest(rest);
    default:
      throw new CtlUsageError(cmd ? `unknown command "${cmd}"` : 'a command is required');
  }
}

const LIMIT_KEYS: Record<string, [string, string]> = {
  'rx-bytes': ['rx_rate_limiter', 'bandwidth'],
  'rx-ops': ['rx_rate_limiter', 'ops'],
  'tx-bytes': ['tx_rate_limiter', 'bandwidth'],
  'tx-ops': ['tx_rate_limiter', 'ops'],
};

function netRequest(args: string[]): CtlRequest {
  const [id, what, ...rest] = args;
  if (!id || !/^[\w-]+$/.test(id)) throw new CtlUsageError('net: a device id is required (0, 1, ...)');
  const path = `/net/${id}`;
  if (what === 'link') {
    if (rest.length !== 1 || (rest[0] !== 'up' && rest[0] !== 'down')) throw new CtlUsageError('net ID link: up or down');
    return { method: 'PATCH', path, body: { link: rest[0] } };
  }
  if (what === 'limit') {
    if (rest.length === 0) throw new CtlUsageError(`net ID limit: KEY=N... (${Object.keys(LIMIT_KEYS).join(', ')})`);
    const body: Record<string, Record<string, unknown>> = {};
    for (const kv of rest) {
      const m = /^([a-z-]+)=(\d+|off)$/.exec(kv);
      const key = m && LIMIT_KEYS[m[1]];
      if (!m || !key) throw new CtlUsageError(`net ID limit: "${kv}" is not KEY=N or KEY=off (${Object.keys(LIMIT_KEYS).join(', ')})`);
      const n = m[2] === 'off' ? 0 : Number(m[2]);
      (body[key[0]] ??= {})[key[1]] = n === 0 ? null : { size: n, refill_time: 1000 };
    }
    return { method: 'PATCH', path, body };
  }
  throw new CtlUsageError('net ID: link up|down, or limit KEY=N...');
}

/** Send `r` to the socket; resolves with the status and body (rejects when the socket cannot be reached). */
export function ctlSend(socketPath: string, r: CtlRequest): Promise<{ status: number; body: string }> {
  const payload = r.body === undefined ? undefined : JSON.stringify(r.body);
  return new Promise((resolve, reject) => {
    // (agent false: a connection of its own, never an idle kept-alive one the server may have closed meanwhile)
    const timeout = r.timeoutMs ?? CTL_TIMEOUT_MS;
    const req = request({ socketPath, path: r.path, method: r.method, agent: false, headers: payload ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) } : {}, ...(timeout ? { timeout } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeout / 1000} s`)));
    req.on('error', reject);
    req.end(payload);
  });
}

/** tsvmm ctl ARGS: returns the exit status. */
export async function ctl(argv: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  let sock: string | undefined;
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--api-socket') sock = argv[++i];
    else if (argv[i].startsWith('--api-socket=')) sock = argv[i].slice('--api-socket='.length);
    else if (argv[i] === '--help' || argv[i] === '-h') {
      out(CTL_USAGE + '\n');
      return 0;
    } else args.push(argv[i]);
  }
  let r: CtlRequest;
  try {
    if (!sock) throw new CtlUsageError('--api-socket PATH is required');
    r = ctlRequest(args);
  } catch (e) {
    err(`tsvmm: ctl: ${(e as Error).message} (try: tsvmm ctl --help)\n`);
    return 2;
  }
  let res;
  try {
    res = await ctlSend(sock, r);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    err(`tsvmm: ctl: ${sock}: ${code === 'ENOENT' ? 'no such socket' : code === 'ECONNREFUSED' ? 'nothing listens there' : (e as Error).message}\n`);
    return 1;
  }
  if (res.status >= 200 && res.status < 300) {
    if (res.body) out(res.body.endsWith('\n') ? res.body : res.body + '\n');
    return 0;
  }
  let why = res.body.trim();
  try {
    why = (JSON.parse(res.body) as { error?: string }).error ?? why;
  } catch {
    // not JSON: the text as it came
  }
  err(`tsvmm: ctl: ${r.method} ${r.path}: ${res.status} ${why.split('\n')[0]}\n`);
  return 1;
}
