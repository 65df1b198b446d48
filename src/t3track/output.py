"""Terminal output: rich tables on a terminal, plain lines otherwise (journald), JSON for scripts.

Only the CLI uses this module; the core never prints.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Under systemd (JOURNAL_STREAM) or a pipe: no colour, no wrapping of long log lines.
    return Console(file=stream, soft_wrap=True, highlight=False,
                   no_color=bool(os.environ.get("NO_COLOR")) or None)


class Out:
    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.console = _console()
        self.err = _console(stderr=True)

    @property
    def rich(self) -> bool:
        return self.console.is_terminal and not self.as_json

    def json(self, document: Any) -> None:
        sys.stdout.write(json.dumps(document, indent=2, default=str, sort_keys=False) + "\n")

    def line(self, text: str = "", *, priority: int | None = None) -> None:
        """A line on stdout. `priority` (syslog: 2 crit, 3 err, 4 warning) is given to journald as a
        `<N>` prefix when running under systemd, so `journalctl -p err` finds the line."""
        if not self.as_json:
            prefix = f"<{priority}>" if priority is not None and os.environ.get("JOURNAL_STREAM") else ""
            self.console.print(prefix + text, markup=False)

    def info(self, text: str) -> None:
        """Progress for long steps: always to stderr, so --json stdout stays one document."""
        self.err.print(text, markup=False)

    def error(self, text: str) -> None:
        prefix = "<3>" if os.environ.get("JOURNAL_STREAM") else ""
        self.err.print(f"{prefix}error: {text}", markup=False)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.as_json:
            return
        if self.rich:
            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*["" if v is None else str(v) for v in row])
            self.console.print(table)
        else:
            self.console.print(f"{title}:", markup=False)
            for row in rows:
                self.console.print("  " + "  ".join(f"{c}={'' if v is None else v}" for c, v in zip(columns, row)),
                                   markup=False)


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"
