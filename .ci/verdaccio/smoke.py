"""CI smoke: whole nights of the real `t3track` CLI against verdaccio, the registry people run as a
private npm mirror. Called by .ci/verdaccio-smoke with the installed verdaccio's path.

verdaccio runs on 127.0.0.1:<free port> with no uplinks, its storage in a temp dir, web and audit off.
Emulator builds of `t3` are published with the real `npm publish` (the stable current first: the
first publish sets `latest`), nightlies under a staging tag, and `nightly` is moved with
`npm dist-tag add`. Then, on an emulated two-user host: a good nightly is swapped in, a night with
no change does nothing, a broken nightly (200 without a cookie) is refused. Ends with a pytest-like
`N passed, M failed` line; exits 1 when anything failed.

    python .ci/verdaccio/smoke.py --verdaccio .cache/verdaccio/node_modules/.bin/verdaccio
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.emulator import package as emu  # noqa: E402
from tests.support.host import Host, build_host, free_port, nightly  # noqa: E402

HERE = Path(__file__).resolve().parent
CURRENT = "0.0.42"
GOOD = nightly(1)                  # 0.0.43-nightly.20261102.3001, one forward migration
BROKEN = nightly(2)                # answers 200 without a cookie (upstream issue 7756)
STAGING_TAG = "ci-staging"         # where `npm publish` puts nightlies before `nightly` moves
READY_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10


class Failed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


# ---------------------------------------------------------------- verdaccio


class Verdaccio:
    """verdaccio in its own process group, stopped by PID (SIGTERM, then SIGKILL after a timeout)."""

    def __init__(self, executable: Path, workdir: Path):
        self.executable, self.workdir = executable, workdir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = workdir / "verdaccio.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> Verdaccio:
        config = self.workdir / "config.yaml"
        shutil.copyfile(HERE / "config.yaml", config)  # storage: ./storage is relative to the config
        for _attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [str(self.executable), "--config", str(config), "--listen", f"127.0.0.1:{self.port}"],
                    cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=npm_env(), process_group=0)
            if self._wait_ready():
                return self
            self.stop()
        raise Failed(f"verdaccio did not become ready on 127.0.0.1:{self.port}:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "-/ping", timeout=1) as answer:
                    if answer.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> float:
        """Stop it and return how long it took (it needs 2-3 s after SIGTERM)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        return time.monotonic() - started

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def npm_env() -> dict[str, str]:
    """The environment minus npm settings, so nothing but the flags and our userconfig decides."""
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    env["NO_UPDATE_NOTIFIER"] = "1"
    return env


class Npm:
    """The real npm client, pointed at verdaccio with a userconfig of its own."""

    def __init__(self, registry: Verdaccio, workdir: Path):
        self.registry, self.workdir = registry, workdir
        netloc = registry.url.split("//", 1)[1]
        # verdaccio lets $anonymous publish, but npm refuses to publish without a token
        self.userconfig = workdir / "npmrc"
        self.userconfig.write_text(f"registry={registry.url}\n//{netloc}:_authToken=anything\n")
        self.userconfig.chmod(0o600)

    def __call__(self, *args: str) -> str:
        argv = ["npm", *args, "--registry", self.registry.url, "--userconfig", str(self.userconfig),
                "--cache", str(self.workdir / "npm-cache"), "--logs-dir", str(self.workdir / "npm-logs"),
                "--no-audit", "--no-fund", "--no-update-notifier"]
        done = subprocess.run(argv, capture_output=True, text=True, env=npm_env(), cwd=self.workdir, timeout=120)
        check(done.returncode == 0, f"`npm {' '.join(args)}` exited {done.returncode}:\n{done.stderr[-2000:]}")
        return done.stdout

    def publish(self, version: str, *, tag: str | None = None, **build: object) -> None:
        tarball = emu.pack_tarball(self.workdir / "tarballs", version, **build)
        self("publish", str(tarball), *(["--tag", tag] if tag else []))

    def dist_tags(self) -> dict[str, str]:
        with urllib.request.urlopen(self.registry.url + "-/package/t3/dist-tags", timeout=5) as answer:
            return json.loads(answer.read())


# ---------------------------------------------------------------- the nights


def run_json(host: Host) -> tuple[int, dict, str]:
    done = host.t3track("run", "--json")
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        raise Failed(f"`t3track run --json` printed no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}") from None
    return done.returncode, doc, done.stderr


def case_publish(npm: Npm, host_box: dict) -> None:
    check(npm.dist_tags() == {"latest": CURRENT}, f"dist-tags after the first publish: {npm.dist_tags()}")
    npm.publish(GOOD, migrations=53, tag=STAGING_TAG)
    npm("dist-tag", "add", f"t3@{GOOD}", "nightly")
    tags = npm.dist_tags()
    check(tags.get("nightly") == GOOD and tags.get("latest") == CURRENT, f"dist-tags: {tags}")
    host: Host = host_box["host"]
    done = host.t3track("backup")
    check(done.returncode == 0, f"t3track backup exited {done.returncode}: {done.stderr}")


