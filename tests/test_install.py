import json
import os
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
import respx
from tests.support.registry_server import make_package_tarball, serve, sri_sha512

from t3track import runner
from t3track.config import Config
from t3track.errors import EnvironmentFault, ExitCode, UsageError
from t3track.host import install
from t3track.host.install import IntegrityError, ensure_installed, installed_prefix, installed_versions, prune
from t3track.host.registry import RegistryClient, VersionInfo
from t3track.state import Pin, State

V1 = "0.0.43-nightly.20261125.2890"
V2 = "0.0.43-nightly.20261126.2895"
V3 = "0.0.43-nightly.20261127.2901"
needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="needs the real npm")


@pytest.fixture
def config(tmp_path):
    return Config(root=tmp_path / "root", state_dir=tmp_path / "state", install_timeout="2m")


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def npm_calls(monkeypatch):
    """Every argv and env given to the runner, while the real npm still runs."""
    calls = []
    real_run = runner.run

    def recording_run(argv, **kwargs):
        calls.append((list(map(str, argv)), kwargs.get("env") or {}))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(install.runner, "run", recording_run)
    return calls


@pytest.fixture
def registry():
    with serve() as server:
        yield server


def publish(server, version, **kwargs):
    tarball = make_package_tarball("t3", version, **kwargs)
    server.publish("t3", version, tarball, tag="nightly", published_at=datetime(2026, 11, 26, tzinfo=UTC))
    return tarball


def info_for(server, tmp_path, version):
    client = RegistryClient(server.url, tmp_path / "cache")
    return client, client.packument("t3").versions[version]


# --- with the real npm, from a registry on loopback ---------------------------------------------

