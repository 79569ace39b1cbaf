/** Words of the control array shared by the VM and every vCPU thread. */
export const CONTROL_STOP = 0;
export const CONTROL_WORDS = 4;
