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
} as const;

export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, SIZEOF.kvm_cpuid2),
  CREATE_VCPU: io(0x41),
  GET_DIRTY_LOG: iow(0x42, SIZEOF.kvm_dirty_log),
  SET_USER_MEMORY_REGION: iow(0x46, SIZEOF.kvm_userspace_memory_region),
  SET_TSS_ADDR: io(0x47),
  SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, SIZEOF.kvm_irq_level),
  SET_GSI_ROUTING: iow(0x6a, SIZEOF.kvm_irq_routing),
  IRQFD: iow(0x76, SIZEOF.kvm_irqfd),
  CREATE_PIT2: iow(0x77, SIZEOF.kvm_pit_config),
  IOEVENTFD: iow(0x79, SIZEOF.kvm_ioeventfd),
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
  ENABLE_CAP: iow(0xa3, SIZEOF.kvm_enable_cap),
  SIGNAL_MSI: iow(0xa5, SIZEOF.kvm_msi),
} as const;

export const CAP = {
  IRQCHIP: 0,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  IRQ_ROUTING: 25,
  IRQFD: 32,
  PIT2: 33,
  IOEVENTFD: 36,
  SIGNAL_MSI: 77,
  IMMEDIATE_EXIT: 136,
  NR_VCPUS: 9,
  MAX_VCPUS: 66,
  SYNC_REGS: 74,
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
export const IRQ_ROUTING = { IRQCHIP: 1, MSI: 2 } as const;
export const MEM_LOG_DIRTY_PAGES = 1;
