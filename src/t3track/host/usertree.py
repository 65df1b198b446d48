"""A user's tree (`base_dir/userdata`), touched by root only in ways its owner cannot turn against
anyone else.

Root never follows a link the user could have planted: paths are walked one component at a time
with O_NOFOLLOW (a link is followed only when root owns it and its directory, as in `/home -> /srv/home`).
Whatever is *read* from the tree (files for the sandbox, databases for a snapshot, migration ids) is
read by a child running with the tree owner's uid (`runner.collect_as`, t3track.host.owner_child): the kernel, not t3track, then
decides what that user may read, so a link to bob's database or to a root-only file gets EACCES. The
child also insists on regular files of the owner's with one link and a sane size, so a FIFO or an
8 GiB sparse file is refused instead of hanging or filling the memory. What root itself *writes* into
a user's directory goes through a directory descriptor (see t3track.host.restore), never by name.

A fault here is the host's (exit 3), said of one user with what to fix: never a reason to blame a
candidate.
"""

from __future__ import annotations

import base64
import errno
import functools
import json
import os
import pwd
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from t3track.errors import EnvironmentFault
from t3track.host.t3db import DATABASES, DB_FILES, Migration

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO never blocks
_MAX_LINK_DEPTH = 16
FILE_CAP = 1 << 20          # settings.json, keybindings.json, environment-id
SECRET_CAP = 64 << 10       # each file of secrets/
SECRETS_MAX_FILES = 64
READ_TIMEOUT_S = 30.0
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


class UserTreeFault(EnvironmentFault):
    """Something in one user's tree t3track will not touch (a link, a FIFO, a foreign or oversized
    file): the host's fault, exit 3, nothing changed for anyone."""

    def __init__(self, user: str, detail: str, *, hint: str | None = None):
        super().__init__(f"{user}: {detail}", hint=hint or f"fix {user}'s state dir (regular files and "
                         "directories of that user's only, no links), then run again")
        self.user = user
        self.detail = detail
        self.missing = False  # the path does not exist (rather than being refused)


@dataclass(frozen=True)
class Tree:
    """A user's userdata directory as found: who owns it, which inode it is."""

    user: str
    userdata: Path
    uid: int
    gid: int
    dev: int
    ino: int
    databases: tuple[str, ...] = ()  # the databases present (set by check_tree)


# ---------------------------------------------------------------- walking without following links


def open_dir(path: Path, *, user: str) -> int:
    """An O_DIRECTORY descriptor of `path`, reached without following any link root does not own."""
    try:
        return _walk(os.open("/", _DIR), Path(os.path.abspath(path)).parts[1:], str(path), 0)
    except OSError as exc:
        fault = UserTreeFault(user, f"cannot open {path}: {exc.strerror}",
                              hint=f"check users[].base_dir for {user} (`t3track config check`)")
        fault.missing = isinstance(exc, FileNotFoundError)
        raise fault from None


