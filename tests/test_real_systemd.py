"""The shipped units under a real systemd: one container (systemd as PID 1, tests/support/nspawn.py)
for this module, a new host in it, and the nights that follow, in order.

Inside: two users (useradd), t3track installed with the README's command (scripts/install-host.sh),
a loopback npm registry serving the real T3 Code 0.0.42 as upstream publishes it (the real platform
tarball unchanged, under a launcher `t3`; none of its bundled native modules is on the registry) and
emulator builds in the same layout, the example config as shipped (only its registry, users and soak
time changed). The host adopts the real 0.0.42, drills on it, then takes emulated nightlies; last, reset
to an emulated 0.0.41, a timer night brings the real 0.0.42 in through every gate inside
t3track.service, and the real server's gate times there are printed. Each test asserts what a real host would
show: unit results and journal lines with their priority, the `current` symlink, who each server
runs as, files and their modes. The tests build on each other (one host, night after night), so
they run in file order on one xdist worker (tests/conftest.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.emulator import package as emu
from tests.real_t3 import platform_tarball
from tests.support.nspawn import Container, nspawn_processes, unavailable_reason

REPO = Path(__file__).resolve().parents[1]
REGISTRY_PORT = 4873
REGISTRY = f"http://127.0.0.1:{REGISTRY_PORT}/"
USERS = {"alice": 3773, "bob": 3774}
V0 = "0.0.42"                              # the real T3 Code, adopted on the new host
OLDER = "0.0.41"                           # emulated: the version a night brings the real 0.0.42 in from
GOOD = "0.0.43-nightly.20261102.3001"      # passes every gate
BROKEN = "0.0.43-nightly.20261103.3002"    # pairs without a cookie: refused in the sandbox
LIVE_ONLY = "0.0.43-nightly.20261104.3003"  # breaks only in production: rolled back
CANARY = "0.0.43-nightly.20261105.3004"     # a two-ring night: alice takes it, bob waits for the soak
CONFIG = "/etc/t3track/config.yaml"
T3TRACK = "/usr/local/bin/t3track"

pytestmark = [pytest.mark.slow, pytest.mark.real_systemd]


# ---------------------------------------------------------------- fixtures


def cache_root() -> Path:
    return REPO / ".cache"


def wheelhouse() -> Path:
    """t3track's dependencies as wheels, built here once (the container has no network but `lo`,
    so pip inside installs from this directory: PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = sorted(project["build-system"]["requires"] + project["project"]["dependencies"] + ["wheel"])
    directory = cache_root() / f"wheelhouse-{hashlib.sha256(json.dumps(wanted).encode()).hexdigest()[:12]}"
    if (directory / ".complete").exists():
        return directory
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".wheelhouse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / ".complete").exists():
            partial = directory.with_name(directory.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                                   "--wheel-dir", str(partial), *wanted], capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                pytest.fail(f"pip wheel failed:\n{done.stderr[-3000:]}")
            (partial / ".complete").touch()
            shutil.rmtree(directory, ignore_errors=True)
            partial.rename(directory)
    return directory