def case_good_nightly(npm: Npm, host_box: dict) -> None:
    host: Host = host_box["host"]
    code, doc, err = run_json(host)
    check(code == 0 and doc["outcome"] == "swapped", f"exit {code}, outcome {doc.get('outcome')}: {doc.get('reason')}\n{err}")
    check(doc["from"] == CURRENT and doc["to"] == GOOD, f"from {doc['from']} to {doc['to']}")
    check(host.current_target() == f"versions/{GOOD}", f"current -> {host.current_target()}")
    serving = {u.name: host.serving(u) for u in host.users}
    check(serving == {u.name: GOOD for u in host.users}, f"serving {serving}")
    check(host.state()["current"] == GOOD, f"state.json current {host.state()['current']}")


def case_no_change(npm: Npm, host_box: dict) -> None:
    host: Host = host_box["host"]
    pids = host.server_pids()
    code, doc, err = run_json(host)
    check(code == 0 and doc["outcome"] == "noop", f"exit {code}, outcome {doc.get('outcome')}: {doc.get('reason')}\n{err}")
    check(doc["candidate"] is None, f"candidate {doc['candidate']}")
    check(host.current_target() == f"versions/{GOOD}", f"current -> {host.current_target()}")
    check(host.server_pids() == pids, "the servers were restarted on a night with no change")


def case_broken_nightly(npm: Npm, host_box: dict) -> None:
    host: Host = host_box["host"]
    npm.publish(BROKEN, fault="no-cookie", tag=STAGING_TAG)
    npm("dist-tag", "add", f"t3@{BROKEN}", "nightly")
    check(npm.dist_tags().get("nightly") == BROKEN, f"dist-tags: {npm.dist_tags()}")
    # the nightly backup first: the good nightly migrated the live databases since the last one
    done = host.t3track("backup")
    check(done.returncode == 0, f"t3track backup exited {done.returncode}: {done.stderr}")
    pids = host.server_pids()
    code, doc, err = run_json(host)
    check(code == 1 and doc["outcome"] == "refused", f"exit {code}, outcome {doc.get('outcome')}: {doc.get('reason')}\n{err}")
    failed = [g for g in doc["gates"] if g["outcome"] != "pass"]
    check(doc["candidate"] == BROKEN and failed and failed[0]["name"] == "pairing-probe", f"gates {doc['gates']}")
    check(host.current_target() == f"versions/{GOOD}", f"current -> {host.current_target()}")
    serving = {u.name: host.serving(u) for u in host.users}
    check(serving == {u.name: GOOD for u in host.users}, f"serving {serving}")
    check(host.server_pids() == pids, "the servers were restarted for a refused candidate")


CASES: list[tuple[str, Callable[[Npm, dict], None]]] = [
    ("npm publish and npm dist-tag add reach t3track's registry client", case_publish),
    ("a good nightly is swapped in and serves every user", case_good_nightly),
    ("a night with no change is a noop that restarts nothing", case_no_change),
    ("a broken nightly is refused at pairing-probe and the live version keeps serving", case_broken_nightly),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verdaccio", type=Path, required=True, help="the verdaccio executable")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (for debugging)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="t3track-verdaccio-"))
    registry = Verdaccio(args.verdaccio.resolve(), workdir)
    host_box: dict = {}
    passed = failed = 0
    try:
        registry.start()
        print(f"verdaccio ready on {registry.url} in {time.monotonic() - started:.1f}s", flush=True)
        npm = Npm(registry, workdir)
        npm.publish(CURRENT)  # stable first: the first publish of a package sets `latest`
        host_box["host"] = build_host(workdir / "host", current=CURRENT, registry_url=registry.url)
        for name, case in CASES:
            case_started = time.monotonic()
            try:
                case(npm, host_box)
            except Exception as exc:  # noqa: BLE001 - a smoke reports every case, then the count
                failed += 1
                detail = str(exc) if isinstance(exc, Failed) else traceback.format_exc()
                print(f"FAILED {name} ({time.monotonic() - case_started:.1f}s)\n  {detail}", flush=True)
            else:
                passed += 1
                print(f"PASSED {name} ({time.monotonic() - case_started:.1f}s)", flush=True)
    except Exception as exc:  # noqa: BLE001 - setup failed: nothing ran
        failed += 1
        detail = str(exc) if isinstance(exc, Failed) else traceback.format_exc()
        print(f"FAILED setup: {detail}\nverdaccio's log:\n{registry.log_tail()}", flush=True)
    finally:
        if "host" in host_box:
            host_box["host"].close()
        stop_s = registry.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"verdaccio stopped in {stop_s:.1f}s; smoke took {time.monotonic() - started:.1f}s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
