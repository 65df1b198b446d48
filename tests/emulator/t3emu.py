#!/usr/bin/env python3
"""A stand-in for the T3 Code server (`t3`), stdlib only, for tests and demos.

It follows the contract that t3track relies on (shared/spec/t3code-contract.md), as observed on the
real 0.0.42: startup lines, `/.well-known/t3/environment`, the pairing handshake of both eras,
one-time credentials stored in `<base>/userdata/state.sqlite` (WAL), forward-only migrations in
`effect_sql_migrations`, signed session cookies whose sessions live in the database,
`server-runtime.json` while it runs. What version it claims, which era it speaks, how far it
migrates and how it is broken come from `emulator.json` next to this file (symlinks resolved), so an
npm-installed copy carries its behaviour. See README.md beside this file.

    t3 serve --host H --port P --base-dir D [--no-browser]
    t3 auth pairing create --base-dir D [--ttl 5m] [--label L] [--json]
    t3 --version
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAULTS = (
    "no-cookie", "renamed-endpoint", "reusable-credential", "cookie-not-accepted", "wrong-cookie-name",
    "crash-on-start", "never-ready", "env-hangs", "wrong-version", "exchange-500", "mint-fails",
    "no-cache-headers",
    # 0.1.x refusals at start (t3code-contract.md, "T3 Code 0.1.x"): the host's state, one dedicated exit code
    "refuse-owned", "refuse-service", "refuse-update-pending",
)
REFUSAL_EXIT = 78  # "one dedicated exit code": its number is not known here
DEFAULTS = {"version": "0.0.42", "era": "B", "migrations": 52, "fault": None, "start_delay_s": 0, "boot_delay_s": 0,
            "reported_version": None,
            # V2-era behaviour (t3code-contract.md, "Since 0.0.42"), each off by default:
            "database": "state",        # "statev2": import state.sqlite once, then use only statev2.sqlite
            "history_check": None,      # "warn" | "refuse": what a build does with unknown id:name pairs
            "migration_names": {},      # {"53": "PreviewName"}: a preview/branch build's names for some ids
            "ownership_lock": False,    # hold userdata/server-owner.sqlite; refuse a state dir owned by a live pid
            "stop_delay_s": 0,          # keep serving this long after SIGTERM (a slow graceful shutdown)
            "env_record": None,         # a file each process appends the T3CODE_* variables it saw to (tests)
            "clock_offset_s": 0,        # this build's clock runs ahead by this much (time passing, for expiries)
            # agents (t3code-contract.md, "Agents, and what a copy can do"), off by default:
            "agent_turns": False,       # turns that run until their time is up, or until SIGTERM interrupts them
            "protocol_version": None,   # 0.1.x: the orchestrationProtocolVersion the environment reports
            # what a server does to the world at boot, each off by default; see `act_at_boot`:
            "boot_providers": False,    # `codex app-server`, `claude --version` from PATH (0.0.42, run)
            "continuation": False,      # the provider resumes an interrupted turn in the project dir
            "auto_pull": False,         # `git pull --ff-only` in projects with auto-pull on
            "scheduled_tasks": False,   # V2: enabled rows of scheduled_tasks run the provider
            "effect_outbox": False,     # V2: pending/running orchestration_v2_effect_outbox rows replayed
            "cloud_connect": False}     # T3 Connect: links to the relays of secrets/cloud-endpoint-runtime-config.bin
DATABASES = ("state", "statev2")
V2_DB = "statev2.sqlite"
OWNER_DB = "server-owner.sqlite"

# Migration names of the real 0.0.42 (1..52); later ones are the emulator's own.
MIGRATION_NAMES = [
    "OrchestrationEvents", "OrchestrationCommandReceipts", "CheckpointDiffBlobs", "ProviderSessionRuntime",
    "Projections", "ProjectionThreadSessionRuntimeModeColumns", "ProjectionThreadMessageAttachments",
    "ProjectionThreadActivitySequence", "ProviderSessionRuntimeMode", "ProjectionThreadsRuntimeMode",
    "OrchestrationThreadCreatedRuntimeMode", "ProjectionThreadsInteractionMode", "ProjectionThreadProposedPlans",
    "ProjectionThreadProposedPlanImplementation", "ProjectionTurnsSourceProposedPlan",
    "CanonicalizeModelSelections", "ProjectionThreadsArchivedAt", "ProjectionThreadsArchivedAtIndex",
    "ProjectionSnapshotLookupIndexes", "AuthAccessManagement", "AuthSessionClientMetadata",
    "AuthSessionLastConnectedAt", "ProjectionThreadShellSummary", "BackfillProjectionThreadShellSummary",
    "CleanupInvalidProjectionPendingApprovals", "CanonicalizeModelSelectionOptions",
    "ProviderSessionRuntimeInstanceId", "ProjectionThreadSessionInstanceId",
    "ProjectionThreadDetailOrderingIndexes", "ProjectionThreadShellArchiveIndexes", "AuthAuthorizationScopes",
    "AuthPairingProofKeyThumbprint", "ProjectionThreadsSettled", "ProjectionThreadsSnoozed",
    "ProjectionThreadTitleRegeneration", "ProjectionThreadsPinned", "ProjectionTurnsKeysetIndex",
    "ProjectionThreadsPinOrderKey", "ProjectionProjectsDefaultThreadEnvMode", "ProjectionProjectFaviconPath",
    "AuthSessionClientConnection", "ProjectionThreadLinkedPullRequest", "ProjectionThreadsUnsettledAt",
    "ClearAutomaticProjectModelDefaults", "ProjectionProjectsAutoPull", "RepairAutomaticSettlementTimestamps",
    "ProjectionProjectIcon", "ProjectionThreadBranchPullRequest", "ProjectionThreadsActiveOrderKey",
    "ProjectionThreadPullRequests", "ProjectionThreadMessageContext", "ProjectionThreadTitleState",
]
SCOPES_MIGRATION = 31  # role -> scopes; deletes every pairing link and session, like the real one

_AUTH_LINKS = """CREATE TABLE auth_pairing_links (
      id TEXT PRIMARY KEY, credential TEXT NOT NULL UNIQUE, method TEXT NOT NULL, {grant} TEXT NOT NULL,
      subject TEXT NOT NULL, label TEXT, created_at TEXT NOT NULL, expires_at TEXT NOT NULL,
      consumed_at TEXT, revoked_at TEXT)"""
_AUTH_SESSIONS = """CREATE TABLE auth_sessions (
      session_id TEXT PRIMARY KEY, subject TEXT NOT NULL, {grant} TEXT NOT NULL, method TEXT NOT NULL,
      issued_at TEXT NOT NULL, expires_at TEXT NOT NULL, revoked_at TEXT{extra})"""
_CLIENT_COLUMNS = ("client_label TEXT", "client_ip_address TEXT", "client_user_agent TEXT",
                   "client_device_type TEXT NOT NULL DEFAULT 'unknown'", "client_os TEXT", "client_browser TEXT")

SCHEMA: dict[int, list[str]] = {
    1: ["""CREATE TABLE orchestration_events (sequence INTEGER PRIMARY KEY AUTOINCREMENT,
          event_id TEXT NOT NULL UNIQUE, aggregate_kind TEXT NOT NULL, stream_id TEXT NOT NULL,
          stream_version INTEGER NOT NULL, event_type TEXT NOT NULL, occurred_at TEXT NOT NULL,
          command_id TEXT, causation_event_id TEXT, correlation_id TEXT, actor_kind TEXT NOT NULL,
          payload_json TEXT NOT NULL, metadata_json TEXT NOT NULL)"""],
    2: ["""CREATE TABLE orchestration_command_receipts (command_id TEXT PRIMARY KEY,
          aggregate_kind TEXT NOT NULL, aggregate_id TEXT NOT NULL, accepted_at TEXT NOT NULL,
          result_sequence INTEGER NOT NULL, status TEXT NOT NULL, error TEXT)"""],
    3: ["""CREATE TABLE checkpoint_diff_blobs (thread_id TEXT NOT NULL, from_turn_count INTEGER NOT NULL,
          to_turn_count INTEGER NOT NULL, diff TEXT NOT NULL, created_at TEXT NOT NULL,
          PRIMARY KEY (thread_id, from_turn_count, to_turn_count))"""],
    4: ["""CREATE TABLE provider_session_runtime (thread_id TEXT PRIMARY KEY, provider_name TEXT NOT NULL,
          adapter_key TEXT NOT NULL, status TEXT NOT NULL, last_seen_at TEXT NOT NULL,
          resume_cursor_json TEXT, runtime_payload_json TEXT)"""],
    5: ["""CREATE TABLE projection_projects (project_id TEXT PRIMARY KEY, title TEXT NOT NULL,
          workspace_root TEXT NOT NULL, scripts_json TEXT NOT NULL, created_at TEXT NOT NULL,
          updated_at TEXT NOT NULL, deleted_at TEXT)""",
        """CREATE TABLE projection_threads (thread_id TEXT PRIMARY KEY, project_id TEXT NOT NULL,
          title TEXT NOT NULL, branch TEXT, worktree_path TEXT, latest_turn_id TEXT,
          created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT)""",
        """CREATE TABLE projection_thread_messages (message_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL,
          turn_id TEXT, role TEXT NOT NULL, text TEXT NOT NULL, is_streaming INTEGER NOT NULL,
          created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        """CREATE TABLE projection_state (projector TEXT PRIMARY KEY,
          last_applied_sequence INTEGER NOT NULL, updated_at TEXT NOT NULL)"""],
    10: ["ALTER TABLE projection_threads ADD COLUMN runtime_mode TEXT NOT NULL DEFAULT 'full-access'"],
    12: ["ALTER TABLE projection_threads ADD COLUMN interaction_mode TEXT NOT NULL DEFAULT 'default'"],
    17: ["ALTER TABLE projection_threads ADD COLUMN archived_at TEXT"],
    20: [_AUTH_LINKS.format(grant="role"), _AUTH_SESSIONS.format(grant="role", extra="")],
    21: [f"ALTER TABLE auth_sessions ADD COLUMN {column}" for column in _CLIENT_COLUMNS],
    22: ["ALTER TABLE auth_sessions ADD COLUMN last_connected_at TEXT"],
    31: ["DROP TABLE auth_pairing_links", "DROP TABLE auth_sessions",
         _AUTH_LINKS.format(grant="scopes"),
         _AUTH_SESSIONS.format(grant="scopes", extra=", " + ", ".join(_CLIENT_COLUMNS) + ", last_connected_at TEXT")],
    32: ["ALTER TABLE auth_pairing_links ADD COLUMN proof_key_thumbprint TEXT"],
    36: ["ALTER TABLE projection_threads ADD COLUMN pinned_at TEXT"],
    41: ["ALTER TABLE auth_sessions ADD COLUMN client_surface TEXT",
         "ALTER TABLE auth_sessions ADD COLUMN client_app_version TEXT"],
}
# The rest of the real 0.0.42 schema (its tables and columns the emulator does not use), created at
# 52 because which real migration made which is not known here. With it a database the emulator
# created is one the real server can serve (tests/test_smoke_real.py: the real 0.0.42 smoked
# `--from` an emulated 0.0.41). A real-created database has it all already and never runs this.
REAL_0_0_42_REST = [
    'CREATE TABLE projection_pending_approvals ( request_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, turn_id TEXT, status TEXT NOT NULL, decision TEXT, created_at TEXT NOT NULL, resolved_at TEXT )',
    'CREATE TABLE projection_thread_activities ( activity_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, turn_id TEXT, tone TEXT NOT NULL, kind TEXT NOT NULL, summary TEXT NOT NULL, payload_json TEXT NOT NULL, created_at TEXT NOT NULL , sequence INTEGER)',
    'CREATE TABLE projection_thread_proposed_plans ( plan_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, turn_id TEXT, plan_markdown TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL , implemented_at TEXT, implementation_thread_id TEXT)',
    'CREATE TABLE projection_thread_pull_requests ( thread_id TEXT NOT NULL, host TEXT NOT NULL, repository TEXT NOT NULL, number INTEGER NOT NULL, url TEXT NOT NULL, source TEXT NOT NULL, linked_at TEXT NOT NULL, snapshot_json TEXT, stack_json TEXT, PRIMARY KEY (thread_id, host, repository, number) )',
    "CREATE TABLE projection_thread_sessions ( thread_id TEXT PRIMARY KEY, status TEXT NOT NULL, provider_name TEXT, provider_session_id TEXT, provider_thread_id TEXT, active_turn_id TEXT, last_error TEXT, updated_at TEXT NOT NULL , runtime_mode TEXT NOT NULL DEFAULT 'full-access', provider_instance_id TEXT)",
    'CREATE TABLE projection_turns ( row_id INTEGER PRIMARY KEY AUTOINCREMENT, thread_id TEXT NOT NULL, turn_id TEXT, pending_message_id TEXT, assistant_message_id TEXT, state TEXT NOT NULL, requested_at TEXT NOT NULL, started_at TEXT, completed_at TEXT, checkpoint_turn_count INTEGER, checkpoint_ref TEXT, checkpoint_status TEXT, checkpoint_files_json TEXT NOT NULL, source_proposed_plan_thread_id TEXT, source_proposed_plan_id TEXT, UNIQUE (thread_id, turn_id), UNIQUE (thread_id, checkpoint_turn_count) )',
    'ALTER TABLE projection_projects ADD COLUMN default_model_selection_json TEXT',
    'ALTER TABLE projection_projects ADD COLUMN default_thread_env_mode TEXT',
    'ALTER TABLE projection_projects ADD COLUMN favicon_path TEXT',
    'ALTER TABLE projection_projects ADD COLUMN auto_pull INTEGER NOT NULL DEFAULT 0',
    'ALTER TABLE projection_projects ADD COLUMN project_icon_json TEXT',
    'ALTER TABLE projection_thread_messages ADD COLUMN attachments_json TEXT',
    'ALTER TABLE projection_thread_messages ADD COLUMN context_json TEXT',
    'ALTER TABLE projection_threads ADD COLUMN model_selection_json TEXT',
    'ALTER TABLE projection_threads ADD COLUMN latest_user_message_at TEXT',
    'ALTER TABLE projection_threads ADD COLUMN pending_approval_count INTEGER NOT NULL DEFAULT 0',
    'ALTER TABLE projection_threads ADD COLUMN pending_user_input_count INTEGER NOT NULL DEFAULT 0',
    'ALTER TABLE projection_threads ADD COLUMN has_actionable_proposed_plan INTEGER NOT NULL DEFAULT 0',
    'ALTER TABLE projection_threads ADD COLUMN settled_override TEXT',
    'ALTER TABLE projection_threads ADD COLUMN settled_at TEXT',
    'ALTER TABLE projection_threads ADD COLUMN snoozed_until TEXT',
    'ALTER TABLE projection_threads ADD COLUMN snoozed_at TEXT',
    'ALTER TABLE projection_threads ADD COLUMN title_regeneration_request_id TEXT',
    'ALTER TABLE projection_threads ADD COLUMN title_regeneration_started_at TEXT',
    'ALTER TABLE projection_threads ADD COLUMN pin_order_key TEXT',
    'ALTER TABLE projection_threads ADD COLUMN linked_pull_request_json TEXT',
    'ALTER TABLE projection_threads ADD COLUMN unsettled_at TEXT',
    'ALTER TABLE projection_threads ADD COLUMN branch_pull_request_json TEXT',
    'ALTER TABLE projection_threads ADD COLUMN active_order_key TEXT',
    'ALTER TABLE projection_threads ADD COLUMN title_state_json TEXT',
    "ALTER TABLE provider_session_runtime ADD COLUMN runtime_mode TEXT NOT NULL DEFAULT 'full-access'",
    'ALTER TABLE provider_session_runtime ADD COLUMN provider_instance_id TEXT',
]
SCHEMA[52] = SCHEMA.get(52, []) + REAL_0_0_42_REST

