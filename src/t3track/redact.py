"""Redaction of secrets before anything is logged, stored as evidence or printed.

Pairing credentials, session cookie values and bearer tokens must never leave the process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[REDACTED]"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Startup output: "Token: <12 characters>"
    (re.compile(r"(?i)(\btoken\s*[:=]\s*)\S+"), r"\1" + MASK),
    # Pairing URL fragments and query strings: /pair#token=..., ?token=...
    (re.compile(r"(?i)([#?&](?:token|credential)=)[^\s&#\"']+"), r"\1" + MASK),
    # JSON fields holding secrets
    (re.compile(r'(?i)("(?:credential|token|access_token|sessionToken|bearer|secret)"\s*:\s*")[^"]*(")'), r"\1" + MASK + r"\2"),
    # Cookie headers and Set-Cookie values: name=value -> name=[REDACTED]
    (re.compile(r"(?i)((?:set-)?cookie:\s*[^=;\s]+=)[^;\s]*"), r"\1" + MASK),
    (re.compile(r"(?i)\b(t3_session[A-Za-z0-9_]*=)[^;\s\"']*"), r"\1" + MASK),
    # Authorization headers and npm tokens
    (re.compile(r"(?i)(authorization:\s*(?:bearer|basic)\s+)\S+"), r"\1" + MASK),
    (re.compile(r"(?i)(_authToken\s*=\s*)\S+"), r"\1" + MASK),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + MASK),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secret shapes and, exactly, every string in `secrets`."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