@needs_npm
def test_real_npm_installs_the_exact_version_side_by_side(registry, config, tmp_path):
    publish(registry, V1)
    client, info = info_for(registry, tmp_path, V1)
    prefix = ensure_installed(config, V1, info, registry_url=registry.url, client=client)
    assert prefix == config.root / "versions" / V1
    assert json.loads((prefix / "node_modules/t3/package.json").read_text())["version"] == V1
    assert json.loads((prefix / "package.json").read_text())["dependencies"] == {"t3": V1}
    lock = json.loads((prefix / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/t3"]["integrity"] == info.integrity
    assert runner.run([prefix / "node_modules/.bin/t3"], timeout=10).stdout.strip() == f"t3 {V1}"
    assert sorted(p.name for p in (config.root / "versions").iterdir()) == [V1]


@needs_npm
def test_real_npm_gets_npm_cache_logs_and_userconfig_under_state_dir(registry, config, tmp_path, npm_calls):
    publish(registry, V1)
    client, info = info_for(registry, tmp_path, V1)
    ensure_installed(config, V1, info, registry_url=registry.url, client=client)
    argv = npm_calls[0][0]
    assert argv[argv.index("--cache") + 1] == str(config.state_dir / "npm-cache")
    assert argv[argv.index("--userconfig") + 1] == str(config.state_dir / "npmrc")
    assert argv[argv.index("--registry") + 1] == registry.url
    assert "--ignore-scripts" in argv and argv[-1] == f"t3@{V1}"
    assert "--prefer-online" in argv  # a cache entry from a night with a wrong clock never answers for the registry
    assert any((config.state_dir / "npm-cache").iterdir())


@needs_npm
def test_install_scripts_do_not_run_by_default(registry, config, tmp_path):
    marker = tmp_path / "postinstall-ran"
    publish(registry, V1, extra_manifest={"scripts": {"postinstall": f"touch {marker}"}})
    client, info = info_for(registry, tmp_path, V1)
    ensure_installed(config, V1, info, registry_url=registry.url, client=client)
    assert not marker.exists()


@needs_npm
def test_a_tampered_tarball_is_refused_and_leaves_no_install_and_no_partial(registry, config, tmp_path):
    publish(registry, V1)
    registry.tamper("t3", V1, make_package_tarball("t3", V1, script="#!/bin/sh\necho evil\n"))
    client, info = info_for(registry, tmp_path, V1)
    with pytest.raises(IntegrityError) as caught:
        ensure_installed(config, V1, info, registry_url=registry.url, client=client)
    assert caught.value.exit_code == ExitCode.REFUSED and caught.value.check == "tarball-integrity"
    assert tree(config.root) == []


@needs_npm
def test_a_verified_install_is_reused_without_npm_or_download(registry, config, tmp_path, npm_calls):
    publish(registry, V1)
    client, info = info_for(registry, tmp_path, V1)
    first = ensure_installed(config, V1, info, registry_url=registry.url, client=client)
    inode = first.stat().st_ino
    registry.clear_requests()
    again = ensure_installed(config, V1, info, registry_url=registry.url, client=client)
    assert again == first and again.stat().st_ino == inode
    assert len(npm_calls) == 1 and registry.requests == []


@needs_npm
def test_a_leftover_partial_is_removed_before_installing(registry, config, tmp_path):
    publish(registry, V1)
    leftover = config.root / "versions" / f"{V1}.partial"
    (leftover / "node_modules" / "junk").mkdir(parents=True)
    client, info = info_for(registry, tmp_path, V1)
    prefix = ensure_installed(config, V1, info, registry_url=registry.url, client=client)
    assert not leftover.exists() and not (prefix / "node_modules" / "junk").exists()


@needs_npm
def test_the_registry_token_reaches_npm_through_the_private_userconfig_only(config, tmp_path, npm_calls,
                                                                             monkeypatch):
    monkeypatch.setenv("T3TRACK_NPM_TOKEN", "tok-0123456789")
    with serve(token="tok-0123456789") as registry:
        publish(registry, V1)
        client = RegistryClient(registry.url, tmp_path / "cache", token="tok-0123456789")
        info = client.packument("t3").versions[V1]
        ensure_installed(config, V1, info, registry_url=registry.url, client=client)
        assert all(r.status != 401 for r in registry.requests)
    argv, env = npm_calls[0]
    assert not any("tok-0123456789" in a for a in argv)
    assert "tok-0123456789" not in " ".join(env.values())
    npmrc = config.state_dir / "npmrc"
    assert stat.S_IMODE(npmrc.stat().st_mode) == 0o600
    assert f"//127.0.0.1:{registry.port}/:_authToken=tok-0123456789" in npmrc.read_text()


# --- the real package layout: a launcher whose optional dependency holds the executable --------

from tests.emulator import package as emu  # noqa: E402

EXAMPLE_EXECUTABLE = "node_modules/@t3code/t3-linux-x64/t3"  # systemd/config.example.yaml, as shipped


@pytest.fixture
def release_config(tmp_path):
    return Config(root=tmp_path / "root", state_dir=tmp_path / "state", install_timeout="2m",
                  executable=EXAMPLE_EXECUTABLE)


def publish_release(server, version, *, platform: bytes | None = None, with_platform: bool = True):
    tarballs = emu.release_tarballs(version)
    if with_platform:
        server.publish(emu.PLATFORM_PACKAGE, version, tarballs[emu.PLATFORM_PACKAGE])
        if platform is not None:
            server.tamper(emu.PLATFORM_PACKAGE, version, platform)
    server.publish("t3", version, tarballs["t3"], tag="nightly",
                   published_at=datetime(2026, 11, 26, tzinfo=UTC))


def test_the_emulator_release_is_in_the_shipped_layout():
    from t3track.config import load_config

    assert load_config(Path(__file__).parents[1] / "systemd/config.example.yaml").executable == emu.RELEASE_EXECUTABLE
    assert emu.RELEASE_EXECUTABLE == EXAMPLE_EXECUTABLE


@needs_npm
def test_real_npm_installs_launcher_and_platform_package_and_both_are_verified(registry, release_config, tmp_path):
    publish_release(registry, V1)
    client, info = info_for(registry, tmp_path, V1)
    prefix = ensure_installed(release_config, V1, info, registry_url=registry.url, client=client)
    lock = json.loads((prefix / "package-lock.json").read_text())["packages"]
    platform = client.packument(emu.PLATFORM_PACKAGE).versions[V1]
    assert lock[f"node_modules/{emu.PLATFORM_PACKAGE}"]["integrity"] == platform.integrity
    assert lock["node_modules/t3"]["integrity"] == info.integrity
    executable = prefix / EXAMPLE_EXECUTABLE
    assert runner.run([executable, "--version"], timeout=10).stdout.strip() == f"t3 v{V1}"
    assert runner.run([prefix / "node_modules/.bin/t3", "--version"], timeout=10).stdout.strip() == f"t3 v{V1}"


@needs_npm
def test_a_tampered_platform_package_is_refused_and_leaves_no_install(registry, release_config, tmp_path,
                                                                       monkeypatch):
    write_npmrc = install.write_npmrc

    def without_retries(config, registry_url):  # npm retries EINTEGRITY with a minute of backoff
        path = write_npmrc(config, registry_url)
        path.write_text(path.read_text() + "fetch-retries=0\n")
        return path

    monkeypatch.setattr(install, "write_npmrc", without_retries)
    evil = emu.platform_tarball_bytes(V1, fault="no-cookie")
    publish_release(registry, V1, platform=evil)
    client, info = info_for(registry, tmp_path, V1)
    with pytest.raises(IntegrityError) as caught:
        ensure_installed(release_config, V1, info, registry_url=registry.url, client=client)
    # npm drops an optional package that fails its integrity check and exits 0: refused all the same
    assert caught.value.exit_code == ExitCode.REFUSED, caught.value.message
    assert f"npm did not install {emu.PLATFORM_PACKAGE}@{V1}" in caught.value.message
    assert tree(release_config.root / "versions") == []


@needs_npm
def test_a_release_whose_platform_package_is_missing_is_refused_for_its_executable(registry, release_config,
                                                                                   tmp_path):
    publish_release(registry, V1, with_platform=False)  # npm skips a missing optional dependency quietly
    client, info = info_for(registry, tmp_path, V1)
    with pytest.raises(IntegrityError) as caught:
        ensure_installed(release_config, V1, info, registry_url=registry.url, client=client)
    assert caught.value.check == "executable" and EXAMPLE_EXECUTABLE in caught.value.message
    assert f"npm did not install {emu.PLATFORM_PACKAGE}@{V1}" in caught.value.message
    assert tree(release_config.root / "versions") == []


# --- with a stand-in npm: the failures the real one rarely produces on demand ------------------

TARBALL = make_package_tarball("t3", V1)
INFO = VersionInfo(V1, "https://registry.test/t3/-/t3.tgz", sri_sha512(TARBALL))


class FakeClient:
    def __init__(self, body=TARBALL):
        self.body, self.calls = body, 0

    def tarball(self, url):
        self.calls += 1
        return self.body


def fake_npm(monkeypatch, *, version=V1, integrity=INFO.integrity, executable=True, returncode=0,
             timed_out=False, stderr=""):
    """Replace npm with something that writes the tree npm would, with the given flaws."""
    seen = []

    def run(argv, **kwargs):
        argv = list(map(str, argv))
        seen.append(argv)
        prefix = Path(argv[argv.index("--prefix") + 1])
        (prefix / "node_modules/t3/bin").mkdir(parents=True)
        (prefix / "node_modules/t3/package.json").write_text(json.dumps({"name": "t3", "version": version}))
        (prefix / "package-lock.json").write_text(json.dumps(
            {"packages": {"node_modules/t3": {"version": version, "integrity": integrity}}}))
        if executable:  # like npm: the package's bin, linked from node_modules/.bin
            (prefix / "node_modules/t3/bin/t3").write_text("#!/bin/sh\n")
            os.chmod(prefix / "node_modules/t3/bin/t3", 0o755)
            (prefix / "node_modules/.bin").mkdir()
            (prefix / "node_modules/.bin/t3").symlink_to("../t3/bin/t3")
        return runner.Completed(argv, None if timed_out else returncode, "", stderr, 1.0, timed_out)

    monkeypatch.setattr(install.runner, "run", run)
    return seen


def test_npm_failing_is_an_environment_fault_and_leaves_no_partial(monkeypatch, config):
    fake_npm(monkeypatch, returncode=1, stderr="npm ERR! code E500")
    with pytest.raises(EnvironmentFault) as caught:
        ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=FakeClient())
    assert "npm install of t3@" in caught.value.message and "npm-logs" in caught.value.hint
    assert tree(config.root / "versions") == []


def test_npm_timing_out_is_an_environment_fault_and_leaves_no_partial(monkeypatch, config):
    fake_npm(monkeypatch, timed_out=True)
    with pytest.raises(EnvironmentFault, match="timed out after 120s"):
        ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=FakeClient())
    assert tree(config.root / "versions") == []


