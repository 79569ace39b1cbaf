// The embeddable VMM: `import { Vm } from 'tsvmm'`.
export { Vm, type VmExit, type VmConfig, type VmStatus, type SnapshotInfo } from './vmm/vm.js';
export type { Metrics, DeviceMetrics, QueueMetrics } from './dataplane/metrics.js';
export { UserError } from './errors.js';
export { parseSize } from './vmm/config.js';
export type { NetRateLimits, DirectionLimits, TokenBucketConfig } from './dataplane/rate-limit.js';
