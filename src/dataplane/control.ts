/** Words of the control array shared by the main thread and one dataplane thread. */
export const CONTROL_STOP = 0;
/** 1: stop touching the queues until cleared (the thread acknowledges in CONTROL_PAUSED) */
export const CONTROL_PAUSE = 1;
export const CONTROL_PAUSED = 2;
export const CONTROL_WORDS = 4;
