"""Drift: a user's live server serving another version than the one t3track installed.

Upstream now pushes its own updater (`t3 update`, `t3 service install`), and anyone can start a server
by hand: such a server is not under the pin, and a swap that stops, snapshots and restores around it
would act on the wrong process. A night that finds drift says so and refuses before the gates, as a
problem of the host (like a missing backup): the candidate is not counted as failing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from t3track.host.serving import server_version
from t3track.results import FAIL, GateResult
from t3track.versions import same_version

if TYPE_CHECKING:
    from t3track.config import Config, UserConfig

DRIFT = "drift"
TIMEOUT_S = 2.0
CAUSES = "someone ran `t3 update` or `t3 service install`, or started a server by hand"


@dataclass(frozen=True)
class Drift:
    user: str
    url: str
    serving: str
    installed: str

    def describe(self) -> str:
        return (f"{self.user}: {self.url} serves {self.serving}, not {self.installed} that t3track installed "
                f"({CAUSES}); stop that server and `t3track run` again, or `t3track adopt` what it serves")


def serving(user: UserConfig, timeout: float = TIMEOUT_S) -> str | None:
    """The serverVersion the user's live server reports, or None when it does not answer."""
    return server_version(f"http://127.0.0.1:{user.port}", timeout=timeout)


def find(config: Config, installed: str | None, linked: dict[str, str] | None = None) -> list[Drift]:
    """Users whose live server answers with another version than `installed` (or than the version
    their own link names, `linked`: a user moved between rings runs their old ring's version until
    their new ring's swap). A server that does not answer is down, not drifting: the live check after
    a swap handles that."""
    found = []
    for user in config.users:
        expected = (linked or {}).get(user.name, installed)
        if expected is None:
            continue
        seen = serving(user)
        if seen is not None and not same_version(seen, expected):
            found.append(Drift(user.name, f"http://127.0.0.1:{user.port}", seen, expected))
    return found


def as_gates(drifts: list[Drift], started: float, outcome: str = FAIL) -> list[GateResult]:
    """The drift as host checks of the night's report (never fingerprinted as the candidate's): failed
    when it stops a candidate, inconclusive on a night with nothing to move (it is still told)."""
    return [GateResult(DRIFT, d.user, outcome, round(time.monotonic() - started, 3), d.describe(),
                       fingerprint=f"{DRIFT}:version:-:Drift") for d in drifts]
