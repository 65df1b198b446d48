"""Side-by-side installs: `npm install` into root/versions/<v>.partial, verify, rename into place.

Nothing half-done ever carries a version's name: an install is built under `<v>.partial` and
renamed to `<v>` only once npm succeeded and the installed package.json version, the tarball's
sha512 against the packument's dist.integrity, package-lock.json's record of it and of every other
package npm fetched (the platform package holding the executable among them; what came bundled
inside a verified tarball is covered by it, as in npm's own model) and the executable all check out. A tampered artefact raises IntegrityError (the version is refused, exit 1); npm failing
or timing out raises EnvironmentFault (exit 3). Either way root/versions holds no partial.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from t3track import runner, versions
from t3track.config import Config
from t3track.errors import EnvironmentFault, ExitCode, T3TrackError
from t3track.fsutil import atomic_write_text, ensure_private_dir, fsync_dir, make_private_dirs
from t3track.host.registry import Packument, VersionInfo, registry_token
from t3track.host.tree import PARTIAL_SUFFIX, REMOVING_SUFFIX, installed_versions, live_targets, versions_dir
from t3track.state import State

INSTALL_DIR_MODE = 0o755  # the users' servers run the installed executable: readable by them


class IntegrityError(T3TrackError):
    """The artefact is not what the registry published: refuse this version (exit 1)."""

    exit_code = ExitCode.REFUSED

    def __init__(self, message: str, *, version: str, check: str, hint: str | None = None):
        super().__init__(message, hint=hint or f"do not install {version}; `t3track deny {version}` keeps it out")
        self.version = version
        self.check = check  # tarball-integrity | lockfile-integrity | dependency-integrity | package-version | executable


class TarballSource(Protocol):
    def tarball(self, url: str) -> bytes: ...

    def packument(self, package: str) -> Packument: ...


def installed_prefix(config: Config, version: str) -> Path:
    return versions_dir(config) / versions.require_valid(version)


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def sha512_of(integrity: str | None) -> str | None:
    """The sha512 entry of an SRI string (it may list several hashes), or None."""
    for token in (integrity or "").split():
        if token.startswith("sha512-"):
            return token
    return None


def ensure_installed(
    config: Config,
    version: str,
    packument_version: VersionInfo,
    *,
    registry_url: str,
    client: TarballSource,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """root/versions/<version>, installed and verified (an existing verified install is reused)."""
    versions.require_valid(version)
    say = progress or (lambda _message: None)
    expected = sha512_of(packument_version.integrity)
    if expected is None:
        raise IntegrityError(f"the registry publishes no sha512 dist.integrity for {config.package}@{version}",
                             version=version, check="tarball-integrity",
                             hint="t3track installs only tarballs it can verify")
    final = installed_prefix(config, version)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    if final.is_dir():
        try:
            _verify_tree(config, version, final, expected)
            say(f"{version} is already installed and verified")
            return final
        except IntegrityError as exc:
            _discard_bad_install(config, final, partial, exc)
            say(f"the existing install of {version} failed verification ({exc.check}); installing again")
    # A tampered tarball is refused before anything is written under root.
    say(f"checking the tarball of {version} against dist.integrity")
    actual = sri_sha512(client.tarball(packument_version.tarball))
    if actual != expected:
        raise IntegrityError(
            f"the tarball of {config.package}@{version} ({packument_version.tarball}) does not match the "
            f"registry's dist.integrity: {actual[:23]}… != {expected[:23]}…",
            version=version, check="tarball-integrity")
    _prepare_versions_dir(config)
    _remove_tree(partial)

    try:
        partial.mkdir(mode=INSTALL_DIR_MODE)
        say(f"npm install {config.package}@{version}")
        _npm_install(config, version, partial, registry_url)
        _verify_tree(config, version, partial, expected)
        _verify_dependencies(config, version, partial, client)
        _fsync_tree(partial)
        os.rename(partial, final)
        fsync_dir(final.parent)
    except BaseException:
        _remove_tree(partial)
        raise
    say(f"installed {version} at {final}")
    return final


def _npm_install(config: Config, version: str, prefix: Path, registry_url: str) -> None:
    argv = [
        "npm", "install",
        "--prefix", str(prefix),
        "--save-exact",
        "--registry", registry_url,
        "--userconfig", str(write_npmrc(config, registry_url)),
        "--cache", str(ensure_private_dir(config.state_dir / "npm-cache")),
        "--logs-dir", str(ensure_private_dir(config.state_dir / "npm-logs")),
        "--no-audit", "--no-fund", "--no-update-notifier",
        # npm's cache in state_dir trusts its own clock: one night with the clock days ahead made every
        # later install fail (ETARGET from a cached packument) until time caught up (faults review M4).
        # Ask the registry each time; the tarball is verified against dist.integrity anyway.
        "--prefer-online",
    ]
    if config.ignore_scripts:
        argv.append("--ignore-scripts")
    argv.append(f"{config.package}@{version}")
    timeout = config.install_timeout.total_seconds()
    try:
        done = runner.run(argv, timeout=timeout, env=_npm_env(), cwd=prefix)
    finally:
        _private_logs(config.state_dir / "npm-logs")
    if done.timed_out:
        raise EnvironmentFault(f"npm install of {config.package}@{version} timed out after {timeout:.0f}s",
                               hint="check the registry and the network; raise install_timeout if installs are slow")
    if not done.ok:
        output = done.redacted_output(tail_lines=15)
        if "EINTEGRITY" in output:
            raise IntegrityError(f"npm refused {config.package}@{version}: integrity check failed:\n{output}",
                                 version=version, check="tarball-integrity")
        raise EnvironmentFault(f"npm install of {config.package}@{version} failed: {done.describe()}",
                               hint=f"npm's logs are in {config.state_dir / 'npm-logs'}")


def _private_logs(logs: Path) -> None:
    """npm writes its logs 0644 whatever its parent's mode: they can quote URLs and paths. 0600."""
    try:
        entries = list(logs.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_file() and not entry.is_symlink():
                os.chmod(entry, 0o600)
        except OSError:
            continue


def write_npmrc(config: Config, registry_url: str) -> Path:
    """t3track's own npm userconfig (0600): a stray ~/.npmrc cannot change what is installed, and
    the registry token reaches npm through this file, never argv or the environment."""
    make_private_dirs(config.state_dir)  # an existing state_dir keeps its mode: it may be shared
    lines = [f"registry={registry_url}"]
    token = registry_token()
    if token:
        parts = urlsplit(registry_url)
        lines.append(f"//{parts.netloc}{parts.path or '/'}:_authToken={token}")
    path = config.state_dir / "npmrc"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _npm_env() -> dict[str, str]:
    """The caller's environment minus npm settings and tokens (flags and the userconfig rule)."""
    drop = {v.lower() for v in ("T3TRACK_NPM_TOKEN", "NPM_TOKEN", "NODE_AUTH_TOKEN")}
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_") and k.lower() not in drop}
    env["NO_UPDATE_NOTIFIER"] = "1"
    return env


def _verify_tree(config: Config, version: str, prefix: Path, expected: str) -> None:
    """The installed package is `version`, npm recorded the published integrity, the executable exists."""
    manifest_path = prefix / "node_modules" / config.package / "package.json"
    manifest = _read_json(manifest_path)
    installed = manifest.get("version") if manifest else None
    if installed != version or manifest.get("name") != config.package:
        raise IntegrityError(f"{manifest_path} says {manifest.get('name') if manifest else None}@{installed}, "
                             f"not {config.package}@{version}", version=version, check="package-version")
    lock = _read_json(prefix / "package-lock.json")
    entry = (lock.get("packages") or {}).get(f"node_modules/{config.package}") if lock else None
    recorded = sha512_of(entry.get("integrity")) if isinstance(entry, dict) else None
    if recorded != expected:
        raise IntegrityError(
            f"package-lock.json in {prefix} records integrity {str(recorded)[:23]}… for {config.package}@{version}, "
            f"the registry publishes {expected[:23]}…", version=version, check="lockfile-integrity")
    executable = config.executable_in(prefix)
    if not executable.is_file() or not os.access(executable, os.X_OK):
        skipped = [f"{name}@{want}" for name, want in sorted((manifest.get("optionalDependencies") or {}).items())
                   if config.executable.startswith(f"node_modules/{name}/")
                   and not (prefix / "node_modules" / name / "package.json").is_file()]
        if skipped:  # npm leaves out an optional package it cannot fetch or verify, and exits 0
            raise IntegrityError(
                f"{config.package}@{version} has no executable at {executable}: npm did not install "
                f"{skipped[0]}, the optional dependency that holds it (npm skips an optional package whose "
                f"tarball fails its integrity check, is missing, or does not fit this os/cpu)",
                version=version, check="executable",
                hint=f"npm's logs are in {config.state_dir / 'npm-logs'}; do not install {version} until the "
                     f"registry serves {skipped[0]} as published (`t3track deny {version}` keeps it out)")
        raise IntegrityError(f"{config.package}@{version} has no executable at {executable}",
                             version=version, check="executable",
                             hint="check `executable:` in the config (relative to the install prefix)")


def _verify_dependencies(config: Config, version: str, prefix: Path, client: TarballSource) -> None:
    """What npm installed follows npm's own model of trust, read from package-lock.json:
    - a package npm fetched carries the sha512 the registry publishes for it (t3track's own read of its
      packument). Since ~2026-09 the executable is in the launcher's optional dependency
      (@t3code/t3-<os>-<arch>), which npm fetches itself: it is checked here;
    - a package npm took out of another package's tarball (`"inBundle": true`, no integrity: the real
      platform package bundles its native modules, @ff-labs/fff-*, node-pty, ffi-rs, ...) is covered by
      the check of the fetched package that bundles it, and is never looked up in the registry (a mirror
      of T3's packages alone does not have it);
    - an entry that is neither (no integrity and in no bundle) is refused, whatever its name.
    And the executable lies inside a package npm recorded."""
    packages = (_read_json(prefix / "package-lock.json").get("packages") or {})
    for path, entry in sorted(packages.items()):
        if not path or path == f"node_modules/{config.package}" or not isinstance(entry, dict) or entry.get("link"):
            continue
        name = path.rsplit("node_modules/", 1)[-1]
        dep_version = entry.get("version")
        if entry.get("inBundle") is True:
            bundler = _bundling_package(packages, path)
            if bundler is None:
                raise IntegrityError(
                    f"{config.package}@{version}: npm recorded {name}@{dep_version} as bundled, but no package "
                    f"it fetched and verified contains {path}", version=version, check="dependency-integrity")
            continue  # its bytes came inside `bundler`'s tarball, whose integrity is checked in this loop
        recorded = sha512_of(entry.get("integrity"))
        if recorded is None:
            raise IntegrityError(
                f"{config.package}@{version}: npm installed {name}@{dep_version} with no integrity recorded and "
                f"not from inside a package it verified, so what it holds is unknown",
                version=version, check="dependency-integrity")
        published = client.packument(name).versions.get(dep_version) if isinstance(dep_version, str) else None
        wanted = sha512_of(published.integrity) if published else None
        if recorded != wanted:
            raise IntegrityError(
                f"{config.package}@{version}: npm installed {name}@{dep_version} with integrity "
                f"{str(recorded)[:23]}…, the registry publishes {str(wanted)[:23]}…",
                version=version, check="dependency-integrity")
    executable = os.path.realpath(config.executable_in(prefix))
    holders = [p for p in packages if p and executable.startswith(os.path.realpath(prefix / p) + os.sep)]
    if not holders:
        raise IntegrityError(f"{config.package}@{version}: the executable {executable} is in no package npm "
                             f"recorded in package-lock.json, so its integrity is unknown",
                             version=version, check="executable",
                             hint="check `executable:` in the config (relative to the install prefix)")


def _bundling_package(packages: dict, path: str) -> str | None:
    """The lock path of the nearest enclosing package that npm fetched (not itself bundled), whose
    tarball therefore held `path`; None when there is none (npm would have had to fetch it)."""
    parent = path
    while "/node_modules/" in parent:
        parent = parent.rsplit("/node_modules/", 1)[0]
        entry = packages.get(parent)
        if isinstance(entry, dict) and not entry.get("link") and entry.get("inBundle") is not True:
            return parent
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _discard_bad_install(config: Config, final: Path, partial: Path, problem: IntegrityError) -> None:
    if live_targets(config) & {final.name}:
        raise EnvironmentFault(f"the live install {final} fails verification: {problem.message}",
                               hint="investigate before anything replaces it; `t3track status` shows what is live")
    _remove_tree(partial)
    os.rename(final, partial)  # from here it is just a leftover that _remove_tree can finish
    _remove_tree(partial)


def _prepare_versions_dir(config: Config) -> None:
    path = versions_dir(config)
    path.mkdir(parents=True, exist_ok=True, mode=INSTALL_DIR_MODE)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory of a finished install before it is renamed into place."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def ring_versions(state: State) -> set[str]:
    """What a host with rings still needs (`state`: the whole host's): each ring's current, previous
    and pin (the first ring's are the host's own), and every version a ring has served that is newer
    than the oldest ring's current (a later ring may still take it)."""
    currents = [v for v in (state.current, *(r.current for r in state.rings.values())) if v]
    oldest = min(currents, key=versions.sort_key, default=None)
    denied = {d.version for d in state.denied}
    keep = {v for r in state.rings.values() for v in (r.current, r.previous, r.pinned.version if r.pinned else None)
            if v}
    keep |= {v for v in (state.current, state.previous, state.pinned.version if state.pinned else None) if v}
    keep |= {s.version for r in state.rings.values() for s in r.served
             if s.version not in denied and (oldest is None or versions.compare(s.version, oldest) > 0)}
    return keep


def prune(config: Config, state: State, *, host: State | None = None) -> list[str]:
    """Remove old installs beyond keep_versions; never current, previous, the pin, a pending candidate or the live target.

    Leftover `.partial`/`.removing` trees of killed runs are cleared too. Returns removed versions.
    """
    directory = versions_dir(config)
    if not directory.is_dir():
        return []
    for leftover in directory.iterdir():
        if leftover.name.endswith((PARTIAL_SUFFIX, REMOVING_SUFFIX)) and not leftover.is_symlink():
            _remove_tree(leftover)
    protected = {v for v in (state.current, state.previous, state.pinned.version if state.pinned else None) if v}
    protected |= live_targets(config)
    whole = host if host is not None else state
    protected |= ring_versions(whole)
    protected |= {p.version for p in whole.pending}  # `approve` swaps it as gated
    others = [v for v in reversed(installed_versions(config)) if v not in protected]  # newest first
    removed = []
    for version in others[config.keep_versions:]:
        doomed = directory / version
        going = doomed.with_name(version + REMOVING_SUFFIX)
        os.rename(doomed, going)  # a half-deleted tree never carries a version's name
        _remove_tree(going)
        removed.append(version)
    if removed:
        fsync_dir(directory)
    return removed
