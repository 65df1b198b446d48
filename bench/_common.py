"""Measuring tools for bench/bench.py: a polling client, a byte-counting registry, timed CLI runs.

Everything here times with time.monotonic() in this one process, so timestamps taken by the polling
threads, by the stderr reader and around subprocesses are on the same clock and can be subtracted.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (str(REPO / "src"), str(REPO)):  # `tests.support` and this checkout's t3track
    if _path not in sys.path:
        sys.path.insert(0, _path)

ENVIRONMENT_PATH = "/.well-known/t3/environment"


# ---------------------------------------------------------------- figures and formatting


@dataclass
class Figure:
    name: str
    value: str
    reference: str  # what it stands next to ("" when nothing)
    how: str        # how it was measured, in a sentence or two


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def secs(value: float | None) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def print_table(figures: list[Figure], width: int = 110) -> None:
    name_w = max(len(f.name) for f in figures)
    value_w = max(len(f.value) for f in figures)
    print(f"{'figure':<{name_w}}  {'value':<{value_w}}  next to")
    print(f"{'-' * name_w}  {'-' * value_w}  {'-' * 30}")
    for fig in figures:
        print(f"{fig.name:<{name_w}}  {fig.value:<{value_w}}  {fig.reference}")
        for line in textwrap.wrap(fig.how, width=width - 8):
            print(f"      {line}")


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- a client polling live servers


@dataclass(frozen=True)
class Sample:
    sent: float
    received: float
    status: int | None      # None: no answer (refused, reset, timeout)
    version: str | None


def get_environment(port: int, timeout: float = 1.0) -> tuple[int | None, str | None]:
    """One GET of the environment document on a fresh connection, as a browser tab's first request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", ENVIRONMENT_PATH)
        response = conn.getresponse()
        body = response.read()
        version = None
        if response.status == 200:
            try:
                version = json.loads(body).get("serverVersion")
            except (ValueError, AttributeError):
                pass
        return response.status, version
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        conn.close()


@dataclass(frozen=True)
class Gap:
    start: float   # the last 200 before the gap was received
    end: float     # the first 200 after it was received
    seconds: float


class Poller(threading.Thread):
    """GETs a server's environment document every `interval` seconds until stopped; keeps every answer."""

    def __init__(self, port: int, interval: float = 0.02):
        super().__init__(daemon=True, name=f"poller-{port}")
        self.port, self.interval = port, interval
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            sent = time.monotonic()
            status, version = get_environment(self.port)
            self.samples.append(Sample(sent, time.monotonic(), status, version))
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - sent)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def longest_gap(self) -> Gap | None:
        """The longest time between two consecutive 200s (received times)."""
        ok = [s.received for s in self.samples if s.status == 200]
        gaps = [Gap(a, b, b - a) for a, b in zip(ok, ok[1:])]
        return max(gaps, key=lambda g: g.seconds, default=None)

    def first_ok(self, *, after: float, version: str | None = None) -> Sample | None:
        """The first 200 (serving `version`, when given) whose request was sent after `after`."""
        return next((s for s in self.samples if s.sent >= after and s.status == 200
                     and (version is None or s.version == version)), None)


@contextmanager
def polling(ports: dict[str, int], interval: float = 0.02) -> Iterator[dict[str, Poller]]:
    pollers = {name: Poller(port, interval) for name, port in ports.items()}
    for poller in pollers.values():
        poller.start()
    try:
        time.sleep(0.2)  # a few 200s before whatever is measured
        yield pollers
        time.sleep(0.2)
    finally:
        for poller in pollers.values():
            poller.stop()


def wait_ready(port: int, deadline_s: float = 30.0, interval: float = 0.02, request_timeout: float = 0.3,
               alive: Any = None) -> float | None:
    """Seconds until the environment document answers 200 (polled every `interval`); None on timeout.

    A short request timeout: the real server accepts connections before it is ready and never answers
    a request that arrived too early, so a long timeout measures the timeout, not the server."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        status, _ = get_environment(port, timeout=request_timeout)
        if status == 200:
            return time.monotonic() - started
        if alive is not None and not alive():
            return None
        time.sleep(interval)
    return None


# ---------------------------------------------------------------- counting registry traffic


class _CountingWriter:
    def __init__(self, inner: Any, counter: ByteCounter):
        self._inner, self._counter = inner, counter

    def write(self, data: bytes) -> int:
        self._counter.add(len(data))
        return self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ByteCounter:
    """Counts every byte the loopback registry writes back (status line, headers and bodies).

    Installed by swapping the registry's handler class for a subclass whose wfile counts; the
    registry itself (tests/support/registry_server.py) records requests but not their sizes."""

    def __init__(self, registry: Any):
        self.registry = registry
        self.bytes = 0
        self._lock = threading.Lock()
        base = registry._httpd.RequestHandlerClass
        counter = self

        class Counting(base):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                super().setup()
                self.wfile = _CountingWriter(self.wfile, counter)

        registry._httpd.RequestHandlerClass = Counting

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def reset(self) -> None:
        with self._lock:
            self.bytes = 0
        self.registry.clear_requests()

    @property
    def requests(self) -> list[Any]:
        return list(self.registry.requests)


# ---------------------------------------------------------------- timed CLI runs


@dataclass
class CliRun:
    returncode: int
    started: float
    wall_s: float
    stdout: str
    stderr_lines: list[tuple[float, str]]  # (monotonic time the line arrived, line)
    peak_rss_kb: int | None                # VmHWM of the t3track process itself (polled /proc)
    tree_rss_kb: int | None                # wait4's ru_maxrss: the largest of it and its waited-for children

    @property
    def report(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def line_time(self, fragment: str) -> float | None:
        return next((t for t, line in self.stderr_lines if fragment in line), None)


def _read_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(host: Any, *args: str, timeout: float = 300) -> CliRun:
    """`python -m t3track --config HOST ARGS` with its stderr timestamped line by line and its memory watched."""
    argv = [sys.executable, "-m", "t3track", "--config", str(host.config_path), *args]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
                            stdin=subprocess.DEVNULL)
    lines: list[tuple[float, str]] = []
    out: list[bytes] = []
    hwm: list[int] = []

    def read_err() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    def read_out() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    def watch() -> None:
        while True:
            value = _read_hwm(proc.pid)
            if value is None:
                return
            hwm.append(value)
            time.sleep(0.01)

    threads = [threading.Thread(target=f, daemon=True) for f in (read_err, read_out, watch)]
    for thread in threads:
        thread.start()
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"t3track {' '.join(args)} did not finish in {timeout:.0f}s")
        time.sleep(0.005)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    for thread in threads:
        thread.join(timeout=5)
    return CliRun(proc.returncode, started, wall, b"".join(out).decode(errors="replace"), lines,
                  max(hwm) if hwm else None, usage.ru_maxrss)


def time_command(argv: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall seconds of `runs` runs of argv (output discarded), after one untimed warm-up run."""
    times = []
    for i in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=60)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
        if i:
            times.append(elapsed)
    return times
