/** Words of the control array shared by the main thread and one dataplane thread. */
export const CONTROL_STOP = 0;
export const CONTROL_WORDS = 2;
