"""npm versions: SemVer 2.0 parsing, channels and precedence (never PEP 440)."""

from __future__ import annotations

import re
from enum import Enum

import semver

from t3track.errors import UsageError

# Upstream's own channel test is `^[^-+]+-(nightly|preview)\.\d{8}\.\d+$`.
_CHANNEL_RE = re.compile(r"^[^-+]+-(nightly|preview)\.(\d{8})\.(\d+)$")


class Channel(str, Enum):
    NIGHTLY = "nightly"
    PREVIEW = "preview"
    STABLE = "stable"
    OTHER = "other"  # some other pre-release (e.g. 1.0.0-rc.1)


def parse(text: str) -> semver.Version:
    """Parse an npm version; raises ValueError when it is not strict SemVer 2.0."""
    if not isinstance(text, str) or text != text.strip() or not text:
        raise ValueError(f"not a version: {text!r}")
    return semver.Version.parse(text)


def is_valid(text: str) -> bool:
    try:
        parse(text)
    except (ValueError, TypeError):
        return False
    return True


def require_valid(text: str, what: str = "version") -> str:
    """Validate a version typed by an operator or read from a registry before it reaches argv."""
    if not is_valid(text):
        raise UsageError(
            f"{what} {text!r} is not a valid SemVer version",
            hint="give an exact version such as 0.0.42 or 0.0.43-nightly.20261126.2901 "
            "(no 'v' prefix, no tags like 'latest', no ranges)",
        )
    return text


def channel_of(text: str) -> Channel:
    version = parse(text)
    match = _CHANNEL_RE.match(text)
    if match:
        return Channel(match.group(1))
    if version.prerelease is None:
        return Channel.STABLE
    return Channel.OTHER


def is_nightly(text: str) -> bool:
    return is_valid(text) and channel_of(text) is Channel.NIGHTLY


def compare(a: str, b: str) -> int:
    """SemVer precedence: -1, 0 or 1."""
    return parse(a).compare(parse(b))


def newer(a: str, b: str | None) -> bool:
    """True when `a` has strictly higher precedence than `b` (anything is newer than None)."""
    return b is None or compare(a, b) > 0


def sort_key(text: str) -> semver.Version:
    return parse(text)
