/*
 * nopidfd: run a command with the pidfd system calls unavailable.
 *
 *   nopidfd MODE COMMAND [ARGS...]      MODE is `enosys` or `eperm`
 *
 * Sets PR_SET_NO_NEW_PRIVS (so no root is needed), installs a seccomp filter (raw classic BPF,
 * no libseccomp) and execvp's COMMAND. The filter is inherited by every descendant and cannot be
 * removed.
 *
 *   enosys  a Linux kernel older than 5.3, answering as an old kernel does:
 *           pidfd_open, pidfd_send_signal, pidfd_getfd, clone3      -> ENOSYS
 *           waitid(P_PIDFD, ...)                                    -> EINVAL
 *           clone(flags with CLONE_PIDFD, ...)                      -> EINVAL
 *   eperm   a container seccomp profile written before the pidfd calls existed:
 *           pidfd_open, pidfd_send_signal, pidfd_getfd              -> EPERM
 *           waitid(P_PIDFD, ...)                                    -> EPERM
 *           clone(flags with CLONE_PIDFD, ...)                      -> EPERM
 *           clone3                                                  -> ENOSYS (see below)
 *
 * Everything else is allowed. Only the native x86_64 ABI is filtered: x32 system calls (numbers
 * with __X32_SYSCALL_BIT) and other architectures (i386 via int 0x80) pass through unchanged.
 *
 * Build: gcc -O2 -Wall -Wextra -o /tmp/nopidfd nopidfd.c   (x86_64 Linux only)
 * Exit status: 2 on a usage error or when the filter cannot be installed, 127 when COMMAND
 * cannot be run, otherwise COMMAND's own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef PR_SET_NO_NEW_PRIVS
#define PR_SET_NO_NEW_PRIVS 38
#endif
#ifndef AUDIT_ARCH_X86_64
#define AUDIT_ARCH_X86_64 0xc000003eU
#endif

/* x86_64 numbers, written out so older headers do not matter. */
#define X32_SYSCALL_BIT 0x40000000U
#define NR_CLONE 56
#define NR_WAITID 247
#define NR_PIDFD_SEND_SIGNAL 424
#define NR_PIDFD_OPEN 434
#define NR_CLONE3 435
#define NR_PIDFD_GETFD 438
#define IDTYPE_P_PIDFD 3
#define FLAG_CLONE_PIDFD 0x1000U

/* seccomp_data fields; on little-endian x86_64 the low 32 bits of args[0] come first. */
#define OFF_NR offsetof(struct seccomp_data, nr)
#define OFF_ARCH offsetof(struct seccomp_data, arch)
#define OFF_ARG0_LO offsetof(struct seccomp_data, args[0])

#define ERRNO(e) (SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))

static void usage(void)
{
    fprintf(stderr,
            "usage: nopidfd MODE COMMAND [ARGS...]\n"
            "  MODE enosys: pidfd_open, pidfd_send_signal, pidfd_getfd, clone3 -> ENOSYS;\n"
            "               waitid(P_PIDFD) and clone(CLONE_PIDFD) -> EINVAL (Linux < 5.3)\n"
            "  MODE eperm:  pidfd_open, pidfd_send_signal, pidfd_getfd, waitid(P_PIDFD),\n"
            "               clone(CLONE_PIDFD) -> EPERM; clone3 -> ENOSYS (old seccomp profile)\n");
}

