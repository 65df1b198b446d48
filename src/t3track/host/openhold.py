"""Hold other processes' opens of a sandbox's databases until its server has migrated them.

Why: the pairing probe mints its credential with `t3 auth pairing create`, a second start of the
candidate (~1.2 s of CPU for the real 0.0.42 before it touches a file), and that mint migrates the
database too. Two migrators on one database race (effect's Migrator reads the newest id in a deferred
transaction; the loser's stale snapshot cannot become a write and it fails), and if the mint won,
the sandbox server would be the one to fail. So the mint may open a database only once the server's
migrations are committed. With a hold, the mint is started together with the server, its first open
of a `*.sqlite` file in the sandbox's userdata waits in the kernel, and `release()` lets it through
when the server says its migrations are done: the mint's start overlaps the server's instead of
following it.

How: fanotify permission events (FAN_OPEN_PERM on the userdata directory, for itself and its direct
children). An open is held only when the opener is in the process group `hold_group()` named (the
mint's): whatever it opens there first, the database or anything before it, waits. Every other open,
the server's, its children's, the user's own processes', t3track's, is allowed at once, so nobody
else can be made to wait and the held descriptors stay few (at most MAX_HELD, then it lets go).
fanotify needs CAP_SYS_ADMIN: `OpenHold.start()` returns None where it is not there (not root, a
container without it, the shipped t3track.service, whose bounding set leaves it out), and the caller
then starts the mint after the migrations instead. Closing the fanotify descriptor allows whatever is
still held, so `release()`, a crash or a kill of t3track, or the watcher thread's own failure never
leaves an open hanging. The directory is reached without following links (it is the sandbox's, but
the candidate runs as the user who could swap it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import select
import struct
import threading
from pathlib import Path

from t3track.host import usertree

_FAN_CLOEXEC = 0x01
_FAN_NONBLOCK = 0x02
_FAN_CLASS_CONTENT = 0x04
_FAN_MARK_ADD = 0x01
_FAN_OPEN_PERM = 0x00010000
_FAN_ONDIR = 0x40000000
_FAN_EVENT_ON_CHILD = 0x08000000
_FAN_ALLOW = 0x01
_FAN_NOFD = -1
_METADATA = struct.Struct("IBBHQii")  # struct fanotify_event_metadata: len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("iI")  # struct fanotify_response: fd, response
_READ_BYTES = 4096
MAX_HELD = 64  # the mint opens a handful of files there; past this, something is wrong: let go


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    except (OSError, AttributeError):
        return None
    return lib


def available(directory: Path = Path("/tmp")) -> bool:
    """Whether a hold can be had here (a watch on `directory`, at once let go)."""
    hold = OpenHold.start(directory, user="root")
    if hold is not None:
        hold.release()
    return hold is not None


class OpenHold:
    """See the module doc. Use `start()`; `release()` (idempotent) ends it."""

    def __init__(self, group_fd: int):
        self._fd = group_fd
        self._held_pgid: int | None = None
        self._held: list[int] = []
        self.held_names: list[str] = []  # what was held, by file name (for the evidence and tests)
        self.first_held = threading.Event()
        self._lock = threading.Lock()
        self._released = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="t3track-openhold", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, directory: Path, *, user: str) -> OpenHold | None:
        """Watch `directory`; nothing is held until `hold_group()`. None when fanotify is not
        available here (the caller then does without)."""
        lib = _libc()
        if lib is None:
            return None
        group_fd = lib.fanotify_init(_FAN_CLASS_CONTENT | _FAN_CLOEXEC | _FAN_NONBLOCK,
                                     os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NONBLOCK)
        if group_fd < 0:
            return None  # EPERM without CAP_SYS_ADMIN (or a seccomp filter), ENOSYS without fanotify
        try:
            dir_fd = usertree.open_dir(directory, user=user)
        except usertree.UserTreeFault:
            os.close(group_fd)
            return None
        try:
            # the object dir_fd names (a NULL path): no name is looked up again, no link followed
            marked = lib.fanotify_mark(group_fd, _FAN_MARK_ADD, _FAN_OPEN_PERM | _FAN_ONDIR | _FAN_EVENT_ON_CHILD,
                                       dir_fd, None) == 0
        finally:
            os.close(dir_fd)
        if not marked:
            os.close(group_fd)
            return None
        try:
            return cls(group_fd)
        except BaseException:
            os.close(group_fd)  # allows anything already waiting
            raise

    def hold_group(self, pgid: int) -> None:
        """From now on, hold what process group `pgid` opens there (the mint's, just started)."""
        with self._lock:
            self._held_pgid = pgid

    def _holds(self, event_fd: int, pid: int) -> bool:
        if self._released or self._held_pgid is None or len(self._held) >= MAX_HELD:
            return False
        try:
            if os.getpgid(pid) != self._held_pgid:
                return False
            name = os.path.basename(os.readlink(f"/proc/self/fd/{event_fd}"))
        except OSError:
            return False  # the opener is gone, or the file cannot be named: nothing to protect
        self.held_names.append(name)
        return True

    def _answer(self, event_fd: int) -> None:
        try:
            os.write(self._fd, _RESPONSE.pack(event_fd, _FAN_ALLOW))
        except OSError:
            pass  # the opener died meanwhile
        os.close(event_fd)

    def _serve(self) -> None:
        try:
            self._watch()
        except Exception:  # noqa: BLE001 - whatever broke, closing below lets every open through
            pass
        finally:
            self._close(from_watcher=True)  # however it ended, nothing may stay held or watched

    def _watch(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                data = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                continue
            offset = 0
            while offset + _METADATA.size <= len(data):
                length, _version, _, _, _mask, event_fd, pid = _METADATA.unpack_from(data, offset)
                offset += max(length, _METADATA.size)
                if event_fd == _FAN_NOFD:
                    continue  # a queue overflow: nothing to answer
                with self._lock:
                    hold = self._holds(event_fd, pid)
                    if hold:
                        self._held.append(event_fd)
                if hold:
                    self.first_held.set()
                else:
                    self._answer(event_fd)

    def _close(self, *, from_watcher: bool) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            held, self._held = self._held, []
        try:
            if not from_watcher:
                os.write(self._wake_w, b"x")
                self._thread.join()
        finally:
            for event_fd in held:
                self._answer(event_fd)
            for fd in (self._fd, self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def release(self) -> None:
        """Let every held open through and stop watching (closing the group allows what it had not read)."""
        self._close(from_watcher=False)
