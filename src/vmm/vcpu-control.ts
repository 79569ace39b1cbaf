/** Words of the control array shared by the VM and every vCPU thread. */
export const CONTROL_STOP = 0;
/** 1: each vCPU thread leaves KVM_RUN and waits (out of KVM_RUN, registers in the kernel) until cleared */
export const CONTROL_PAUSE = 1;
/** how many vCPU threads are waiting paused now (each adds itself on entering the wait, removes on leaving) */
export const CONTROL_PAUSED = 2;
export const CONTROL_WORDS = 4;
