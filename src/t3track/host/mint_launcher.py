"""What starts the pairing mint under an open hold (see t3track.host.openhold): it installs a seccomp
filter on itself, hands the filter's listener to t3track, then becomes the mint.

Standard library only, run as `python -I -S -c <this source> SOCKFD EXECUTABLE ARGS...` with the
mint's uid and environment. SOCKFD is one end of a socket pair t3track holds the other end of. The
filter answers SECCOMP_RET_USER_NOTIF for every open that could write (open, openat or creat with
O_WRONLY, O_RDWR, O_CREAT or O_TRUNC; openat2 always, its flags are out of the filter's sight),
fails io_uring_setup with ENOSYS (an open submitted through io_uring would pass no filter; libuv, like
any program run where io_uring is off, then does its file work with plain system calls), fails every
call of another ABI (i386, x32) with ENOSYS, and allows everything else. It is inherited across the exec and by every thread and child of the mint.
Setting no_new_privs first is what lets an unprivileged process install it, and it costs the mint
nothing (it never gains privileges). Nothing is executed unless the listener reached t3track: a mint
that t3track could not hold would race the server's migrations. On any failure: one line on stderr,
exit 120, and no exec.
"""

import ctypes
import errno
import os
import socket
import struct
import sys

SETUP_FAILED = 120
PR_SET_NO_NEW_PRIVS = 38
SYS_SECCOMP = 317  # x86_64; t3track uses the hold on x86_64 only (openhold.available())
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
AUDIT_ARCH_X86_64 = 0xC000003E
NR_OPEN, NR_CREAT, NR_OPENAT, NR_IO_URING_SETUP, NR_OPENAT2 = 2, 85, 257, 425, 437
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
LD_ABS_W, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
X32_SYSCALL_BIT = 0x40000000
# struct seccomp_data: nr (0), arch (4), instruction_pointer (8), args[6] (16 + 8 * i; the low half first)
OFF_NR, OFF_ARCH, OFF_ARG1, OFF_ARG2 = 0, 4, 24, 32


def insn(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)


# Jumps count the instructions skipped: from index i, a jump of n lands on i + 1 + n. Another ABI
# (i386 through int 0x80) and x32 numbers (bit 30) would name the same calls by other numbers: ENOSYS.
PROGRAM = b"".join([
    insn(LD_ABS_W, 0, 0, OFF_ARCH),          # 0
    insn(JEQ_K, 0, 13, AUDIT_ARCH_X86_64),   # 1: another ABI -> 15
    insn(LD_ABS_W, 0, 0, OFF_NR),            # 2
    insn(JGE_K, 11, 0, X32_SYSCALL_BIT),     # 3: x32 -> 15
    insn(JEQ_K, 4, 0, NR_OPENAT),            # 4: -> 9
    insn(JEQ_K, 5, 0, NR_OPEN),              # 5: -> 11
    insn(JEQ_K, 7, 0, NR_CREAT),             # 6: -> 14
    insn(JEQ_K, 6, 0, NR_OPENAT2),           # 7: -> 14
    insn(JEQ_K, 6, 4, NR_IO_URING_SETUP),    # 8: -> 15, else 13
    insn(LD_ABS_W, 0, 0, OFF_ARG2),          # 9: openat's flags
    insn(JSET_K, 3, 2, WRITING),             # 10: -> 14, else 13
    insn(LD_ABS_W, 0, 0, OFF_ARG1),          # 11: open's flags
    insn(JSET_K, 1, 0, WRITING),             # 12: -> 14, else 13
    insn(RET_K, 0, 0, RET_ALLOW),            # 13
    insn(RET_K, 0, 0, RET_USER_NOTIF),       # 14
    insn(RET_K, 0, 0, RET_ERRNO | errno.ENOSYS),  # 15
])


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def fail(what):
    print(f"t3track's mint launcher: {what}; the mint was not started", file=sys.stderr, flush=True)
    sys.exit(SETUP_FAILED)


def install():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    code = ctypes.create_string_buffer(PROGRAM, len(PROGRAM))
    prog = SockFprog(len(PROGRAM) // 8, ctypes.addressof(code))
    listener = libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, ctypes.byref(prog))
    if listener < 0:
        fail(f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {os.strerror(ctypes.get_errno())}")
    return listener


def main(argv):
    if len(argv) < 3:
        fail("usage: SOCKFD EXECUTABLE [ARGS...]")
    try:
        channel = socket.socket(fileno=int(argv[1]))
    except (OSError, ValueError) as exc:
        fail(f"no socket to t3track at descriptor {argv[1]}: {exc}")
    listener = install()  # from here on, an open of ours that could write waits for t3track's answer
    try:
        socket.send_fds(channel, [b"L"], [listener])
    except OSError as exc:
        fail(f"could not hand the listener to t3track: {exc.strerror}")
    channel.close()
    os.close(listener)
    try:
        os.execv(argv[2], argv[2:])
    except OSError as exc:
        fail(f"cannot run {argv[2]}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv)
