"""What a T3 Code server's own output says at start that t3track acts on: the lines that make a start
the host's problem, and the warnings about a migration history the build reads another way.

From t3code-contract.md ("Since 0.0.42" and "T3 Code 0.1.x"): 0.1.x builds refuse to start, each with
one dedicated exit code, when something on the host owns or manages the T3 home; none of that is the
candidate's fault, so t3track treats it as an environment error (exit 3), never as a gate failure.
"""

from __future__ import annotations

import re

from t3track.errors import EnvironmentFault

# The text each refusal starts with, and what the operator does about it.
HOST_REFUSALS = (
    ("A T3 Code server already owns", "another T3 Code server owns this T3 home (the user's own, or one started "
     "by hand): stop it, then run again"),
    ("A background service for this T3 home", "the user's own T3 background service "
     "(~/.config/systemd/user/t3code.service) manages this home: disable it (`systemctl --user disable --now "
     "t3code.service` as the user; `t3 service uninstall`), then run again"),
    ("An interrupted server update requires recovery", "upstream's own updater left an update half done in this "
     "home (userdata/server-update-pending, or runtime/service-state.json): let the user's `t3` recover it, or "
     "remove the marker after checking the database, then run again"),
)
_REFUSAL_RE = re.compile("(" + "|".join(re.escape(text) for text, _ in HOST_REFUSALS) + r")[^\n]*")

# Warnings of a build that reads a recorded migration history otherwise than by its ids: V2-era builds,
# then 0.1.x's wording. Either one means the same thing to t3track.
DIVERGED_MARKERS = ("Database migration history diverges from this build",
                    "Recognized legacy migration history")


class HostRefusedStart(EnvironmentFault):
    """A T3 Code build refused to start because of the host's state (exit 3; never against the candidate)."""

    def __init__(self, user: str, line: str, hint: str, where: str):
        super().__init__(f"{user}: {where} refused to start: {line}", hint=hint)
        self.user = user
        self.line = line


LISTENING = "Listening on "  # a server that got past its start: any refusal before it is an older start's


def host_refusal(log: str) -> tuple[str, str] | None:
    """(the refusal line, what to do) when the server's output ends with a start refused for one of the
    host's reasons: the last refusal, with no server listening after it (a service's log keeps older starts)."""
    found = next(reversed(list(_REFUSAL_RE.finditer(log))), None)
    if found is None or LISTENING in log[found.end():]:
        return None
    hint = next(h for text, h in HOST_REFUSALS if found.group(1) == text)
    return found.group(0).strip(), hint


def diverged_marker(log: str) -> tuple[int, str] | None:
    """Where the first migration-history warning starts in `log`, and its text."""
    found = [(log.find(m), m) for m in DIVERGED_MARKERS if m in log]
    return min(found) if found else None