def test_npm_reporting_eintegrity_refuses_the_version(monkeypatch, config):
    fake_npm(monkeypatch, returncode=1, stderr="npm error code EINTEGRITY")
    with pytest.raises(IntegrityError):
        ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=FakeClient())
    assert tree(config.root / "versions") == []


def test_a_different_installed_version_is_refused(monkeypatch, config):
    fake_npm(monkeypatch, version=V2)
    with pytest.raises(IntegrityError) as caught:
        ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=FakeClient())
    assert caught.value.check == "package-version" and V2 in caught.value.message
    assert tree(config.root / "versions") == []


def test_a_lockfile_integrity_other_than_the_registry_s_is_refused(monkeypatch, config):
    fake_npm(monkeypatch, integrity=sri_sha512(b"something else"))
    with pytest.raises(IntegrityError) as caught:
        ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=FakeClient())
    assert caught.value.check == "lockfile-integrity"
    assert tree(config.root / "versions") == []


def test_a_missing_executable_is_refused_with_a_config_hint(monkeypatch, config):
    fake_npm(monkeypatch, executable=False)
    with pytest.raises(IntegrityError) as caught:
        ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=FakeClient())
    assert caught.value.check == "executable" and "executable:" in caught.value.hint
    assert tree(config.root / "versions") == []


def test_integrity_mismatch_from_the_registry_leaves_root_untouched(tmp_path, config):
    with respx.mock(base_url="https://registry.test/") as mock:
        mock.get("/t3/-/t3.tgz").respond(content=b"not the published bytes")
        with RegistryClient("https://registry.test/", tmp_path / "cache") as client:
            with pytest.raises(IntegrityError, match="does not match"):
                ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=client)
    assert not config.root.exists()


