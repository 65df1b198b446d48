"""`t3track smoke VERSION`: the gates without a host, for CI, before any host sees a nightly.

Everything happens under one scratch directory that is removed at the end: VERSION (and `--from`)
installed from the registry as a night would (integrity checked), a scratch user whose base dir is
made by serving `--from` once (so the candidate migrates a real older database) or left empty, a
backup of it, then `sandbox-serve` and `pairing-probe` on a sandbox built from that backup, and
with `--from` also `sessions-survive` (a session minted by the `--from` server on that state must
still authenticate on the candidate). No config file, no root, no services: nothing outside the
scratch dir changes (apart from `--junit` and `--evidence`, which the caller names).

The result has the attributes of a night's report so the CLI renders it the same way; JUnit XML
gives one testcase per gate, the failure's (already redacted) detail as its message.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from t3track import runner, versions
from t3track.config import Config, parse_config
from t3track.errors import EnvironmentFault, ExitCode, T3TrackError
from t3track.fsutil import atomic_write_bytes, ensure_private_dir
from t3track.host import backup as backup_mod
from t3track.host import install, serving
from t3track.host.registry import RegistryClient
from t3track.host.sandbox import free_port
from t3track.host.t3db import MAIN_DB
from t3track.host.tree import current_link
from t3track.night import gates as gates_mod
from t3track.redact import redact
from t3track.results import FAIL, INCONCLUSIVE, GateResult, first_failure, json_key

SCRATCH_USER = "smoke"
SMOKE_GATES = [gates_mod.SANDBOX_SERVE, gates_mod.PAIRING_PROBE]
FROM_READY_TIMEOUT_S = 60

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SmokeOptions:
    version: str
    package: str = "t3"
    registry: str | None = None          # default: what `npm config get registry` says
    from_version: str | None = None
    executable: str = "node_modules/.bin/t3"
    serve_timeout_s: int = 60
    probe_timeout_s: int = 10
    workdir: Path | None = None          # where the scratch dir goes (default: $TMPDIR)
    evidence: Path | None = None         # keep the redacted gate logs here (CI artifacts)


@dataclass
class SmokeReport:
    """Rendered like a night's report (cli.render.render_run reads outcome, exit_code, reason, gates…)."""
    outcome: str                     # passed | refused | error
    exit_code: ExitCode
    version: str = json_key("candidate")
    from_version: str | None = json_key("from")
    reason: str = ""
    gates: list[GateResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evidence: str | None = None
    duration_s: float = 0.0
    error_step: str | None = None    # install, from, base-dir: where an environment error stopped it
    recovered: str | None = json_key(False, default=None)  # never: a smoke has nothing to recover
    dry_run: bool = json_key(False, default=False)
    json_extra = {"to": "to_version"}

    @property
    def to_version(self) -> None:
        return None  # a smoke moves nothing


def scratch_config(scratch: Path, options: SmokeOptions) -> Config:
    """The config of a host that exists only for this smoke."""
    return parse_config({
        "package": options.package,
        "registry": options.registry,
        "executable": options.executable,
        "root": str(scratch / "root"),
        "state_dir": str(scratch / "state"),
        "backup_dir": str(scratch / "backups"),
        "min_release_age": "0s",
        "users": [{"name": SCRATCH_USER, "base_dir": str(scratch / "home" / ".t3"), "port": free_port()}],
        "gates": {"order": SMOKE_GATES, "serve_timeout": f"{options.serve_timeout_s}s",
                  "probe_timeout": f"{options.probe_timeout_s}s",
                  "sessions_survive": options.from_version is not None},
    })


def run_smoke(options: SmokeOptions, *, progress: Progress = lambda _: None) -> SmokeReport:
    versions.require_valid(options.version, "version")
    if options.from_version is not None:
        versions.require_valid(options.from_version, "--from version")
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="t3track-smoke-", dir=options.workdir))
    try:
        report = _smoke(scratch, options, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.duration_s = time.monotonic() - started
    return report


def _smoke(scratch: Path, options: SmokeOptions, progress: Progress) -> SmokeReport:
    config = scratch_config(scratch, options)
    evidence_dir = options.evidence or scratch / "evidence"
    step = "install"
    try:
        with RegistryClient.for_config(config) as client:
            executable = _install(config, client, options.version, progress)
            if options.from_version is not None:
                step = "from"
                previous = _install(config, client, options.from_version, progress)
                current_link(config).symlink_to(Path("versions") / options.from_version)
        step = "base-dir"
        user = config.users[0]
        if options.from_version is not None:
            progress(f"serving {options.from_version} once on the scratch base dir")
            _serve_once(previous, user.base_dir, scratch / "from-home", scratch / "from-serve.log")
        else:
            _empty_state(user.base_dir)
        backup_mod.backup_user(config, user)
    except T3TrackError as exc:
        code = exc.exit_code if exc.exit_code == ExitCode.REFUSED else ExitCode.ENVIRONMENT
        what = {"install": f"installing {options.version}", "from": f"installing --from {options.from_version}",
                "base-dir": "building the scratch base dir"}[step]
        return SmokeReport("refused" if code == ExitCode.REFUSED else "error", code, options.version,
                           options.from_version, redact(f"{what}: {exc.message}"
                                                        + (f"; next: {exc.hint}" if exc.hint else "")),
                           error_step=step)
    results = gates_mod.run_gates(config, options.version, executable, evidence_dir=evidence_dir,
                                  workdir=scratch / "sandboxes", progress=progress)
    failed = first_failure(results)
    kept = str(evidence_dir) if options.evidence else None
    if failed is not None:
        return SmokeReport("refused", ExitCode.REFUSED, options.version, options.from_version,
                           f"gate {failed.name} failed: {failed.detail}", results, evidence=kept)
    notes = [g.detail for g in results if g.outcome == INCONCLUSIVE]
    base = f"a copy of {options.from_version}'s state" if options.from_version else "an empty base dir"
    return SmokeReport("passed", ExitCode.OK, options.version, options.from_version,
                       f"{options.package}@{options.version} passed {', '.join(g.name for g in results)} on {base}",
                       results, notes, evidence=kept)


def _install(config: Config, client: RegistryClient, version: str, progress: Progress) -> Path:
    packument = client.packument(config.package)
    info = packument.versions.get(version)
    if info is None:
        raise EnvironmentFault(f"the registry's {config.package} packument has no version {version}",
                               hint="check --package and --registry; a nightly may still be publishing")
    progress(f"installing {config.package}@{version}")
    install.ensure_installed(config, version, info, registry_url=client.base_url, client=client, progress=progress)
    executable = config.executable_in(install.installed_prefix(config, version))
    if not executable.exists():
        raise EnvironmentFault(f"{config.package}@{version} has no executable at {config.executable}",
                               hint="pass --executable (relative to the install prefix)")
    return executable


def _serve_once(executable: Path, base_dir: Path, home: Path, log: Path) -> None:
    """Start the older version on the base dir until it answers, then stop it: it has created and
    migrated its database and written its secrets, as on a host that ran it."""
    ensure_private_dir(base_dir)
    ensure_private_dir(home)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = runner.start([executable, "serve", "--host", "127.0.0.1", "--port", str(port), "--base-dir", base_dir,
                           "--no-browser"], log_path=log, env=runner.scrubbed_env(home), cwd=home)
    try:
        deadline = time.monotonic() + FROM_READY_TIMEOUT_S
        while serving.server_version(url, timeout=1.0) is None:
            if not server.alive() or time.monotonic() > deadline:
                raise EnvironmentFault(f"the --from version did not serve on the scratch base dir:\n"
                                       f"{server.log_tail(15)}")
            time.sleep(0.1)
    finally:
        server.stop()
        log.unlink(missing_ok=True)  # it holds the startup token
    (base_dir / "userdata" / "server-runtime.json").unlink(missing_ok=True)


def _empty_state(base_dir: Path) -> None:
    """A base dir as a first start would find it: an empty database and nothing else."""
    userdata = ensure_private_dir(base_dir / "userdata")
    sqlite3.connect(userdata / MAIN_DB).close()


# ---------------------------------------------------------------- JUnit XML


def junit_xml(report: SmokeReport, package: str) -> bytes:
    """One testsuite, one testcase per gate (a gate not reached is skipped; an environment error is
    an <error> testcase for the step it stopped at). Every text is redacted once more."""
    suite_name = f"t3track smoke {package}@{report.version}" + (f" from {report.from_version}" if report.from_version else "")
    ran = {g.name: g for g in report.gates}
    cases: list[tuple[str, float, str | None, str | None]] = []  # name, time, kind, message
    if report.error_step is not None:
        cases.append((report.error_step, 0.0, "failure" if report.outcome == "refused" else "error", report.reason))
    wanted = SMOKE_GATES + ([gates_mod.SESSIONS_SURVIVE] if report.from_version else [])
    for name in wanted:
        gate = ran.get(name)
        if gate is None:
            cases.append((name, 0.0, "skipped", "not run: an earlier step failed"))
        elif gate.outcome == FAIL:
            cases.append((name, gate.duration_s, "failure", gate.detail))
        elif gate.outcome == INCONCLUSIVE:
            cases.append((name, gate.duration_s, "skipped", gate.detail))
        else:
            cases.append((name, gate.duration_s, None, gate.detail))
    suite = ET.Element("testsuite", {
        "name": suite_name, "tests": str(len(cases)),
        "failures": str(sum(c[2] == "failure" for c in cases)), "errors": str(sum(c[2] == "error" for c in cases)),
        "skipped": str(sum(c[2] == "skipped" for c in cases)), "time": f"{report.duration_s:.3f}"})
    props = ET.SubElement(suite, "properties")
    for key, value in (("version", report.version), ("from", report.from_version or ""),
                       ("outcome", report.outcome), ("exit_code", str(int(report.exit_code)))):
        ET.SubElement(props, "property", {"name": key, "value": value})
    for name, seconds, kind, message in cases:
        case = ET.SubElement(suite, "testcase", {"classname": "t3track.smoke", "name": name, "time": f"{seconds:.3f}"})
        text = redact(message or "")
        if kind is not None:
            first = text.splitlines()[0] if text else ""
            element = ET.SubElement(case, kind, {"message": first[:500], **({"type": name} if kind != "skipped" else {})})
            if kind != "skipped":
                element.text = text
        elif text:
            ET.SubElement(case, "system-out").text = text
    root = ET.Element("testsuites", {"name": "t3track smoke"})
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(report: SmokeReport, package: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, junit_xml(report, package), mode=0o644)
