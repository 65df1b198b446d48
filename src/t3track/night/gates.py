"""The gates a candidate must pass, for every user, before it may become current.

Order comes from config.gates.order; the first failure stops the run (nothing after it is tried,
for that user or the next). Users are gated side by side, at most config.gates.parallel at once, each
sandbox on its own port (t3track.night.side_by_side: once one fails, no other user's gates start, the
running ones stop, and the report keeps config order, cut after the first failure). For one user the
gates run in order and the sandbox stays up from `sandbox-serve` through `pairing-probe`; it is torn
down when that user's gates end, whatever happened.

`pairing-probe` pairs only with a credential from `auth pairing create` (how operators pair, since
production stdout goes nowhere), never the startup token: the live check after a swap mints the same
way, so a build whose mint is broken is refused here rather than rolled back there. The mint runs once
the candidate serves, when its migrations are done (the mint migrates too, and two migrators on one
database race).

Outcomes: `pass`, `fail` (the candidate must not be swapped in) and `inconclusive` (reported, does not
stop the run). The optional sessions-survive check (config.gates.sessions_survive) is `inconclusive`
when existing sessions do not survive: pairing itself works, so the build is not broken, but every user
will have to pair again after the swap: the operator decides (freeze, or let it go and tell the users).
It is also `inconclusive` when it cannot tell (no current install, the current version would not pair).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from t3track import versions
from t3track.clock import as_utc
from t3track.config import Config, UserConfig
from t3track.errors import EnvironmentFault, T3TrackError
from t3track.fsutil import atomic_write_text, ensure_private_dir
from t3track.host import probe, usertree
from t3track.host.backup import newest_backup, user_backup_dir
from t3track.host.manifest import (
    BackupError,
    BackupInfo,
    BackupMismatch,
    checksum_problem,
    fix_hint,
)
from t3track.host.sandbox import Cancelled, SandboxFailed, SandboxServer, serve_candidate
from t3track.host.sqlite import added, migration_history, quick_check_problem
from t3track.host.t3db import DB_FILES, MIGRATIONS_TABLE
from t3track.host.tree import current_executable
from t3track.night.side_by_side import run_side_by_side
from t3track.parallel import serialised
from t3track.results import (
    BACKUP_PRESENT,
    FAIL,
    INCONCLUSIVE,
    PAIRING_PROBE,
    PASS,
    SANDBOX_SERVE,
    GateResult,
    to_jsonable,
)

SESSIONS_SURVIVE = "sessions-survive"

def _write_json_evidence(evidence_dir: Path, name: str, document: dict[str, Any]) -> Path:
    import json

    ensure_private_dir(evidence_dir)
    path = evidence_dir / name
    atomic_write_text(path, json.dumps(document, indent=2, default=str) + "\n")
    return path


class _UserGates:
    """The gates of one user; owns that user's sandbox until `close()`."""

    def __init__(self, config: Config, user: UserConfig, version: str, executable: Path, *,
                 evidence_dir: Path, workdir: Path, cancel: threading.Event | None = None):
        self.config = config
        self.cancel = cancel
        self.user = user
        self.version = version
        self.executable = executable
        self.evidence_dir = evidence_dir
        self.workdir = workdir
        self.server: SandboxServer | None = None
        self.sandbox_error: SandboxFailed | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()

    def _result(self, name: str, outcome: str, started: float, detail: str, **kw: Any) -> GateResult:
        return GateResult(name, self.user.name, outcome, round(time.monotonic() - started, 3), detail, **kw)

    def backup_present(self) -> GateResult:
        started = time.monotonic()
        check = check_backup_present(self.config, self.user)
        fingerprint = None if check.ok else f"{BACKUP_PRESENT}:backup:-:NoFreshBackup"
        return self._result(BACKUP_PRESENT, PASS if check.ok else FAIL, started, check.detail,
                            evidence=str(check.backup.path) if check.backup else None, fingerprint=fingerprint)

    def _ensure_sandbox(self) -> SandboxServer:
        if self.server is None and self.sandbox_error is None:
            prior = None
            if self.config.gates.sessions_survive:
                candidate_current = current_executable(self.config)
                prior = candidate_current if candidate_current.exists() else None
            try:
                self.server = serve_candidate(self.config, self.user, self.executable, self.version,
                                              workdir=self.workdir, evidence_dir=self.evidence_dir,
                                              prior_session_with=prior, cancel=self.cancel)
            except SandboxFailed as exc:
                self.sandbox_error = exc
        if self.server is None:
            assert self.sandbox_error is not None
            raise self.sandbox_error
        return self.server

    def sandbox_serve(self) -> GateResult:
        started = time.monotonic()
        try:
            server = self._ensure_sandbox()
        except SandboxFailed as exc:
            detail = f"{self.user.name}: {exc.message}" + (f"; {exc.hint}" if exc.hint else "") + (
                f"\nlast log lines:\n{exc.log_tail}" if exc.log_tail else "")
            return self._result(SANDBOX_SERVE, FAIL, started, detail, evidence=exc.evidence,
                                fingerprint=f"{SANDBOX_SERVE}:{exc.reason}:-:SandboxFailed")
        detail = (f"{self.user.name}: {self.version} ready on {server.url} in {server.startup_s:.1f}s on a copy of "
                  f"{server.backup_path.name if server.backup_path else 'the backup'}; {server.migration_report()}")
        if server.notes:
            detail += "; " + "; ".join(server.notes)
        return self._result(SANDBOX_SERVE, PASS, started, detail, evidence=str(server.evidence),
                            one_way=server.one_way)

    def pairing_probe(self) -> GateResult:
        started = time.monotonic()
        try:
            server = self._ensure_sandbox()
        except SandboxFailed as exc:
            return self._result(PAIRING_PROBE, FAIL, started,
                                f"{self.user.name}: no sandbox to probe: {exc.message}", evidence=exc.evidence,
                                fingerprint=f"{PAIRING_PROBE}:{SANDBOX_SERVE}:-:SandboxFailed")
        assert server.url is not None
        server.startup_token()  # never used here, but a secret all the same: redact it everywhere
        # No startup-token fallback: production servers' stdout goes nowhere, so operators pair new
        # devices with `auth pairing create`; a candidate whose mint is broken must be refused here.
        handshake = probe.pairing_handshake(
            server.url, server.base_dir, self.executable, timeout=self.config.gates.probe_timeout.total_seconds(),
            run_as=server.run_as, env=server.env, confine=server.confine)
        server.secrets |= handshake.secrets
        result = handshake.result
        path = _write_json_evidence(self.evidence_dir, f"{self.user.name}.{PAIRING_PROBE}.json", to_jsonable(result))
        if result.ok:
            # a missing no-store on a good exchange: a second signal of the 7756 class, not a failure
            outcome = INCONCLUSIVE if result.warnings else PASS
            return self._result(PAIRING_PROBE, outcome, started, f"{self.user.name}: {result.detail}", evidence=str(path),
                                fingerprint=f"{PAIRING_PROBE}:exchange:200:NoStoreMissing" if result.warnings else None)
        status = f" (HTTP {result.status})" if result.status is not None else ""
        return self._result(PAIRING_PROBE, FAIL, started,
                            f"{self.user.name}: {self.version} fails the pairing handshake at step "
                            f"{result.step}{status}: {result.detail}",
                            evidence=str(path), fingerprint=result.fingerprint(PAIRING_PROBE))

    def sessions_survive(self) -> GateResult:
        started = time.monotonic()
        try:
            server = self._ensure_sandbox()
        except SandboxFailed as exc:
            return self._result(SESSIONS_SURVIVE, INCONCLUSIVE, started,
                                f"{self.user.name}: not checked: the candidate did not serve: {exc.message}")
        if server.prior_session is None:
            why = server.prior_session_detail or f"no current install at {current_executable(self.config)}"
            return self._result(SESSIONS_SURVIVE, INCONCLUSIVE, started,
                                f"{self.user.name}: not checked: {why}")
        assert server.url is not None
        result = probe.session_still_valid(server.url, server.prior_session,
                                           timeout=self.config.gates.probe_timeout.total_seconds())
        path = _write_json_evidence(self.evidence_dir, f"{self.user.name}.{SESSIONS_SURVIVE}.json", to_jsonable(result))
        if result.ok:
            return self._result(SESSIONS_SURVIVE, PASS, started,
                                f"{self.user.name}: a session paired with the current version just before the "
                                f"upgrade still authenticates on {self.version}", evidence=str(path))
        one_way = server.one_way
        detail = (f"{self.user.name}: sessions from the current version do not survive {self.version}: every user "
                  "will have to pair again after the swap" + (f" (it migrates: {', '.join(one_way)})" if one_way else "")
                  + f"; step {result.step}: {result.detail}")
        return self._result(SESSIONS_SURVIVE, INCONCLUSIVE, started, detail, evidence=str(path),
                            one_way=one_way, fingerprint=result.fingerprint(SESSIONS_SURVIVE))


