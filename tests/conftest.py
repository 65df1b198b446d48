"""Fixtures every test module may use, defined once, and the suite's xdist scheduling.

The real T3 Code server (installed once per session into the test cache) and the secret spy live
in tests/real_t3.py; an emulated host (tests/support/host.py) with a fresh backup is `host`.
Test modules import helpers as `tests.…`; pyproject's `pythonpath` makes that work for plain `pytest`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.emulator import package as emu
from tests.real_t3 import real_state_template, real_t3, secret_spy  # noqa: F401  (fixtures, registered once)
from tests.support.host import Host, build_host

# Where a test leaves the registry to npm's own setting (`npm config get registry`, e.g. a config without
# `registry:`, which `config check` then asks), it must not reach out: npm is pointed at a closed
# loopback port. (tests/real_t3.py fetches the real platform tarball with npm's own setting restored.)
NO_REGISTRY = "http://127.0.0.1:9/"


@pytest.fixture(autouse=True)
def _npm_stays_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("npm_config_registry", NO_REGISTRY)


@pytest.fixture
def stop_later() -> Iterator[Callable[[emu.ServerHandle], None]]:
    """Hand it an emulator (or real) server the test started: it is stopped after the test."""
    servers: list[emu.ServerHandle] = []
    yield servers.append
    for server in servers:
        server.stop()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """An emulated host (two users on the current version) with a fresh backup of each user; a module
    that needs another host (no backup, module-scoped, real server) defines its own `host`."""
    h = build_host(tmp_path / "host")
    assert h.t3track("backup").returncode == 0
    yield h
    h.close()


# Modules whose tests build on one host, in order (tests/test_real_systemd.py boots one container
# and runs its nights one after the other): each goes to a single xdist worker as a whole.
ONE_WORKER_MODULES = frozenset({"tests/test_real_systemd.py"})


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown when the suite runs without xdist
def pytest_xdist_make_scheduler(config, log):  # noqa: ANN001, ANN201 (xdist's hook)
    """`--dist loadgroup`, done here: every test on its own like `load`, except ONE_WORKER_MODULES.

    xdist 3.8 implements loadgroup by rewriting `item._nodeid`, which pytest 9.2 no longer reads
    (Node.nodeid is `str(self._id)`): the xdist_group mark was ignored and the real-systemd tier's
    tests were spread over workers (checked with -v). This scheduler groups by module path instead.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerPerModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return OneWorkerPerModule(config, log)


# No tier skips silently where it must run: under CI (as root, with what scripts/test.sh installs), a
# skipped test fails the run, each named with its reason. On a developer's machine a skip is reported
# in the summary as usual (-ra).
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append(f"{report.nodeid}: {reason}")


def _under_ci(config: pytest.Config) -> bool:
    return bool(os.environ.get("CI")) and not hasattr(config, "workerinput")  # the controller, in CI


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    if _under_ci(config) and _SKIPPED:
        terminalreporter.section("skipped under CI: every tier must run here")
        for line in _SKIPPED:
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _under_ci(session.config) and _SKIPPED and session.exitstatus == 0:
        session.exitstatus = 1