def test_a_version_without_sha512_integrity_is_refused_before_download(config):
    client = FakeClient()
    with pytest.raises(IntegrityError, match="no sha512"):
        ensure_installed(config, V1, VersionInfo(V1, INFO.tarball, None), registry_url="https://r/", client=client)
    assert client.calls == 0 and not config.root.exists()


def test_an_existing_install_that_fails_verification_is_installed_again(monkeypatch, config):
    broken = config.root / "versions" / V1
    (broken / "node_modules/t3").mkdir(parents=True)
    (broken / "node_modules/t3/package.json").write_text('{"name": "t3", "version": "0.0.1"}')
    seen = fake_npm(monkeypatch)
    prefix = ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=FakeClient())
    assert len(seen) == 1
    assert json.loads((prefix / "node_modules/t3/package.json").read_text())["version"] == V1


def test_the_live_install_failing_verification_is_left_alone(monkeypatch, config):
    live = config.root / "versions" / V1
    live.mkdir(parents=True)
    (config.root / "current").symlink_to(Path("versions") / V1)
    seen = fake_npm(monkeypatch)
    with pytest.raises(EnvironmentFault, match="live install"):
        ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=FakeClient())
    assert live.is_dir() and seen == []


def test_scripts_run_only_when_the_config_allows_them(monkeypatch, tmp_path):
    config = Config(root=tmp_path / "root", state_dir=tmp_path / "state", ignore_scripts=False)
    seen = fake_npm(monkeypatch)
    ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=FakeClient())
    assert "--ignore-scripts" not in seen[0]


def test_installed_prefix_rejects_a_name_that_is_not_a_version(config):
    with pytest.raises(UsageError):
        installed_prefix(config, "../../etc")


# --- pruning ------------------------------------------------------------------------------------

def make_installs(config, *names):
    for name in names:
        (config.root / "versions" / name).mkdir(parents=True)


