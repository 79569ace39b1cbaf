/*
 * Head of the bzImage build of the test guest: the Linux x86 boot protocol's protected-mode kernel
 * begins here, loaded at 1 MiB. The boot loader (tsvmm) enters at +0x200 in 64-bit mode with
 * %rsi = boot_params; we translate boot_params into the PVH start info the rest of the guest reads
 * (command line, e820 map, RSDP), switch to our own GDT and page tables, and join the PVH path.
 */
	.section .bzhead, "ax"
	.code32
	.globl bz_start32
bz_start32:                            /* +0: the 32-bit entry, not provided */
1:	hlt
	jmp 1b

	.org 0x200
	.code64
	.globl bz_startup_64
bz_startup_64:
	cli
	cld
	mov $kstack_top, %rsp          /* the protocol promises no stack */
	mov $bz_start_info, %rdi
	movl $0x336ec578, 0(%rdi)      /* hvm_start_info magic */
	movl $1, 4(%rdi)               /* version */
	movl 0x228(%rsi), %eax         /* boot_params.hdr.cmd_line_ptr */
	mov %rax, 24(%rdi)
	mov 0x70(%rsi), %rax           /* boot_params.acpi_rsdp_addr */
	mov %rax, 32(%rdi)
	movl 0x21c(%rsi), %eax         /* ramdisk_size: the initrd becomes module 0 */
	test %eax, %eax
	jz 4f
	mov %rax, bz_modlist + 8
	movl 0x218(%rsi), %eax         /* ramdisk_image */
	mov %rax, bz_modlist
	movl $1, 12(%rdi)              /* nr_modules */
	mov $bz_modlist, %rax
	mov %rax, 16(%rdi)             /* modlist_paddr */
4:	movzbl 0x1e8(%rsi), %ecx       /* boot_params.e820_entries */
	mov %ecx, 48(%rdi)
	mov $bz_memmap, %rax
	mov %rax, 40(%rdi)
	lea 0x2d0(%rsi), %rsi          /* e820 entries: 20 bytes each → memmap entries: 24 bytes */
	mov $bz_memmap, %rdx
2:	test %ecx, %ecx
	jz 3f
	mov (%rsi), %rax
	mov %rax, (%rdx)
	mov 8(%rsi), %rax
	mov %rax, 8(%rdx)
	movl 16(%rsi), %eax
	movl %eax, 16(%rdx)
	add $20, %rsi
	add $24, %rdx
	dec %ecx
	jmp 2b
3:	mov $bz_start_info, %rsi
	lgdt gdt_ptr
	mov $pml4, %rax
	mov %rax, %cr3
	pushq $0x08
	pushq $start64
	lretq

	.bss
	.balign 8
bz_start_info:
	.skip 56
bz_memmap:
	.skip 128 * 24
bz_modlist:
	.skip 32
