// Target "api": the API socket's request handling (src/api/routes.ts) over a real vhost-user backend
// (null driver, no frontend). A case is a sequence of requests: methods real and made up, paths built
// from the API's own segments and junk (percent escapes, dots, long ids), query strings, and bodies that
// are JSON with the API's fields holding values of every type, or arbitrary text.
//
// Invariants, every request: nothing but an ApiError escapes; a refusal's status is one the API gives
// (400, 404, 405, 413, 501) and its message one line of bounded length (echoed input is cut); a success
// is 200, 202 or 204 and its JSON serializes. After every case the backend still answers GET /vm.
import fc from 'fast-check';
import { route, ApiError } from '../../api/routes.js';
import { backendTarget } from '../../api/targets.js';
import { VhostUserBackend } from '../../vhost-user/backend.js';
import { VhostUserServer } from '../../vhost-user/server.js';
import { create as createNull } from '../../drivers/null/index.js';
import { check, type FuzzTarget } from '../target.js';

const segment = fc.oneof(fc.constantFrom('vm', 'metrics', 'pause', 'resume', 'shutdown', 'net', '0', '1', '', '..', '.', '%ff', '%2F', '%00', 'a'.repeat(300)), fc.string({ maxLength: 12 }));
const value = fc.oneof(fc.constantFrom('up', 'down', null, true, 0, -1, 1e300, 2 ** 41, NaN), fc.jsonValue({ maxDepth: 3 }));
const bucket = fc.dictionary(fc.constantFrom('size', 'one_time_burst', 'refill_time', 'oneTimeBurst', 'x'), value, { maxKeys: 4 });
const limiter = fc.oneof(value, fc.dictionary(fc.constantFrom('bandwidth', 'ops', 'other'), fc.oneof(bucket, value), { maxKeys: 3 }));
const body = fc.oneof(
  { weight: 3, arbitrary: fc.dictionary(fc.constantFrom('link', 'rx_rate_limiter', 'tx_rate_limiter', 'iface_id', 'extra'), fc.oneof(limiter, value), { maxKeys: 4 }).map((o) => JSON.stringify(o)) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v) ?? '') },
  { weight: 1, arbitrary: fc.string({ maxLength: 200 }) },
);
const request = fc.record({
  method: fc.oneof(fc.constantFrom('GET', 'PUT', 'PATCH', 'POST', 'DELETE', 'HEAD', 'OPTIONS', 'CONSTRUCTOR', '__proto__', 'hasOwnProperty'), fc.string({ maxLength: 8 })),
  path: fc.array(segment, { minLength: 1, maxLength: 4 }).map((s) => '/' + s.join('/')),
  query: fc.option(fc.oneof(fc.constantFrom('format=json', 'format=prometheus', 'format=', 'x=1', 'format=json&format=xml'), fc.string({ maxLength: 20 })), { freq: 3 }),
  body,
});
const caseArb = fc.array(request, { minLength: 1, maxLength: 6 });
type Req = typeof request extends fc.Arbitrary<infer T> ? T : never;

const REFUSALS = new Set([400, 404, 405, 413, 501]);
const SUCCESSES = new Set([200, 202, 204]);

export class ApiTarget implements FuzzTarget {
  readonly name = 'api';
  readonly about = 'HTTP requests (methods, paths, queries, JSON and other bodies) against the API routes';
  readonly weight = 1;
  readonly counts = { requests: 0, refused: 0, answered: 0 };
  private readonly backend = new VhostUserBackend(createNull({ rx: '0' }), { queuePairs: 1 });
  private readonly server = new VhostUserServer(this.backend, { path: '/nonexistent/never-run.sock' });
  private readonly target = backendTarget(this.backend, this.server, () => {});

  property(): fc.IAsyncPropertyWithHooks<[Req[]]> {
    return fc.asyncProperty(caseArb, (reqs) => this.run(reqs));
  }

  async run(reqs: Req[]): Promise<void> {
    for (const r of reqs) {
      this.counts.requests++;
      const url = r.path + (r.query === null ? '' : `?${r.query}`);
      try {
        const reply = await route(this.target, r.method, url, r.body);
        this.counts.answered++;
        check(SUCCESSES.has(reply.status), () => `${r.method} ${url}: success status ${reply.status}`);
        if (reply.json !== undefined) JSON.stringify(reply.json);
      } catch (e) {
        check(e instanceof ApiError, () => `${r.method} ${url} ${JSON.stringify(r.body)}: ${(e as Error)?.stack ?? e} escaped`);
        this.counts.refused++;
        check(REFUSALS.has(e.status), () => `${r.method} ${url}: status ${e.status}`);
        check(!e.message.includes('\n') && e.message.length <= 400, () => `${r.method} ${url}: message ${JSON.stringify(e.message)}`);
      }
    }
    // (whatever the case did, the target answers and is not left held)
    this.backend.resume();
    const after = await route(this.target, 'GET', '/vm', '');
    check(after.status === 200, 'GET /vm after the case');
  }
}
