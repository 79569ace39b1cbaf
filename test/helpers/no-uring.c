// no-uring COMMAND [ARG]...: run COMMAND with io_uring_setup refused (EPERM), as a kernel with
// kernel.io_uring_disabled set refuses it, without touching the host's sysctl. A seccomp filter
// (inherited across execve, and by every thread) answers that one system call with EPERM; every other
// system call is allowed.
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
// the x32 ABI numbers the same call with this bit set
#define X32_SYSCALL_BIT 0x40000000

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: no-uring COMMAND [ARG]...\n");
    return 2;
  }
  struct sock_filter filter[] = {
      // another architecture's system calls have other numbers: left alone
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, X32_SYSCALL_BIT | __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
  // (without CAP_SYS_ADMIN a filter needs no_new_privs; with it, no_new_privs costs nothing here)
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    perror("no-uring: prctl(PR_SET_NO_NEW_PRIVS)");
    return 1;
  }
  if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    perror("no-uring: seccomp(SECCOMP_SET_MODE_FILTER)");
    return 1;
  }
  execvp(argv[1], argv + 1);
  fprintf(stderr, "no-uring: %s: %s\n", argv[1], strerror(errno));
  return 127;
}