def _walk(fd: int, parts: tuple[str, ...] | list[str], shown: str, depth: int) -> int:
    try:
        for part in parts:
            if part in ("", "."):
                continue
            fd = _step(fd, part, shown, depth)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _step(fd: int, part: str, shown: str, depth: int) -> int:
    """Open `part` below `fd`, close `fd`, return the new descriptor."""
    try:
        new = os.open(part, _DIR | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        st = os.stat(part, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            raise _fault(f"{part} in {shown} is not a directory") from None
        parent = os.fstat(fd)
        # a link only root could have made and only root can replace (sticky dirs like /tmp included)
        trusted = st.st_uid == 0 and parent.st_uid == 0 and (
            not parent.st_mode & 0o022 or parent.st_mode & stat.S_ISVTX)
        if not trusted or depth >= _MAX_LINK_DEPTH:
            raise _fault(f"{part} in {shown} is a symbolic link (owned by uid {st.st_uid}); "
                         "t3track follows no link a user can change") from None
        target = os.readlink(part, dir_fd=fd)
        if target.startswith("/"):
            new = _walk(os.open("/", _DIR), Path(target).parts[1:], shown, depth + 1)
        else:
            new = _walk(os.dup(fd), target.split("/"), shown, depth + 1)
    os.close(fd)
    return new


class _LinkFault(OSError):
    pass


def _fault(text: str) -> OSError:
    exc = _LinkFault(errno.ELOOP, text)
    exc.strerror = text
    return exc


@contextmanager
def userdata_fd(base_dir: Path, *, user: str) -> Iterator[tuple[int, Tree]]:
    """`base_dir/userdata` open as a directory descriptor, with its owner (the tree's owner)."""
    fd = open_dir(base_dir / "userdata", user=user)
    try:
        st = os.fstat(fd)
        try:
            gid = pwd.getpwuid(st.st_uid).pw_gid
        except KeyError:
            gid = st.st_gid
        yield fd, Tree(user, base_dir / "userdata", st.st_uid, gid, st.st_dev, st.st_ino)
    finally:
        os.close(fd)


NO_DATABASE_HINT = ("on a new host the server makes it on its first start: `t3track adopt VERSION`; else check "
                    "users[].base_dir for {user} in the config (`t3track config check`)")


def _no_database(user: str, detail: str) -> UserTreeFault:
    fault = UserTreeFault(user, detail, hint=NO_DATABASE_HINT.format(user=user))
    fault.missing = True  # nobody has served T3 here yet (a new host), rather than a refused file
    return fault


def check_tree(base_dir: Path, *, user: str) -> Tree:
    """The checks before anything stops: userdata reachable without links, its databases regular
    files of its owner's with one link each. Raises UserTreeFault naming the file and the fix."""
    try:
        opened = userdata_fd(base_dir, user=user)
        fd, tree = opened.__enter__()
    except UserTreeFault as exc:
        if exc.missing:
            raise _no_database(user, f"no database at {base_dir / 'userdata' / DB_FILES[0]} ({exc.detail})") from None
        raise
    present = []
    try:
        for name in DB_FILES:
            for full in (name, *(name + s for s in SIDE_SUFFIXES)):
                try:
                    st = os.stat(full, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                problem = _file_problem(st, tree.uid, None)
                if problem:
                    raise UserTreeFault(user, f"{tree.userdata / full} {problem}", hint=(
                        f"with {user}'s server stopped, `chown {tree.uid}:{tree.gid} {tree.userdata / full}` "
                        "(a file a root tool left), or remove what is not a database file"
                        if "owned by uid" in problem else None))
                if full == name:
                    present.append(name)
    finally:
        opened.__exit__(None, None, None)
    if not present:  # either will do: a host first installed on a V2 build has statev2.sqlite alone
        raise _no_database(user, f"no database at {tree.userdata / DB_FILES[0]} or {tree.userdata / DB_FILES[1]}")
    return replace(tree, databases=tuple(present))


def tree_problems(config: Any) -> list[str]:
    """For `config check`: each user's tree as a night would find it (no link, regular databases
    of its owner's, the owner is run_as, no two users share one)."""
    problems: list[str] = []
    seen: dict[tuple[int, int], str] = {}
    for i, user in enumerate(config.users):
        if not (user.base_dir / "userdata").exists():
            continue  # config check's own host problems say so already
        try:
            tree = check_tree(user.base_dir, user=user.name)
        except UserTreeFault as exc:
            problems.append(f"users[{i}].base_dir: {exc.detail}")
            continue
        other = seen.setdefault((tree.dev, tree.ino), user.name)
        if other != user.name:
            problems.append(f"users[{i}].base_dir: {tree.userdata} is the same directory as {other}'s userdata")
        if user.run_as is not None:
            try:
                run_uid = pwd.getpwnam(user.run_as).pw_uid
            except KeyError:
                continue  # config check's own host problems say so already
            if tree.uid not in (0, run_uid):
                problems.append(f"users[{i}].run_as: {tree.userdata} belongs to uid {tree.uid}, not to "
                                f"{user.run_as} (uid {run_uid})")
    return problems


def db_sizes(base_dir: Path, *, user: str) -> int:
    """At most the bytes a snapshot of this user's databases (and WALs) takes, by lstat: nothing read.
    What is allocated on disk, not the declared size: the copy (VACUUM INTO) holds only the pages in
    use, and a sparse file declaring gigabytes has few of those."""
    total = 0
    with userdata_fd(base_dir, user=user) as (fd, _tree):
        for name in DB_FILES:
            for full in (name, name + "-wal"):
                try:
                    st = os.stat(full, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += min(st.st_size, st.st_blocks * 512)
    return total


def _file_problem(st: os.stat_result, uid: int, cap: int | None) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return f"is not a regular file ({_kind(st.st_mode)})"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by the tree's owner (uid {uid})"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links"
    if cap is not None and st.st_size > cap:
        return f"is {st.st_size} bytes, more than the {cap} t3track copies"
    return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


# ---------------------------------------------------------------- the child, as the owner


def interpreter() -> str:
    """A Python every user can run: ours when it is reachable by all (a venv's link resolved), else
    the system's (the child needs only the standard library)."""
    for candidate in (getattr(sys, "_base_executable", None) or sys.executable, "/usr/bin/python3"):
        path = Path(os.path.realpath(candidate))
        try:
            reachable = path.stat().st_mode & 0o001 and all(p.stat().st_mode & 0o001 for p in path.parents)
        except OSError:
            continue
        if reachable:
            return str(path)
    raise EnvironmentFault("no Python interpreter that every user may run (tried ours and /usr/bin/python3)",
                           hint="install python3 under /usr/bin")


@functools.cache
def _owner_child_source() -> str:
    """t3track.host.owner_child's source, which the child runs: read from its file, not imported,
    since importing it here would run its imports (sqlite3 among them) in a process that never uses them."""
    return Path(__file__).with_name("owner_child.py").read_text(encoding="utf-8")


def _run_child(tree: Tree, fd: int, command: str, *args: str, timeout: float, max_bytes: int,
               sink: Callable[[bytes], None] | None = None) -> bytes:
    # imported here: status on a host whose users have no tree yet starts no child (runner's
    # dataclasses and redact's patterns stay off its start)
    from t3track import runner

    argv = [interpreter(), "-I", "-S", "-c", _owner_child_source(), command, str(fd), *args]
    try:
        done = runner.collect_as(argv, uid=tree.uid, gid=tree.gid, timeout=timeout, max_bytes=max_bytes,
                                 sink=sink, pass_fds=(fd,))
    except OSError as exc:
        raise UserTreeFault(tree.user, f"cannot start a reader as uid {tree.uid}: {exc}") from None
    if done.returncode == 0:
        return done.stdout
    if done.returncode == 3:
        raise ChildTimeout(tree.user, f"in {tree.userdata}: {done.stderr.strip()}")
    what = done.problem or done.stderr.strip() or f"the reader exited {done.returncode}"
    raise UserTreeFault(tree.user, f"in {tree.userdata}: {what}")


class ChildTimeout(UserTreeFault):
    """The owner's reader ran past its deadline."""


def read_live_files(base_dir: Path, *, user: str, files: tuple[str, ...], dirs: tuple[str, ...]
                    ) -> tuple[dict[str, bytes], dict[str, dict[str, bytes]]]:
    """Small files of the user's userdata (and of its `dirs`), read with the owner's rights."""
    with userdata_fd(base_dir, user=user) as (fd, tree):
        cap = (len(files) * FILE_CAP + len(dirs) * SECRETS_MAX_FILES * SECRET_CAP) * 2
        raw = _run_child(tree, fd, "read-files", str(FILE_CAP), str(SECRET_CAP), str(SECRETS_MAX_FILES),
                         ",".join(files), ",".join(dirs), timeout=READ_TIMEOUT_S, max_bytes=cap)
    found = json.loads(raw)
    return ({k: base64.b64decode(v) for k, v in found["files"].items()},
            {d: {k: base64.b64decode(v) for k, v in entries.items()} for d, entries in found["dirs"].items()})


def live_histories(base_dir: Path, *, user: str) -> dict[str, list[Migration]]:
    """The (id, name) migration rows of each database the tree holds, read as the tree's owner
    (state.sqlite and statev2.sqlite, whichever exist). A database that cannot be read raises
    UserTreeFault: callers never mistake "unreadable" for "no migrations"."""
    with userdata_fd(base_dir, user=user) as (fd, tree):
        raw = _run_child(tree, fd, "migration-rows", ",".join(DB_FILES), timeout=READ_TIMEOUT_S, max_bytes=1 << 20)
    found = json.loads(raw)
    if not isinstance(found, dict):
        raise UserTreeFault(user, "the reader's answer was not a JSON object")
    histories = {}
    for name, rows in found.items():
        if not isinstance(rows, list):
            raise UserTreeFault(user, f"cannot read the migrations of {name}: {rows}")
        histories[str(name)] = [Migration(int(i), str(n)) for i, n in rows]
    return histories


def copy_database(base_dir: Path, name: str, dest_fd: int, *, user: str, timeout_s: float | None,
                  max_bytes: int) -> Tree:
    """A consistent copy of the user's `name` database, made with the owner's rights and written by
    us into `dest_fd` (a new file of ours). Returns the tree it came from."""
    def write(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(dest_fd, view):]

    with userdata_fd(base_dir, user=user) as (fd, tree):
        seconds = "-" if timeout_s is None else f"{max(0.0, timeout_s):.3f}"
        _run_child(tree, fd, "copy-db", name, seconds, timeout=(timeout_s or 3600.0) + 10.0,
                   max_bytes=max_bytes, sink=write)
        return tree


@dataclass(frozen=True)
class AgentWork:
    """What a restart of a user's server would interrupt, as its database says (see owner_child.agent_work)."""

    database: str | None                          # the database read (None: the user has none yet)
    threads: tuple[tuple[str, str], ...] = ()     # (thread id, what is going on there)
    errors: tuple[str, ...] = ()                  # queries this schema could not answer


def agent_work(base_dir: Path, *, user: str, timeout_s: float) -> AgentWork:
    """The running or waiting agent work in the database the user's server uses (statev2.sqlite when
    present, else state.sqlite), read as the tree's owner, read-only, within `timeout_s`."""
    with userdata_fd(base_dir, user=user) as (fd, tree):
        raw = _run_child(tree, fd, "agent-work", ",".join(DATABASES), f"{max(0.1, timeout_s / 2):.3f}",
                         timeout=timeout_s, max_bytes=1 << 20)
    found = json.loads(raw)
    if not isinstance(found, dict):
        raise UserTreeFault(user, "the reader's answer was not a JSON object")
    return AgentWork(database=found.get("database"),
                     threads=tuple((str(b["thread"]), str(b["what"])) for b in found.get("busy", [])),
                     errors=tuple(str(e) for e in found.get("errors", [])))