def test_prune_keeps_keep_versions_newest_besides_current_previous_and_pin(tmp_path):
    config = Config(root=tmp_path / "root", state_dir=tmp_path / "state", keep_versions=1)
    olds = [f"0.0.40-nightly.2026110{i}.{i}" for i in range(1, 6)]
    make_installs(config, *olds, V1, V2, V3)
    state = State(current=V2, previous=V1, pinned=Pin(version=olds[0], reason="x", by="ops",
                                                      at=datetime(2026, 11, 1, tzinfo=UTC)))
    removed = prune(config, state)
    assert sorted(removed) == sorted(olds[1:])
    assert installed_versions(config) == [olds[0], V1, V2, V3]


def test_prune_never_removes_what_current_points_at(tmp_path):
    config = Config(root=tmp_path / "root", state_dir=tmp_path / "state", keep_versions=0)
    make_installs(config, V1, V2)
    (config.root / "current").symlink_to(Path("versions") / V1)
    assert prune(config, State(current=V2)) == []
    assert installed_versions(config) == [V1, V2]


def test_prune_clears_leftovers_and_ignores_names_that_are_not_versions(tmp_path):
    config = Config(root=tmp_path / "root", state_dir=tmp_path / "state", keep_versions=0)
    make_installs(config, f"{V3}.partial", f"{V1}.removing", "hand-made")
    assert prune(config, State()) == []
    assert tree(config.root / "versions") == ["hand-made"]


class ReleaseClient(FakeClient):
    """The registry's answers for a release: t3's tarball, and the platform package's packument."""

    def __init__(self, platform_integrity):
        super().__init__()
        self.platform_integrity = platform_integrity

    def packument(self, package):
        from t3track.host.registry import Packument

        assert package == "@t3code/t3-linux-x64"
        return Packument(package, {}, {V1: VersionInfo(V1, "https://registry.test/p.tgz", self.platform_integrity)}, {})


def fake_release_npm(monkeypatch, platform_integrity, extra_entries: dict | None = None):
    """npm laying out a release: the launcher, and the platform package with the integrity given
    (`extra_entries`: more package-lock.json entries, e.g. what the platform package bundles)."""
    def run(argv, **kwargs):
        argv = list(map(str, argv))
        prefix = Path(argv[argv.index("--prefix") + 1])
        (prefix / "node_modules/t3").mkdir(parents=True)
        (prefix / "node_modules/t3/package.json").write_text(json.dumps({"name": "t3", "version": V1}))
        platform = prefix / "node_modules/@t3code/t3-linux-x64"
        platform.mkdir(parents=True)
        (platform / "t3").write_text("#!/bin/sh\n")
        os.chmod(platform / "t3", 0o755)
        (prefix / "package-lock.json").write_text(json.dumps({"packages": {
            "": {"dependencies": {"t3": V1}},
            "node_modules/t3": {"version": V1, "integrity": INFO.integrity},
            "node_modules/@t3code/t3-linux-x64": {"version": V1, "integrity": platform_integrity, "optional": True},
            **(extra_entries or {})}}))
        return runner.Completed(argv, 0, "", "", 1.0, False)

    monkeypatch.setattr(install.runner, "run", run)


def test_a_platform_package_npm_recorded_with_another_integrity_is_refused(monkeypatch, tmp_path):
    config = Config(root=tmp_path / "root", state_dir=tmp_path / "state", executable="node_modules/@t3code/t3-linux-x64/t3")
    published = sri_sha512(b"the platform tarball the registry publishes")
    fake_release_npm(monkeypatch, platform_integrity=sri_sha512(b"something else"))
    with pytest.raises(IntegrityError) as caught:
        ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=ReleaseClient(published))
    assert caught.value.check == "dependency-integrity" and "@t3code/t3-linux-x64@" in caught.value.message
    assert tree(config.root / "versions") == []

    fake_release_npm(monkeypatch, platform_integrity=published)  # the same tree, as published: accepted
    prefix = ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=ReleaseClient(published))
    assert (prefix / "node_modules/@t3code/t3-linux-x64/t3").is_file()


