"""What a child running with a tree owner's uid does in that user's `userdata` (see t3track.host.usertree).

Standard library only, run as `python -I -S -c <this source> COMMAND ...` (a fresh interpreter: SQLite
must never be used across a fork of a process that has databases open). The userdata directory
arrives as an inherited descriptor (fd 3 by default), opened by the parent without following links;
everything here is opened relative to it with O_NOFOLLOW and must be a regular file of the owner's with
one link. Output goes to stdout (JSON, or a database's bytes); a refusal is one line on stderr and exit 2,
a timeout exit 3.

    read-files DIRFD CAP SECRET_CAP MAX_FILES FILES(comma) DIRS(comma)
    migrations DIRFD NAMES(comma)
    migration-rows DIRFD NAMES(comma)
    copy-db DIRFD NAME TIMEOUT_S(or -)
    agent-work DIRFD NAMES(comma) BUSY_S
"""

import base64
import errno
import json
import os
import sqlite3
import stat
import sys
import tempfile
import threading

FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO never blocks the open
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
MIGRATIONS_TABLE = "effect_sql_migrations"  # t3track.host.t3db's: this file runs alone, importing no t3track


class Refused(Exception):
    pass


class TimedOut(Exception):
    pass


def kind(mode):
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(dir_fd, name, cap):
    """A descriptor of `name` (None when absent), a regular file of ours with one link, <= cap bytes."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{name} is a symbolic link") from None
        raise Refused(f"cannot open {name}: {exc.strerror}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"is not a regular file ({kind(st.st_mode)})"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by the tree's owner (uid {os.geteuid()})"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} hard links"
    elif cap is not None and st.st_size > cap:
        problem = f"is {st.st_size} bytes, more than the {cap} t3track copies"
    if problem:
        os.close(fd)
        raise Refused(f"{name} {problem}")
    return fd


def read_exactly(fd, name):
    size = os.fstat(fd).st_size
    data = b""
    while len(data) <= size:
        chunk = os.read(fd, size + 1 - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) != size:
        raise Refused(f"{name} changed size while it was read")
    return data


def read_one(dir_fd, name, cap, shown):
    fd = open_regular(dir_fd, name, cap)
    if fd is None:
        return None
    try:
        return base64.b64encode(read_exactly(fd, shown)).decode()
    finally:
        os.close(fd)


def read_files(dir_fd, cap, secret_cap, max_files, files, dirs):
    found: dict = {"files": {}, "dirs": {}}
    for name in files:
        data = read_one(dir_fd, name, cap, name)
        if data is not None:
            found["files"][name] = data
    for name in dirs:
        try:
            sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Refused(f"{name}/ is a symbolic link or not a directory ({exc.strerror})") from None
        try:
            if os.fstat(sub).st_uid != os.geteuid():
                raise Refused(f"{name}/ is not owned by the tree's owner (uid {os.geteuid()})")
            entries = sorted(os.listdir(sub))
            if len(entries) > max_files:
                raise Refused(f"{name}/ holds {len(entries)} entries, more than {max_files}")
            copied = {}
            for entry in entries:
                data = read_one(sub, entry, secret_cap, f"{name}/{entry}")
                if data is not None:
                    copied[entry] = data
            found["dirs"][name] = copied
        finally:
            os.close(sub)
    sys.stdout.buffer.write(json.dumps(found).encode())


def connect_ro(dir_fd, name, busy_s):
    check = open_regular(dir_fd, name, None)
    if check is None:
        raise Refused(f"no {name}")
    os.close(check)
    for suffix in SIDE_SUFFIXES:  # SQLite opens these by name: a FIFO -wal would hang it
        side = open_regular(dir_fd, name + suffix, None)
        if side is not None:
            os.close(side)
    return sqlite3.connect(f"file:/proc/self/fd/{dir_fd}/{name}?mode=ro", uri=True, timeout=busy_s)


def migration_rows(dir_fd, names):
    found: dict = {}
    for name in names:
        try:
            conn = connect_ro(dir_fd, name, 5.0)
        except Refused as exc:
            if str(exc) == f"no {name}":
                continue
            raise
        try:
            table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 (MIGRATIONS_TABLE,)).fetchone()
            rows = conn.execute(f"SELECT migration_id, name FROM {MIGRATIONS_TABLE} ORDER BY migration_id").fetchall() \
                if table else []
            found[name] = [[int(i), str(n)] for i, n in rows]
        except sqlite3.Error as exc:
            found[name] = f"unreadable: {exc}"  # never mistaken for "no migrations"
        finally:
            conn.close()
    sys.stdout.buffer.write(json.dumps(found).encode())


# Is a user busy? The contract's queries ("Agents, and what a copy can do"), each with what it finds.
# state.sqlite builds (schema checked on 0.0.42):
V1_TABLES = ("projection_thread_sessions", "projection_threads", "projection_turns")
V1_QUERIES = (
    ("session running", """SELECT s.thread_id FROM projection_thread_sessions s
        JOIN projection_threads t ON t.thread_id = s.thread_id
        WHERE t.deleted_at IS NULL AND t.archived_at IS NULL
          AND (s.status IN ('starting','running') OR s.active_turn_id IS NOT NULL)"""),
    ("turn running", """SELECT t.thread_id FROM projection_threads t JOIN projection_turns u
        ON u.thread_id = t.thread_id AND u.turn_id = t.latest_turn_id
        WHERE t.deleted_at IS NULL AND u.state = 'running'"""),
    ("approval or question pending", """SELECT thread_id FROM projection_threads
        WHERE deleted_at IS NULL AND (pending_approval_count > 0 OR pending_user_input_count > 0)"""),
)
# statev2.sqlite builds (upstream's restart-recovery code; medium confidence): each query runs only
# where its tables exist.
V2_THREADS = "orchestration_v2_projection_threads"
V2_QUERIES = (
    ("run active", ("orchestration_v2_projection_runs",), """SELECT r.thread_id
        FROM orchestration_v2_projection_runs r JOIN orchestration_v2_projection_threads t ON t.thread_id = r.thread_id
        WHERE t.deleted_at IS NULL AND r.status IN ('preparing','starting','running','waiting')"""),
    ("provider session active", ("orchestration_v2_projection_provider_sessions",
                                 "orchestration_v2_projection_provider_session_bindings"), """SELECT b.thread_id
        FROM orchestration_v2_projection_provider_session_bindings b
        JOIN orchestration_v2_projection_provider_sessions s ON s.provider_session_id = b.provider_session_id
        JOIN orchestration_v2_projection_threads t ON t.thread_id = b.thread_id
        WHERE t.deleted_at IS NULL AND s.status IN ('starting','running','waiting')"""),
    ("runtime request pending", ("orchestration_v2_projection_runtime_requests",), """SELECT q.thread_id
        FROM orchestration_v2_projection_runtime_requests q
        JOIN orchestration_v2_projection_threads t ON t.thread_id = q.thread_id
        WHERE t.deleted_at IS NULL AND q.status = 'pending'"""),
    ("effect pending", ("orchestration_v2_effect_outbox",), """SELECT o.thread_id
        FROM orchestration_v2_effect_outbox o JOIN orchestration_v2_projection_threads t ON t.thread_id = o.thread_id
        WHERE t.deleted_at IS NULL AND o.status IN ('pending','running')
          AND o.effect_type IN ('provider-turn.start','provider-turn.interrupt','provider-turn.steer',
                                'provider-turn.restart','runtime-request.respond')"""),
)


def agent_work(dir_fd, names, busy_s):
    """What a restart would interrupt, from the database the server uses (the first of `names` present):
    the V2 tables where that database has them, else the V1 tables."""
    found: dict = {"database": None, "busy": [], "errors": []}
    for name in names:
        try:
            conn = connect_ro(dir_fd, name, busy_s)
        except Refused as exc:
            if str(exc) == f"no {name}":
                continue
            raise
        found["database"] = name
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if V2_THREADS in tables:
                queries = [(what, sql) for what, needs, sql in V2_QUERIES if all(t in tables for t in needs)]
            elif all(t in tables for t in V1_TABLES):
                queries = list(V1_QUERIES)
            else:
                queries = []
            for what, sql in queries:
                try:
                    rows = conn.execute(sql).fetchall()
                except sqlite3.Error as exc:  # a column this build lacks: said, never read as "idle"
                    found["errors"].append(f"{what}: {exc}")
                    continue
                found["busy"] += [{"thread": str(row[0]), "what": what} for row in rows]
        except sqlite3.Error as exc:
            found["errors"].append(str(exc))
        finally:
            conn.close()
        break
    sys.stdout.buffer.write(json.dumps(found).encode())


def copy_db(dir_fd, name, seconds):
    """VACUUM INTO a private temporary file, streamed out in chunks: the committed state (WAL
    included, writers never blocked), only the pages in use (a sparse or mostly free database does not
    grow into memory or disk), and never more than a chunk in memory."""
    conn = connect_ro(dir_fd, name, 60.0 if seconds is None else max(0.0, seconds))
    timer = None if seconds is None else threading.Timer(seconds, conn.interrupt)
    with tempfile.TemporaryDirectory(prefix="t3track-copy-") as scratch:  # 0700, ours; the unit's private /tmp
        target = os.path.join(scratch, "copy.sqlite")
        if timer is not None:
            timer.start()
        try:
            conn.execute("VACUUM INTO ?", (target,))
        except sqlite3.Error:
            if timer is not None and not timer.is_alive():
                raise TimedOut(f"the copy of {name} timed out after {seconds:g}s") from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
            conn.close()
        with open(target, "rb") as copied:
            while chunk := copied.read(1 << 20):
                sys.stdout.buffer.write(chunk)


def main(argv):
    command, dir_fd = argv[0], int(argv[1])
    split = lambda text: [part for part in text.split(",") if part]  # noqa: E731
    try:
        if command == "read-files":
            read_files(dir_fd, int(argv[2]), int(argv[3]), int(argv[4]), split(argv[5]), split(argv[6]))
        elif command == "migration-rows":
            migration_rows(dir_fd, split(argv[2]))
        elif command == "agent-work":
            agent_work(dir_fd, split(argv[2]), float(argv[3]))
        elif command == "copy-db":
            copy_db(dir_fd, argv[2], None if argv[3] == "-" else float(argv[3]))
        else:
            raise Refused(f"unknown command {command!r}")
    except Refused as exc:
        sys.stderr.write(str(exc))
        return 2
    except TimedOut as exc:
        sys.stderr.write(str(exc))
        return 3
    except (OSError, sqlite3.Error) as exc:
        sys.stderr.write(f"{type(exc).__name__}: {exc}")
        return 1
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
