#!/usr/bin/env bash
# Provision the T3 Code users of this host: their t3@<user>.service units, environment files and
# base dirs, plus t3track's units and timers. Idempotent: a second run changes nothing and says so.
#
#   t3-provision-users.sh [--dry-run] [--root DIR] [--config FILE] USER:PORT[:BASE_DIR] ...
#
#   --dry-run      print what would change; change nothing
#   --root DIR     operate on DIR as the filesystem root (a staged image, or CI's temporary root):
#                  users are looked up in DIR/etc/passwd, units are enabled with `systemctl --root`,
#                  and nothing is started
#   --config FILE  t3track's config (default: /etc/t3track/config.yaml under the root)
#
# BASE_DIR defaults to ~USER/.t3. Adding a user needs only that user (carol:3775): the sandbox
# drop-ins are written for every user, the ones given here, the ones provisioned before
# (/etc/t3/users/*.env) and the config's, so no other user's tree turns read-only to t3track.
# Keep the users here and in the config the same; `t3track config check` compares them with the host.
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SRC_DIR
readonly UNITS=(t3@.service t3track.service t3track.timer t3-backup-state.service
  t3-backup-state.timer t3track-failure@.service)
# The services whose sandbox (ProtectSystem=strict, ProtectHome=read-only) must open the users' base dirs.
readonly SANDBOXED=(t3track.service t3-backup-state.service)
# The enforcer that re-pinned 0.0.24 every night after the 2026-06-09 incident.
readonly LEGACY_TIMERS=(t3-autoupdate.timer)
readonly T3_ROOT=/opt/t3

DRY_RUN=0
ROOT=/
CHANGES=0
CONFIG=""
declare -a NAMES=() PORTS=() BASES=() UIDS=() GIDS=()
declare -a OTHERS=()  # NAME:BASE_DIR of the users not given here: provisioned before, or in the config
declare -a SYSTEMCTL=(systemctl)

usage() { sed -n '2,17s/^# \{0,1\}//p' "$0"; }
die() { printf 't3-provision-users: %s\n' "$*" >&2; exit 2; }
note() { printf '%s\n' "$*"; }

# Run a command that changes the host, or say what it would be.
act() {
  CHANGES=$((CHANGES + 1))
  if ((DRY_RUN)); then
    printf 'would run: %s\n' "$*"
  else
    printf 'run: %s\n' "$*"
    "$@"
  fi
}

# Path inside the target root.
at() { printf '%s%s' "${ROOT%/}" "$1"; }

