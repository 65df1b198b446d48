"""T3 Code's state database, as t3track knows it: the file names and the migrations table
(t3code-contract.md). Backups, the sandbox, status and the gates all read the same facts here."""

from __future__ import annotations

from dataclasses import dataclass

MAIN_DB = "state.sqlite"
V2_DB = "statev2.sqlite"
# Either or both: V2 builds copy state.sqlite into statev2.sqlite once (state.sqlite then stays frozen),
# and a host first installed on a V2 build has statev2.sqlite alone.
DB_FILES = (MAIN_DB, V2_DB)
DATABASES = (V2_DB, MAIN_DB)  # the one a server uses first: newer builds move to statev2
MIGRATIONS_TABLE = "effect_sql_migrations"


@dataclass(frozen=True)
class Migration:
    """One row of effect_sql_migrations (read by t3track.host.sqlite, or by the owner's child)."""

    id: int
    name: str

    @property
    def label(self) -> str:
        """`31_AuthAuthorizationScopes`, as T3 Code's startup log lists them."""
        return f"{self.id}_{self.name}"
