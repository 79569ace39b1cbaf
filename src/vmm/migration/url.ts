// Where a live migration goes: `unix:PATH` (a unix socket) or `tcp:HOST:PORT` (HOST a name, an IPv4
// address or a bracketed IPv6 one). The source connects to it; the destination (`--incoming`) listens
// there for one connection. A malformed one is one line naming what to fix.
import { UserError } from '../../errors.js';

export type MigrationUrl = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV6 = /^[0-9A-Fa-f:.]{2,45}$/;

/** Parse a migration URL; `what` names the option or field it came from (`--incoming`, `url`). */
export function parseMigrationUrl(text: unknown, what: string): MigrationUrl {
  const shown = JSON.stringify(text)?.slice(0, 80) ?? String(text);
  const bad = (why: string) => new UserError(`${what}: ${shown} ${why} (unix:PATH or tcp:HOST:PORT)`);
  if (typeof text !== 'string') throw bad('is not a migration URL');
  if (text.startsWith('unix:')) {
    const path = text.slice(5);
    if (path === '') throw bad('names no socket path');
    if (path.length > 107) throw bad('has a socket path longer than a unix socket takes (107 bytes)');
    if (path.includes('\0')) throw bad('has a NUL in its path');
    return { kind: 'unix', path };
  }
  if (text.startsWith('tcp:')) {
    const rest = text.slice(4);
    const m = /^(?:\[([^\]]*)\]|([^:[\]]*)):(\d{1,5})$/.exec(rest);
    if (!m) throw bad('is not tcp:HOST:PORT');
    const host = m[1] ?? m[2];
    if (m[1] !== undefined ? !IPV6.test(host) || !host.includes(':') : !HOSTNAME.test(host)) throw bad(`has no usable host (${JSON.stringify(host.slice(0, 60))})`);
    const port = Number(m[3]);
    if (port < 1 || port > 65535) throw bad(`has port ${m[3]}, not 1..65535`);
    return { kind: 'tcp', host, port };
  }
  throw bad('is not a migration URL');
}

export function formatMigrationUrl(u: MigrationUrl): string {
  return u.kind === 'unix' ? `unix:${u.path}` : `tcp:${u.host.includes(':') ? `[${u.host}]` : u.host}:${u.port}`;
}
