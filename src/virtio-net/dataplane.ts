// What virtio-net's dataplane threads run and with what, from the negotiated features and the driver:
// one source for the virtio-pci device (device.ts) and the vhost-user backend.
import { fileURLToPath } from 'node:url';
import { runtimeModulePath, type DataplaneConfig } from '../dataplane/index.js';
import type { NetDriver } from '../drivers/api.js';
import { workerUrl } from '../worker-url.js';
import { netDataplaneFeatures } from './features.js';
import type { NetHandlerConfig } from './queue-handler.js';

/** the queue handler the net threads load */
export const NET_HANDLER_MODULE = fileURLToPath(workerUrl('./queue-handler.js', import.meta.url));

/** `filter`, `rateLimit`: the device's shared RX filter and rate-limit words; `mtu`: the device's MTU
 * (default: the driver's, the wire's); `coalesce`: its notification coalescing words (coalesce.ts),
 * where the device takes the driver's coalescing commands */
export function netDataplane(features: bigint, driver: Pick<NetDriver, 'caps' | 'module'>, filter: SharedArrayBuffer, rateLimit: SharedArrayBuffer, mtu = driver.caps.mtu, coalesce?: SharedArrayBuffer): Pick<DataplaneConfig, 'handlerModule' | 'handlerConfig' | 'queueFeatures'> {
  const { eventIdx, indirect, packed, inOrder, mergeable, maxRxFrame, txPolicy } = netDataplaneFeatures(features, mtu);
  const handlerConfig: NetHandlerConfig = { driverModule: runtimeModulePath(driver.module), mergeable, maxRxFrame, txPolicy, filter, rateLimit, coalesce };
  return { handlerModule: NET_HANDLER_MODULE, handlerConfig, queueFeatures: { eventIdx, indirect, packed, inOrder } };
}