def test_an_executable_outside_every_package_npm_recorded_is_refused(monkeypatch, tmp_path):
    config = Config(root=tmp_path / "root", state_dir=tmp_path / "state", executable="node_modules/@t3code/t3-linux-x64/t3")
    fake_release_npm(monkeypatch, platform_integrity=None)
    real = install.runner.run

    def run_and_drop_the_platform_entry(argv, **kwargs):
        done = real(argv, **kwargs)
        prefix = Path(list(map(str, argv))[list(map(str, argv)).index("--prefix") + 1])
        lock = json.loads((prefix / "package-lock.json").read_text())
        del lock["packages"]["node_modules/@t3code/t3-linux-x64"]
        (prefix / "package-lock.json").write_text(json.dumps(lock))
        return done

    monkeypatch.setattr(install.runner, "run", run_and_drop_the_platform_entry)
    with pytest.raises(IntegrityError) as caught:
        ensure_installed(config, V1, INFO, registry_url="https://registry.test/", client=ReleaseClient(None))
    assert caught.value.check == "executable" and "in no package npm recorded" in caught.value.message


# --- npm's model of trust: what a verified tarball bundles is covered by it, nothing else goes unchecked

PLATFORM_DIR = "node_modules/@t3code/t3-linux-x64"
BUNDLED_AS_THE_REAL_ONE = {  # as npm recorded the real @t3code/t3-linux-x64@0.0.42's bundleDependencies
    f"{PLATFORM_DIR}/node_modules/@ff-labs/fff-bin-linux-x64-gnu": {"version": "0.9.4", "inBundle": True, "optional": True},
    f"{PLATFORM_DIR}/node_modules/node-pty": {"version": "1.1.0", "inBundle": True, "optional": True},
    f"{PLATFORM_DIR}/node_modules/ffi-rs/node_modules/detect-libc": {"version": "2.1.2", "inBundle": True},
    f"{PLATFORM_DIR}/node_modules/ffi-rs": {"version": "1.3.7", "inBundle": True, "optional": True},
}


class OnlyThePlatformPackage(ReleaseClient):
    """A registry that mirrors T3's packages alone: asking it for anything else is a test failure."""

    def packument(self, package):
        assert package == "@t3code/t3-linux-x64", f"t3track looked up {package} in the registry"
        return super().packument(package)


def release_install(monkeypatch, tmp_path, entries: dict):
    config = Config(root=tmp_path / "root", state_dir=tmp_path / "state", executable=f"{PLATFORM_DIR}/t3")
    published = sri_sha512(b"the platform tarball the registry publishes")
    fake_release_npm(monkeypatch, platform_integrity=published, extra_entries=entries)
    return config, lambda: ensure_installed(config, V1, INFO, registry_url="https://registry.test/",
                                            client=OnlyThePlatformPackage(published))


def test_packages_bundled_in_the_verified_platform_tarball_are_never_looked_up(monkeypatch, tmp_path):
    config, install_it = release_install(monkeypatch, tmp_path, BUNDLED_AS_THE_REAL_ONE)
    prefix = install_it()
    assert prefix == config.root / "versions" / V1 and (prefix / PLATFORM_DIR / "t3").is_file()


def test_a_lock_entry_with_no_integrity_outside_every_bundle_is_refused(monkeypatch, tmp_path):
    unverified = {"node_modules/left-pad": {"version": "1.3.0", "optional": True}}  # neither fetched nor bundled
    config, install_it = release_install(monkeypatch, tmp_path, {**BUNDLED_AS_THE_REAL_ONE, **unverified})
    with pytest.raises(IntegrityError) as caught:
        install_it()
    assert caught.value.check == "dependency-integrity" and "left-pad@1.3.0" in caught.value.message
    assert "no integrity" in caught.value.message
    assert tree(config.root / "versions") == []


def test_a_bundled_mark_is_believed_only_inside_a_package_npm_fetched(monkeypatch, tmp_path):
    """`inBundle` on a top-level entry, or under a path no fetched package holds, covers nothing: the
    difference is read from where the lock puts the entry, not from the package's name."""
    for entry in ("node_modules/node-pty", "node_modules/ghost/node_modules/node-pty"):
        shutil.rmtree(tmp_path / "root", ignore_errors=True)
        config, install_it = release_install(monkeypatch, tmp_path, {entry: {"version": "1.1.0", "inBundle": True}})
        with pytest.raises(IntegrityError) as caught:
            install_it()
        assert caught.value.check == "dependency-integrity" and "as bundled" in caught.value.message, entry
        assert tree(config.root / "versions") == []
