"""Fixtures every test module may use, defined once.

The real T3 Code server (installed once per session into the test cache) and the secret spy live
in tests/real_t3.py; an emulated host (tests/support/host.py) with a fresh backup is `host`.
Test modules import helpers as `tests.…`; pyproject's `pythonpath` makes that work for plain `pytest`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.real_t3 import real_state_template, real_t3, secret_spy  # noqa: F401  (fixtures, registered once)
from tests.support.host import Host, build_host


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """An emulated host (two users on the current version) with a fresh backup of each user; a module
    that needs another host (no backup, module-scoped, real server) defines its own `host`."""
    h = build_host(tmp_path / "host")
    assert h.t3track("backup").returncode == 0
    yield h
    h.close()