int main(int argc, char **argv)
{
    int pidfd_err, waitid_err, clone_err;

    if (argc < 3) {
        usage();
        return 2;
    }
    if (strcmp(argv[1], "enosys") == 0) {
        pidfd_err = ENOSYS;
        waitid_err = EINVAL; /* unknown idtype */
        clone_err = EINVAL;  /* 5.2 has CLONE_PIDFD; this is as if no kernel accepted it */
    } else if (strcmp(argv[1], "eperm") == 0) {
        pidfd_err = waitid_err = clone_err = EPERM;
    } else {
        fprintf(stderr, "nopidfd: unknown mode '%s'\n", argv[1]);
        usage();
        return 2;
    }

#if !defined(__x86_64__) || defined(__ILP32__)
    (void)pidfd_err;
    (void)waitid_err;
    (void)clone_err;
    fprintf(stderr, "nopidfd: only x86_64 (64-bit ABI) is supported; its filter matches x86_64 "
                    "system call numbers\n");
    return 2;
#else
    /*
     * clone3 answers ENOSYS in both modes. glibc >= 2.34 creates every thread (and posix_spawn
     * child) with clone3 and falls back to clone only when clone3 fails with ENOSYS. A profile
     * that answered EPERM would make every pthread_create fail, so real container runtimes
     * (Docker, containerd, podman) answer ENOSYS for clone3 in their default profiles, and so
     * do we. The fallback clone call carries no CLONE_PIDFD, so it passes.
     */
    /* Instruction indices of the jump targets; TO(i, label) is the relative jump from i. */
    enum { W_CHECK = 10, C_CHECK = 12, R_PIDFD = 14, R_ENOSYS, R_WAITID, R_CLONE, R_ALLOW, LEN };
#define TO(i, label) ((label) - (i) - 1)
    struct sock_filter filter[] = {
        /*  0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, OFF_ARCH),
        /* another architecture (i386 via int 0x80): let through unchanged, not filtered */
        /*  1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, TO(1, R_ALLOW)),
        /*  2 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, OFF_NR),
        /* x32 ABI (nr | __X32_SYSCALL_BIT): let through unchanged, not filtered */
        /*  3 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, TO(3, R_ALLOW), 0),
        /*  4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NR_PIDFD_OPEN, TO(4, R_PIDFD), 0),
        /*  5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NR_PIDFD_SEND_SIGNAL, TO(5, R_PIDFD), 0),
        /*  6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NR_PIDFD_GETFD, TO(6, R_PIDFD), 0),
        /*  7 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NR_CLONE3, TO(7, R_ENOSYS), 0),
        /*  8 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NR_WAITID, TO(8, W_CHECK), 0),
        /*  9 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NR_CLONE, TO(9, C_CHECK), TO(9, R_ALLOW)),
        /* W_CHECK: waitid(idtype, ...): idtype is an int, the low 32 bits of args[0] */
        /* 10 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, OFF_ARG0_LO),
        /* 11 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IDTYPE_P_PIDFD, TO(11, R_WAITID),
                          TO(11, R_ALLOW)),
        /* C_CHECK: x86_64 clone(flags, newsp, parent_tid, child_tid, tls): flags in args[0];
         * CLONE_PIDFD is in the low 32 bits */
        /* 12 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, OFF_ARG0_LO),
        /* 13 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, FLAG_CLONE_PIDFD, TO(13, R_CLONE),
                          TO(13, R_ALLOW)),
        /* 14 */ BPF_STMT(BPF_RET | BPF_K, ERRNO(pidfd_err)),  /* R_PIDFD */
        /* 15 */ BPF_STMT(BPF_RET | BPF_K, ERRNO(ENOSYS)),     /* R_ENOSYS (clone3) */
        /* 16 */ BPF_STMT(BPF_RET | BPF_K, ERRNO(waitid_err)), /* R_WAITID */
        /* 17 */ BPF_STMT(BPF_RET | BPF_K, ERRNO(clone_err)),  /* R_CLONE */
        /* 18 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW), /* R_ALLOW */
    };
#undef TO
    _Static_assert(sizeof(filter) / sizeof(filter[0]) == LEN, "labels do not match the filter");
    struct sock_fprog prog = {
        .len = (unsigned short)(sizeof(filter) / sizeof(filter[0])),
        .filter = filter,
    };

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "nopidfd: prctl(PR_SET_NO_NEW_PRIVS): %s\n", strerror(errno));
        return 2;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) {
        fprintf(stderr, "nopidfd: cannot install the seccomp filter: %s\n", strerror(errno));
        return 2;
    }
    execvp(argv[2], &argv[2]);
    fprintf(stderr, "nopidfd: cannot run %s: %s\n", argv[2], strerror(errno));
    return 127;
#endif
}
