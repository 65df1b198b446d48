#!/usr/bin/env bash
# Install t3track on this host from this checkout, in one command: t3track in its own virtual
# environment (/opt/t3track, linked as /usr/local/bin/t3track), the directories the units use,
# a config written from systemd/config.example.yaml when none exists, then the units, the users'
# t3@ units, environment files and base dirs (systemd/t3-provision-users.sh), then
# `t3track config check`. Idempotent: a second run changes nothing and says so.
#
#   scripts/install-host.sh [--dry-run] [--registry URL] USER:PORT[:BASE_DIR] ...
#
#   --dry-run        print what would change; change nothing
#   --registry URL   the npm registry written into a new config (default: `npm config get registry`
#                    when t3track runs)
#
# Needs root, Python >= 3.11, Node, npm and systemd as PID 1. pip installs t3track's dependencies
# from its usual index; on a host without one, point pip at a wheel directory the usual way
# (PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR). Uninstall: README.md, "Install on a host".
set -euo pipefail

CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly CHECKOUT
readonly VENV=/opt/t3track
readonly LINK=/usr/local/bin/t3track
readonly CONFIG=/etc/t3track/config.yaml
readonly EXAMPLE=$CHECKOUT/systemd/config.example.yaml
readonly PROVISION=$CHECKOUT/systemd/t3-provision-users.sh
readonly SOURCE_STAMP=$VENV/t3track-source.sha256
# The directories the units and the config name: root (installs, `current`), state, backups.
readonly DIRS=(/opt/t3:0755 /var/lib/t3track:0700 /var/backups/t3track:0700 /etc/t3track:0755)

DRY_RUN=0
REGISTRY=
CHANGES=0
declare -a USERS=()

usage() { sed -n '2,17s/^# \{0,1\}//p' "$0"; }
die() { printf 'install-host: %s\n' "$*" >&2; exit 2; }
note() { printf '%s\n' "$*"; }

act() {
  CHANGES=$((CHANGES + 1))
  if ((DRY_RUN)); then
    printf 'would run: %s\n' "$*"
  else
    printf 'run: %s\n' "$*"
    "$@"
  fi
}

