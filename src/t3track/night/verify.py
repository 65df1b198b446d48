"""Verify: every user's live server reports the expected `serverVersion` and passes the pairing probe
(and the front door, when configured) within verify_timeout, users side by side. Run inside the swap's
journaled transaction, after the start and after a rollback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from t3track.config import Config, UserConfig
from t3track.host import probe, serving
from t3track.host.services import UserMark
from t3track.host.tree import executable_of
from t3track.night.side_by_side import run_side_by_side
from t3track.results import FAIL, PASS, GateResult
from t3track.runner import serialised
from t3track.versions import same_version

Progress = Callable[[str], None]
LIVE_VERIFY = "live-verify"
ROLLBACK_VERIFY = "rollback-verify"
LIVE_POLL_S = 0.05  # a restarted server: the sooner it is seen serving, the sooner the night ends


def _quiet(_: str) -> None:
    pass


def _wait_for_version(url: str, version: str, deadline: float) -> str | None:
    seen = None
    readiness = serving.ReadinessPoll(url)
    while time.monotonic() < deadline:
        seen = readiness.version(deadline)
        if same_version(seen, version):
            return seen
        time.sleep(LIVE_POLL_S)
    return seen


def verify_live(config: Config, version: str, progress: Progress = _quiet, gate: str = LIVE_VERIFY,
                marks: list[UserMark] | None = None, users: Sequence[UserConfig] | None = None) -> list[GateResult]:
    """Every user's server (`users`, default config.users) must report `version` and pass the pairing
    probe within verify_timeout; users are checked side by side (at most config.gates.parallel at once)
    and the first user that fails stops the rest (t3track.night.side_by_side: results in config order,
    cut after the first failure). A `verified` mark is left for each user that passes."""
    executable = executable_of(config, version)
    say = serialised(progress)
    chosen = list(config.users if users is None else users)

    def one_user(user: UserConfig, stop: threading.Event) -> list[GateResult]:
        if stop.is_set():
            return []
        result = _verify_user(config, user, version, executable, say, gate)
        if result.passed and marks is not None:
            marks.append(UserMark(time.monotonic(), user.name, "verified"))  # list.append: one at a time
        return [result]

    return run_side_by_side(chosen, one_user, workers=config.gates.parallel, name=f"t3track-{gate}")


def _verify_user(config: Config, user: UserConfig, version: str, executable: Path, progress: Progress,
                 gate: str) -> GateResult:
    started = time.monotonic()
    deadline = started + config.verify_timeout.total_seconds()
    url = f"http://127.0.0.1:{user.port}"

    def fail(detail: str, fingerprint: str) -> GateResult:
        return GateResult(gate, user.name, FAIL, time.monotonic() - started, detail, fingerprint=fingerprint)

    progress(f"live check {user.name} on {url}")
    seen = _wait_for_version(url, version, deadline)
    if not same_version(seen, version):
        return fail(f"{url} reports serverVersion {seen!r}, expected {version!r} "
                    f"within {config.verify_timeout.total_seconds():.0f}s", f"{gate}:version:-:WrongVersion")
    remaining = max(1.0, deadline - time.monotonic())
    outcome = probe.pairing_probe(url, user.base_dir, executable,
                                  timeout=min(remaining, config.gates.probe_timeout.total_seconds()),
                                  # never mint as root into a user's state: the server could not write it
                                  run_as=user.run_as or probe.base_dir_owner(user.base_dir))
    if not outcome.ok:
        return fail(f"pairing probe failed at step {outcome.step} (status {outcome.status}): {outcome.detail}",
                    outcome.fingerprint(gate) or f"{gate}:{outcome.step}:-:Failed")
    if user.front_door:
        door = probe.front_door_check(user.front_door, timeout=config.gates.probe_timeout.total_seconds())
        if not door.ok:
            return fail(f"front door {user.front_door} failed: {door.detail}",
                        door.fingerprint("front-door") or "front-door:-:-:Failed")
    return GateResult(gate, user.name, PASS, time.monotonic() - started,
                      f"serving {version}; pairing handshake passed"
                      + "".join(f"; but {warning}" for warning in outcome.warnings))
