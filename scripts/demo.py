"""The end-to-end demo: several nights of t3track on an embedded default host.

Everything runs for real on this machine and on 127.0.0.1 only: a loopback npm registry serving
emulator builds of `t3`, real `npm install`s side by side, two users whose "production" servers run
under a small supervisor, real SQLite backups and restores, a real `current` symlink. Each night is
the real `t3track` CLI in a subprocess, exactly as the systemd timer would run it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]

from tests.support.host import build_host, nightly  # noqa: E402


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def t3track(host, *args: str, expect: int, outcome: str | None = None, gate: str | None = None) -> None:
    print(f"$ t3track {' '.join(args)}", flush=True)
    started = time.monotonic()
    result = host.t3track(*args)
    for line in (result.stderr + result.stdout).rstrip().splitlines():
        print(f"    {line}")
    print(f"    -> exit {result.returncode} in {time.monotonic() - started:.1f}s", flush=True)
    if result.returncode != expect:
        raise SystemExit(f"demo: expected exit {expect} from `t3track {' '.join(args)}`, got {result.returncode}")
    if outcome or gate:
        run = next(e for e in reversed(host.history()) if e["event"] == "run")
        failed = [g.split(":")[0] for g in run.get("gates", []) if g.endswith(":fail")]
        if outcome and run["outcome"] != outcome or gate and failed[:1] != [gate]:
            raise SystemExit(f"demo: expected {outcome} at gate {gate}, got {run['outcome']} at {failed}")


def nightly_backup(host) -> None:
    """What t3-backup-state.timer does every night before the tracker's window."""
    t3track(host, "backup", expect=0)


def main() -> int:
    keep = "--keep" in sys.argv
    workdir = Path(tempfile.mkdtemp(prefix="t3track-demo-"))
    banner(f"setting up an emulated host in {workdir}: registry, users alice and bob on 0.0.42")
    host = build_host(workdir)
    try:
        for user in host.users:
            print(f"    {user.name}: {user.url} serving {host.serving(user)}, base dir {user.base_dir}")
        banner("night 1: a good nightly is published; it passes every gate and is swapped in")
        good = nightly(1)
        host.publish(good, migrations=53)
        nightly_backup(host)
        t3track(host, "run", expect=0, outcome="swapped")

        banner("night 2: a broken nightly (200 {authenticated:true} without a cookie) is refused in the sandbox")
        broken = nightly(2)
        host.publish(broken, migrations=53, fault="no-cookie")
        nightly_backup(host)
        t3track(host, "run", expect=1, outcome="refused", gate="pairing-probe")
        for user in host.users:
            print(f"    {user.name} still serves {host.serving(user)}")

        banner("night 3: a nightly that passes the sandbox but fails live is rolled back by itself")
        live_only = nightly(3)
        host.publish(live_only, migrations=54, fault="no-cookie-live")
        nightly_backup(host)
        t3track(host, "run", expect=1, outcome="rolled_back", gate="live-verify")
        for user in host.users:
            print(f"    {user.name} serves {host.serving(user)}; migrations {host.max_migration(user)}")

        banner("an operator freezes the channel for a week; the night does nothing")
        host.publish(nightly(4), migrations=53)
        t3track(host, "freeze", "--reason", "holiday week", "--for", "7d", expect=0)
        t3track(host, "run", expect=0, outcome="noop")
        t3track(host, "unfreeze", expect=0)

        banner("an operator reverts to the previous version")
        t3track(host, "revert", expect=0)

        banner("rings: alice (the operator) takes each nightly first; bob only after it served her for 24h")
        host.write_config(rings=[{"name": "canary", "users": ["alice"]},
                                 {"name": "everyone", "users": ["bob"], "soak": "24h"}])
        canary = nightly(5)
        host.publish(canary, migrations=53)
        bob_pid = host.server_pids().get("bob")
        nightly_backup(host)
        t3track(host, "run", expect=0, outcome="swapped")
        for user in host.users:
            print(f"    {user.name} serves {host.serving(user)}")
        if host.serving(host.user("alice")) != canary or host.server_pids().get("bob") != bob_pid:
            raise SystemExit("demo: the canary night should move alice only, and never restart bob's server")
        print("    bob's server was never restarted; he takes the version once it has served alice for 24h")

        banner("where things stand")
        t3track(host, "status", expect=0)
        t3track(host, "history", "-n", "12", expect=0)
    finally:
        host.close()
        if keep:
            print(f"\nthe demo host is kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\ndemo: every night behaved as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
