"""npm versions: SemVer 2.0 parsing, channels and precedence (never PEP 440)."""

from __future__ import annotations

import re
from enum import Enum
from typing import TYPE_CHECKING

from t3track.errors import UsageError

if TYPE_CHECKING:
    import semver

# Upstream's own channel test is `^[^-+]+-(nightly|preview)\.\d{8}\.\d+$`. A string: `re` compiles
# it at the first channel_of (status asks none).
_CHANNEL_RE = r"^[^-+]+-(nightly|preview)\.(\d{8})\.(\d+)$"


class Channel(str, Enum):
    NIGHTLY = "nightly"
    PREVIEW = "preview"
    STABLE = "stable"
    OTHER = "other"  # some other pre-release (e.g. 1.0.0-rc.1)


MAX_LENGTH = 256        # npm's own limit on a version string
MAX_NUMBER_DIGITS = 16  # a major, minor, patch or numeric pre-release part: far above any real one


def parse(text: str) -> semver.Version:
    """Parse an npm version; raises ValueError when it is not strict SemVer 2.0 or absurd (a
    300-digit build number, a string longer than npm allows)."""
    if not isinstance(text, str) or text != text.strip() or not text or len(text) > MAX_LENGTH:
        raise ValueError(f"not a version: {text[:80]!r}" if isinstance(text, str) else f"not a version: {text!r}")
    if any(len(part) > MAX_NUMBER_DIGITS for part in re.split(r"[^0-9]+", text)):
        raise ValueError(f"not a version (a number longer than {MAX_NUMBER_DIGITS} digits): {text[:80]!r}")
    import semver  # at first use: status on a host with nothing installed compares no version

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
    match = re.match(_CHANNEL_RE, text)
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


def same_version(seen: str | None, expected: str) -> bool:
    """SemVer equality: build metadata (`0.0.42+drill.1`, a second copy of 0.0.42) does not count."""
    return seen is not None and is_valid(seen) and compare(seen, expected) == 0


def not_newer(version: str, current: str | None) -> bool:
    """`version` would not move forward from `current` (same or older); never when current is unknown
    or not a version (a hand-made install): then nothing can be said."""
    return current is not None and is_valid(current) and not newer(version, current)


def newer(a: str, b: str | None) -> bool:
    """True when `a` has strictly higher precedence than `b` (anything is newer than None)."""
    return b is None or compare(a, b) > 0


def sort_key(text: str) -> semver.Version:
    return parse(text)