# ---------------------------------------------------------------- backup-present


@dataclass(frozen=True)
class GateCheck:
    ok: bool
    detail: str
    backup: BackupInfo | None


def _age_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


FUTURE_SLACK_S = 300  # clocks that disagree by a few minutes (an NTP step) are not a fault


def check_backup_present(config: Config, user: UserConfig, *, now: datetime | None = None) -> GateCheck:
    """The backup-present gate for one user: fresh, matching its manifest, sound, not behind the live db."""
    moment = as_utc(now)
    name = user.name
    backup = newest_backup(config, name)
    if backup is None:
        return GateCheck(False, f"{name}: no backup in {user_backup_dir(config, name)}; {fix_hint(name)}", None)
    where = f"{name}: backup {backup.path}"
    max_age = config.gates.backup_max_age
    if backup.age_s(moment) < -FUTURE_SLACK_S:  # a clock that ran ahead, or a manifest someone wrote
        return GateCheck(False, f"{where} is dated {_age_text(-backup.age_s(moment))} in the future; its age is "
                         f"unknown; {fix_hint(name)}", backup)
    if backup.age_s(moment) > max_age.total_seconds():
        return GateCheck(False, f"{where} is {_age_text(backup.age_s(moment))} old, older than "
                         f"gates.backup_max_age ({_age_text(max_age.total_seconds())}); {fix_hint(name)}", backup)
    try:
        problem = checksum_problem(backup)
    except BackupMismatch as exc:
        problem = exc.detail
    if problem:
        return GateCheck(False, f"{where} does not match its manifest ({problem}): it was damaged or changed; "
                         f"{fix_hint(name)}", backup)
    files = backup.files
    try:
        live_histories = usertree.live_histories(user.base_dir, user=name)  # as the owner, no link followed
    except BackupError as exc:
        return GateCheck(False, f"{name}: {exc.message}; {exc.hint}", backup)
    for db in DB_FILES:
        if db not in files and db in live_histories:
            return GateCheck(False, f"{where} lacks {db}, which the live state has; {fix_hint(name)}", backup)
    summary = []
    for db in files:
        problem = quick_check_problem(backup.path / db)
        if problem:
            return GateCheck(False, f"{where}: {db} fails PRAGMA quick_check ({problem}); {fix_hint(name)}", backup)
        try:
            have = migration_history(backup.path / db)
            live = live_histories.get(db, [])
        except BackupError as exc:
            return GateCheck(False, f"{name}: {exc.message}; {exc.hint}", backup)
        if not have:
            return GateCheck(False, f"{where}: {db} has no {MIGRATIONS_TABLE} table, so it is not a T3 state "
                             f"database; check users[].base_dir, then {fix_hint(name)}", backup)
        since = added(have, live)  # (id, name) pairs: a renamed id counts, the highest id alone would not
        if since:
            return GateCheck(False, f"{where}: {db} has migrations up to {have[-1].id} but the live database has "
                             f"{live[-1].id}, with {', '.join(m.label for m in since)} that the backup lacks "
                             f"(migrated since the backup); {fix_hint(name)}", backup)
        summary.append(f"{db} migrations up to {have[-1].id}")
    return GateCheck(True, f"{where} is {_age_text(backup.age_s(moment))} old and verified "
                     f"({', '.join(summary)})", backup)


