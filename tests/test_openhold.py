"""t3track.host.openhold: a process started through the hold's launcher waits at each open that could
write until release(); its reads, and everybody else, never wait.

Real seccomp user notification, real child processes (the launcher execs them, as it execs the mint):
each opener prints a line when its open() returned or failed. Needs no privilege; skipped where the
kernel or a system call filter refuses (see openhold.available())."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from t3track.host import mint_launcher, openhold

pytestmark = pytest.mark.skipif(not openhold.available(), reason="no seccomp user notification here")

# What the held process does: each named open, one line each ("<what> ok" or "<what> errno N").
OPENER = textwrap.dedent("""
    import ctypes, os, sys
    def openat2(path, flags):
        how = (ctypes.c_uint64 * 3)(flags, 0, 0)
        fd = ctypes.CDLL(None, use_errno=True).syscall(437, -100, path.encode(), ctypes.byref(how), 24)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return fd
    def raw(number, *args):
        fd = ctypes.CDLL(None, use_errno=True).syscall(number, *args)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return fd
    def threads(p):
        # three threads open for writing at once; each says how it went
        import threading
        def one(i):
            try:
                os.close(os.open(p, os.O_WRONLY))
                print("thread ok", flush=True)
            except OSError as exc:
                print("thread errno", exc.errno, flush=True)
        started = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
        return os.open(p, os.O_RDONLY)
    def io_uring_setup():
        params = ctypes.create_string_buffer(120)
        fd = ctypes.CDLL(None, use_errno=True).syscall(425, 8, params)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return fd
    OPENS = {
        "read": lambda p: os.open(p, os.O_RDONLY),
        "append": lambda p: os.open(p, os.O_WRONLY | os.O_APPEND),
        "rdwr": lambda p: os.open(p, os.O_RDWR),
        "create": lambda p: os.open(p + ".new", os.O_RDONLY | os.O_CREAT, 0o600),
        "truncate": lambda p: os.open(p, os.O_RDONLY | os.O_TRUNC),
        "openat2": lambda p: openat2(p, os.O_RDONLY),
        "io_uring": lambda p: io_uring_setup(),
        "sys_open": lambda p: raw(2, p.encode(), os.O_WRONLY),
        "sys_open_read": lambda p: raw(2, p.encode(), os.O_RDONLY),
        "sys_creat": lambda p: raw(85, (p + ".creat").encode(), 0o600),
        "x32_openat": lambda p: raw(0x40000000 | 257, -100, p.encode(), os.O_RDONLY),
        "threads": lambda p: threads(p),
    }
    for what in sys.argv[2:]:
        try:
            os.close(OPENS[what](sys.argv[1]))
            print(what, "ok", flush=True)
        except OSError as exc:
            print(what, "errno", exc.errno, flush=True)
""")


def start_held(hold: openhold.OpenHold, target: Path, *opens: str) -> subprocess.Popen:
    argv, fds = hold.command([sys.executable, "-I", "-S", "-c", OPENER, str(target), *opens])
    child = subprocess.Popen(argv, pass_fds=fds, stdout=subprocess.PIPE, text=True, process_group=0)
    hold.spawned(child.pid)
    return child


@contextlib.contextmanager
def held_child(hold: openhold.OpenHold, target: Path, *opens: str) -> Iterator[subprocess.Popen]:
    """start_held(), and whatever the test found: the hold closed, the child ended."""
    child = start_held(hold, target, *opens)
    try:
        yield child
    finally:
        hold.close()
        child.kill()
        child.wait()


def line_within(child: subprocess.Popen, seconds: float) -> str | None:
    """The child's next line, or None when it printed none within `seconds`."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], seconds)
    return child.stdout.readline().strip() if ready else None


@pytest.fixture()
def target(tmp_path: Path) -> Path:
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"x")
    return path


def new_hold() -> openhold.OpenHold:
    hold = openhold.OpenHold.start()
    assert hold is not None
    return hold


