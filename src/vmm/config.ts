// The typed VM configuration shared by the CLI and the library, with validation that names what to fix.
import { readFileSync } from 'node:fs';
import { UserError } from '../errors.js';
import { MAX_MTU, MIN_MTU } from '../virtio-net/features.js';
import { parseNetRateLimits, type NetRateLimits } from '../dataplane/rate-limit.js';

export type SerialConfig = 'stdio' | 'none' | { file: string };

export interface VmConfig {
  /** path to a bzImage or a PVH ELF vmlinux, or its bytes (required unless `restore` is given) */
  kernel?: string | Uint8Array;
  /**
   * a snapshot directory (Vm.snapshot) to start from instead of booting: its machine is built again
   * (memory, vCPUs, devices; a memory, cpus, viommu or rng given must be the snapshot's, a net list
   * replaces the saved devices' drivers, e.g. another tap), its memory mapped copy-on-write from the
   * snapshot's file, and its device state restored; kernel, initrd and cmdline are not used
   */
  restore?: string;
  /**
   * take the guest from a migrating tsvmm (`vm.migrate(url)` there) instead of booting: `unix:PATH` or
   * `tcp:HOST:PORT` to listen on for one source. The machine (memory, cpus, devices) must be the
   * source's (a different one is refused); kernel, initrd and cmdline are not used. start() resolves
   * once the guest runs here.
   */
  incoming?: string;
  initrd?: string | Uint8Array;
  cmdline?: string;
  /** bytes, or a size string such as "512M" (default 512 MiB) */
  memory?: number | string;
  cpus?: number;
  kvmDevice?: string;
  /** network devices (virtio-net over PCI), each served by dataplane threads and a driver */
  net?: NetConfig[];
  /** a virtio-iommu that translates every network device's DMA (they offer VIRTIO_F_ACCESS_PLATFORM) */
  viommu?: boolean;
  /** a virtio-rng device: the guest's entropy from the host's CSPRNG, served by a dataplane thread */
  rng?: boolean | RngConfig;
}

export interface RngConfig {
  /** offer packed rings (VIRTIO_F_RING_PACKED) as well as split ones; false: split only (default true) */
  packed?: boolean;
}

/** Parse --rng's value: "" (the defaults) or "packed=on|off". */
export function parseRngArg(s: string): RngConfig {
  const rng: RngConfig = {};
  for (const item of s.split(',').filter(Boolean)) {
    if (item === 'packed=on' || item === 'packed=off') rng.packed = item === 'packed=on';
    else throw new UserError(`--rng: "${item}" is not packed=on or packed=off`);
  }
  return rng;
}

export interface NetConfig {
  /** a built-in driver name (tap) or the path of a driver module */
  driver: string;
  /** driver options, e.g. { ifname: 'tap0' } */
  options?: Record<string, string>;
  /** default: 52:54:00:xx:xx:xx derived from the device index */
  mac?: string;
  /** queue pairs (default 1) */
  queues?: number;
  /** dataplane threads for this device (default: one per queue pair) */
  threads?: number;
  /** busy-poll for this many µs before sleeping (default 0) */
  busyPollUs?: number;
  /** offer packed rings (VIRTIO_F_RING_PACKED) as well as split ones; false: split only (default true) */
  packed?: boolean;
  /** offer mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF; default true) */
  mergeable?: boolean;
  /** offer RSS (with several queues) and hash reports (VIRTIO_NET_F_RSS, VIRTIO_NET_F_HASH_REPORT; default true) */
  rss?: boolean;
  /**
   * the MTU offered to the guest (VIRTIO_NET_F_MTU), 68..65535; the driver raises its wire's to it where
   * it can (tap: the tap's MTU). Default: the wire's MTU as the driver finds it.
   */
  mtu?: number;
  /** the link speed in Mb/s the guest is shown (VIRTIO_NET_F_SPEED_DUPLEX), 1..2147483647; default unknown */
  speed?: number;
  /** the duplex the guest is shown; default unknown */
  duplex?: 'full' | 'half';
  /** rate limits of each queue pair (token buckets per direction); none by default */
  rateLimit?: NetRateLimits;
}

