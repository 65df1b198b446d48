"""Hold the pairing mint's opens for writing until the sandbox's server has migrated its databases.

Why: the pairing probe mints its credential with `t3 auth pairing create`, a second start of the
candidate (~1.2 s of CPU for the real 0.0.42 before it writes a file), and that mint migrates the
database too. Two migrators on one database race (effect's Migrator reads the newest id in a deferred
transaction; the loser's stale snapshot cannot become a write and it fails), and if the mint won,
the sandbox server would be the one to fail. So the mint may write only once the server's migrations
are committed. With a hold, the mint is started together with the server; its first open that could
write (for the real 0.0.42, the environment id in userdata, then the database) waits in the kernel,
and `release()` lets it through when the server says its migrations are done: the mint's start
overlaps the server's instead of following it.

How: seccomp user notification. The mint is started through t3track.host.mint_launcher, which sets
no_new_privs on itself, installs a filter that turns each open/openat/creat with a writing flag (and
each openat2) into a notification, sends the filter's listener here over a socket pair and execs the
mint. A thread here answers: held until `release()`, then SECCOMP_USER_NOTIF_FLAG_CONTINUE (the kernel
carries on with the call as the mint made it). Reads, and everything the server, its children, the
user or t3track do, never wait: the filter is on the mint alone. No capability is needed; the unit's
system call filter must allow `seccomp` (systemd/t3track.service does). `available()` says whether a
hold can be had here, and where it cannot (another architecture, a kernel before 5.5, a filter
refusing `seccomp`) the caller starts the mint after the migrations instead.

CONTINUE is not a security boundary (the opener could change the path between the notification and
the answer): nothing here decides anything on what a call names; it only orders two cooperating
starts. A hold never leaves an open hanging: `close()` or t3track's death closes the listener, and
the kernel then fails every held and later notified call with ENOSYS, so a mint whose hold is gone
fails (and the gate mints again once the server is ready) instead of waiting. The thread's own
failure before `release()` ends the mint (by a pidfd, never a reused pid) rather than trust ENOSYS:
SQLite answers a failed read-write open by opening read-only, which nothing holds. Past MAX_HELD
waiting calls, the next is refused (ENOSYS), never let through.

The launcher runs as the user, who may trace or signal it: whatever it hands over is served only
when it is a seccomp listener (a pipe or a file of theirs is dropped, closed aside), and `close()`
waits a bounded time for the thread, so a user tampering with their own mint can fail their own
gate but never stall t3track's night.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import select
import signal
import socket
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

from t3track.host import usertree

_SYS_SECCOMP = 317  # x86_64, as in the launcher
_SECCOMP_GET_ACTION_AVAIL = 2
_SECCOMP_GET_NOTIF_SIZES = 3
_RET_USER_NOTIF = 0x7FC00000
_NOTIF = struct.Struct("=QII64x")  # struct seccomp_notif: id, pid, flags, struct seccomp_data (64 bytes)
_RESP = struct.Struct("=QqiI")  # struct seccomp_notif_resp: id, val, error, flags
_SIZES = (_NOTIF.size, _RESP.size, 64)  # what SECCOMP_GET_NOTIF_SIZES must say for these layouts
_IOCTL_NOTIF_RECV = 0xC0502100  # SECCOMP_IOWR(0, struct seccomp_notif)
_IOCTL_NOTIF_SEND = 0xC0182101  # SECCOMP_IOWR(1, struct seccomp_notif_resp)
_FLAG_CONTINUE = 1  # SECCOMP_USER_NOTIF_FLAG_CONTINUE, Linux 5.5
MAX_HELD = 64  # the mint's threads hold a handful; past this, something is wrong: refuse (ENOSYS)
CLOSE_WAIT_S = 5.0  # close() waits this long for the thread (it is stuck only if the user tampered)
LISTENER_KIND = "anon_inode:seccomp notify"  # what /proc/self/fd/N names a seccomp listener


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        found = tuple(int(part) for part in os.uname().release.split("-", 1)[0].split(".")[:2])
    except ValueError:
        return False
    return found >= (major, minor)


def available() -> bool:
    """Whether a hold can be had here: x86_64, Linux >= 5.5 (CONTINUE), and a `seccomp` system call
    that answers (systemd's SystemCallFilter= may refuse it) with user notification supported."""
    lib = _libc()
    if lib is None or os.uname().machine != "x86_64" or not _kernel_at_least(5, 5):
        return False
    sizes = (ctypes.c_uint16 * 3)()
    if lib.syscall(_SYS_SECCOMP, _SECCOMP_GET_NOTIF_SIZES, 0, ctypes.byref(sizes)) != 0:
        return False
    action = ctypes.c_uint32(_RET_USER_NOTIF)
    return tuple(sizes) == _SIZES and lib.syscall(_SYS_SECCOMP, _SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) == 0


@functools.cache
def _launcher_source() -> str:
    """t3track.host.mint_launcher's source, which the launcher runs (read, not imported: see owner_child)."""
    return Path(__file__).with_name("mint_launcher.py").read_text(encoding="utf-8")


class OpenHold:
    """See the module doc. `start()`, then run `command(argv)` with `pass_fds`, `spawned(pid)` once it
    runs; `release()` lets the held opens go on, `close()` (idempotent) ends the hold."""

    def __init__(self) -> None:
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener: int | None = None
        self._pidfd: int | None = None  # the launcher, then the mint: what a failing hold must stop
        self._held: list[int] = []
        self.held = 0  # how many opens waited (for the evidence and tests)
        self.refused = 0  # how many failed (ENOSYS) past MAX_HELD
        self.listening = False  # the launcher's listener arrived and is served
        self.first_held = threading.Event()
        self._lock = threading.Lock()
        self._released = False
        self._closed = False
        self._freed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="t3track-openhold", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls) -> OpenHold | None:
        """A hold for one mint to be started; None when seccomp user notification is not available here."""
        return cls() if available() else None

    def command(self, argv: Sequence[str | os.PathLike]) -> tuple[list[str], tuple[int, ...]]:
        """The launcher's command line for `argv` (the mint's), and the descriptor to pass it."""
        fd = self._theirs.fileno()
        return ([usertree.interpreter(), "-I", "-S", "-c", _launcher_source(), str(fd), *(str(os.fspath(arg)) for arg in argv)],
                (fd,))

    def spawned(self, pid: int) -> None:
        """The launcher runs as `pid` (not yet reaped: its caller waits on it later). Our copy of its
        end goes, so a launcher that dies is seen at once."""
        self._theirs.close()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone
        with self._lock:
            if self._freed:
                os.close(pidfd)
            else:
                self._pidfd = pidfd

    def summary(self) -> str:
        """For the evidence: what the hold did."""
        if not self.listening:
            return "but the mint's launcher never handed its listener over"
        return f"{self.held} open(s) held" + (f", {self.refused} refused past {MAX_HELD}" if self.refused else "")

    def release(self) -> None:
        """Let every held open go on; from now on each is answered at once."""
        with self._lock:  # under it, the listener cannot be closed meanwhile
            self._released = True
            held, self._held = self._held, []
            if self._listener is not None:
                for notification in held:
                    self._answer_one(self._listener, notification)

    def close(self) -> None:
        """Stop answering (a call still held, or notified later, fails with ENOSYS) and free it all.
        For when the mint has ended or is being ended."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._freed:  # under the lock: the pipe is not closed meanwhile
                os.write(self._wake_w, b"x")
        if threading.current_thread() is self._thread:
            return  # its own end frees
        self._thread.join(CLOSE_WAIT_S)
        if not self._thread.is_alive():
            self._free()
        # else it is stuck in a call on the listener (only a user tampering with their own mint gets
        # it there): it frees its descriptors itself when the call returns; none is closed under it

    # --- the thread

    def _serve(self) -> None:
        try:
            listener = self._receive_listener()
            if listener is not None:
                with self._lock:
                    self._listener = listener
                    self.listening = True
                self._answer(listener)
        except Exception:  # noqa: BLE001 - whatever broke, the mint must not go on unheld
            with self._lock:
                pidfd = None if self._released else self._pidfd
            if pidfd is not None:
                # Only ENOSYS would follow, and SQLite answers a failed read-write open by opening
                # read-only, which nothing holds: the mint is ended instead (a mint at ready decides).
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    pass
        finally:
            self._free()

    def _receive_listener(self) -> int | None:
        poller = select.poll()
        poller.register(self._ours.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        if self._wake_r in dict(poller.poll()):
            return None
        _, fds, _, _ = socket.recv_fds(self._ours, 1, 1)
        if not fds:
            return None  # the launcher died before it could send one
        received = fds[0]
        os.set_inheritable(received, False)  # recv_fds does not ask for MSG_CMSG_CLOEXEC
        try:  # it came from a process running as the user, who could have made it send anything
            kind = os.readlink(f"/proc/self/fd/{received}")
        except OSError:
            kind = ""
        if kind != LISTENER_KIND:
            # closed aside: the last close of a file on a FUSE mount of the user's could wait on them
            threading.Thread(target=os.close, args=(received,), name="t3track-openhold-drop", daemon=True).start()
            return None
        return received

    def _answer(self, listener: int) -> None:
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._wake_r in events:
                return
            mask = events.get(listener, 0)
            if not mask & select.POLLIN:
                return  # POLLHUP: every process the filter was on has exited (Linux 5.8; before, close() ends it)
            buffer = bytearray(_NOTIF.size)  # zeroed, as the kernel wants it
            try:  # POLLIN: one is pending (ENOENT if its caller went meanwhile); releases the GIL if it blocks
                fcntl.ioctl(listener, _IOCTL_NOTIF_RECV, buffer)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINTR):
                    continue  # the caller was killed meanwhile
                raise
            notification, _pid, _flags = _NOTIF.unpack(buffer)
            with self._lock:
                answer = self._released or len(self._held) >= MAX_HELD
                if not answer:
                    self._held.append(notification)
                    self.held += 1
                elif not self._released:
                    self.refused += 1
            if not answer:
                self.first_held.set()
            else:
                self._answer_one(listener, notification)

    def _answer_one(self, listener: int, notification: int) -> None:
        """CONTINUE once released; before, past MAX_HELD, ENOSYS (never a write beside the migrations)."""
        response = (_RESP.pack(notification, 0, 0, _FLAG_CONTINUE) if self._released
                    else _RESP.pack(notification, 0, -errno.ENOSYS, 0))
        try:
            fcntl.ioctl(listener, _IOCTL_NOTIF_SEND, bytearray(response))
        except OSError:
            pass  # ENOENT: the caller died meanwhile (or the listener is closing)

    def _free(self) -> None:
        with self._lock:
            if self._freed:
                return
            self._freed = True
            listener, self._listener = self._listener, None
            pidfd, self._pidfd = self._pidfd, None
        for closing in (self._ours, self._theirs):
            closing.close()
        for fd in (listener, pidfd, self._wake_r, self._wake_w):
            if fd is None:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
