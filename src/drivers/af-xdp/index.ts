// AF_XDP backend: `--net af-xdp,ifname=NAME[,queues=N][,mode=copy|zerocopy|auto][,busy-poll=USEC]`.
//
// One AF_XDP socket per queue pair, bound to the interface queue of the same number; an XDP program
// (xdp-program.ts) steers each queue's frames to its socket and hands everything else to the stack.
// Set-up (privileged, with the clear errors) happens here on the main thread; the rings are used from
// the dataplane threads (xsk.ts).
//
// Offloads: AF_XDP carries no checksum or segmentation metadata, so this driver declares none, and the
// device then withholds CSUM/TSO from the guest: the guest's own stack checksums and segments, as it
// does for any NIC without offloads. The alternative — the dataplane checksumming and segmenting in
// software — would move the same work from the guest's CPU to the dataplane thread, the one we have
// least of; withholding keeps the data path a copy and nothing else.
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { native } from '../../native.js';
import { UserError } from '../../errors.js';
import { NO_OFFLOADS, type DriverQueue, type NetDriver } from '../api.js';
import { XdpRedirect, XdpAttachError } from './xdp-program.js';
import { openXsk, XskBindError, XskQueue, CHUNK, type XskInit, type XskMode } from './xsk.js';

/** the largest frame a UMEM chunk takes after the kernel's XDP headroom (256) */
const MAX_FRAME = CHUNK - 256;

function sysfs(ifname: string, what: string): string {
  return readFileSync(`/sys/class/net/${ifname}/${what}`, 'utf8').trim();
}

/** the option keys create() reads (the registry refuses others) */
export const options = ['ifname', 'mode'];

export function create(options: Record<string, string>): NetDriver {
  const ifname = options.ifname;
  if (!ifname) throw new UserError('--net af-xdp: ifname=NAME is required (an existing interface)');
  if (!/^[\w.-]{1,15}$/.test(ifname) || !existsSync(`/sys/class/net/${ifname}`)) throw new UserError(`--net af-xdp: there is no interface ${ifname} in this network namespace`);
  const mode = (options.mode ?? 'auto') as XskMode;
  if (!['copy', 'zerocopy', 'auto'].includes(mode)) throw new UserError(`--net af-xdp: mode=${options.mode} is not copy, zerocopy or auto`);
  const queues = Number(options.queues ?? '1');
  const rxQueues = readdirSync(`/sys/class/net/${ifname}/queues`).filter((q) => q.startsWith('rx-')).length;
  if (queues > rxQueues) throw new UserError(`--net af-xdp: ${ifname} has ${rxQueues} receive queue${rxQueues === 1 ? '' : 's'}, not ${queues} (ethtool -L, or numrxqueues for veth)`);
  const busyPollUs = Number(options['busy-poll'] ?? '0');
  const ifindex = Number(sysfs(ifname, 'ifindex'));
  const mtu = Math.min(Number(sysfs(ifname, 'mtu')), MAX_FRAME - 18);

  let xdp: XdpRedirect;
  try {
    xdp = XdpRedirect.attach(ifindex, queues);
  } catch (e) {
    if (e instanceof XdpAttachError && (e.errno === 1 || e.errno === 13)) throw new UserError(`--net af-xdp: no permission to load an XDP program: run as root or with CAP_BPF and CAP_NET_ADMIN`);
    if (e instanceof XdpAttachError) throw new UserError(`--net af-xdp: ${ifname}: ${e.message}`);
    throw e;
  }
  const sockets: XskInit[] = [];
  try {
    for (let q = 0; q < queues; q++) sockets.push(openXsk({ ifname, ifindex, queue: q, mapFd: xdp.mapFd, mode, busyPollUs }));
  } catch (e) {
    for (const s of sockets) native.close(s.fd);
    xdp.close();
    if (e instanceof XskBindError) throw new UserError(`--net af-xdp: ${e.message}`);
    throw e;
  }
  const modes = [...new Set(sockets.map((s) => s.mode))].join('+');
  return {
    name: 'af-xdp',
    caps: { queuePairs: queues, mtu, offloads: NO_OFFLOADS },
    module: fileURLToPath(import.meta.url),
    // what the kernel gave: copy or zero-copy, and where the XDP program runs
    describe:
      `${ifname}: ${queues} AF_XDP socket${queues > 1 ? 's' : ''}, ${modes} mode, XDP ${xdp.attachMode}` +
      (rxQueues > queues ? `; frames the interface receives on its other ${rxQueues - queues} queue(s) bypass tsvmm (ethtool -L ${ifname} combined ${queues}, or queues=${rxQueues})` : ''),
    queueInit: (pair: number): XskInit => sockets[pair],
    setGuestOffloads() {},
    close() {
      for (const s of sockets) native.close(s.fd);
      xdp.close();
    },
  };
}

export function openQueue(init: unknown): DriverQueue {
  return new XskQueue(init as XskInit);
}
