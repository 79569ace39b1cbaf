/** Words of the control array shared by the main thread and one dataplane thread. */
export const CONTROL_STOP = 0;
/** 1: stop touching the queues until cleared (the thread acknowledges in CONTROL_PAUSED) */
export const CONTROL_PAUSE = 1;
export const CONTROL_PAUSED = 2;
/** set by the thread before it closes its handlers: their own descriptors are theirs to close from then on */
export const CONTROL_CLOSING = 3;
export const CONTROL_WORDS = 4;

/** The thread's counters (Float64 slots, written only by the thread). BUSY_POLL_SPINS: passes of its
 * loop that looked at the rings without sleeping (busy-poll=USEC). */
export const THREAD_COUNTER = { BUSY_POLL_SPINS: 0 } as const;
export const THREAD_COUNTER_WORDS = 1;
