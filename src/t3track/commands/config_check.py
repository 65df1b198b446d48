"""`t3track config check`: the config file is valid (loading it says so), and the host it describes
can run a night: paths, npm and node, each user's tree and Linux user, the service commands; and
what does not stop t3track but fights it (T3's own updater, a unit that bypasses the users' links).
One report: problems fail the check, warnings are said."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from t3track.config import Config, UserConfig
from t3track.fsutil import nearest_existing
from t3track.host.services import unit_layout_warnings
from t3track.host.usertree import tree_problems


@dataclass
class ConfigCheck:
    config: str  # the file checked
    ok: bool
    problems: list[str]
    warnings: list[str]  # said, but they do not fail the check


def config_check(config: Config, path: Path) -> ConfigCheck:
    problems = _host_problems(config) + tree_problems(config)
    warnings = (_host_warnings(config) + unit_layout_warnings(config) + sandbox_warnings(config)
                + _reach_warnings(config))
    return ConfigCheck(str(path), not problems, problems, warnings)


def _reach_warnings(config: Config) -> list[str]:
    """What the night needs to reach: the registry (a short question, its dist-tags) and the metrics
    file's directory (node_exporter's textfile directory, without which no alert can fire)."""
    from t3track.errors import T3TrackError
    from t3track.host.registry import RegistryClient

    warnings = []
    if config.metrics_path is not None and not config.metrics_path.parent.is_dir():
        warnings.append(f"metrics_path: {config.metrics_path.parent} does not exist, so no metrics reach "
                        "Prometheus and no alert can fire: point it at node_exporter's textfile directory "
                        "(Debian: /var/lib/prometheus/node-exporter/, `apt-get install prometheus-node-exporter`)")
    elif config.metrics_path is None:
        warnings.append(f"metrics_path: not set, so the metrics go to {config.metrics_file()}, which node_exporter "
                        "does not read: no alert can fire (see systemd/config.example.yaml)")
    try:
        with RegistryClient.for_config(config, timeout=5.0, retries=1) as client:
            client.dist_tags(config.package)
    except T3TrackError as exc:
        warnings.append(f"registry: {exc.message}" + (f"; {exc.hint}" if exc.hint else ""))
    return warnings


# The services whose sandbox (ProtectSystem=strict) must leave every user's tree writable: t3track
# restores databases there and the backup reads WAL databases (which writes their -shm file).
SANDBOXED_UNITS = ("t3track.service", "t3-backup-state.service")


def units_dir() -> Path:
    """Where the units are installed (T3TRACK_UNITS_DIR: a staged root's, as in the tests)."""
    return Path(os.environ.get("T3TRACK_UNITS_DIR") or "/etc/systemd/system")


def writable_paths(unit_file: Path) -> list[Path]:
    """ReadWritePaths= of a unit and its drop-ins, in systemd's order; an empty assignment resets."""
    paths: list[Path] = []
    drop_ins = sorted(unit_file.with_name(unit_file.name + ".d").glob("*.conf"))
    for file in (unit_file, *drop_ins):
        try:
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.strip().partition("=")
            if key.strip() != "ReadWritePaths":
                continue
            if not value.strip():
                paths = []
            paths += [Path(token.lstrip("-+")) for token in value.split()]
    return paths


def sandbox_warnings(config: Config) -> list[str]:
    """A user's tree that a sandboxed unit may not write (the provisioning script run with one user
    only, a user added to the config but never provisioned): that user's next rollback cannot restore
    her database, and her backups fail. Read from the installed unit files, where they are installed."""
    warnings = []
    for unit in SANDBOXED_UNITS:
        unit_file = units_dir() / unit
        if not unit_file.is_file():
            continue
        paths = writable_paths(unit_file)
        for user in config.users:
            if not any(user.base_dir == path or user.base_dir.is_relative_to(path) for path in paths):
                warnings.append(f"{user.name}'s base dir {user.base_dir} is read-only to {unit} (not in its "
                                f"ReadWritePaths=, {unit_file}.d/): a rollback cannot restore {user.name}'s "
                                "database there; run systemd/t3-provision-users.sh with every user (it writes "
                                "the drop-in from the config's users and reloads systemd)")
    return warnings


def _host_problems(config: Config) -> list[str]:
    """Problems of the host rather than the file: missing dirs, npm, users' state."""
    problems: list[str] = []
    if shutil.which("npm") is None:
        problems.append("npm: not found on PATH (t3track installs versions with npm)")
    if shutil.which("node") is None:
        problems.append("node: not found on PATH")
    for key in ("root", "state_dir", "backup_dir"):
        path: Path = getattr(config, key)
        probe = nearest_existing(path)
        if path.exists() and not path.is_dir():
            problems.append(f"{key}: {path} exists and is not a directory")
        elif not os.access(probe, os.W_OK):
            problems.append(f"{key}: {path} is not writable (nearest existing: {probe})")
    current = config.root / "current"
    if current.is_symlink() and not current.exists():
        problems.append(f"root: {current} is a dangling symlink")
    for kind in ("rings", "users"):  # the links each ring's swap flips and each user's server starts through
        links = config.root / kind
        for link in sorted(links.iterdir()) if links.is_dir() and not links.is_symlink() else []:
            if link.is_symlink() and not link.exists():
                problems.append(f"root: {link} is a dangling symlink"
                                + (f" (t3@{link.name}.service cannot start)" if kind == "users" else ""))

    if not config.users:
        problems.append("users: no users configured; nothing would be gated or verified")
    for i, user in enumerate(config.users):
        if not user.base_dir.is_dir():
            problems.append(f"users[{i}].base_dir: {user.base_dir} does not exist")
        elif not any((user.base_dir / "userdata" / name).is_file() for name in ("state.sqlite", "statev2.sqlite")) \
                and os.path.lexists(current):
            # V2 builds use statev2.sqlite (a host first installed on one has no state.sqlite at all);
            # before the first install (`t3track adopt VERSION`) nobody has served T3 here: the
            # server creates its state on its first start
            problems.append(f"users[{i}].base_dir: no userdata/state.sqlite or userdata/statev2.sqlite "
                            f"under {user.base_dir} (is {user.name}'s server running? "
                            f"`systemctl status t3@{user.name}.service`)")
        if user.run_as is not None:
            import pwd
            try:
                pwd.getpwnam(user.run_as)
            except KeyError:
                problems.append(f"users[{i}].run_as: no such Linux user {user.run_as!r}")
    for key in ("stop", "start"):
        argv = getattr(config.services, key)
        if shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
            problems.append(f"services.{key}: {argv[0]!r} not found")
    return problems


# What upstream's own updater leaves on a host (t3code-contract.md, "Upstream's own updater"): it
# installs into <T3 home>/runtime/versions/<v>, repoints ~/.local/bin/t3 and, with `t3 service
# install`, runs a per-user unit that updates itself: each one fights t3track's pin.
UPDATER_TRACES = (
    ("runtime/versions", "t3home", "T3's own updater (`t3 update`) has installed versions there"),
    (".config/systemd/user/t3code.service", "home", "T3's own background service (`t3 service install`) "
     "updates and restarts the server by itself"),
    (".local/bin/t3", "home", "upstream's installer points this `t3` at its own runtime, not at root/current"),
)


def _user_home(user: UserConfig) -> Path:
    """The Linux home of a T3 user: run_as's, else the directory holding the default `.t3` base dir,
    else the base dir owner's."""
    import pwd

    if user.run_as is not None:
        try:
            return Path(pwd.getpwnam(user.run_as).pw_dir)
        except KeyError:
            pass
    if user.base_dir.name == ".t3":
        return user.base_dir.parent
    try:
        return Path(pwd.getpwuid(user.base_dir.stat().st_uid).pw_dir)
    except (OSError, KeyError):
        return user.base_dir.parent


def _host_warnings(config: Config) -> list[str]:
    """Things on the host that do not stop t3track but fight it: T3's own updater and service per user."""
    warnings: list[str] = []
    if (config.root / "current").is_symlink():
        for user in config.users:
            if not os.path.lexists(config.root / "users" / user.name):
                warnings.append(f"root: {config.root / 'users' / user.name} is missing: t3@{user.name}.service "
                                "starts through it; the next `t3track run` makes it (or "
                                "systemd/t3-provision-users.sh on a host without rings)")
    for i, user in enumerate(config.users):
        home = _user_home(user)
        for relative, under, why in UPDATER_TRACES:
            path = (user.base_dir if under == "t3home" else home) / relative
            if os.path.lexists(path):
                warnings.append(f"users[{i}] ({user.name}): {path} exists: {why}, which fights t3track's pin "
                                "(a live serverVersion that is not `current` is drift); remove it "
                                "(`t3 service uninstall` as the user) and let t3track manage the version")
    return warnings


def effective_config(config: Config) -> dict[str, object]:
    """The config as t3track reads it, every default filled in, as plain data. Notification endpoints
    carry tokens: of each only its scheme (and a webhook's host) is shown."""
    from t3track.aftermath.notify import apprise_label, webhook_label

    document: dict[str, object] = config.model_dump(mode="json", exclude_none=False)
    notify = document.get("notify")
    if isinstance(notify, dict) and config.notify is not None:
        notify["urls"] = [apprise_label(i, url) for i, url in enumerate(config.notify.urls)]
        if config.notify.webhook:
            notify["webhook"] = webhook_label(config.notify.webhook) + "/…"
    return document
