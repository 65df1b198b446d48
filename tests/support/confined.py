"""Tests that read what a confined candidate recorded (the emulator's `env_record`): the rehearsal
can write nothing outside its sandbox (t3track.host.confine), so such a test opens one directory of
its own to it, in this process only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from t3track.host import confine


def let_records_through(monkeypatch: pytest.MonkeyPatch, directory: Path) -> Path:
    """Sandboxes built from now on (in this process) may also write `directory`. Returns it."""
    real = confine.confinement

    def with_records(*args, **kwargs) -> confine.Confinement:  # noqa: ANN002, ANN003
        made = real(*args, **kwargs)
        return dataclasses.replace(made, writable=(*made.writable, directory))

    monkeypatch.setattr(confine, "confinement", with_records)
    return directory
