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

from t3track import aftermath as afterrun, night, versions
from t3track.host import install
from t3track.night import swap
from t3track.config import Config
from t3track.errors import ExitCode, UsageError
from t3track.fsutil import fsync_dir
from t3track.host.registry import RegistryClient
from t3track.state import StateStore, operator_name, utcnow


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
    current = config.root / "current"
    if current.is_symlink() or not current.is_dir():
        return
    found = _handmade_version(config, current)
    vdir = config.root / "versions"
    vdir.mkdir(parents=True, exist_ok=True)
    name = found if found and not (vdir / found).exists() else f"handmade-{utcnow().strftime('%Y%m%dT%H%M%SZ')}"
    progress(f"moving the hand-made {current} to {vdir / name}")
    os.rename(current, vdir / name)
    # at once point current at the moved tree, so a kill here leaves the old layout working
    os.symlink(Path("versions") / name, current)
    fsync_dir(config.root)


def adopt(config: Config, store: StateStore, version: str, *, client: RegistryClient | None = None,
          by: str | None = None, progress: Callable[[str], None] = lambda _: None) -> night.NightReport:
    versions.require_valid(version)
    run_id = night.new_run_id()
    with store.lock():
        night.recover_or_refuse(config, store, progress)
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
        from_version = swap.current_version(config)  # what serves now, if it is a known version
        if from_version is not None and not (versions.is_valid(from_version)
                                             and swap.prefix_of(config, from_version).is_dir()):
            from_version = None
        result = swap.swap_to(config, store, run_id=run_id, from_version=from_version, to_version=version,
                              kind="adopt", progress=progress)
        who = by or operator_name()
        if result.outcome == "swapped":
            night.settle(config, store, "adopt", from_version, version, run_id)
            report = night.NightReport("swapped", ExitCode.OK, run_id, f"adopted {version}", version, from_version,
                                       version, gates=result.live)
        elif result.outcome == "rolled_back":
            night.settle_rollback(store, "adopt", from_version)
            report = night.NightReport("rolled_back", ExitCode.REFUSED, run_id, result.reason, version, from_version,
                                       from_version, gates=result.live + result.rollback_live)
        else:
            report = night.NightReport("critical", ExitCode.CRITICAL, run_id, result.reason, version, from_version,
                                       None, gates=result.live + result.rollback_live)
        report.timings.update(result.timings)
        store.record("adopt", by=who, run_id=run_id, version=version, outcome=report.outcome,
                     **{"from": from_version}, reason=report.reason, exit_code=int(report.exit_code))
        afterrun.after_run(config, store, report, nightly=False)  # evidence, notifications, metrics
        return report
