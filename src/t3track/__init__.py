"""t3track: a gated nightly version tracker for self-hosted T3 Code hosts."""

__version__ = "0.1.0"
COMMIT_FILE = "t3track-commit"  # in the virtual environment; scripts/install-host.sh writes it


def build_commit() -> str:
    """The commit this t3track was installed from: the file install-host.sh leaves in the virtual
    environment, else the checkout it runs from (an editable install, the tests), else `unknown`."""
    import subprocess
    import sys
    from pathlib import Path

    try:
        recorded = (Path(sys.prefix) / COMMIT_FILE).read_text(encoding="ascii").strip()
        if recorded:
            return recorded[:40]
    except (OSError, UnicodeDecodeError):
        pass
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        try:
            done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                  text=True, timeout=5, check=False)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"
