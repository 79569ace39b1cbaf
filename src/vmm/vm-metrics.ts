// Vm.metrics(): every device's queues and counters, live.
import { netQueueMetrics, queueMetrics, type Metrics } from '../dataplane/metrics.js';
import type { Vm } from './vm.js';

export function vmMetrics(vm: Vm): Metrics {
  const devices: Metrics['devices'] = vm.netDevices.map((d, i) => ({
    id: String(i),
    kind: 'net',
    queues: netQueueMetrics(d.net.stats, d.net.numQueues >> 1),
    busyPollSpins: d.net.busyPollSpins,
    broken: d.pci.brokenReason ?? null,
    stuckThreads: d.net.stuckThreads,
    ...(d.driver.counters ? { driver: d.driver.counters() } : {}),
  }));
  if (vm.rng) devices.push({ id: 'rng', kind: 'rng', queues: [queueMetrics(vm.rng.stats, 0, 'requests')], stuckThreads: vm.rng.stuckThreads });
  const iommu = vm.iommu && { faults: vm.iommu.table.faultCount, mappings: vm.iommu.table.count, ...prefixed('requests_', vm.iommu.handled) };
  const migration = vm.migrationState;
  return { devices, ...(iommu ? { iommu } : {}), ...(migration ? { migration } : {}) };
}

function prefixed(prefix: string, o: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [prefix + k, v]));
}
