"""Verify: every user's live server reports the expected `serverVersion` and passes the pairing probe
(and the front door, when configured) within verify_timeout. Run inside the swap's journaled transaction,
after the start and after a rollback."""

from __future__ import annotations

import time
from collections.abc import Callable

from t3track.config import Config
from t3track.host import probe
from t3track.host.services import UserMark
from t3track.host.tree import executable_of
from t3track.results import FAIL, PASS, GateResult
from t3track.versions import same_version

Progress = Callable[[str], None]
LIVE_VERIFY = "live-verify"
ROLLBACK_VERIFY = "rollback-verify"


def _quiet(_: str) -> None:
    pass


def _wait_for_version(url: str, version: str, deadline: float) -> str | None:
    seen = None
    while time.monotonic() < deadline:
        seen = probe.server_version(url, timeout=probe.READY_POLL_TIMEOUT_S)
        if same_version(seen, version):
            return seen
        time.sleep(0.2)
    return seen


def verify_live(config: Config, version: str, progress: Progress = _quiet, gate: str = LIVE_VERIFY,
                marks: list[UserMark] | None = None) -> list[GateResult]:
    """Every user's server must report `version` and pass the pairing probe within verify_timeout;
    stops at the first user that fails. A `verified` mark is left for each user that passes."""
    results = []
    executable = executable_of(config, version)
    for user in config.users:
        started = time.monotonic()
        deadline = started + config.verify_timeout.total_seconds()
        url = f"http://127.0.0.1:{user.port}"

        def fail(detail: str, fingerprint: str, user: str = user.name, started: float = started) -> list[GateResult]:
            results.append(GateResult(gate, user, FAIL, time.monotonic() - started, detail, fingerprint=fingerprint))
            return results

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
        results.append(GateResult(gate, user.name, PASS, time.monotonic() - started,
                                  f"serving {version}; pairing handshake passed"
                                  + "".join(f"; but {warning}" for warning in outcome.warnings)))
        if marks is not None:
            marks.append(UserMark(time.monotonic(), user.name, "verified"))
    return results
