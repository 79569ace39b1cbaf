/*
 * tsvmm test guest: PVH entry (32-bit protected mode, %ebx = hvm_start_info), long mode, and a drop to
 * CPL3 within a few hundred instructions. On kvm_pvm hosts CPL0 code is emulated (~1 us/instruction)
 * while CPL3 runs natively, so everything after the iretq below runs at CPL3 with IOPL=3 (port I/O
 * allowed). Exceptions land in a CPL0 stub that reports the vector and powers off.
 */
#define KCODE 0x08
#define KDATA 0x10
#define UDATA (0x18 | 3)
#define UCODE (0x20 | 3)
#define TSSSEL 0x28
#define DEBUG_EXIT_PORT 0xf4
#define COM1 0x3f8

	.section .note.Xen, "a", @note
	.balign 4
	.long 4            /* namesz */
	.long 4            /* descsz */
	.long 18           /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start32

	.section .text32, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	mov %ebx, %esi                 /* hvm_start_info: kept for main() */
	lgdt gdt_ptr
	mov %cr4, %eax
	or $0x20, %eax                 /* PAE */
	mov %eax, %cr4
	mov $pml4, %eax
	mov %eax, %cr3
	mov $0xc0000080, %ecx          /* EFER.LME */
	rdmsr
	or $0x100, %eax
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax           /* PG | PE */
	mov %eax, %cr0
	ljmp $KCODE, $start64

	.text
	.code64
	.globl start64, gdt_ptr, pml4, kstack_top, pdpt, pd_hi
start64:
	mov $KDATA, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	xor %eax, %eax
	mov %ax, %fs
	mov %ax, %gs
	mov $kstack_top, %rsp

	/* TSS descriptor base (only RSP0 matters: the stack exceptions from CPL3 switch to) */
	mov $tss, %rax
	mov %ax, gdt_tss + 2
	shr $16, %rax
	mov %al, gdt_tss + 4
	mov %ah, gdt_tss + 7
	shr $16, %rax
	mov %eax, gdt_tss + 8
	mov $kstack_top, %rax
	mov %rax, tss + 4
	mov $TSSSEL, %ax
	ltr %ax

	/* IDT: 32 interrupt gates, DPL0, to the stubs (each stub is 16 bytes apart) */
	mov $idt, %rdi
	mov $exc_stubs, %rax
	mov $32, %ecx
1:	mov %ax, (%rdi)
	movw $KCODE, 2(%rdi)
	movw $0x8e00, 4(%rdi)
	mov %rax, %rdx
	shr $16, %rdx
	mov %dx, 6(%rdi)
	shr $16, %rdx
	mov %edx, 8(%rdi)
	movl $0, 12(%rdi)
	add $16, %rdi
	add $16, %rax
	dec %ecx
	jnz 1b
	/* vector 0x40: the test interrupt (MSI from the host), counted by irq_handler */
	mov $idt + 0x40 * 16, %rdi
	mov $irq_handler, %rax
	mov %ax, (%rdi)
	movw $KCODE, 2(%rdi)
	movw $0x8e00, 4(%rdi)
	shr $16, %rax
	mov %ax, 6(%rdi)
	/* vector 13 (#GP) gets the port I/O emulator instead of the reporting stub */
	mov $idt + 13 * 16, %rdi
	mov $gp_handler, %rax
	mov %ax, (%rdi)
	shr $16, %rax
	mov %ax, 6(%rdi)
	lidt idt_ptr

	/* to CPL3: %rdi = start_info for main(); IOPL=3 so the guest drives its devices from user mode */
	mov %rsi, %rdi
	push $UDATA
	push $ustack_top
	push $0x3002
	push $UCODE
	push $user_entry
	iretq

user_entry:
	mov $UDATA, %ax
	mov %ax, %ds
	mov %ax, %es
	call guest_main
	/* main returned its status: power off with it */
	mov %eax, %edi
	call guest_exit
2:	jmp 2b

/*
 * #GP handler: emulates the CPL3 program's port I/O. Under QEMU/KVM on VMX or SVM, IOPL=3 lets CPL3 do
 * port I/O directly; kvm_pvm raises #GP for it whatever IOPL says, so this CPL0 handler performs the
 * one-byte forms the guest uses (in/out %dx with %al or %eax) and skips the instruction. Kept short:
 * on kvm_pvm each CPL0 instruction is emulated (~1 us). Anything else is a real #GP and is reported.
 */
gp_handler:
	push %rcx
	mov 16(%rsp), %rcx             /* faulting rip (above the saved rcx and the error code) */
	movzbl (%rcx), %ecx
	cmp $0xec, %cl
	je 20f
	cmp $0xee, %cl
	je 21f
	cmp $0xed, %cl
	je 22f
	cmp $0xef, %cl
	je 23f
	cmp $0xfb, %cl                 /* sti/cli: IOPL=3 allows them at CPL3, kvm_pvm does not */
	je 25f
	cmp $0xfa, %cl
	je 26f
	pop %rcx
	mov $13, %bl
	jmp exc_common
20:	inb %dx, %al
	jmp 24f
21:	outb %al, %dx
	jmp 24f
22:	inl %dx, %eax
	jmp 24f
23:	outl %eax, %dx
24:	incq 16(%rsp)
	pop %rcx
	add $8, %rsp                   /* error code */
	iretq
25:	orq $0x200, 32(%rsp)           /* IF in the interrupted RFLAGS */
	jmp 24b
26:	andq $~0x200, 32(%rsp)
	jmp 24b

/* Vector 0x40: count, acknowledge at the local APIC, return. */
	.globl irq_count
irq_handler:
	incl irq_count
	push %rax
	mov $0xfee000b0, %eax          /* EOI */
	movl $0, (%rax)
	pop %rax
	iretq