@pytest.mark.parametrize("what", ["append", "rdwr", "create", "truncate", "openat2", "sys_open", "sys_creat"])
def test_an_open_that_could_write_waits_for_release_and_a_read_does_not(target, what):
    hold = new_hold()
    with held_child(hold, target, "read", what, "sys_open_read") as child:
        assert line_within(child, 10) == "read ok"  # reads go on at once
        assert hold.first_held.wait(10)
        assert line_within(child, 0.5) is None  # still inside open()
        target.read_bytes()  # and this process (anyone not started through the hold) never waits
        with open(target, "ab"):
            pass
        hold.release()
        assert line_within(child, 10) == f"{what} ok"
        assert line_within(child, 10) == "sys_open_read ok"
        assert child.wait(10) == 0
        assert hold.held == 1


def test_io_uring_and_other_abis_are_refused_so_no_open_can_pass_beside_the_filter(target):
    """An open submitted through io_uring is no system call the filter sees: the mint gets none
    (ENOSYS, as where io_uring is off), and libuv does its file work with plain calls. x32 numbers
    name the same calls by other numbers: refused too (this kernel may refuse them by itself)."""
    hold = new_hold()
    with held_child(hold, target, "io_uring", "x32_openat", "read") as child:
        assert line_within(child, 10) == f"io_uring errno {errno.ENOSYS}"
        assert line_within(child, 10) == f"x32_openat errno {errno.ENOSYS}"
        assert line_within(child, 10) == "read ok"
        assert hold.held == 0


def test_after_release_every_open_is_answered_at_once(target):
    hold = new_hold()
    hold.release()  # before it even ran, as when the server had migrated first
    with held_child(hold, target, "append", "create", "rdwr") as child:
        assert [line_within(child, 10) for _ in range(3)] == ["append ok", "create ok", "rdwr ok"]
        assert child.wait(10) == 0
        assert hold.held == 0


def test_close_fails_what_was_held_so_it_never_hangs(target):
    """A held mint whose start is given up (another attempt, a stop) must not go on writing."""
    hold = new_hold()
    child = start_held(hold, target, "append", "rdwr")
    try:
        assert hold.first_held.wait(10)
        hold.close()
        assert line_within(child, 10) == f"append errno {errno.ENOSYS}"
        assert line_within(child, 10) == f"rdwr errno {errno.ENOSYS}"  # and what it tries next
        hold.close()  # idempotent
    finally:
        child.kill()
        child.wait()


def test_a_watcher_that_fails_fails_what_it_held(target, monkeypatch):
    hold = new_hold()

    class Failing:
        """select.poll whose second wait raises, as if the watcher broke while something was held."""

        def __init__(self) -> None:
            self.real, self.calls = _real_poll(), 0

        def register(self, *args: object) -> None:
            self.real.register(*args)

        def poll(self, *args: object) -> list:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("the watcher fails")
            return self.real.poll(*args)

    _real_poll = select.poll
    monkeypatch.setattr(openhold, "select", types.SimpleNamespace(
        select=select.select, poll=Failing, POLLIN=select.POLLIN, POLLHUP=select.POLLHUP))
    with held_child(hold, target, "append") as child:
        # ENOSYS alone would not do: SQLite answers a failed read-write open by opening read-only
        assert child.wait(10) == -signal.SIGKILL
        assert child.stdout is not None and child.stdout.read() == ""


def test_past_max_held_an_open_is_refused_not_let_through(target, monkeypatch):
    monkeypatch.setattr(openhold, "MAX_HELD", 2)
    hold = new_hold()
    with held_child(hold, target, "threads") as child:
        assert line_within(child, 10) == f"thread errno {errno.ENOSYS}"  # the third, before release
        assert line_within(child, 0.5) is None
        hold.release()
        assert [line_within(child, 10) for _ in range(3)] == ["thread ok", "thread ok", "threads ok"]
        assert (hold.held, hold.refused) == (2, 1)
        assert hold.summary() == "2 open(s) held, 1 refused past 2"


