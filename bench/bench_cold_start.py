#!/usr/bin/env python3
"""CLI cold start: `t3track status` and `t3track --help` next to `python -c pass`.

Prints medians of N subprocess runs (after one warm-up) of the installed `t3track` entry point on a
small throwaway config (two users, nothing installed, no backups), and the modules that cost most
to import for `status` (python -X importtime, cumulative). Run: .venv/bin/python bench/bench_cold_start.py [-n 21]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import median, secs, time_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=21, help="runs of each command (default 21)")
    opts = parser.parse_args()
    entry = Path(sys.executable).with_name("t3track")
    with tempfile.TemporaryDirectory(prefix="t3track-cold-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(f"root: {tmp}/root\nstate_dir: {tmp}/state\nbackup_dir: {tmp}/backups\nusers:\n"
                          f"  - {{name: alice, base_dir: {tmp}/alice, port: 3773}}\n"
                          f"  - {{name: bob, base_dir: {tmp}/bob, port: 3774}}\n")
        env = {**os.environ, "NO_COLOR": "1"}
        rows = [
            ("t3track status", time_command([str(entry), "--config", str(config), "status"], opts.n, env=env)),
            ("t3track --help", time_command([str(entry), "--help"], opts.n, env=env)),
            ("python -c pass", time_command([sys.executable, "-c", "pass"], opts.n, env=env)),
        ]
        load = os.getloadavg()[0]
        print(f"cold start, median of {opts.n} runs each (load average {load:.2f}, {os.cpu_count()} CPUs):")
        for name, times in rows:
            print(f"  {name:<16} {secs(median(times)):>7}   (min {secs(min(times))}, max {secs(max(times))})")
        trace = subprocess.run([sys.executable, "-X", "importtime", str(entry), "--config", str(config), "status"],
                               capture_output=True, text=True, env=env)
        costs = []
        for line in trace.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                costs.append((int(parts[1]), parts[2].rstrip()))
        top = sorted(c for c in costs if not c[1].startswith("  "))[-8:]
        print("  top-level imports of `status` (cumulative, one run): "
              + ", ".join(f"{name.strip()} {us / 1000:.0f} ms" for us, name in reversed(top)))


if __name__ == "__main__":
    main()
