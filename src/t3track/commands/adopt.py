"""`t3track adopt VERSION`: bring a host under t3track.

Install VERSION side by side; when `root/current` is a plain directory from a hand-made install, move
it into `versions/` first (under its own version when it can be read, so a failed live check can roll
back to it); point `current` at VERSION; start and verify every server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from t3track import versions
from t3track.clock import stamp
from t3track.config import Config
from t3track.errors import UsageError
from t3track.fsutil import fsync_dir
from t3track.host import install, tree
from t3track.host.registry import RegistryClient
from t3track.night import ledger, recovery, swap
from t3track.night.report import NightReport
from t3track.results import new_run_id
from t3track.state import StateStore, operator_name


def _handmade_version(config: Config, directory: Path) -> str | None:
    for candidate in (directory / "node_modules" / config.package / "package.json", directory / "package.json"):
        try:
            version = json.loads(candidate.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(version, str) and versions.is_valid(version):
            return version
    return None


def _move_handmade(config: Config, progress: Callable[[str], None]) -> None:
    """Move a plain-directory root/current into versions/ (under its own version when it can be
    read) and point a `current` symlink at it."""
    current = tree.current_link(config)
    if current.is_symlink() or not current.is_dir():
        return
    found = _handmade_version(config, current)
    vdir = tree.versions_dir(config)
    vdir.mkdir(parents=True, exist_ok=True)
    name = found if found and not (vdir / found).exists() else f"handmade-{stamp()}"
    progress(f"moving the hand-made {current} to {vdir / name}")
    os.rename(current, vdir / name)
    # at once point current at the moved tree, so a kill here leaves the old layout working
    os.symlink(Path("versions") / name, current)
    fsync_dir(config.root)


def adopt(config: Config, store: StateStore, version: str, *, client: RegistryClient | None = None,
          by: str | None = None, progress: Callable[[str], None] = lambda _: None) -> NightReport:
    versions.require_valid(version)
    run_id = new_run_id()
    with store.lock():
        recovery.recover_or_refuse(config, store, progress)
        state = store.load()
        if state.current is not None:
            raise UsageError(f"t3track already manages this host (current {state.current})",
                             hint="use `t3track pin VERSION --reason ...` or `t3track revert --to VERSION`")
        client = client or RegistryClient.for_config(config)
        progress(f"installing {config.package}@{version}")
        packument = client.packument(config.package)
        if version not in packument.versions:
            raise UsageError(f"{config.package}@{version} is not in the registry {client.base_url}")
        install.ensure_installed(config, version, packument.versions[version], registry_url=client.base_url,
                                 client=client, progress=progress)
        _move_handmade(config, progress)
        from_version = tree.current_version(config)  # what serves now, if it is a known version
        if from_version is not None and not (versions.is_valid(from_version)
                                             and tree.prefix_of(config, from_version).is_dir()):
            from_version = None
        plan = swap.plan_swap(store, run_id=run_id, from_version=from_version, to_version=version, kind="adopt")
        moved = swap.swap_and_verify(config, store, plan, progress)
        report = ledger.conclude(config, store, "adopt", moved, run_id=run_id)
        ledger.record_run(config, store, report, event="adopt", by=by or operator_name(), nightly=False,
                          details={"version": version, "from": from_version})
        return report
