// KVM uapi: ioctl numbers, exit reasons and struct layouts from /usr/include/linux/kvm.h (x86-64).
// test/kvm-abi.test.ts compiles a C program against the real header and checks every value here.

const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
const KVMIO = 0xae;

function ioc(dir: number, nr: number, size: number): number {
  // _IOC(dir, type, nr, size) = dir<<30 | size<<16 | type<<8 | nr; computed unsigned.
  return ((dir << 30) >>> 0) + (size << 16) + (KVMIO << 8) + nr;
}
const io = (nr: number) => ioc(IOC_NONE, nr, 0);
const iow = (nr: number, size: number) => ioc(IOC_WRITE, nr, size);
const ior = (nr: number, size: number) => ioc(IOC_READ, nr, size);
const iowr = (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, nr, size);

export const SIZEOF = {
  kvm_userspace_memory_region: 32,
  kvm_regs: 144,
  kvm_sregs: 312,
  kvm_segment: 24,
  kvm_dtable: 16,
  kvm_fpu: 416,
  kvm_lapic_state: 1024,
  kvm_cpuid2: 8,
  kvm_cpuid_entry2: 40,
  kvm_msrs: 8,
  kvm_msr_entry: 16,
  kvm_pit_config: 64,
  kvm_irqfd: 32,
  kvm_ioeventfd: 64,
  kvm_irq_routing: 8,
  kvm_irq_routing_entry: 48,
  kvm_msi: 32,
  kvm_dirty_log: 16,
  kvm_irq_level: 8,
  kvm_enable_cap: 104,
  kvm_mp_state: 4,
  kvm_msr_list: 4,
  kvm_xsave: 4096,
  kvm_xcrs: 392,
  kvm_vcpu_events: 64,
  kvm_debugregs: 128,
  kvm_irqchip: 520,
  kvm_pit_state2: 112,
  kvm_clock_data: 48,
} as const;

export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_MSR_INDEX_LIST: iowr(0x02, SIZEOF.kvm_msr_list),
  GET_SUPPORTED_CPUID: iowr(0x05, SIZEOF.kvm_cpuid2),
  GET_MSR_FEATURE_INDEX_LIST: iowr(0x0a, SIZEOF.kvm_msr_list),
  CREATE_VCPU: io(0x41),
  GET_DIRTY_LOG: iow(0x42, SIZEOF.kvm_dirty_log),
  SET_USER_MEMORY_REGION: iow(0x46, SIZEOF.kvm_userspace_memory_region),
  SET_TSS_ADDR: io(0x47),
  SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, SIZEOF.kvm_irq_level),
  GET_IRQCHIP: iowr(0x62, SIZEOF.kvm_irqchip),
  // (_IOR in the header, though it writes: a historical slip the number keeps)
  SET_IRQCHIP: ior(0x63, SIZEOF.kvm_irqchip),
  SET_GSI_ROUTING: iow(0x6a, SIZEOF.kvm_irq_routing),
  IRQFD: iow(0x76, SIZEOF.kvm_irqfd),
  CREATE_PIT2: iow(0x77, SIZEOF.kvm_pit_config),
  IOEVENTFD: iow(0x79, SIZEOF.kvm_ioeventfd),
  SET_CLOCK: iow(0x7b, SIZEOF.kvm_clock_data),
  GET_CLOCK: ior(0x7c, SIZEOF.kvm_clock_data),
  RUN: io(0x80),
  GET_REGS: ior(0x81, SIZEOF.kvm_regs),
  SET_REGS: iow(0x82, SIZEOF.kvm_regs),
  GET_SREGS: ior(0x83, SIZEOF.kvm_sregs),
  SET_SREGS: iow(0x84, SIZEOF.kvm_sregs),
  GET_MSRS: iowr(0x88, SIZEOF.kvm_msrs),
  SET_MSRS: iow(0x89, SIZEOF.kvm_msrs),
  GET_FPU: ior(0x8c, SIZEOF.kvm_fpu),
  SET_FPU: iow(0x8d, SIZEOF.kvm_fpu),
  GET_LAPIC: ior(0x8e, SIZEOF.kvm_lapic_state),
  SET_LAPIC: iow(0x8f, SIZEOF.kvm_lapic_state),
  SET_CPUID2: iow(0x90, SIZEOF.kvm_cpuid2),
  GET_MP_STATE: ior(0x98, SIZEOF.kvm_mp_state),
  SET_MP_STATE: iow(0x99, SIZEOF.kvm_mp_state),
  GET_PIT2: ior(0x9f, SIZEOF.kvm_pit_state2),
  SET_PIT2: iow(0xa0, SIZEOF.kvm_pit_state2),
  GET_VCPU_EVENTS: ior(0x9f, SIZEOF.kvm_vcpu_events),
  SET_VCPU_EVENTS: iow(0xa0, SIZEOF.kvm_vcpu_events),
  GET_DEBUGREGS: ior(0xa1, SIZEOF.kvm_debugregs),
  SET_DEBUGREGS: iow(0xa2, SIZEOF.kvm_debugregs),
  SET_TSC_KHZ: io(0xa2),
  GET_TSC_KHZ: io(0xa3),
  ENABLE_CAP: iow(0xa3, SIZEOF.kvm_enable_cap),
  SIGNAL_MSI: iow(0xa5, SIZEOF.kvm_msi),
  GET_XSAVE: ior(0xa4, SIZEOF.kvm_xsave),
  SET_XSAVE: iow(0xa5, SIZEOF.kvm_xsave),
  GET_XCRS: ior(0xa6, SIZEOF.kvm_xcrs),
  SET_XCRS: iow(0xa7, SIZEOF.kvm_xcrs),
  /** the whole XSAVE area, of the size KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reports (at least kvm_xsave) */
  GET_XSAVE2: ior(0xcf, SIZEOF.kvm_xsave),
} as const;