def test_a_held_open_fails_when_the_holder_is_killed(target, tmp_path):
    """A t3track killed mid-gate closes the listener with it: the held mint fails, it never waits."""
    out = tmp_path / "opener.out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from t3track.host import openhold
        hold = openhold.OpenHold.start()
        argv, fds = hold.command([sys.executable, "-I", "-S", "-c", {OPENER!r}, {str(target)!r}, "append"])
        with open({str(out)!r}, "w") as out:
            child = subprocess.Popen(argv, pass_fds=fds, stdout=out, start_new_session=True)
        hold.spawned(child.pid)
        print(child.pid, flush=True)
        hold.first_held.wait(10)
        print("holding", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    opener = int(holder.stdout.readline())
    try:
        assert holder.stdout.readline().strip() == "holding"
        time.sleep(0.3)
        assert out.read_text() == ""  # still held
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        for _ in range(200):
            if out.read_text():
                break
            time.sleep(0.05)
        assert out.read_text().strip() == f"append errno {errno.ENOSYS}"
    finally:
        holder.kill()
        holder.wait()
        try:
            os.kill(opener, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_launcher_never_starts_the_program_when_the_listener_cannot_reach_t3track(tmp_path):
    """A mint nobody holds would race the server's migrations: no listener handed over, no exec."""
    marker = tmp_path / "ran"
    ours, theirs = socket.socketpair()
    ours.close()  # t3track died before the launcher could send
    with theirs:
        argv = [sys.executable, "-I", "-S", "-c", openhold._launcher_source(), str(theirs.fileno()),
                sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
        done = subprocess.run(argv, pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=30)
    assert done.returncode == mint_launcher.SETUP_FAILED
    assert "could not hand the listener to t3track" in done.stderr
    assert not marker.exists()


def test_a_descriptor_that_is_no_seccomp_listener_is_dropped_not_served(target, monkeypatch):
    """The launcher runs as the user, who could make it send anything: a pipe is closed, unserved."""
    ioctls: list = []
    monkeypatch.setattr(openhold, "fcntl", types.SimpleNamespace(ioctl=lambda *a: ioctls.append(a)))
    hold = new_hold()
    r, w = os.pipe()
    os.write(w, b"ready")  # readable for ever
    with socket.socket(fileno=os.dup(hold._theirs.fileno())) as launcher_end:
        socket.send_fds(launcher_end, [b"L"], [r])
    hold._thread.join(10)
    assert not hold._thread.is_alive() and hold.held == 0
    assert ioctls == []  # never served: not a single call on it
    assert not hold.listening and hold.summary().startswith("but the mint's launcher never handed")
    os.close(r)
    os.close(w)
    hold.close()


REFUSE_SECCOMP = textwrap.dedent("""
    # As systemd's SystemCallFilter= does to a call it leaves out: EPERM for seccomp(2). Then ask.
    import ctypes, errno
    from t3track.host import mint_launcher as ml, openhold
    prog = b"".join([ml.insn(ml.LD_ABS_W, 0, 0, ml.OFF_NR), ml.insn(ml.JEQ_K, 0, 1, ml.SYS_SECCOMP),
                     ml.insn(ml.RET_K, 0, 0, ml.RET_ERRNO | errno.EPERM), ml.insn(ml.RET_K, 0, 0, ml.RET_ALLOW)])
    code = ctypes.create_string_buffer(prog, len(prog))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(ml.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    assert libc.prctl(22, 2, ctypes.byref(ml.SockFprog(len(prog) // 8, ctypes.addressof(code))), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
    print(openhold.available(), openhold.OpenHold.start())
""")


def test_no_hold_where_a_system_call_filter_refuses_seccomp():
    """The shipped unit allows `seccomp`; a unit that does not gets the start at the migrations line."""
    done = subprocess.run([sys.executable, "-c", REFUSE_SECCOMP], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "None"]


def test_no_hold_on_another_architecture_or_an_old_kernel(monkeypatch):
    real = os.uname()
    for machine, release in (("aarch64", real.release), ("x86_64", "5.4.0-150-generic")):
        fake = os.uname_result((real.sysname, real.nodename, release, real.version, machine))
        monkeypatch.setattr(openhold.os, "uname", lambda fake=fake: fake)
        assert not openhold.available()
        assert openhold.OpenHold.start() is None


def test_close_frees_every_descriptor_it_made(target):
    before = set(os.listdir("/proc/self/fd"))
    hold = new_hold()
    hold.close()
    hold.close()
    used = new_hold()
    child = start_held(used, target, "append")
    try:
        assert used.first_held.wait(10)
        used.release()
        assert child.wait(10) == 0
    finally:
        used.close()
        assert child.stdout is not None
        child.stdout.close()  # the test's own pipe
    assert set(os.listdir("/proc/self/fd")) <= before