parse_args() {
  while (($#)); do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --registry)
        (($# > 1)) || die "--registry needs a URL"
        REGISTRY=$2
        shift
        ;;
      --registry=*) REGISTRY=${1#--registry=} ;;
      -h | --help) usage; exit 0 ;;
      -*) die "unknown option $1 (see --help)" ;;
      *) USERS+=("$1") ;;
    esac
    shift
  done
  ((${#USERS[@]})) || die "no users given: scripts/install-host.sh USER:PORT[:BASE_DIR] ... (see --help)"
  [[ -z $REGISTRY || $REGISTRY =~ ^https?://[^[:space:]\"]+$ ]] || die "--registry $REGISTRY: not an http(s) URL"
}

# 1. What the host must already have; each missing piece says how to get it.
preflight() {
  local missing=()
  ((EUID == 0)) || ((DRY_RUN)) || die "run as root (or with --dry-run to see what it would do)"
  command -v python3 >/dev/null || missing+=("python3 >= 3.11 (Debian: apt-get install python3 python3-venv)")
  if command -v python3 >/dev/null; then
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || missing+=("python3 >= 3.11 (this one is $(python3 -c 'import platform; print(platform.python_version())'))")
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=("python3's venv module (Debian: apt-get install python3-venv)")
  fi
  command -v node >/dev/null || missing+=("node (t3track installs T3 Code with npm; Debian: apt-get install nodejs)")
  command -v npm >/dev/null || missing+=("npm (Debian: apt-get install npm)")
  command -v systemctl >/dev/null || missing+=("systemd (the units run t3track nightly and each user's server)")
  # Every rehearsal runs the candidate in bubblewrap (its own network, read-only outside its copy).
  if ! command -v bwrap >/dev/null; then
    if ((DRY_RUN)); then
      note "would run: apt-get install bubblewrap"
    elif ! { command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
               --no-install-recommends bubblewrap >/dev/null; }; then
      missing+=("bwrap (the rehearsal's sandbox; Debian: apt-get install bubblewrap)")
    fi
  fi
  if ((${#missing[@]})); then
    printf 'install-host: missing:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
  fi
  if [[ ! -d /run/systemd/system ]]; then
    ((DRY_RUN)) || die "systemd is not running as PID 1 here: the units cannot be enabled or started"
    note "note: systemd is not running as PID 1 here; a real run would stop at this point"
  fi
}

# The checkout's code and packaging, hashed: pip runs again only when they changed.
source_digest() {
  (cd "$CHECKOUT" && find pyproject.toml src -type f \( -name '*.py' -o -name '*.toml' -o -name '*.typed' \) \
    -not -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

# 2. t3track in its own venv (not editable: the host must not depend on this checkout staying).
install_t3track() {
  local digest
  digest=$(source_digest)
  if [[ -x $VENV/bin/python ]]; then
    note "ok: $VENV (virtual environment)"
  else
    act python3 -m venv "$VENV"
  fi
  if [[ -f $SOURCE_STAMP && $(cat "$SOURCE_STAMP") == "$digest" && -x $VENV/bin/t3track ]]; then
    note "ok: t3track in $VENV is this checkout's ($("$VENV/bin/t3track" --version 2>/dev/null || echo '?'))"
  else
    act "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$CHECKOUT"
    if ((DRY_RUN)); then
      note "would write: $SOURCE_STAMP and $VENV/t3track-commit"
    else
      printf '%s\n' "$digest" >"$SOURCE_STAMP"
      # `t3track --version` and the t3track_build_info metric name the commit it was installed from
      git -C "$CHECKOUT" rev-parse --short=12 HEAD >"$VENV/t3track-commit" 2>/dev/null || echo unknown >"$VENV/t3track-commit"
    fi
  fi
  if [[ -L $LINK && $(readlink "$LINK") == "$VENV/bin/t3track" ]]; then
    note "ok: $LINK -> $VENV/bin/t3track"
  else
    act ln -sfn "$VENV/bin/t3track" "$LINK"
  fi
}

# 3. The directories the units open and the config names (the units make theirs too; the operator's
# first `t3track adopt` runs outside them).
make_dirs() {
  local entry dir mode
  for entry in "${DIRS[@]}"; do
    dir=${entry%:*}
    mode=${entry#*:}
    if [[ -d $dir ]]; then
      note "ok: $dir"
    else
      act mkdir -p -m "$mode" "$dir"
    fi
  done
}

# 4. A config from the example when there is none, its users replaced by the ones given here (the
# same list the provisioning script gets, so `config check` and the units agree). An existing
# config is the operator's: never touched.
write_config() {
  if [[ -e $CONFIG ]]; then
    note "ok: $CONFIG exists (left as it is; compare it with $EXAMPLE)"
    return
  fi
  CHANGES=$((CHANGES + 1))
  if ((DRY_RUN)); then
    note "would write: $CONFIG from $EXAMPLE, users: ${USERS[*]}${REGISTRY:+, registry: $REGISTRY}"
    return
  fi
  note "write: $CONFIG from $EXAMPLE (users: ${USERS[*]})"
  local tmp
  tmp=$(mktemp "$CONFIG.XXXXXX")
  python3 - "$EXAMPLE" "$REGISTRY" "${USERS[@]}" >"$tmp" <<'PY'
import pwd
import sys

example, registry, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
lines = open(example, encoding="utf-8").read().splitlines()
start = next(i for i, line in enumerate(lines) if line.startswith("users:"))
end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" "))
users = ["users:                            # written by scripts/install-host.sh; keep in step with t3-provision-users.sh"]
for spec in specs:
    name, port, *base = spec.split(":", 2)
    base_dir = base[0] if base and base[0] else pwd.getpwnam(name).pw_dir + "/.t3"
    users += [f"  - name: {name}", f"    base_dir: {base_dir}", f"    port: {int(port)}", f"    run_as: {name}"]
out = lines[:start] + users + lines[end:]
if registry:
    out = [f"registry: {registry}" if line.startswith("# registry:") else line for line in out]
print("\n".join(out))
PY
  chmod 0644 "$tmp"
  mv -f "$tmp" "$CONFIG"
}

# 5. Units, users' t3@ units, environment files, base dirs, timers: the provisioning script's job.
provision() {
  local args=() out status=0
  ((DRY_RUN)) && args+=(--dry-run)
  out=$(bash "$PROVISION" "${args[@]}" "${USERS[@]}" 2>&1) || status=$?
  printf '%s\n' "$out" | sed 's/^/  provision: /'
  ((status == 0)) || die "t3-provision-users.sh failed (exit $status): see its lines above"
  local counted='^(done|dry run): ([0-9]+) change'
  if [[ $(tail -n 1 <<<"$out") =~ $counted ]]; then CHANGES=$((CHANGES + BASH_REMATCH[2])); fi
}

# 6. The config against the host.
check() {
  if ((DRY_RUN)); then
    note "would run: $LINK --config $CONFIG config check"
    return
  fi
  note "run: $LINK --config $CONFIG config check"
  if ! "$LINK" --config "$CONFIG" config check; then
    die "config check found problems (above): fix $CONFIG or the host, then run this again"
  fi
}

# The users are checked by the provisioning script itself (names, ports, that they exist) before
# anything is changed: one set of rules, not two.
check_users() {
  local out
  out=$(bash "$PROVISION" --dry-run "${USERS[@]}" 2>&1) || { printf '%s\n' "$out" >&2; exit 2; }
}

main() {
  parse_args "$@"
  preflight
  check_users
  install_t3track
  make_dirs
  write_config
  provision
  check
  if ((DRY_RUN)); then
    note "install-host: dry run: $CHANGES change(s) would be made"
  else
    note "install-host: done: $CHANGES change(s)"
  fi
  if ! [[ -L /opt/t3/current ]]; then
    note "next: t3track adopt VERSION (the first install; it starts and checks every user's server)"
  fi
}

main "$@"