# ---------------------------------------------------------------- all gates


def run_gates(
    config: Config,
    candidate_version: str,
    executable: Path,
    *,
    evidence_dir: Path,
    progress: Callable[[str], None] | None = None,
    workdir: Path | None = None,
    users: Sequence[UserConfig] | None = None,
) -> list[GateResult]:
    """Every configured gate for every user (`users`, default config.users), in order; stops at the
    first `fail`. Users run side by side, at most config.gates.parallel at once.

    Evidence (redacted sandbox logs, probe results) goes to `evidence_dir`; sandboxes live under
    `workdir` (default state_dir/sandboxes) and are gone when this returns or raises."""
    versions.require_valid(candidate_version, "candidate version")
    workdir = workdir if workdir is not None else config.state_dir / "sandboxes"
    say = serialised(progress)
    chosen = list(config.users if users is None else users)

    def one_user(user: UserConfig, stop: threading.Event) -> list[GateResult]:
        return _gate_user(config, user, candidate_version, executable, evidence_dir=evidence_dir, workdir=workdir,
                          say=say, stop=stop)

    return run_side_by_side(chosen, one_user, workers=config.gates.parallel, name="t3track-gates")


def _gate_user(config: Config, user: UserConfig, candidate_version: str, executable: Path, *, evidence_dir: Path,
               workdir: Path, say: Callable[[str], None], stop: threading.Event) -> list[GateResult]:
    """One user's gates in order, up to the first failure; ends early (without a result for the gate
    it was in) when `stop` is set because another user's gate failed."""
    results: list[GateResult] = []
    gates = _UserGates(config, user, candidate_version, executable, evidence_dir=evidence_dir, workdir=workdir,
                       cancel=stop)
    try:
        for name in config.gates.order:
            if stop.is_set():
                return results
            say(f"{user.name}: {name} ({candidate_version})")
            try:
                result = _run_one(gates, name)
            except Cancelled:
                say(f"{user.name}: {name} stopped: another user's gate failed")
                return results
            results.append(result)
            say(f"{user.name}: {name} {result.outcome} in {result.duration_s:.1f}s")
            if result.failed:
                return results
        if config.gates.sessions_survive and not stop.is_set():
            result = gates.sessions_survive()
            results.append(result)
            say(f"{user.name}: {SESSIONS_SURVIVE} {result.outcome}")
    finally:
        gates.close()
    return results


def _run_one(gates: _UserGates, name: str) -> GateResult:
    started = time.monotonic()
    try:
        if name == BACKUP_PRESENT:
            return gates.backup_present()
        if name == SANDBOX_SERVE:
            return gates.sandbox_serve()
        if name == PAIRING_PROBE:
            return gates.pairing_probe()
    except T3TrackError as exc:  # e.g. an unreadable backup dir: the gate cannot pass
        if isinstance(exc, usertree.UserTreeFault) or (isinstance(exc, EnvironmentFault) and name != BACKUP_PRESENT):
            raise  # a user's odd file, a full disk: the host's fault (exit 3), never held against the candidate
        detail = f"{gates.user.name}: {exc.message}" + (f"; {exc.hint}" if exc.hint else "")
        return GateResult(name, gates.user.name, FAIL, round(time.monotonic() - started, 3), detail,
                          fingerprint=f"{name}:error:-:{type(exc).__name__}")
    raise ValueError(f"unknown gate {name!r}")  # config validation keeps this out