class Host:
    """The container, seen as the host an operator logs into."""

    def __init__(self, box: Container, data: Path, wheels: Path):
        self.box = box
        self.data = data          # the registry's tarballs (bound into the container)
        self.wheels = wheels      # what pip inside installs t3track's dependencies from
        self.tag: str | None = None
        self.shown: dict[str, str] = {}  # what status/history printed at each step, for the report

    def t3track(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return self.box.run(T3TRACK, "--config", CONFIG, *args, check=check, timeout=300)

    def show(self, when: str) -> None:
        """`t3track status` and `history`, as the operator sees them (kept for the report)."""
        status, history = self.t3track("status"), self.t3track("history", "-n", "5")
        self.shown[when] = (f"$ t3track status   (exit {status.returncode})\n{status.stdout}{status.stderr}"
                            f"$ t3track history -n 5   (exit {history.returncode})\n{history.stdout}{history.stderr}")
        print(f"\n===== {when}\n{self.shown[when]}")

    def publish(self, version: str, *, tag: bool = True, **build) -> None:
        emu.pack_release(self.data, version, **build)
        if tag:
            self.tag = version
        self.restart_registry()

    def publish_real(self) -> None:
        """The real 0.0.42 as upstream publishes it: its platform tarball byte for byte, and the launcher."""
        shutil.copyfile(platform_tarball(), self.data / platform_tarball().name)
        (self.data / f"t3-{V0}.tgz").write_bytes(emu.launcher_tarball_bytes(V0))
        self.restart_registry()

    def restart_registry(self) -> None:
        argv = ["/usr/bin/python3", "-m", "tests.support.registry_server",
                "--port", str(REGISTRY_PORT), "--data", str(self.data)]
        if self.tag:
            argv += ["--tag", f"nightly={self.tag}"]
        self.box.write("/run/systemd/system/t3-test-registry.service",
                       "[Unit]\nDescription=loopback npm registry for the tests\n[Service]\n"
                       f"ExecStart={' '.join(argv)}\nWorkingDirectory={REPO}\nEnvironment=PYTHONPATH={REPO}\n")
        self.box.run("systemctl", "daemon-reload")
        self.box.run("systemctl", "restart", "t3-test-registry.service")
        self.wait_http(REGISTRY + "-/package/t3/dist-tags", want=self.tag or "latest")

    def wait_http(self, url: str, *, want: str | None = None, timeout: float = 30) -> str:
        """GET url from inside the container until it answers 200 (and contains `want`)."""
        script = ("import sys, time, urllib.request\n"
                  "deadline = time.monotonic() + float(sys.argv[3])\n"
                  "while True:\n"
                  "    try:\n"
                  "        body = urllib.request.urlopen(sys.argv[1], timeout=2).read().decode()\n"
                  "        if sys.argv[2] in body: print(body); break\n"
                  "    except Exception as error:\n"
                  "        body = repr(error)\n"
                  "    if time.monotonic() > deadline: sys.exit(f'{sys.argv[1]}: {body[:300]}')\n"
                  "    time.sleep(0.1)\n")
        return self.box.run("python3", "-c", script, url, want or "", str(timeout), timeout=timeout + 10).stdout

    def serving(self, user: str, version: str) -> dict:
        body = self.wait_http(f"http://127.0.0.1:{USERS[user]}/.well-known/t3/environment", want=version)
        return json.loads(body)

    def prop(self, unit: str, name: str) -> str:
        return self.box.run("systemctl", "show", "-P", name, unit).stdout.strip()

    def runs_as(self, unit: str) -> str:
        pid = self.prop(unit, "MainPID")
        assert pid not in ("", "0"), f"{unit} has no main process"
        return self.box.run("ps", "-o", "user=", "-p", pid).stdout.strip()

    def current(self) -> str:
        return self.box.run("readlink", "/opt/t3/current", check=False).stdout.strip()

    def fire(self, timer: str, service: str, timeout: float = 180) -> None:
        """Move the timer's OnCalendar= a few seconds ahead with a runtime drop-in (as an operator
        testing the schedule would) and wait until the service it starts has run to the end."""
        before = self.prop(service, "ExecMainStartTimestampMonotonic")
        when = (datetime.now(UTC) + timedelta(seconds=3)).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.box.write(f"/run/systemd/system/{timer}.d/50-soon.conf",
                       f"[Timer]\nOnCalendar=\nOnCalendar={when}\nRandomizedDelaySec=0\nAccuracySec=1s\n")
        self.box.run("systemctl", "daemon-reload")
        self.box.run("systemctl", "restart", timer)
        deadline = time.monotonic() + timeout
        while True:
            started = self.prop(service, "ExecMainStartTimestampMonotonic")
            if started not in (before, "0") and self.prop(service, "ActiveState") in ("inactive", "failed"):
                break
            assert time.monotonic() < deadline, f"{timer} did not run {service} within {timeout}s"
            time.sleep(0.2)
        self.box.run("rm", f"/run/systemd/system/{timer}.d/50-soon.conf")
        self.box.run("systemctl", "daemon-reload")

    def journal(self, unit: str, *, priority: str | None = None, since_cursor: str | None = None) -> str:
        if not since_cursor:
            return self.box.journal(unit=unit, priority=priority)
        if priority is None:
            return self.box.journal("--after-cursor", since_cursor, unit=unit)
        # journalctl 252 returns nothing for --after-cursor with -u and -p together (checked here):
        # filter the priority of the entries after the cursor ourselves, as `-p` would (0..N).
        top = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6}[priority]
        out = self.box.run("journalctl", "-b", "--no-pager", "-o", "json", "--after-cursor", since_cursor,
                           "-u", unit, check=False).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return "".join(f"{e['MESSAGE']}\n" for e in entries
                       if isinstance(e.get("MESSAGE"), str) and int(e.get("PRIORITY", 6)) <= top)

    def wait_journal(self, unit: str, text: str, *, priority: str | None = None, since_cursor: str | None = None,
                     timeout: float = 20) -> str:
        """The unit's journal once it holds `text` (OnFailure= units start after the failed one ends)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.journal(unit, priority=priority, since_cursor=since_cursor)
            if text in out or time.monotonic() > deadline:
                return out
            time.sleep(0.2)

    def cursor(self) -> str:
        out = self.box.run("journalctl", "-b", "-n", "0", "--show-cursor", "--no-pager", check=False).stdout
        return out.strip().rsplit("cursor: ", 1)[-1]


# Session scope, not module: should a worker run another module's test between two of these, a
# module fixture would power the host off and boot a blank one in the middle of the story. The
# last test powers it off; this finalizer is the net.
@pytest.fixture(scope="session")
def host(tmp_path_factory, worker_id):
    reason = unavailable_reason()
    if reason and os.geteuid() != 0:
        pytest.skip(reason)
    assert reason is None, f"{reason}: the real-systemd tier must run here, not skip"
    wheels = wheelhouse()
    platform_tarball()  # the real @t3code/t3-linux-x64@0.0.42 tarball, cached for the whole suite
    data = tmp_path_factory.mktemp("registry")
    name = f"t3t-{worker_id}-{os.getpid()}"
    box = Container(name, binds=[REPO, data])
    try:
        box.boot()
        print(f"\ncontainer {name} booted in {box.boot_s:.2f}s")
        yield Host(box, data, wheels)
    finally:
        box.teardown()
        print(f"container {name} powered off in {box.poweroff_s or 0:.2f}s")
        assert box.nspawn is None or box.nspawn.poll() is not None
        assert not [p for p in nspawn_processes() if box.nspawn and p == box.nspawn.pid]


# ---------------------------------------------------------------- the host, in order


def test_install_on_a_new_host_in_one_command_and_again_changes_nothing(host):
    box = host.box
    for user in USERS:
        box.run("useradd", "--create-home", "--shell", "/bin/bash", user)
    # The servers are production here: a build with a `-live` fault misbehaves only under them.
    box.write("/run/systemd/system/t3@.service.d/50-test-live.conf", "[Service]\nEnvironment=T3EMU_LIVE=1\n")
    host.publish_real()
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(host.wheels)}
    users = [f"{u}:{p}" for u, p in USERS.items()]
    first = box.run("bash", REPO / "scripts/install-host.sh", "--registry", REGISTRY, *users, env=env, check=False,
                    timeout=300)
    print(first.stdout, first.stderr)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "next: t3track adopt VERSION" in first.stdout

    assert box.run("readlink", T3TRACK).stdout.strip() == "/opt/t3track/bin/t3track"
    # the version and the commit install-host.sh installed from
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    assert box.run(T3TRACK, "--version").stdout.strip().endswith(f" ({head.stdout.strip()})")
    for unit in ("t3track.service", "t3track.timer", "t3-backup-state.service", "t3-backup-state.timer",
                 "t3@.service", "t3track-failure@.service"):
        assert box.run("cmp", f"/etc/systemd/system/{unit}", REPO / "systemd" / unit, check=False).returncode == 0
    for timer in ("t3track.timer", "t3-backup-state.timer"):
        assert host.prop(timer, "ActiveState") == "active", timer
        assert host.prop(timer, "UnitFileState") == "enabled", timer
    assert box.run("cat", "/etc/t3/users/bob.env").stdout.splitlines()[1:] == ["T3_PORT=3774",
                                                                               "T3_BASE_DIR=/home/bob/.t3"]
    assert box.run("stat", "-c", "%U %a", "/home/alice/.t3").stdout.split() == ["alice", "700"]
    assert box.run("stat", "-c", "%a", "/var/lib/t3track", "/var/backups/t3track", "/opt/t3").stdout.split() == [
        "700", "700", "755"]
    config = box.run("cat", CONFIG).stdout
    assert f"registry: {REGISTRY}" in config and "executable: node_modules/@t3code/t3-linux-x64/t3" in config
    assert "  - name: bob\n    base_dir: /home/bob/.t3\n    port: 3774\n    run_as: bob" in config
    assert "host: ok" in first.stdout  # t3track config check, on a host nobody has served T3 on yet

    again = box.run("bash", REPO / "scripts/install-host.sh", "--registry", REGISTRY, *users, env=env, timeout=300)
    assert "install-host: done: 0 change(s)" in again.stdout.splitlines(), again.stdout
    assert "  provision: done: 0 change(s)" in again.stdout.splitlines()
    dry = box.run("bash", REPO / "scripts/install-host.sh", "--dry-run", *users, env=env)
    assert "install-host: dry run: 0 change(s) would be made" in dry.stdout
    assert "t3@" not in first.stdout.split("host: ok")[0].split("config is valid")[-1]  # no unit warning
    # A t3@.service that starts root/current (the layout before rings) is named by `config check`:
    # systemd itself is asked how each user's unit starts.
    override = "/run/systemd/system/t3@bob.service.d/60-old-layout.conf"
    box.write(override, "[Service]\nExecStart=\nExecStart=/opt/t3/current/node_modules/@t3code/t3-linux-x64/t3 "
                        "serve --port ${T3_PORT}\n")
    box.run("systemctl", "daemon-reload")
    checked = json.loads(host.t3track("config", "check", "--json").stdout)
    box.run("rm", override)
    box.run("systemctl", "daemon-reload")
    assert checked["ok"] and [w for w in checked["warnings"] if "t3@" in w] == [
        "t3@bob.service starts /opt/t3/current/node_modules/@t3code/t3-linux-x64/t3, not through /opt/t3/users/bob/ "
        "(the link t3track moves for bob): every move would leave it on the old version; point ExecStart= at "
        "/opt/t3/users/bob/node_modules/@t3code/t3-linux-x64/t3 (the shipped systemd/t3@.service does) and "
        "`systemctl daemon-reload`"], checked
    assert not [w for w in json.loads(host.t3track("config", "check", "--json").stdout)["warnings"] if "t3@" in w]
    # The soak (min_release_age, 6h as shipped) is the policy tests' concern; these nights are minutes apart.
    box.run("sed", "-i", "s/^min_release_age: .*/min_release_age: 0s/", CONFIG)
    host.show("right after install")


def test_units_on_a_new_host_make_their_own_directories_instead_of_failing_at_namespace(host):
    box = host.box
    # As on a host whose units were provisioned without the installer: nothing made these yet.
    box.run("rm", "-rf", "/var/lib/t3track", "/var/backups/t3track", "/opt/t3")
    cursor = host.cursor()
    box.run("systemctl", "start", "t3-backup-state.service", check=False)
    assert host.prop("t3-backup-state.service", "ExecMainStatus") != "226"
    assert box.run("stat", "-c", "%a", "/var/lib/t3track", "/var/backups/t3track").stdout.split() == ["700", "700"]
    # Nobody has served T3 here yet, so the backup itself fails, in t3track's own words ...
    backup_log = host.journal("t3-backup-state.service", since_cursor=cursor)
    assert "Failed at step NAMESPACE" not in backup_log
    assert "no database at /home/alice/.t3/userdata/state.sqlite" in backup_log, backup_log
    assert "next: on a new host the server makes it on its first start: `t3track adopt VERSION`" in backup_log
    # ... and the failure notice names the unit that failed, so its own hint finds the journal.
    expected = "t3track: t3-backup-state.service failed (result=exit-code"
    notice = host.wait_journal("t3track-failure@t3-backup-state.service.service", expected, priority="err",
                               since_cursor=cursor)
    assert expected in notice, host.journal("t3track-failure@t3-backup-state.service.service")
    assert "journalctl -u t3-backup-state.service" in notice and "t3/backup/state" not in notice

    box.run("systemctl", "start", "t3track.service", check=False)
    night = host.journal("t3track.service", since_cursor=cursor)
    assert host.prop("t3track.service", "ExecMainStatus") != "226"
    assert "Failed at step NAMESPACE" not in night
    assert box.run("stat", "-c", "%a", "/opt/t3").stdout.strip() == "755"
    # a night before the first adopt changes nothing and says what comes first
    assert host.prop("t3track.service", "Result") == "success", night[-2000:]
    assert "run `t3track adopt VERSION`" in night
    assert box.run("ls", "-A", "/opt/t3").stdout == ""


def test_adopt_of_the_real_release_on_a_new_host_serves_every_user_as_npm_ships_it(host):
    box = host.box
    adopted = host.t3track("adopt", V0)
    print(adopted.stdout, adopted.stderr)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert "nothing to snapshot" in adopted.stderr
    assert host.current() == f"versions/{V0}"
    for user in USERS:
        assert host.serving(user, V0)["serverVersion"] == V0
        assert host.prop(f"t3@{user}.service", "ActiveState") == "active"
        assert host.runs_as(f"t3@{user}.service") == user
        db = f"/home/{user}/.t3/userdata/state.sqlite"
        assert box.run("stat", "-c", "%U", db).stdout.strip() == user  # the real server made its own state
    # the example's executable, inside the real platform package, is what t3@.service runs
    platform = f"/opt/t3/versions/{V0}/node_modules/@t3code/t3-linux-x64"
    assert box.run("test", "-x", f"{platform}/t3", check=False).returncode == 0
    assert box.run("test", "-e", f"{platform}/emulator.json", check=False).returncode != 0  # the real binary
    # its native modules came out of its own tarball (the registry here has none of them), recorded as bundled
    assert box.run("test", "-f", f"{platform}/node_modules/node-pty/package.json", check=False).returncode == 0
    lock = json.loads(box.run("cat", f"/opt/t3/versions/{V0}/package-lock.json").stdout)["packages"]
    assert lock["node_modules/@t3code/t3-linux-x64/node_modules/@ff-labs/fff-bin-linux-x64-gnu"]["inBundle"] is True
    assert "/opt/t3/users/alice/node_modules/@t3code/t3-linux-x64/t3 serve" in host.prop("t3@alice.service", "ExecStart")
    assert box.run("readlink", "/opt/t3/users/alice").stdout.strip() == "../current"  # adopt made each user's link
    # the real server under the shipped hardening
    for key, value in {"ProtectSystem": "full", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectProc": "invisible",
                       "RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX", "CapabilityBoundingSet": ""}.items():
        assert " ".join(sorted(host.prop("t3@alice.service", key).split())) == value, key
    probe = host.t3track("probe", "--url", "http://127.0.0.1:3773", "--base-dir", "/home/alice/.t3")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert "pairing probe passed" in probe.stdout
    host.show("after adopt")


def test_a_drill_on_the_real_release_swaps_and_rolls_back_for_real(host):
    box = host.box
    pids = {user: host.prop(f"t3@{user}.service", "MainPID") for user in USERS}
    drilled = host.t3track("--json", "drill", "--yes")
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    doc = json.loads(drilled.stdout)
    print(json.dumps({k: doc[k] for k in doc if k in ("outcome", "downtime_s", "steps")}, indent=1)[:3000])
    assert host.current() == f"versions/{V0}"
    assert box.sh(f"ls -d /opt/t3/versions/{V0}+drill* 2>/dev/null", check=False).stdout == ""  # the copy is gone
    for user in USERS:
        assert host.serving(user, V0)["serverVersion"] == V0
        assert host.prop(f"t3@{user}.service", "MainPID") != pids[user]  # stopped and started for real, twice
        assert host.runs_as(f"t3@{user}.service") == user
    history = json.loads(host.t3track("history", "--json").stdout)["events"]
    assert history[0]["event"] == "drill"
    assert not box.run("test", "-e", "/var/lib/t3track/journal.json", check=False).returncode == 0


def test_the_backup_timer_fires_and_backs_up_every_user_under_the_shipped_sandbox(host):
    host.fire("t3-backup-state.timer", "t3-backup-state.service")
    assert host.prop("t3-backup-state.service", "Result") == "success"
    assert host.prop("t3-backup-state.timer", "LastTriggerUSec") not in ("", "0", "n/a")
    for user in USERS:
        manifests = host.box.run("sh", "-c", f"ls /var/backups/t3track/{user}/*/manifest.json").stdout.split()
        assert len(manifests) == 1
        assert host.box.run("stat", "-c", "%U %a", manifests[0].rsplit("/", 1)[0]).stdout.split() == [user, "700"]


def test_a_good_night_on_the_timer_swaps_both_servers_and_they_still_run_as_their_users(host):
    host.publish(GOOD)
    host.fire("t3track.timer", "t3track.service")
    log = host.journal("t3track.service")
    assert host.prop("t3track.service", "Result") == "success", log[-3000:]
    assert "swapped: " in log and GOOD in log
    assert host.current() == f"versions/{GOOD}"
    for user in USERS:
        assert host.serving(user, GOOD)["serverVersion"] == GOOD
        assert host.runs_as(f"t3@{user}.service") == user
    history = json.loads(host.t3track("history", "--json").stdout)["events"]
    assert history[0]["event"] == "run" and history[0]["outcome"] == "swapped" and history[0]["to"] == GOOD
    evidence = history[0]["evidence"]  # each user's candidate paired with a credential from `auth pairing create`
    minted = host.box.sh(f"grep -l 'minted with `auth pairing create`' {evidence}/*pairing-probe*", check=False)
    assert len(minted.stdout.split()) == len(USERS), host.box.sh(f"ls {evidence}; cat {evidence}/*pairing-probe*",
                                                                 check=False).stdout[-3000:]
    # the shipped unit lets bubblewrap box each rehearsal (own network and PID namespace, read-only view)
    report = json.loads(host.box.sh(f"cat {evidence}/result.json").stdout)
    serves = [g for g in report["gates"] if g["name"] == "sandbox-serve"]
    assert len(serves) == len(USERS) and all("confined by bubblewrap" in g["detail"] for g in serves), serves
    host.show("after the first night")


def test_a_refused_night_fails_the_unit_and_the_notice_names_it_at_priority_err(host):
    host.publish(BROKEN, fault="no-cookie")
    cursor = host.cursor()
    host.box.run("systemctl", "start", "t3track.service", check=False)
    assert host.prop("t3track.service", "Result") == "exit-code"
    assert host.prop("t3track.service", "ExecMainStatus") == "1"
    assert host.current() == f"versions/{GOOD}"  # the old version serves
    expected = "t3track: t3track.service failed (result=exit-code, exit status 1;"
    notice = host.wait_journal("t3track-failure@t3track.service.service", expected, priority="err", since_cursor=cursor)
    assert expected in notice, host.journal("t3track-failure@t3track.service.service")
    errors = host.journal("t3track.service", priority="err", since_cursor=cursor)
    everything = host.journal("t3track.service", since_cursor=cursor)
    assert "refused: gate pairing-probe failed" in errors, everything[-3000:]
    assert "resolving t3@nightly" in everything and "resolving t3@nightly" not in errors  # progress stays info
    host.show("after a refused night")


def test_a_night_that_fails_live_is_rolled_back_by_itself(host):
    host.publish(LIVE_ONLY, fault="no-cookie-live")
    cursor = host.cursor()
    host.box.run("systemctl", "start", "t3track.service", check=False)
    everything = host.journal("t3track.service", since_cursor=cursor)
    assert host.prop("t3track.service", "ExecMainStatus") == "1", everything[-3000:]
    assert host.current() == f"versions/{GOOD}"
    for user in USERS:
        assert host.serving(user, GOOD)["serverVersion"] == GOOD
        assert host.runs_as(f"t3@{user}.service") == user
    assert "rolled_back: live check failed" in host.journal("t3track.service", priority="err", since_cursor=cursor)
    history = json.loads(host.t3track("history", "--json").stdout)["events"]
    assert history[0]["outcome"] == "rolled_back" and history[0]["to"] == GOOD
    host.show("after a rollback")


def test_a_two_ring_night_moves_the_canary_only_and_never_restarts_the_rest(host):
    box = host.box
    config = box.run("cat", CONFIG).stdout
    box.write(CONFIG, config + "rings:\n  - name: canary\n    users: [alice]\n"
                               "  - name: everyone\n    users: [bob]\n    soak: 24h\n")
    assert host.t3track("config", "check").returncode == 0
    bob_pid = host.prop("t3@bob.service", "MainPID")
    host.publish(CANARY, migrations=54)
    host.fire("t3-backup-state.timer", "t3-backup-state.service")  # the daily backup, after the last swap
    host.fire("t3track.timer", "t3track.service")
    log = host.journal("t3track.service")
    assert host.prop("t3track.service", "Result") == "success", log[-3000:]
    assert box.run("readlink", "/opt/t3/current").stdout.strip() == f"versions/{CANARY}"
    assert box.run("readlink", "/opt/t3/rings/everyone").stdout.strip() == f"../versions/{GOOD}"
    assert box.run("readlink", "/opt/t3/users/bob").stdout.strip() == "../rings/everyone"
    assert host.serving("alice", CANARY)["serverVersion"] == CANARY
    assert host.serving("bob", GOOD)["serverVersion"] == GOOD
    assert host.prop("t3@bob.service", "MainPID") == bob_pid  # bob's server was never restarted
    assert host.runs_as("t3@alice.service") == "alice"
    status = json.loads(host.t3track("--json", "status").stdout)
    assert [(r["name"], r["current"]) for r in status["rings"]] == [("canary", CANARY), ("everyone", GOOD)]
    assert "soak" in next(r for r in status["rings"] if r["name"] == "everyone")["next"]
    history = json.loads(host.t3track("history", "--json").stdout)["events"]
    assert history[0]["event"] == "run" and history[0]["ring"] == "canary" and history[0]["to"] == CANARY
    host.show("after a two-ring night")


def test_from_an_emulated_0_0_41_a_timer_night_brings_in_the_real_release_through_every_gate(host):
    """The host reset to an emulated 0.0.41 (its state, t3track's state and installs gone; the config
    without rings), as on a host still on an older build: the operator pins the real 0.0.42 and the
    timer's night takes it through every gate on copies of the users' state, inside t3track.service."""
    box = host.box
    for user in USERS:
        box.run("systemctl", "stop", f"t3@{user}.service")
        box.run("rm", "-rf", f"/home/{user}/.t3")
        box.run("install", "-d", "-o", user, "-g", user, "-m", "0700", f"/home/{user}/.t3")
    box.sh("rm -rf /var/lib/t3track/* /var/backups/t3track/* /opt/t3/*")
    config = box.run("cat", CONFIG).stdout
    box.write(CONFIG, config.split("rings:\n", 1)[0])
    host.publish(OLDER, tag=False, migrations=52)  # the real migration names and schema, as 0.0.42 reads them
    adopted = host.t3track("adopt", OLDER)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    for user in USERS:
        assert host.serving(user, OLDER)["serverVersion"] == OLDER
    host.fire("t3-backup-state.timer", "t3-backup-state.service")
    assert host.t3track("pin", V0, "--reason", "the first real release on this host").returncode == 0
    cursor = host.cursor()
    host.fire("t3track.timer", "t3track.service", timeout=300)
    log = host.journal("t3track.service", since_cursor=cursor)
    assert host.prop("t3track.service", "Result") == "success", log[-3000:]
    assert host.current() == f"versions/{V0}"
    for user in USERS:
        assert host.serving(user, V0)["serverVersion"] == V0
        assert host.runs_as(f"t3@{user}.service") == user
    shown = json.loads(host.t3track("--json", "show", "last").stdout)
    run = shown["result"]
    assert run["outcome"] == "swapped" and run["from"] == OLDER and run["to"] == V0, run
    gates = [g for g in run["gates"] if g["name"] in ("sandbox-serve", "pairing-probe")]
    assert {(g["name"], g["user"]) for g in gates if g["outcome"] == "pass"} == {
        (name, user) for name in ("sandbox-serve", "pairing-probe") for user in USERS}
    per_user = {user: sum(g["duration_s"] for g in gates if g["user"] == user) for user in USERS}
    print("\nthe real 0.0.42's gates inside t3track.service (sandbox-serve + pairing-probe, per user): "
          + ", ".join(f"{u} {t:.2f}s" for u, t in per_user.items())
          + "; compare `bench/bench.py --only gates` (the same gates run in-process, outside any unit)")
    host.show("after a timer night brought in the real 0.0.42")


def test_no_log_or_journal_holds_a_pairing_token(host):
    # t3@.service sends the servers' stdout (with the startup `Token:` line) nowhere
    journal = host.box.run("journalctl", "-b", "--no-pager", "-o", "cat").stdout
    assert not re.search(r"^Token: \S", journal, re.M)
    assert not re.search(r"pair#token=\S", journal)


def test_the_host_powers_off_cleanly_and_leaves_nothing_running(host):
    box = host.box
    nspawn_pid = box.nspawn.pid
    box.teardown()
    assert box.nspawn.poll() is not None and nspawn_pid not in nspawn_processes()
    assert box.poweroff_s is not None and box.poweroff_s < 30
    assert not box.work_dir.exists()
    assert not any(Path("/sys/fs/cgroup").glob(f"*/t3track-nspawn-{box.name}")) and \
        not Path(f"/sys/fs/cgroup/t3track-nspawn-{box.name}").exists()