export const CAP = {
  IRQCHIP: 0,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  IRQ_ROUTING: 25,
  IRQFD: 32,
  IRQFD_RESAMPLE: 82,
  PIT2: 33,
  IOEVENTFD: 36,
  SIGNAL_MSI: 77,
  IMMEDIATE_EXIT: 136,
  NR_VCPUS: 9,
  MAX_VCPUS: 66,
  SYNC_REGS: 74,
  MP_STATE: 14,
  ADJUST_CLOCK: 39,
  VCPU_EVENTS: 41,
  DEBUGREGS: 50,
  XSAVE: 55,
  XCRS: 56,
  TSC_CONTROL: 60,
  GET_TSC_KHZ: 61,
  GET_MSR_FEATURES: 153,
  XSAVE2: 208,
} as const;

export const EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

export const SYSTEM_EVENT = { SHUTDOWN: 1, RESET: 2, CRASH: 3 } as const;

/** Offsets inside the mmapped struct kvm_run. */
export const RUN = {
  immediate_exit: 1,
  exit_reason: 8,
  // union at 32
  io_direction: 32,
  io_size: 33,
  io_port: 34,
  io_count: 36,
  io_data_offset: 40,
  mmio_phys_addr: 32,
  mmio_data: 40,
  mmio_len: 48,
  mmio_is_write: 52,
  system_event_type: 32,
  internal_suberror: 32,
  internal_ndata: 36,
  internal_data: 40,
  fail_entry_reason: 32,
  kvm_valid_regs: 288,
  kvm_dirty_regs: 296,
  /** struct kvm_sync_regs: regs (struct kvm_regs) first */
  sync_regs: 304,
} as const;

export const SYNC_X86_REGS = 1;

export const IOEVENTFD_FLAG = { DATAMATCH: 1, PIO: 2, DEASSIGN: 4 } as const;
/** kvm_irqfd.flags */
export const IRQFD_FLAG = { DEASSIGN: 1, RESAMPLE: 2 } as const;
export const IRQ_ROUTING = { IRQCHIP: 1, MSI: 2 } as const;
export const MEM_LOG_DIRTY_PAGES = 1;