/** Validate the device settings of a NetConfig the library may have been given directly. */
export function checkNetConfig(n: NetConfig): void {
  const bool = (k: 'packed' | 'mergeable') => {
    if (n[k] !== undefined && typeof n[k] !== 'boolean') throw new UserError(`--net: ${k} must be true or false (the library option), not ${JSON.stringify(n[k])}`);
  };
  bool('packed');
  bool('mergeable');
  if (n.mtu !== undefined && !(Number.isInteger(n.mtu) && n.mtu >= MIN_MTU && n.mtu <= MAX_MTU)) throw new UserError(`--net: mtu must be a whole number from ${MIN_MTU} to ${MAX_MTU}, not ${JSON.stringify(n.mtu)}`);
  if (n.speed !== undefined && !(Number.isInteger(n.speed) && n.speed >= 1 && n.speed <= 0x7fffffff)) throw new UserError(`--net: speed must be a whole number of Mb/s from 1 to 2147483647, not ${JSON.stringify(n.speed)}`);
  if (n.duplex !== undefined && n.duplex !== 'full' && n.duplex !== 'half') throw new UserError(`--net: duplex must be full or half, not ${JSON.stringify(n.duplex)}`);
  if (n.rateLimit !== undefined) {
    try {
      parseNetRateLimits(n.rateLimit);
    } catch (e) {
      throw new UserError(`--net: rateLimit: ${(e as Error).message}`);
    }
  }
}

/** the --net keys of rate limits: direction and bucket */
const LIMIT_KEYS: Record<string, ['rx' | 'tx', 'bandwidth' | 'ops']> = {
  'rx-bytes': ['rx', 'bandwidth'],
  'tx-bytes': ['tx', 'bandwidth'],
  'rx-frames': ['rx', 'ops'],
  'tx-frames': ['tx', 'ops'],
};

/** "rx-bytes=SIZE/MS[+BURST]": a bucket of SIZE tokens (bytes may say 64K, 1M) refilled in MS ms. */
function parseLimitArg(net: NetConfig, k: string, v: string): void {
  const m = /^(\d+[KMGT]?)\/(\d+)(?:\+(\d+[KMGT]?))?$/i.exec(v);
  if (!m) throw new UserError(`--net: ${k}=${v} is not SIZE/MS or SIZE/MS+BURST (e.g. ${k}=64K/10)`);
  const [dir, kind] = LIMIT_KEYS[k];
  const size = (s: string) => parseSize(s, `--net: ${k}`);
  const bucket = { size: size(m[1]), refillTimeMs: Number(m[2]), oneTimeBurst: m[3] ? size(m[3]) : 0 };
  const limits: NetRateLimits = { ...net.rateLimit, [dir]: { ...net.rateLimit?.[dir], [kind]: bucket } };
  try {
    net.rateLimit = parseNetRateLimits(limits);
  } catch (e) {
    throw new UserError(`--net: ${k}=${v}: ${(e as Error).message}`);
  }
}