/*
 * Application processors. The BSP (at CPL3) copies ap_trampoline to TRAMPOLINE_BASE and sends
 * INIT-SIPI-SIPI with vector TRAMPOLINE_BASE >> 12. Each AP goes real mode → protected mode → long mode
 * with the BSP's page tables, takes a stack, drops to CPL3 and announces itself in ap_count.
 * Addresses inside the trampoline are computed relative to where it runs, not where it is linked.
 */
#define TRAMPOLINE_BASE 0x8000
#define T(x) ((x) - ap_trampoline + TRAMPOLINE_BASE)
	.globl ap_trampoline, ap_trampoline_end, ap_count
	.code16
ap_trampoline:
	cli
	xor %ax, %ax
	mov %ax, %ds
	lgdtl T(tgdt_ptr)
	mov %cr0, %eax
	or $1, %eax
	mov %eax, %cr0
	ljmpl $0x08, $T(ap_pm32)
	.code32
ap_pm32:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %cr4, %eax
	or $0x20, %eax
	mov %eax, %cr4
	mov $pml4, %eax
	mov %eax, %cr3
	mov $0xc0000080, %ecx
	rdmsr
	or $0x100, %eax
	wrmsr
	mov %cr0, %eax
	or $0x80000000, %eax
	mov %eax, %cr0
	ljmp $0x18, $ap_start64
	.balign 8
tgdt:
	.quad 0
	.quad 0x00cf9a000000ffff       /* 0x08 code32 */
	.quad 0x00cf92000000ffff       /* 0x10 data */
	.quad 0x00af9a000000ffff       /* 0x18 code64 */
tgdt_ptr:
	.word tgdt_ptr - tgdt - 1
	.long T(tgdt)
ap_trampoline_end:

	.code64
ap_start64:
	lgdt gdt_ptr
	mov $KDATA, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	lidt idt_ptr
	/* a stack of our own: slot = ap_next++ */
	mov $1, %eax
	lock xadd %eax, ap_next
	and $7, %eax
	shl $12, %rax
	add $ap_stacks + 4096, %rax
	mov %rax, %rsp                 /* INIT left %rsp at 0: build the iret frame on the new stack */
	push $UDATA
	push %rax
	push $0x3002
	push $UCODE
	push $ap_user
	iretq
ap_user:
	lock incl ap_count
1:	pause
	jmp 1b

/* Exception stubs: report "EXCEPTION <vector>" on COM1 (no LSR polling: emulated, keep it short), exit 0x7f. */
	.balign 16
exc_stubs:
	.set vec, 0
	.rept 32
	.balign 16
	mov $vec, %bl
	jmp exc_common
	.set vec, vec + 1
	.endr
exc_common:
	mov $COM1, %dx
	lea exc_msg(%rip), %rsi
3:	lodsb
	test %al, %al
	jz 4f
	out %al, %dx
	jmp 3b
4:	mov %bl, %al
	shr $4, %al
	call hexdigit
	mov %bl, %al
	and $15, %al
	call hexdigit
	/* then the first three words of the frame: [error code,] rip, cs ... */
	mov %rsp, %rdi
	mov $3, %r8d
7:	mov $' ', %al
	out %al, %dx
	mov (%rdi), %r9
	mov $16, %ecx
8:	rol $4, %r9
	mov %r9b, %al
	and $15, %al
	call hexdigit
	dec %ecx
	jnz 8b
	add $8, %rdi
	dec %r8d
	jnz 7b
	mov $'\n', %al
	out %al, %dx
	mov $DEBUG_EXIT_PORT, %dx
	mov $0x7f, %eax
	out %eax, %dx
5:	hlt
	jmp 5b
hexdigit:
	add $'0', %al
	cmp $'9', %al
	jbe 6f
	add $7, %al
6:	out %al, %dx
	ret

	.section .rodata
exc_msg:
	.asciz "\nTSVMM-GUEST EXCEPTION 0x"

	.data
	.balign 16
gdt:
	.quad 0
	.quad 0x00af9a000000ffff       /* 0x08 kernel code64 */
	.quad 0x00cf92000000ffff       /* 0x10 kernel data */
	.quad 0x00cff2000000ffff       /* 0x18 user data */
	.quad 0x00affa000000ffff       /* 0x20 user code64 */
gdt_tss:
	.quad 0x0000890000000067       /* 0x28 64-bit TSS, base filled at run time */
	.quad 0
gdt_end:
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt
idt_ptr:
	.word 256 * 16 - 1
	.quad idt

	.balign 4096
pml4:
	.quad pdpt + 0x7               /* present, writable, user */
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x7
	.quad 0, 0
	.quad pd_hi + 0x7              /* 3-4 GiB: only the IOAPIC and local APIC pages */
	.fill 508, 8, 0
pd:                                    /* identity map of the first 1 GiB, 2 MiB pages, user-accessible */
	.set i, 0
	.rept 512
	.quad (i << 21) + 0x87
	.set i, i + 1
	.endr
pd_hi:
	.fill 502, 8, 0
	.quad 0xfec00000 + 0x9f        /* 0xFEC00000: present, rw, user, PWT, PCD, 2 MiB */
	.quad 0xfee00000 + 0x9f        /* 0xFEE00000: the local APIC */
	.fill 8, 8, 0

	.balign 4
ap_count:
	.long 0
irq_count:
	.long 0
ap_next:
	.long 0

	.bss
	.balign 16
tss:
	.skip 104
	.balign 16
idt:
	.skip 256 * 16
	.balign 4096
kstack:
	.skip 8192
kstack_top:
ustack:
	.skip 65536
ustack_top:
	.balign 4096
ap_stacks:
	.skip 8 * 4096
