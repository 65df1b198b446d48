#!/usr/bin/env python3
"""A two-ring night's downtime: the canary moves, the users of the later ring must not notice.

Builds an emulated host (tests/support/host.py) of 1 canary user and N users in a later ring (soak
24h), publishes a nightly and runs one `t3track --json run` while a thread per user GETs
`/.well-known/t3/environment` every 20 ms. Prints, per user: restarts (its server's pid before and
after), failed polls, and the longest gap between two 200s; the moving ring's downtime is the gap.
Everything is on 127.0.0.1 and every server started is stopped.

    .venv/bin/python bench/bench_rings.py [--later-users 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import polling, secs  # noqa: E402
from tests.support.host import build_host, nightly  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--later-users", type=int, default=3, help="users in the later ring (default 3)")
    opts = parser.parse_args()
    later = [f"user{i:02d}" for i in range(1, opts.later_users + 1)]
    work = Path(tempfile.mkdtemp(prefix="t3track-bench-rings-"))
    rings = [{"name": "canary", "users": ["canary"]}, {"name": "everyone", "users": later, "soak": "24h"}]
    host = build_host(work / "host", users=("canary", *later), rings=rings)
    try:
        assert host.t3track("backup").returncode == 0
        version = nightly(1)
        host.publish(version, migrations=53)
        before = host.server_pids()
        ports = {u.name: u.port for u in host.users}
        with polling(ports) as pollers:
            started = time.monotonic()
            done = host.t3track("--json", "run")
            wall = time.monotonic() - started
        report = json.loads(done.stdout)
        after = host.server_pids()
        print(f"two-ring night (load average {os.getloadavg()[0]:.2f}): `t3track run` {secs(wall)}, outcome "
              f"{report['outcome']}, ring {report.get('ring')}, {report.get('from')} -> {report.get('to')}")
        print(f"  {'user':<8} {'ring':<9} {'restarted':<10} {'failed polls':>12} {'polls':>6} {'longest gap':>12}")
        for user in host.users:
            poller = pollers[user.name]
            failed = sum(1 for s in poller.samples if s.status != 200)
            gap = poller.longest_gap()
            ring = "canary" if user.name == "canary" else "everyone"
            print(f"  {user.name:<8} {ring:<9} {'yes' if before.get(user.name) != after.get(user.name) else 'no':<10} "
                  f"{failed:>12} {len(poller.samples):>6} {secs(gap.seconds if gap else None):>12}")
        unmoved = [pollers[name] for name in later]
        worst = max((p.longest_gap().seconds for p in unmoved if p.longest_gap()), default=0.0)
        restarted = sum(1 for name in later if before.get(name) != after.get(name))
        print(f"users who did not move: {restarted} restart(s), "
              f"{sum(1 for p in unmoved for s in p.samples if s.status != 200)} failed poll(s), longest gap "
              f"{secs(worst)} (the polling interval is 20 ms)")
        return 0 if report["outcome"] == "swapped" and report.get("ring") == "canary" else 1
    finally:
        host.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
