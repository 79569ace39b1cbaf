// The words the virtio-iommu device and its request thread share in `control` (an Int32Array over
// shared memory), and the message that goes with CONTROL_LOG. A module of its own: the device must not
// import the thread's module, which runs the thread when loaded.
import type { DirtyLogArea } from '../virtio/dirty-log.js';

/** set by the device: the thread stops */
export const CONTROL_STOP = 0;
/** set by the device after posting a LogMessage; the thread takes the message, then clears the word */
export const CONTROL_LOG = 1;
export const CONTROL_WORDS = 2;

/** the dirty-page log the thread's writes (replies, used ring) go to from now on, or none */
export interface LogMessage {
  dirtyLog?: DirtyLogArea;
}