/** Parse "--net tap,ifname=tap0,queues=2,mac=52:54:00:12:34:56,packed=off,mrg-rxbuf=off,mtu=9000,speed=10000,duplex=full,tx-bytes=1M/100". */
export function parseNetArg(s: string): NetConfig {
  const [driver, ...kv] = s.split(',');
  if (!driver) throw new UserError('--net: a driver name is required (e.g. --net tap,ifname=tap0)');
  const options: Record<string, string> = {};
  const net: NetConfig = { driver, options };
  for (const item of kv) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new UserError(`--net: "${item}" is not key=value`);
    const k = item.slice(0, eq);
    const v = item.slice(eq + 1);
    if (k === 'mac') net.mac = v;
    else if (k === 'packed') {
      if (v !== 'on' && v !== 'off') throw new UserError(`--net: packed=${v} is not on or off`);
      net.packed = v === 'on';
    } else if (k === 'mrg-rxbuf') {
      if (v !== 'on' && v !== 'off') throw new UserError(`--net: mrg-rxbuf=${v} is not on or off`);
      net.mergeable = v === 'on';
    } else if (k === 'mtu') {
      if (!/^\d+$/.test(v) || Number(v) < MIN_MTU || Number(v) > MAX_MTU) throw new UserError(`--net: mtu=${v} is not a whole number from ${MIN_MTU} to ${MAX_MTU}`);
      net.mtu = Number(v);
    } else if (k === 'speed') {
      if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 0x7fffffff) throw new UserError(`--net: speed=${v} is not a whole number of Mb/s from 1 to 2147483647`);
      net.speed = Number(v);
    } else if (k === 'duplex') {
      if (v !== 'full' && v !== 'half') throw new UserError(`--net: duplex=${v} is not full or half`);
      net.duplex = v;
    } else if (k in LIMIT_KEYS) parseLimitArg(net, k, v);
    else if (k === 'queues' || k === 'threads' || k === 'busy-poll') {
      if (!/^\d+$/.test(v)) throw new UserError(`--net: ${k}=${v} is not a whole number`);
      if (k === 'queues') net.queues = Number(v);
      else if (k === 'threads') net.threads = Number(v);
      else {
        net.busyPollUs = Number(v);
        // drivers that can poll their device too (AF_XDP socket busy polling) see it as well
        options[k] = v;
      }
    } else options[k] = v;
  }
  if (net.queues !== undefined) {
    if (net.queues < 1 || net.queues > 16) throw new UserError('--net: queues must be 1..16');
    options.queues = String(net.queues);
  }
  if (net.threads !== undefined && net.threads < 1) throw new UserError('--net: threads must be at least 1');
  return net;
}

export const DEFAULT_MEMORY = 512 * 1024 * 1024;
export const MIN_MEMORY = 16 * 1024 * 1024;
export const MAX_MEMORY = 64 * 1024 * 1024 * 1024;
export const MAX_CPUS = 64;

/** "512M", "2G", "65536K", "1048576" (bytes) → bytes. */
export function parseSize(s: string, what = '--mem'): number {
  const m = /^(\d+)([KMGT]?)(i?B)?$/i.exec(s.trim());
  if (!m) throw new UserError(`${what}: "${s}" is not a size (examples: 512M, 2G)`);
  const mult: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };
  return Number(m[1]) * mult[m[2].toUpperCase()];
}

export function resolveMemory(mem: number | string | undefined): number {
  const bytes = mem === undefined ? DEFAULT_MEMORY : typeof mem === 'number' ? mem : parseSize(mem);
  if (!Number.isInteger(bytes) || bytes < MIN_MEMORY) throw new UserError(`--mem: at least 16M of guest memory is needed`);
  if (bytes > MAX_MEMORY) throw new UserError(`--mem: at most 64G of guest memory is supported`);
  if (bytes % (2 * 1024 * 1024) !== 0) throw new UserError(`--mem: size must be a multiple of 2M`);
  return bytes;
}

/** A file the configuration names (`what`: its option), or the bytes given instead; one line if it cannot be read. */
export function readInput(what: string, v: string | Uint8Array): Uint8Array {
  if (typeof v !== 'string') return v;
  try {
    return readFileSync(v);
  } catch (e) {
    throw new UserError(`${what}: cannot read ${v}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
}

/** The vCPU count asked for, checked before KVM is opened (a bad flag is reported as such on any host). */
export function requestedCpus(cpus: number | undefined): number {
  const n = cpus ?? 1;
  if (!Number.isInteger(n) || n < 1) throw new UserError(`--cpus: must be a whole number of at least 1`);
  return n;
}

export function resolveCpus(cpus: number | undefined, hostMax: number): number {
  const n = requestedCpus(cpus);
  const max = Math.min(MAX_CPUS, hostMax);
  if (n > max) throw new UserError(`--cpus: this KVM allows at most ${max} vCPUs`);
  return n;
}
