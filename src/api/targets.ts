// What the API controls: a VM (tsvmm run) or a vhost-user backend (tsvmm vhost-user), each seen through
// ApiTarget: the library's own calls, wrapped.
import type { Vm } from '../vmm/vm.js';
import type { VhostUserBackend } from '../vhost-user/backend.js';
import type { VhostUserServer } from '../vhost-user/server.js';
import { formatMac } from '../virtio-net/mac.js';
import type { ApiTarget } from './routes.js';

export function vmTarget(vm: Vm): ApiTarget {
  return {
    info: () => {
      const s = vm.status;
      const c = vm.config;
      return {
        kind: 'vm',
        state: s.state,
        ...(s.exit ? { exit: s.exit } : {}),
        uptimeMs: s.uptimeMs,
        config: {
          kernel: typeof c.kernel === 'string' ? c.kernel : c.kernel ? '(bytes)' : null,
          ...(c.restore !== undefined ? { restore: c.restore } : {}),
          ...(c.incoming !== undefined ? { incoming: c.incoming } : {}),
          ...(typeof c.initrd === 'string' ? { initrd: c.initrd } : {}),
          cmdline: c.cmdline ?? '',
          memory: c.memory ?? null,
          cpus: c.cpus ?? 1,
          viommu: !!c.viommu,
          rng: !!c.rng,
          net: vm.netDevices.map((d, i) => ({ id: String(i), mac: formatMac(d.net.mac), driver: d.driver.name, queuePairs: d.net.numQueues >> 1, link: d.net.linkUp ? 'up' : 'down', rateLimit: d.net.rateLimit })),
        },
      };
    },
    metrics: () => vm.metrics(),
    pause: () => vm.pause(),
    resume: () => vm.resume(),
    snapshot: (o) => vm.snapshot(o.path, { resume: o.resume }),
    migrate: async (o) => {
      const s = await vm.migrate(o.url, { maxDowntimeMs: o.maxDowntimeMs });
      return { url: o.url, passes: s.pass, pagesSent: s.pagesSent, bytesPerSec: Math.round(s.bytesPerSec), downtimeMs: Math.round(s.downtimeMs), totalMs: Math.round(s.totalMs) };
    },
    // (a paused guest could not answer its power button: it runs again first)
    shutdown: async (o) => {
      if (vm.status.state === 'paused') await vm.resume();
      return vm.shutdown(o);
    },
    net: (id) => {
      const d = /^\d{1,3}$/.test(id) ? vm.netDevices[Number(id)] : undefined;
      if (!d) return undefined;
      return { setLink: (up) => d.net.setLink(up), setRateLimit: (l) => d.net.setRateLimit(l) };
    },
  };
}

/** A vhost-user backend; `stop` ends the process's serving (PUT /vm/shutdown). */
export function backendTarget(backend: VhostUserBackend, server: VhostUserServer, stop: () => void): ApiTarget {
  const started = Date.now();
  let stopping = false;
  return {
    info: () => ({
      kind: 'vhost-user',
      state: stopping ? 'stopping' : backend.paused ? 'paused' : 'running',
      uptimeMs: Date.now() - started,
      config: { queuePairs: backend.queuePairs, activePairs: backend.activePairs, connections: server.connections, net: [{ id: '0', rateLimit: backend.rateLimit }] },
    }),
    metrics: () => {
      const m = backend.metrics();
      return { ...m, vhostUser: { connections: server.connections, errors: m.vhostUser?.errors ?? [] } };
    },
    pause: () => backend.pause(),
    resume: async () => backend.resume(),
    shutdown: async () => {
      stopping = true;
      stop();
    },
    // (the link is the frontend's device's: its config space is not ours to change)
    net: (id) => (id === '0' ? { setRateLimit: (l) => backend.setRateLimit(l) } : undefined),
  };
}