# The V2 projections a restart would interrupt ("Is a user busy?", statev2.sqlite builds; upstream's
# restart-recovery code, medium confidence: only the columns that reading names).
V2_AGENT_TABLES = [
    "CREATE TABLE IF NOT EXISTS orchestration_v2_projection_threads (thread_id TEXT PRIMARY KEY, title TEXT, "
    "created_at TEXT, deleted_at TEXT)",
    "CREATE TABLE IF NOT EXISTS orchestration_v2_projection_runs (run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, "
    "status TEXT NOT NULL, updated_at TEXT)",
    "CREATE TABLE IF NOT EXISTS orchestration_v2_projection_provider_sessions (provider_session_id TEXT PRIMARY KEY, "
    "status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS orchestration_v2_projection_provider_session_bindings (thread_id TEXT NOT NULL, "
    "provider_session_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS orchestration_v2_projection_runtime_requests (request_id TEXT PRIMARY KEY, "
    "thread_id TEXT NOT NULL, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS orchestration_v2_effect_outbox (effect_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, "
    "effect_type TEXT NOT NULL, status TEXT NOT NULL)",
]
# The emulator's own clock for each agent turn (tests write it with the turn: see package.start_turn).
AGENT_TURNS_TABLE = ("CREATE TABLE IF NOT EXISTS t3emu_agent_turns (thread_id TEXT PRIMARY KEY, turn_id TEXT NOT NULL, "
                     "tables TEXT NOT NULL, finishes_at REAL NOT NULL, state TEXT NOT NULL)")

MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS "effect_sql_migrations" (
  migration_id integer PRIMARY KEY NOT NULL,
  created_at datetime NOT NULL DEFAULT current_timestamp,
  name VARCHAR(255) NOT NULL
)"""

STARTUP_SCOPES = ["orchestration:read", "orchestration:operate", "terminal:operate", "review:write",
                  "relay:read", "access:read", "access:write", "relay:write"]
CLIENT_SCOPES = STARTUP_SCOPES[:5]
SESSION_METHODS = ["browser-session-cookie", "bearer-access-token", "dpop-access-token"]
SESSION_LIFETIME = timedelta(days=30)
STARTUP_TOKEN_TTL = timedelta(minutes=5)
CREDENTIAL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
CAPABILITIES = {"repositoryIdentity": True, "connectionProbe": True, "attachmentUploads": True,
                "pullRequests": True, "threadPinning": True, "environmentIcon": True}
INDEX_HTML = (b"<!doctype html>\n<html lang=\"en\">\n  <head>\n    <meta charset=\"UTF-8\" />\n"
              b"    <title>T3 Code</title>\n  </head>\n  <body><div id=\"root\"></div></body>\n</html>\n")


def migration_name(migration_id: int, settings: dict | None = None) -> str:
    """This build's name for a migration id: a preview build's `migration_names` win over the real ones."""
    renamed = (settings or {}).get("migration_names") or {}
    if str(migration_id) in renamed:
        return renamed[str(migration_id)]
    if migration_id <= len(MIGRATION_NAMES):
        return MIGRATION_NAMES[migration_id - 1]
    return f"EmulatedNightlyChange{migration_id}"


def migration_sql(migration_id: int) -> list[str]:
    if migration_id > len(MIGRATION_NAMES):  # a newer nightly's schema change: visible and one-way
        return [f"CREATE TABLE emulated_change_{migration_id} (id INTEGER PRIMARY KEY, value TEXT)"]
    return SCHEMA.get(migration_id, [])


# ---------------------------------------------------------------- configuration and time


def script_dir() -> Path:
    return Path(os.path.realpath(__file__)).parent


def load_settings() -> dict:
    """emulator.json next to the (symlink-resolved) script; missing keys take the defaults."""
    path = script_dir() / "emulator.json"
    settings = dict(DEFAULTS)
    if path.exists():
        settings.update(json.loads(path.read_text()))
    if settings["era"] not in ("A", "B"):
        raise SystemExit(f"emulator.json: era must be 'A' or 'B', not {settings['era']!r}")
    if not isinstance(settings["migrations"], int) or settings["migrations"] < 20:
        raise SystemExit("emulator.json: migrations must be an integer >= 20 (the auth tables come at 20)")
    if settings["database"] not in DATABASES:
        raise SystemExit(f"emulator.json: database must be one of {DATABASES}, not {settings['database']!r}")
    if settings["history_check"] not in (None, "warn", "warn-legacy", "refuse"):
        raise SystemExit("emulator.json: history_check must be null, 'warn', 'warn-legacy' or 'refuse'")
    fault = settings["fault"]
    if fault is not None:
        base = fault[:-5] if fault.endswith("-live") else fault
        if base not in FAULTS:
            raise SystemExit(f"emulator.json: unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    return settings


def require_native_modules(settings: dict) -> None:
    """Like the real executable, which loads node-pty, ffi-rs and @ff-labs/fff-* from the
    node_modules its platform package bundles (bundleDependencies): each module named in
    `native_modules` must resolve the way Node resolves it, upwards from this file, or the start fails."""
    for name in settings.get("native_modules") or []:
        if not any((d / "node_modules" / name / "package.json").is_file() for d in (script_dir(), *script_dir().parents)):
            raise SystemExit(f"Error: Cannot find module '{name}' (a bundled native module of this build)")


def active_fault(settings: dict) -> str | None:
    """`X-live` faults act only when T3EMU_LIVE=1 (the test supervisor's production servers)."""
    fault = settings["fault"]
    if fault and fault.endswith("-live"):
        return fault[:-5] if os.environ.get("T3EMU_LIVE") == "1" else None
    return fault


CLOCK_OFFSET = timedelta(0)
DEBUG_LOGS = False  # T3CODE_LOG_LEVEL=Debug (or Trace, All): the real one then prints its DEBUG lines too
# The real 0.0.42 reads T3CODE_LOG_LEVEL with effect's Config.logLevel: exactly these, else it exits.
LOG_LEVELS = ("All", "Fatal", "Error", "Warn", "Info", "Debug", "Trace", "None")


def now() -> datetime:
    return datetime.now(UTC) + CLOCK_OFFSET


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


_log_counter = iter(range(1, 1 << 30))


def log(level: str, message: str, stream=None) -> None:
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    print(f"[{stamp}] {level} (#{next(_log_counter)}): {message}", file=stream or sys.stdout, flush=True)


def parse_ttl(text: str) -> timedelta:
    units = {"ms": 0.001, "millis": 0.001, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
             "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
             "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*", text)
    if not match or match.group(2) not in units:
        raise ValueError(text)
    return timedelta(seconds=float(match.group(1)) * units[match.group(2)])


# ---------------------------------------------------------------- state on disk


class Paths:
    def __init__(self, base_dir: str, settings: dict | None = None):
        self.base = Path(os.path.abspath(os.path.expanduser(base_dir)))
        self.userdata = self.base / "userdata"
        self.v1_db = self.userdata / "state.sqlite"
        self.v2_db = self.userdata / V2_DB
        # A V2 build (0.0.46-nightly.20261003.2610 on) reads and writes only statev2.sqlite.
        self.db = self.v2_db if (settings or {}).get("database") == "statev2" else self.v1_db
        self.owner = self.userdata / OWNER_DB
        self.secrets = self.userdata / "secrets"
        self.signing_key = self.secrets / "server-signing-key.bin"
        self.runtime = self.userdata / "server-runtime.json"
        self.environment_id = self.userdata / "environment-id"


_ED_P = 2**255 - 19
_ED_D = -121665 * pow(121666, _ED_P - 2, _ED_P) % _ED_P
_ED_B = (15112221349535400772501151409588531511454012693041857206046113283949847762202,
         46316835694926478169428394003475163141307993866256225615783033603165251855960)


def _ed25519_public(seed: bytes) -> bytes:
    """RFC 8032 public key of a 32-byte seed (stdlib only; one key per fresh base dir)."""
    p = _ED_P

    def add(a, b):  # extended coordinates; also doubles
        x1, y1, z1, t1 = a
        x2, y2, z2, t2 = b
        aa, bb = (y1 - x1) * (y2 - x2) % p, (y1 + x1) * (y2 + x2) % p
        cc, dd = 2 * t1 * t2 * _ED_D % p, 2 * z1 * z2 % p
        e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
        return (e * f % p, g * h % p, f * g % p, e * h % p)

    digest = hashlib.sha512(seed).digest()
    scalar = (int.from_bytes(digest[:32], "little") & ((1 << 254) - 8)) | (1 << 254)
    point, result = (_ED_B[0], _ED_B[1], 1, _ED_B[0] * _ED_B[1] % p), (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            result = add(result, point)
        point, scalar = add(point, point), scalar >> 1
    zinv = pow(result[2], p - 2, p)
    x, y = result[0] * zinv % p, result[1] * zinv % p
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def ed25519_key_pair_json() -> bytes:
    """cloud-link-ed25519-key-pair.bin as the real 0.0.42 writes it: JSON with PKCS#8 / SPKI PEM keys
    (270 bytes), so the real server can start on a base dir the emulator created."""
    seed = secrets.token_bytes(32)

    def pem(label: str, der: bytes) -> str:
        return f"-----BEGIN {label}-----\n{base64.b64encode(der).decode()}\n-----END {label}-----\n"

    private = pem("PRIVATE KEY", bytes.fromhex("302e020100300506032b657004220420") + seed)
    public = pem("PUBLIC KEY", bytes.fromhex("302a300506032b6570032100") + _ed25519_public(seed))
    return json.dumps({"privateKey": private, "publicKey": public}, separators=(",", ":")).encode()


def ensure_userdata(paths: Paths) -> None:
    for directory in (paths.userdata, paths.userdata / "logs", paths.userdata / "attachments",
                      paths.base / "worktrees", paths.base / "caches"):
        directory.mkdir(parents=True, exist_ok=True)
    paths.secrets.mkdir(mode=0o700, exist_ok=True)
    os.chmod(paths.secrets, 0o700)
    for name, make in (("server-signing-key.bin", lambda: secrets.token_bytes(32)),
                       ("cloud-link-ed25519-key-pair.bin", ed25519_key_pair_json)):
        target = paths.secrets / name
        if not target.exists():
            # get-or-create: a mint started beside the server (a rehearsal's copy has no cloud-* secret,
            # so both make the link key pair) keeps whichever was first: the real 0.0.42 copes there too
            # (its rehearsals pair, tests/test_rehearsal.py)
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as handle:
                handle.write(make())
    if not paths.environment_id.exists():
        paths.environment_id.write_text(f"{uuid.uuid4()}\n")


def connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=10, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


@contextlib.contextmanager
def connected(db: Path):
    conn = connect(db)
    try:
        yield conn
    finally:
        conn.close()


def applied_migrations(conn: sqlite3.Connection) -> list[int]:
    conn.execute(MIGRATIONS_TABLE)
    return [row[0] for row in conn.execute("SELECT migration_id FROM effect_sql_migrations ORDER BY 1")]


def migrate(conn: sqlite3.Connection, target: int, settings: dict | None = None) -> list[str]:
    """Apply the missing migrations up to `target`, forward only. Returns `N_Name` of each one applied.

    Like upstream's migrator, an id already recorded is skipped whatever name it was recorded under."""
    conn.execute("PRAGMA journal_mode = WAL")
    done = set(applied_migrations(conn))
    applied = []
    for migration_id in range(1, target + 1):
        if migration_id in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration_sql(migration_id):
                conn.execute(statement)
            conn.execute("INSERT INTO effect_sql_migrations (migration_id, name) VALUES (?, ?)",
                         (migration_id, migration_name(migration_id, settings)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(f"{migration_id}_{migration_name(migration_id, settings)}")
    return applied


def import_v1_state(paths: Paths, announce: bool) -> None:
    """First start of a V2 build: copy state.sqlite into statev2.sqlite once, only when statev2 is absent.

    As upstream's initializeV2Database: an SQLite backup into a `.v2-import-*` temp dir beside it, then a
    hard link (which fails rather than replace a statev2 that appeared meanwhile), then the temp dir goes.
    state.sqlite itself is never written again."""
    if paths.db != paths.v2_db or paths.v2_db.exists() or not paths.v1_db.exists():
        return
    import shutil
    import tempfile

    temporary = Path(tempfile.mkdtemp(prefix=".v2-import-", dir=paths.userdata))
    try:
        snapshot = temporary / "snapshot.sqlite"
        source = sqlite3.connect(f"{paths.v1_db.as_uri()}?mode=ro", uri=True)
        target = sqlite3.connect(snapshot)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        try:
            os.link(snapshot, paths.v2_db)
        except FileExistsError:
            pass
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    if announce:
        log("INFO", f"Imported {paths.v1_db.name} into {paths.v2_db.name}")


def diverged_history(conn: sqlite3.Connection, settings: dict) -> list[str]:
    """Recorded `id:name` pairs this build does not know under that name (upstream Migrations.ts)."""
    divergent = []
    for row in conn.execute("SELECT migration_id, name FROM effect_sql_migrations ORDER BY 1"):
        migration_id, name = int(row[0]), row[1]
        if migration_id > settings["migrations"]:
            continue  # a newer build's: said by the "newer than this server" warning
        expected = migration_name(migration_id, settings)
        if expected != name:
            divergent.append(f"{migration_id}:{name} (this build: {expected})")
    return divergent


def end_agent_turns(conn: sqlite3.Connection, state: str, due_before: float | None) -> int:
    """Turns still running end as `state`: `completed` once their time is up (`due_before`: now), or
    `interrupted` by a stop (`due_before` None: every one). The projections flip as the real server's
    would: the V1 session and turn rows, or the V2 run row."""
    conn.execute(AGENT_TURNS_TABLE)
    rows = conn.execute("SELECT thread_id, turn_id, tables FROM t3emu_agent_turns WHERE state = 'running'"
                        + ("" if due_before is None else " AND finishes_at <= ?"),
                        () if due_before is None else (due_before,)).fetchall()
    for thread_id, turn_id, tables in rows:
        stamp = iso(now())
        conn.execute("BEGIN IMMEDIATE")
        try:
            if tables == "v2":
                conn.execute("UPDATE orchestration_v2_projection_runs SET status = ?, updated_at = ? WHERE run_id = ?",
                             (state, stamp, turn_id))
            else:
                conn.execute("UPDATE projection_turns SET state = ?, completed_at = ? WHERE thread_id = ? AND turn_id = ?",
                             (state, stamp, thread_id, turn_id))
                conn.execute("UPDATE projection_thread_sessions SET status = ?, active_turn_id = NULL, updated_at = ? "
                             "WHERE thread_id = ?", ("ready" if state == "completed" else "interrupted", stamp, thread_id))
            conn.execute("UPDATE t3emu_agent_turns SET state = ? WHERE thread_id = ?", (state, thread_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(rows)


def drive_agent_turns(paths: Paths, stop: threading.Event) -> None:
    """`agent_turns`: finish each running turn when its time is up, until the server stops."""
    with connected(paths.db) as conn:
        while not stop.wait(0.1):
            try:
                end_agent_turns(conn, "completed", time.time())
            except sqlite3.Error:
                pass  # a busy database: the next tick


class HistoryRefused(Exception):
    pass


def open_state(paths: Paths, settings: dict, announce: bool) -> sqlite3.Connection:
    ensure_userdata(paths)
    import_v1_state(paths, announce)
    conn = connect(paths.db)
    conn.execute(MIGRATIONS_TABLE)
    divergent = diverged_history(conn, settings) if settings["history_check"] else []
    if divergent and settings["history_check"] == "refuse":
        conn.close()
        raise HistoryRefused(f"Unrecognized migration history at {divergent[0].split(' ', 1)[0]}")
    if divergent and announce:
        listing = ",\n".join(f"    '{item}'" for item in divergent)
        # 0.1.x words it otherwise (t3code-contract.md, "T3 Code 0.1.x": Migrations)
        said = ("Recognized legacy migration history; preserving recorded ids and replaying only guarded schema "
                "changes." if settings["history_check"] == "warn-legacy" else
                "Database migration history diverges from this build; recorded migration ids are skipped, "
                "not reconciled by name.")
        log("WARN", f"{said}\n  divergent: [\n{listing}\n  ]")
    applied = migrate(conn, settings["migrations"], settings)
    if settings.get("agent_turns"):
        for statement in (V2_AGENT_TABLES if paths.db == paths.v2_db else []) + [AGENT_TURNS_TABLE]:
            conn.execute(statement)
    newest = max(applied_migrations(conn), default=0)
    if announce and applied:
        listing = ",\n".join(f"    '{name}'" for name in applied)
        log("INFO", f"Migrations ran successfully\n  migrations: [\n{listing}\n  ]")
    elif announce and DEBUG_LOGS:  # upstream's runMigrations: Effect.logDebug when none ran
        log("DEBUG", "Database schema is current")
    if announce and newest > settings["migrations"]:
        # The real 0.0.42 says nothing here; the emulator says it so tests and demos can see it.
        log("WARN", f"Database is at migration {newest}, newer than this server ({settings['migrations']}); "
                    "starting anyway: data written by the newer version may be hidden or unreadable.")
    return conn


def grant_column(settings: dict) -> str:
    """What this build's code writes: `role` before the scopes migration, `scopes` from it on."""
    return "scopes" if settings["migrations"] >= SCOPES_MIGRATION else "role"


def new_credential() -> str:
    return "".join(secrets.choice(CREDENTIAL_ALPHABET) for _ in range(12))


def issue_pairing_link(conn: sqlite3.Connection, settings: dict, *, ttl: timedelta, subject: str,
                       label: str | None, admin: bool) -> dict:
    link_id, credential, created = str(uuid.uuid4()), new_credential(), now()
    column = grant_column(settings)
    grant = json.dumps(STARTUP_SCOPES if admin else CLIENT_SCOPES, separators=(",", ":")) \
        if column == "scopes" else ("owner" if admin else "client")
    conn.execute(
        f"INSERT INTO auth_pairing_links (id, credential, method, {column}, subject, label, created_at, expires_at)"
        " VALUES (?, ?, 'one-time-token', ?, ?, ?, ?, ?)",
        (link_id, credential, grant, subject, label, iso(created), iso(created + ttl)))
    return {"id": link_id, "credential": credential, "label": label, column: grant,
            "expiresAt": iso(created + ttl)}


def grant_of(row: sqlite3.Row) -> tuple[str, object]:
    if "scopes" in row.keys():
        return "scopes", json.loads(row["scopes"])
    return "role", row["role"]


# ---------------------------------------------------------------- cookies


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_cookie(key: bytes, payload: dict) -> str:
    body = b64(json.dumps(payload, separators=(",", ":")).encode())
    return body + "." + b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def verify_cookie(key: bytes, value: str) -> dict | None:
    body, _, signature = value.partition(".")
    expected = b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not signature or not hmac.compare_digest(signature, expected):
        return None
    try:
        payload = json.loads(unb64(body))
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def cookie_name(settings: dict, port: int, paths: Paths) -> str:
    if settings["era"] == "A":
        return "t3_session"
    # As the real 0.0.42: port and the first 12 hex digits of sha256(<base>/userdata).
    return f"t3_session_{port}_{hashlib.sha256(str(paths.userdata).encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------- the server


class Emulator:
    def __init__(self, settings: dict, paths: Paths, host: str, port: int):
        self.settings, self.paths, self.host, self.port = settings, paths, host, port
        self.fault = active_fault(settings)
        self.key = paths.signing_key.read_bytes()
        self.cookie_name = cookie_name(settings, port, paths)
        self.environment_id = paths.environment_id.read_text().strip()
        self.stopping = threading.Event()

    def db(self) -> sqlite3.Connection:
        return connect(self.paths.db)

    def served_version(self) -> str:
        if self.fault == "wrong-version":
            other = self.settings.get("reported_version")
            return other or ("0.0.41" if self.settings["version"] == "0.0.42" else "0.0.42")
        return self.settings["version"]

    def auth_descriptor(self) -> dict:
        methods = SESSION_METHODS if self.settings["era"] == "B" else SESSION_METHODS[:1]
        return {"policy": "loopback-browser", "bootstrapMethods": ["one-time-token"], "sessionMethods": methods,
                "sessionCookieName": self.cookie_name}

    def exchange_path(self) -> str | None:
        if self.fault == "renamed-endpoint":
            return None
        return "/api/auth/browser-session" if self.settings["era"] == "B" else "/api/auth/bootstrap"

    def issued_cookie_name(self) -> str:
        return self.cookie_name.replace("t3_session", "t3_auth", 1) if self.fault == "wrong-cookie-name" \
            else self.cookie_name

    def session_for(self, cookie_header: str | None) -> dict | None:
        """The live session a request's cookie names, or None."""
        if not cookie_header or self.fault == "cookie-not-accepted":
            return None
        value = None
        for part in cookie_header.split(";"):
            name, _, candidate = part.strip().partition("=")
            if name == self.cookie_name:
                value = candidate
        payload = verify_cookie(self.key, value) if value else None
        if not payload or payload.get("kind") != "session":
            return None
        with connected(self.paths.db) as conn:
            row = conn.execute("SELECT * FROM auth_sessions WHERE session_id = ?", (payload.get("sid"),)).fetchone()
        if row is None or row["revoked_at"] or parse_iso(row["expires_at"]) <= now():
            return None
        kind, grant = grant_of(row)
        return {kind: grant, "sessionMethod": row["method"], "expiresAt": row["expires_at"]}

    def redeem(self, credential: str, client_ip: str, user_agent: str) -> tuple[dict, str] | None:
        """Consume a one-time credential and store a session. Returns (response body, cookie value)."""
        conn = self.db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT * FROM auth_pairing_links WHERE credential = ? AND consumed_at IS NULL"
                               " AND revoked_at IS NULL", (credential,)).fetchone()
            if row is None or parse_iso(row["expires_at"]) <= now():
                conn.execute("ROLLBACK")
                return None
            issued = now()
            if self.fault != "reusable-credential":
                conn.execute("UPDATE auth_pairing_links SET consumed_at = ? WHERE id = ?", (iso(issued), row["id"]))
            kind, grant = grant_of(row)
            column = grant_column(self.settings)  # an older build on a newer schema fails here, as for real
            stored = json.dumps(grant, separators=(",", ":")) if column == "scopes" else grant
            session_id, expires = str(uuid.uuid4()), issued + SESSION_LIFETIME
            conn.execute(
                f"INSERT INTO auth_sessions (session_id, subject, {column}, method, issued_at, expires_at)"
                " VALUES (?, ?, ?, 'browser-session-cookie', ?, ?)",
                (session_id, row["subject"], stored, iso(issued), iso(expires)))
            if "client_ip_address" in [c[1] for c in conn.execute("PRAGMA table_info(auth_sessions)")]:
                device = "bot" if re.search(r"curl|python|httpx|wget", user_agent, re.I) else "unknown"
                conn.execute("UPDATE auth_sessions SET client_ip_address = ?, client_user_agent = ?,"
                             " client_device_type = ? WHERE session_id = ?",
                             (client_ip, user_agent or None, device, session_id))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        millis = int(issued.timestamp() * 1000)
        payload = {"v": 1, "kind": "session", "sid": session_id, "sub": row["subject"], kind: grant,
                   "method": "browser-session-cookie", "iat": millis, "exp": millis + int(SESSION_LIFETIME.total_seconds() * 1000)}
        body = {"authenticated": True, kind: grant, "sessionMethod": "browser-session-cookie", "expiresAt": iso(expires)}
        return body, sign_cookie(self.key, payload)


def make_handler(app: Emulator):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # the real server does not log requests
            pass

        def send_response(self, code, message=None) -> None:  # no `Server:` header, like the real one
            self.send_response_only(code, message)
            self.send_header("Date", self.date_time_string())

        def reply(self, status: int, body: bytes = b"", content_type: str | None = None,
                  headers: tuple = ()) -> None:
            self.send_response(status)
            if content_type:
                self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.send_header("access-control-allow-origin", "*")
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def reply_json(self, status: int, document: dict, headers: tuple = ()) -> None:
            self.reply(status, json.dumps(document, separators=(",", ":")).encode(), "application/json", headers)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/.well-known/t3/environment":
                return self.environment()
            if path == "/api/auth/session":
                return self.session()
            # Everything else is the web app, as for real: `/`, `/health`, `/api/health` all answer 200.
            self.reply(200, INDEX_HTML, "text/html; charset=utf-8", (("cache-control", "no-cache"),))

        do_HEAD = do_GET

        def environment(self) -> None:
            if app.fault == "env-hangs":
                app.stopping.wait()
                return
            if app.fault == "never-ready":
                return self.reply_json(503, {"_tag": "ServiceUnavailable", "message": "server is starting"})
            self.reply_json(200, {
                "environmentId": app.environment_id, "label": socket.gethostname(),
                "platform": {"os": "linux", "arch": "x64"}, "serverVersion": app.served_version(),
                "capabilities": CAPABILITIES,
                **({"orchestrationProtocolVersion": app.settings["protocol_version"]}
                   if app.settings.get("protocol_version") is not None else {})})

        def session(self) -> None:
            found = app.session_for(self.headers.get("Cookie"))
            document = {"authenticated": found is not None, "auth": app.auth_descriptor()}
            self.reply_json(200, {**document, **(found or {})})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            if path != app.exchange_path():
                return self.reply(404)
            content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            if content_type and content_type != "application/json":
                return self.reply(415, f"Unsupported content-type: {content_type}".encode(), "text/plain")
            try:
                document = json.loads(raw or b"null")
            except ValueError:
                return self.reply(400)
            credential = document.get("credential") if isinstance(document, dict) else None
            if not isinstance(credential, str) or not credential:
                return self.reply(400)
            if app.fault == "exchange-500":
                return self.reply_json(500, {"_tag": "InternalServerError", "traceId": secrets.token_hex(16)})
            try:
                redeemed = app.redeem(credential, self.client_address[0], self.headers.get("User-Agent") or "")
            except sqlite3.Error as error:
                log("ERROR", f"Failed to exchange a pairing credential: {error}")
                return self.reply_json(500, {"_tag": "PersistenceSqlError", "traceId": secrets.token_hex(16)})
            if redeemed is None:
                return self.reply_json(401, {"_tag": "EnvironmentAuthInvalidError", "code": "auth_invalid",
                                             "reason": "invalid_credential", "traceId": secrets.token_hex(16)})
            body, value = redeemed
            headers = [("cache-control", "no-store"), ("pragma", "no-cache")]
            if app.fault in ("no-cookie", "no-cache-headers"):
                # upstream issue 7756: a second copy of a library in the bundle dropped every pre-response
                # handler, so the cookie went together with these headers
                headers = []
            if app.fault == "no-cookie":  # a pass without a session
                return self.reply_json(200, {"authenticated": True}, tuple(headers))
            expires = email.utils.formatdate(parse_iso(body["expiresAt"]).timestamp(), usegmt=True)
            headers.append(("set-cookie", f"{app.issued_cookie_name()}={value}; Path=/; Expires={expires};"
                                          " HttpOnly; SameSite=Lax"))
            self.reply_json(200, body, tuple(headers))

    return Handler


class StateDirOwned(Exception):
    pass


def acquire_ownership(paths: Paths) -> tuple[sqlite3.Connection, str]:
    """As upstream's serverOwnership.ts: an exclusive transaction on server-owner.sqlite, held for the
    server's life (the OS drops it on any exit; the file is never deleted), and a legacy
    server-runtime.json without an ownerId whose pid is alive also owns the state dir."""
    paths.userdata.mkdir(parents=True, exist_ok=True)
    owner = sqlite3.connect(paths.owner, timeout=0, isolation_level=None, check_same_thread=False)
    try:
        owner.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError:
        owner.close()
        raise StateDirOwned(f"ServerAlreadyRunningError: A T3 Code server already owns {paths.userdata}. Stop that "
                            "server, or use a separate T3 home and pair with it, then retry. No server was stopped.") from None
    try:
        previous = json.loads(paths.runtime.read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and previous.get("ownerId") is None and isinstance(previous.get("pid"), int) \
            and previous["pid"] != os.getpid() and pid_alive(previous["pid"]):
        owner.close()
        raise StateDirOwned(f"T3_STATE_DIR_OWNED: {paths.runtime} names a live server (pid {previous['pid']})")
    return owner, str(uuid.uuid4())


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


RECORD_PREFIX = "t3emu record: "


def record_env(settings: dict, command: str, base_dir: str, **more: object) -> None:
    """Tests: which T3CODE_* variables reached this process, and what else `more` says (append-only
    JSON lines)."""
    if settings.get("env_record"):
        seen = {k: v for k, v in os.environ.items() if k.startswith("T3CODE_")}
        line = json.dumps({"command": command, "pid": os.getpid(), "base_dir": base_dir, "env": seen, **more})
        # Also in its own output: a confined rehearsal's file lands in its private /tmp, or nowhere.
        print(f"{RECORD_PREFIX}{line}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError), open(settings["env_record"], "a") as handle:
            handle.write(line + "\n")


def record_database_seen(settings: dict, paths: Paths) -> None:
    """Tests: the migration ids in the database when this process first opened it (before migrating)."""
    if settings.get("env_record") and paths.db.exists():
        conn = sqlite3.connect(paths.db)
        try:
            ids = [row[0] for row in conn.execute("SELECT migration_id FROM effect_sql_migrations ORDER BY 1")]
        except sqlite3.Error:
            ids = []
        finally:
            conn.close()
        record_env(settings, "auth pairing create: database opened", str(paths.base), migrations=ids,
                   at=time.monotonic())


def start_refusal(fault: str | None, paths: Paths) -> str | None:
    """The 0.1.x refusal a `refuse-*` fault stands for, worded as the contract gives its start."""
    home = paths.base
    return {
        "refuse-owned": f"A T3 Code server already owns {home}. Finish active agent work, stop that server, then "
                        "retry.",
        "refuse-service": f"A background service for this T3 home ({home}) runs an older T3 Code version. Update "
                          "or uninstall it with `t3 service`, then retry.",
        "refuse-update-pending": f"An interrupted server update requires recovery at {paths.userdata / 'server-update-pending'}. "
                                 "Run `t3 update` to recover it.",
    }.get(fault or "")


# ---------------------------------------------------------------- agents at boot


PROVIDER_COMMANDS = {"codex": "codex", "claudeAgent": "claude"}  # settings name -> CLI on PATH
CONTINUE_PROMPT = "Continue where you left off."
CLOUD_CONFIG = "cloud-endpoint-runtime-config.bin"  # {"relays": ["host:port", ...]} (the emulator's shape)


class Agents:
    """What the server started on the world, ended at stop like the real one ends its codex app-server."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.children: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], cwd: Path | str, why: str) -> None:
        try:  # its own process group, as the real one starts `codex app-server`
            child = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as error:
            log("WARN", f"agents: {why}: could not start {' '.join(argv)} in {cwd}: {error}")
            return
        self.children.append(child)
        log("INFO", f"agents: {why}: started {' '.join(argv)} in {cwd} (pid {child.pid})")

    def stop(self) -> None:
        for child in self.children:
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGTERM)


def user_settings(paths: Paths) -> dict:
    try:
        doc = json.loads((paths.userdata / "settings.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _is_on(value: object, default: bool) -> bool:
    return default if value is None else value is True


def _rows(conn: sqlite3.Connection, query: str) -> list[tuple]:
    try:
        return conn.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []  # a state without that table (0.0.42 has no scheduled tasks)


def start_providers(agents: Agents, doc: dict) -> None:
    """0.0.42, run: the provider CLIs start at boot, no thread open, unless every one is disabled."""
    providers = doc.get("providers") if isinstance(doc.get("providers"), dict) else {}
    wanted = [name for name in PROVIDER_COMMANDS
              if not (isinstance(providers.get(name), dict) and providers[name].get("enabled") is False)]
    instances = doc.get("providerInstances") if isinstance(doc.get("providerInstances"), dict) else {}
    wanted += [i["provider"] for i in instances.values() if isinstance(i, dict) and i.get("enabled") is not False
               and i.get("provider") in PROVIDER_COMMANDS and i["provider"] not in wanted]
    for name in wanted:
        argv = ["codex", "app-server"] if name == "codex" else ["claude", "--version"]
        agents.spawn(argv, os.getcwd(), f"provider {name}")
    if _is_on(doc.get("enableProviderUpdateChecks"), True):
        for command in PROVIDER_COMMANDS.values():
            agents.spawn([command, "--version"], os.getcwd(), "provider update check")


def continue_turns(agents: Agents, conn: sqlite3.Connection, doc: dict) -> None:
    """A running turn with a resume cursor is continued when the setting (default on, as upstream's
    current docs say) or the row's marker says so, in the project's directory."""
    overrides = doc.get("projectSettingsOverrides") if isinstance(doc.get("projectSettingsOverrides"), dict) else {}
    for thread_id, provider, payload, project_id, root in _rows(conn, """
            SELECT r.thread_id, r.provider_name, r.runtime_payload_json, p.project_id, p.workspace_root
              FROM provider_session_runtime r JOIN projection_threads t ON t.thread_id = r.thread_id
              JOIN projection_projects p ON p.project_id = t.project_id
              JOIN projection_thread_sessions s ON s.thread_id = r.thread_id
             WHERE s.status IN ('running', 'starting') AND s.active_turn_id IS NOT NULL
               AND r.resume_cursor_json IS NOT NULL"""):
        try:
            marker = json.loads(payload or "{}").get("continueAfterServerUpdate") is True
        except (ValueError, AttributeError):
            marker = False
        project = overrides.get(project_id) if isinstance(overrides.get(project_id), dict) else {}
        setting = project.get("continueThreadsAfterServerUpdate", doc.get("continueThreadsAfterServerUpdate"))
        if marker or _is_on(setting, True):
            command = PROVIDER_COMMANDS.get(provider, provider)
            agents.spawn([command, "exec", CONTINUE_PROMPT], root, f"continuation of {thread_id}")


def pull_projects(conn: sqlite3.Connection, doc: dict) -> None:
    overrides = doc.get("projectSettingsOverrides") if isinstance(doc.get("projectSettingsOverrides"), dict) else {}
    legacy = doc.get("projectAutoPullOverrides") if isinstance(doc.get("projectAutoPullOverrides"), dict) else {}
    for project_id, root, column in _rows(conn, "SELECT project_id, workspace_root, auto_pull FROM projection_projects"
                                                " WHERE deleted_at IS NULL"):
        project = overrides.get(project_id) if isinstance(overrides.get(project_id), dict) else {}
        on = column == 1 or legacy.get(project_id) is True or project.get("autoPull") is True or (
            "autoPull" not in project and _is_on(doc.get("defaultAutoPull"), False))
        if not on:
            continue
        try:
            done = subprocess.run(["git", "-C", root, "pull", "--ff-only"], capture_output=True, text=True, timeout=30)
            log("INFO", f"agents: auto-pull of {root}: git exited {done.returncode} {done.stderr.strip()[-200:]}")
        except (OSError, subprocess.TimeoutExpired) as error:
            log("WARN", f"agents: auto-pull of {root}: {error}")


def run_scheduled_tasks(agents: Agents, conn: sqlite3.Connection) -> None:
    for task_id, root in _rows(conn, "SELECT t.task_id, p.workspace_root FROM scheduled_tasks t JOIN projection_projects"
                                     " p ON p.project_id = t.project_id WHERE t.enabled = 1"):
        agents.spawn(["codex", "exec", f"scheduled task {task_id}"], root, f"scheduled task {task_id}")


def replay_outbox(agents: Agents, conn: sqlite3.Connection) -> None:
    for effect_id, kind, root in _rows(conn, "SELECT effect_id, kind, workspace_root FROM orchestration_v2_effect_outbox"
                                             " WHERE status IN ('pending', 'running')"):
        agents.spawn(["codex", "exec", f"effect {kind}"], root, f"effect {effect_id} ({kind})")
        conn.execute("UPDATE orchestration_v2_effect_outbox SET status = 'done' WHERE effect_id = ?", (effect_id,))


def cloud_link(paths: Paths, what: str) -> None:
    """T3 Connect: with the user's cloud secrets, tell each relay this environment is here now (and,
    on stop, that its tunnel goes)."""
    try:
        config = json.loads((paths.secrets / CLOUD_CONFIG).read_bytes())
        environment_id = paths.environment_id.read_text().strip()
    except (OSError, ValueError):
        return  # no T3 Connect secrets: nothing to link
    for relay in config.get("relays", []):
        host, _, port = str(relay).rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=3) as connection:
                connection.sendall(f"{what} {environment_id}\n".encode())
            log("INFO", f"agents: T3 Connect {what} sent to {relay}")
        except (OSError, ValueError) as error:
            log("WARN", f"agents: T3 Connect {what} to {relay} failed: {error}")


def act_at_boot(settings: dict, paths: Paths) -> Agents:
    """In the real one's order, before HTTP: providers, continuation, auto-pull (then V2's tasks and
    outbox, and T3 Connect), each only when its flag is on."""
    agents = Agents(paths)
    doc = user_settings(paths)
    if settings["boot_providers"]:
        start_providers(agents, doc)
    if any(settings[flag] for flag in ("continuation", "auto_pull", "scheduled_tasks", "effect_outbox")):
        with connected(paths.db) as conn:
            if settings["continuation"]:
                continue_turns(agents, conn, doc)
            if settings["auto_pull"]:
                pull_projects(conn, doc)
            if settings["scheduled_tasks"]:
                run_scheduled_tasks(agents, conn)
            if settings["effect_outbox"]:
                replay_outbox(agents, conn)
    if settings["cloud_connect"]:
        cloud_link(paths, "link")
    return agents


def serve(args: argparse.Namespace, settings: dict) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    record_env(settings, "serve", args.base_dir)
    fault = active_fault(settings)
    paths = Paths(args.base_dir, settings)
    refusal = start_refusal(fault, paths)
    if refusal is not None:
        log("ERROR", refusal, stream=sys.stderr)
        return REFUSAL_EXIT
    owner, owner_id = None, None
    if settings["ownership_lock"]:
        try:
            owner, owner_id = acquire_ownership(paths)
        except StateDirOwned as error:
            log("ERROR", str(error), stream=sys.stderr)
            return 1
    try:
        return _serve(args, settings, fault, paths, stop, owner_id)
    finally:
        if owner is not None:
            owner.close()  # releases the lock; server-owner.sqlite itself stays, as upstream's


def _serve(args: argparse.Namespace, settings: dict, fault: str | None, paths: Paths, stop: threading.Event,
           owner_id: str | None) -> int:
    # The real one starts for ~1.2 s (V8 and its bundle) before it opens the database.
    if stop.wait(float(settings.get("boot_delay_s") or 0)):
        return 0
    try:
        open_state(paths, settings, announce=True).close()
    except HistoryRefused as error:
        log("ERROR", f"Server failed to start\n  cause: {error}", stream=sys.stderr)
        return 1
    if fault == "crash-on-start":
        log("ERROR", "Server failed to start\n  cause: Error: emulated crash-on-start (the database was "
                     "already migrated)", stream=sys.stderr)
        return 1
    agents = act_at_boot(settings, paths)
    try:
        return _listen(args, settings, fault, paths, stop, owner_id)
    finally:
        agents.stop()
        if settings["cloud_connect"]:
            cloud_link(paths, "unlink")  # the real one deletes the user's managed tunnel on stop


def _listen(args: argparse.Namespace, settings: dict, fault: str | None, paths: Paths, stop: threading.Event,
            owner_id: str | None) -> int:
    if stop.wait(float(settings.get("start_delay_s") or 0)):
        return 0
    try:
        httpd = ThreadingHTTPServer((args.host, args.port), None)
    except OSError as error:
        log("ERROR", f"Failed to listen on {args.host}:{args.port}: {error}", stream=sys.stderr)
        return 1
    app = Emulator(settings, paths, args.host, args.port)
    httpd.RequestHandlerClass = make_handler(app)
    httpd.daemon_threads = True
    origin = f"http://{args.host}:{args.port}"
    runtime = {"version": 1, "pid": os.getpid(), "host": args.host, "port": args.port, "origin": origin,
               "startedAt": iso(now())}
    if owner_id is not None:
        runtime["ownerId"] = owner_id
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    agents_stop = threading.Event()
    if settings.get("agent_turns"):
        threading.Thread(target=drive_agent_turns, args=(paths, agents_stop), daemon=True).start()
    try:
        # The socket listens from here; requests wait in the backlog until the ready lines are out, so a
        # client that saw the environment answer can rely on the Token line being printed.
        log("INFO", f"Listening on {origin}")
        paths.runtime.write_text(json.dumps(runtime, separators=(",", ":")))
        if fault != "never-ready":
            token = None
            try:
                with connected(paths.db) as conn:
                    token = issue_pairing_link(conn, settings, ttl=STARTUP_TOKEN_TTL,
                                               subject="administrative-bootstrap", label=None, admin=True)
            except sqlite3.Error as error:
                log("ERROR", f"Failed to issue the startup pairing token: {error}")
            print("T3 Code server is ready.", flush=True)
            print(f"Connection string: {origin}", flush=True)
            if token:
                print(f"Token: {token['credential']}", flush=True)
                print(f"Pairing URL: {origin}/pair#token={token['credential']}", flush=True)
        thread.start()
        while not stop.wait(0.5):
            pass
        # a slow graceful shutdown: still serving (and owning the state dir) for a while after SIGTERM
        time_left = float(settings.get("stop_delay_s") or 0)
        if time_left:
            threading.Event().wait(time_left)
    finally:
        app.stopping.set()
        if thread.is_alive():
            httpd.shutdown()
        httpd.server_close()
        try:
            paths.runtime.unlink()
        except FileNotFoundError:
            pass
        agents_stop.set()
        with connected(paths.db) as conn:
            if settings.get("agent_turns"):  # a stop interrupts every turn still running
                end_agent_turns(conn, "interrupted", None)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return 0


def pairing_create(args: argparse.Namespace, settings: dict) -> int:
    record_env(settings, "auth pairing create", args.base_dir)
    if active_fault(settings) == "mint-fails":
        print("\nERROR\n  AuthControlPlaneError: emulated mint-fails: could not issue a pairing token", file=sys.stderr)
        return 1
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError:
        print(f'\nERROR\n  Invalid value for flag --ttl: "{args.ttl}". Expected: Schema validation failed: '
              "Invalid duration. Use values like 5m, 1h, 30d, or 15 minutes.", file=sys.stderr)
        return 1
    paths = Paths(args.base_dir, settings)
    record_database_seen(settings, paths)
    try:
        conn = open_state(paths, settings, announce=False)
    except HistoryRefused as error:
        print(f"\nERROR\n  {error}", file=sys.stderr)
        return 1
    try:
        link = issue_pairing_link(conn, settings, ttl=ttl, subject="one-time-token", label=args.label, admin=False)
    except sqlite3.Error as error:
        print(f"\nERROR\n  PersistenceSqlError: {error}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if link["label"] is None:
        del link["label"]  # the real 0.0.42 leaves `label` out when none was given
    if args.json:
        print(json.dumps(link, separators=(",", ":")))
    else:
        print(f"Issued client pairing token {link['id']}.\nToken: {link['credential']}\n"
              f"Expires at: DateTime.Utc({link['expiresAt']})")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="t3", description="T3 Code server emulator")
    parser.add_argument("--version", "-v", action="store_true")
    commands = parser.add_subparsers(dest="command")
    # V2-era builds: every serve flag falls back to a T3CODE_* variable (the flag wins when given).
    env = os.environ
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("--host", default=env.get("T3CODE_HOST", "127.0.0.1"))
    serve_parser.add_argument("--port", type=int, default=int(env["T3CODE_PORT"]) if env.get("T3CODE_PORT") else None)
    serve_parser.add_argument("--base-dir", default=env.get("T3CODE_HOME", "~/.t3"))
    serve_parser.add_argument("--no-browser", action="store_true", default=env.get("T3CODE_NO_BROWSER") == "1")
    serve_parser.add_argument("--mode", choices=("web", "desktop"), default=env.get("T3CODE_MODE", "web"))
    auth = commands.add_parser("auth").add_subparsers(dest="auth_command", required=True)
    pairing = auth.add_parser("pairing").add_subparsers(dest="pairing_command", required=True)
    create = pairing.add_parser("create")
    create.add_argument("--base-dir", default=os.environ.get("T3CODE_HOME", "~/.t3"))
    create.add_argument("--ttl", default="5m")
    create.add_argument("--label")
    create.add_argument("--base-url")
    create.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.version and args.command is None:
        parser.error("a subcommand is required")
    if args.command == "serve" and args.port is None:
        parser.error("--port is required (or T3CODE_PORT)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings()
    require_native_modules(settings)
    global CLOCK_OFFSET, DEBUG_LOGS
    CLOCK_OFFSET = timedelta(seconds=float(settings.get("clock_offset_s") or 0))
    level = os.environ.get("T3CODE_LOG_LEVEL", "Info")
    if level not in LOG_LEVELS:
        expected = " | ".join(f'"{name}"' for name in LOG_LEVELS if name != level)
        log("ERROR", f'ConfigError: SchemaError(Expected {expected}\n  at ["T3CODE_LOG_LEVEL"])')
        return 1
    DEBUG_LOGS = level in ("All", "Trace", "Debug")
    if args.version:
        print(f"t3 v{settings['version']}")
        return 0
    if args.command == "serve":
        return serve(args, settings)
    return pairing_create(args, settings)


if __name__ == "__main__":
    sys.exit(main())
