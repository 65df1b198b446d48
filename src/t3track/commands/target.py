"""`t3track run --to VERSION`: the operator's target, checked before any night starts.

A target that cannot go (denied, refused by the gates before, older than current without
--allow-downgrade, held by a pin on another version, unknown to the registry) is the operator's
mistake, not a refused night: a usage error (exit 2) before anything is recorded, so it never
reaches history, the metrics or the refusal streak the alerts read.
"""

from __future__ import annotations

from t3track import versions
from t3track.commands.control import registry_has
from t3track.config import Config
from t3track.errors import UsageError
from t3track.night import rings
from t3track.state import StateStore


def check_target(config: Config, store: StateStore, version: str, *, allow_downgrade: bool) -> None:
    versions.require_valid(version, "--to version")
    host = store.load()
    _, ring_store = rings.scope(config, store, config.first_ring if config.ringed else None)
    state = ring_store.load()
    denial = host.denial(version)
    if denial is not None:
        gate = f", gate {denial.gate}" if denial.gate else ""
        raise UsageError(f"--to {version}: it is denied ({denial.reason}{gate}); nothing was run",
                         hint=f"t3track allow {version}, then run again if you are sure")
    if state.pinned is not None and state.pinned.version != version:
        raise UsageError(f"--to {version}: pinned at {state.pinned.version} by {state.pinned.by} "
                         f"({state.pinned.reason}); nothing was run", hint=f"t3track unpin, then run --to {version}")
    current = state.current
    if (current != version and versions.not_newer(version, current)
            and not allow_downgrade):
        raise UsageError(f"--to {version} is older than current {current}; nothing was run",
                         hint=f"t3track run --to {version} --allow-downgrade, to go back on purpose")
    if registry_has(config, version).known is False:  # unreachable: the night says so (exit 3) and retries
        raise UsageError(f"--to {version}: the registry has no {config.package}@{version}; nothing was run",
                         hint=f"check the version: `npm view {config.package} versions`")