# write_file PATH MODE: content on stdin; written atomically, only when it differs.
write_file() {
  local path=$1 mode=$2 content tmp
  content=$(cat)
  if [[ -f $path ]] && [[ $(cat "$path") == "$content" ]] \
    && [[ $(stat -c %a "$path") == "${mode#0}" ]]; then
    note "ok: $path"
    return
  fi
  CHANGES=$((CHANGES + 1))
  if ((DRY_RUN)); then
    note "would write: $path (mode $mode)"
    return
  fi
  note "write: $path (mode $mode)"
  mkdir -p "$(dirname "$path")"
  tmp=$(mktemp "$path.XXXXXX")
  printf '%s\n' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

is_enabled() { "${SYSTEMCTL[@]}" is-enabled --quiet "$1" 2>/dev/null; }

passwd_entry() {
  if [[ $ROOT == / ]]; then
    getent passwd "$1"
  else
    grep -E "^$1:" "$(at /etc/passwd)" 2>/dev/null | head -n 1
  fi
}

parse_args() {
  local arg name port base
  while (($#)); do
    arg=$1
    shift
    case $arg in
      --dry-run) DRY_RUN=1 ;;
      --root)
        (($#)) || die "--root needs a directory"
        ROOT=$1
        shift
        ;;
      --root=*) ROOT=${arg#--root=} ;;
      --config)
        (($#)) || die "--config needs a file"
        CONFIG=$1
        shift
        ;;
      --config=*) CONFIG=${arg#--config=} ;;
      -h | --help) usage; exit 0 ;;
      -*) die "unknown option $arg (see --help)" ;;
      *)
        IFS=: read -r name port base <<<"$arg"
        [[ $name =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "$arg: not a valid user name"
        if [[ ! $port =~ ^[0-9]+$ ]] || ((port < 1024 || port > 65535)); then
          die "$arg: port must be an integer in 1024..65535"
        fi
        [[ -z $base || $base == /* ]] || die "$arg: BASE_DIR must be absolute"
        [[ $base != *[[:space:]]* ]] || die "$arg: BASE_DIR must not contain spaces"
        NAMES+=("$name")
        PORTS+=("$port")
        BASES+=("$base")
        ;;
    esac
  done
  ((${#NAMES[@]})) || die "no users given (USER:PORT[:BASE_DIR] ...; see --help)"
  [[ -d $ROOT ]] || die "--root $ROOT: not a directory"
  ROOT=$(cd "$ROOT" && pwd)
  [[ $ROOT == / ]] || SYSTEMCTL=(systemctl --root="$ROOT")
  [[ -n $CONFIG ]] || CONFIG=$(at /etc/t3track/config.yaml)
}

# 1. Validate: users exist, no name or port twice.
check_users() {
  local i j entry uid gid home
  for i in "${!NAMES[@]}"; do
    for ((j = 0; j < i; j++)); do
      [[ ${NAMES[j]} != "${NAMES[i]}" ]] || die "user ${NAMES[i]} given twice"
      [[ ${PORTS[j]} != "${PORTS[i]}" ]] || die "port ${PORTS[i]} given to ${NAMES[j]} and ${NAMES[i]}"
    done
    entry=$(passwd_entry "${NAMES[i]}") || true
    [[ -n $entry ]] || die "user ${NAMES[i]} does not exist (create it first: useradd -m ${NAMES[i]})"
    IFS=: read -r _ _ uid gid _ home _ <<<"$entry"
    UIDS[i]=$uid
    GIDS[i]=$gid
    [[ -n ${BASES[i]} ]] || BASES[i]=$home/.t3
  done
}

given() {
  local name
  for name in "${NAMES[@]}"; do [[ $name != "$1" ]] || return 0; done
  return 1
}

known() {
  local other
  for other in "${OTHERS[@]}"; do [[ ${other%%:*} != "$1" ]] || return 0; done
  return 1
}

# The config's users as NAME:BASE_DIR lines (nothing when it cannot be read: the env files still count).
config_users() {
  [[ -f $CONFIG ]] || return 0
  python3 - "$CONFIG" <<'PY' 2>/dev/null || note "skip: the users of $CONFIG (python3 with PyYAML cannot read it)" >&2
import sys

import yaml

with open(sys.argv[1], encoding="utf-8") as handle:
    data = yaml.safe_load(handle) or {}
for user in data.get("users") or []:
    if isinstance(user, dict) and user.get("name") and user.get("base_dir"):
        print(f"{user['name']}:{user['base_dir']}")
PY
}

# 1b. The users not given here whose trees t3track still touches: every one provisioned before (its
# environment file) and every one in the config. Adding carol alone must not drop alice and bob
# from the sandbox drop-ins (their next rollback's restore would fail, read-only).
other_users() {
  local env name base line
  for env in "$(at /etc/t3/users)"/*.env; do
    [[ -f $env ]] || continue
    name=$(basename "$env" .env)
    given "$name" && continue
    base=$(sed -n 's/^T3_BASE_DIR=//p' "$env" | tail -n 1)
    [[ $base == /* && $base != *[[:space:]]* ]] || die "$env: no usable T3_BASE_DIR= (fix it, or remove the file with $name's unit)"
    OTHERS+=("$name:$base")
  done
  while IFS= read -r line; do
    name=${line%%:*}
    base=${line#*:}
    given "$name" || known "$name" || [[ $base != /* || $base == *[[:space:]]* ]] || OTHERS+=("$name:$base")
  done < <(config_users)
  if ((${#OTHERS[@]})); then
    note "keep: ${OTHERS[*]%%:*} (provisioned before or in $CONFIG): their base dirs stay in the sandbox drop-ins"
  fi
}

# 2. Unit files.
install_units() {
  local unit
  for unit in "${UNITS[@]}"; do
    write_file "$(at "/etc/systemd/system/$unit")" 0644 <"$SRC_DIR/$unit"
  done
}

# 3. One environment file per user: t3@<user>.service reads port and base dir from it.
write_env_files() {
  local i
  for i in "${!NAMES[@]}"; do
    write_file "$(at "/etc/t3/users/${NAMES[i]}.env")" 0644 <<EOF
# Written by t3-provision-users.sh; read by t3@${NAMES[i]}.service.
T3_PORT=${PORTS[i]}
T3_BASE_DIR=${BASES[i]}
EOF
  done
}

# 4. Base dirs: 0700, owned by the user (the server refuses nothing, but other users must not read
# the signing keys in userdata/secrets).
make_base_dirs() {
  local i dir
  for i in "${!NAMES[@]}"; do
    dir=$(at "${BASES[i]}")
    if [[ ! -d $dir ]]; then
      act mkdir -p "$dir"
    fi
    if [[ ! -d $dir ]] || [[ $(stat -c %a "$dir") != 700 ]]; then
      act chmod 0700 "$dir"
    fi
    if ((EUID != 0)); then
      note "skip: chown of $dir (not root)"
    elif [[ ! -d $dir ]] || [[ $(stat -c %u:%g "$dir") != "${UIDS[i]}:${GIDS[i]}" ]]; then
      act chown "${UIDS[i]}:${GIDS[i]}" "$dir"
    fi
  done
}

# 5a. Open exactly the users' base dirs in the sandboxes of t3track's services: t3track restores
# databases there, and reading a WAL database writes its -shm file. "-": a base dir removed later
# must not stop the nightly run (and the backups) of every other user.
write_sandbox_dropins() {
  local unit entry paths="" i
  local -a entries=()
  for i in "${!NAMES[@]}"; do entries+=("${NAMES[i]}:${BASES[i]}"); done
  entries+=("${OTHERS[@]}")
  # sorted by user name: the same set of users gives the same file, whatever the order given
  while IFS= read -r entry; do paths+=" -${entry#*:}"; done < <(printf '%s\n' "${entries[@]}" | sort -t: -k1,1)
  for unit in "${SANDBOXED[@]}"; do
    write_file "$(at "/etc/systemd/system/$unit.d/50-t3-users.conf")" 0644 <<EOF
# Written by t3-provision-users.sh: the users' base dirs.
[Service]
ReadWritePaths=${paths# }
EOF
  done
}

# 5b. The tracker's timers. Until 2026-06-16 an enforcer timer re-pinned 0.0.24 every night; it
# was replaced by t3track, the gated nightly tracker, once the pairing fallback, the real-handshake
# check and daily backups made a bump reversible. Two jobs steering /opt/t3/current would fight, so
# the enforcer is disabled here. t3track.timer has no Persistent=: a missed night waits for the
# next night's window instead of bumping at boot (the enforcer needed Persistent to re-pin at boot;
# the tracker has nothing to re-assert).
enable_timers() {
  local timer
  for timer in "${LEGACY_TIMERS[@]}"; do
    if ! is_enabled "$timer"; then
      continue
    elif [[ $ROOT == / ]]; then
      act systemctl disable --now "$timer"
    else
      act "${SYSTEMCTL[@]}" disable "$timer"
    fi
  done
  for timer in t3-backup-state.timer t3track.timer; do
    if is_enabled "$timer"; then
      note "ok: $timer enabled"
    elif [[ $ROOT == / ]]; then
      act systemctl enable --now "$timer"
    else
      act "${SYSTEMCTL[@]}" enable "$timer"
    fi
  done
}

# 6. The users' servers: enabled for boot; started only once an install is live (the first one
# is `t3track adopt VERSION`, which starts and verifies them itself).
enable_servers() {
  local name unit
  for name in "${NAMES[@]}"; do
    unit="t3@$name.service"
    if is_enabled "$unit"; then
      note "ok: $unit enabled"
    else
      act "${SYSTEMCTL[@]}" enable "$unit"
    fi
    if [[ $ROOT != / ]]; then
      continue
    elif [[ ! -e $T3_ROOT/current ]]; then
      note "skip: start $unit ($T3_ROOT/current is missing: run t3track adopt VERSION)"
    elif [[ ! -e $T3_ROOT/users/$name ]]; then
      note "skip: start $unit ($T3_ROOT/users/$name, its link, is missing: \`t3track run\` makes it)"
    elif ! systemctl is-active --quiet "$unit"; then
      act systemctl start "$unit"
    fi
  done
}

# 5c. The link each user's server starts through (t3@.service: /opt/t3/users/%i). On a host without
# rings it is ../current, made here so a new user or a host from before the per-user links starts at
# once; with rings (/opt/t3/rings/ exists) t3track's next run links the user to the ring's link itself.
link_users() {
  local name link
  [[ -L $(at "$T3_ROOT/current") ]] || return 0   # a new host: `t3track adopt` makes every link
  for name in "${NAMES[@]}"; do
    link=$(at "$T3_ROOT/users/$name")
    if [[ -L $link ]]; then
      note "ok: $T3_ROOT/users/$name"
    elif [[ -d $(at "$T3_ROOT/rings") ]]; then
      note "skip: $T3_ROOT/users/$name (a host with rings: \`t3track run\` links $name to its ring)"
    else
      act install -d -m 0755 "$(at "$T3_ROOT/users")"
      act ln -s ../current "$link"
    fi
  done
}

main() {
  parse_args "$@"
  ((DRY_RUN)) || [[ $ROOT != / ]] || ((EUID == 0)) || die "run as root (or with --dry-run / --root DIR)"
  check_users
  other_users
  install_units
  write_env_files
  make_base_dirs
  write_sandbox_dropins
  link_users
  # Units on disk changed above; the live manager must re-read them before enabling or starting.
  if [[ $ROOT == / ]] && ((CHANGES)); then act systemctl daemon-reload; fi
  enable_timers
  enable_servers
  if ((DRY_RUN)); then
    note "dry run: $CHANGES change(s) would be made"
  else
    note "done: $CHANGES change(s)"
  fi
}

main "$@"
