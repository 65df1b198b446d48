#!/usr/bin/env python3
"""A tiny service supervisor standing in for `systemctl start/stop t3@USER.service`.

The tests and the demo point t3track's `services.start`/`services.stop` at it. Like systemd with the
shipped t3@.service, it runs `<root>/users/<user>/<executable> serve ...` (`--through current`: the
unit before rings, `<root>/current/<executable>`) for a user in a session of its own (so the caller's process
group can end without taking the server with it), remembers the pid, and stops it with SIGTERM then
SIGKILL.

    supervisor.py start --user U --port P --base-dir D --root R --executable E --run-dir RUN [--through current]
    supervisor.py stop  --user U --run-dir RUN [--no-wait]

`--no-wait` returns right after the SIGTERM (like `systemctl stop --no-block` or a bare `kill`): the
server may still be shutting down when the next command runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _pidfile(run_dir: Path, user: str) -> Path:
    return run_dir / f"{user}.pid"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _read_pid(run_dir: Path, user: str) -> int | None:
    try:
        return int(_pidfile(run_dir, user).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def start(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pid = _read_pid(run_dir, args.user)
    if pid and _alive(pid):
        return 0
    through = Path(args.root) / ("current" if args.through == "current" else f"users/{args.user}")
    exe = through / args.executable
    # T3EMU_LIVE marks a "production" server: an emulator build with a `*-live` fault misbehaves only
    # here, never in t3track's sandbox (whose environment is scrubbed) — a nightly that fails only live.
    env = dict(os.environ, T3CODE_TELEMETRY_ENABLED="false", T3EMU_LIVE="1")
    log = open(run_dir / f"{args.user}.log", "ab")
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(args.port), "--base-dir", args.base_dir,
         "--no-browser"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    _pidfile(run_dir, args.user).write_text(f"{proc.pid}\n")
    time.sleep(0.05)
    if proc.poll() is not None:
        print(f"{args.user}: server exited at once with {proc.returncode}", file=sys.stderr)
        return 1
    return 0


def stop(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    pid = _read_pid(run_dir, args.user)
    if pid is None or not _alive(pid):
        _pidfile(run_dir, args.user).unlink(missing_ok=True)
        return 0
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if args.no_wait:
        _pidfile(run_dir, args.user).unlink(missing_ok=True)
        return 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while _alive(pid):
            time.sleep(0.05)
    _pidfile(run_dir, args.user).unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    p_start = sub.add_parser("start")
    p_start.add_argument("--user", required=True)
    p_start.add_argument("--port", required=True, type=int)
    p_start.add_argument("--base-dir", required=True)
    p_start.add_argument("--root", required=True)
    p_start.add_argument("--executable", required=True)
    p_start.add_argument("--run-dir", required=True)
    p_start.add_argument("--through", choices=("users", "current"), default="users")
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--user", required=True)
    p_stop.add_argument("--run-dir", required=True)
    p_stop.add_argument("--no-wait", action="store_true")
    args = parser.parse_args(argv)
    return start(args) if args.action == "start" else stop(args)


if __name__ == "__main__":
    sys.exit(main())
