"""Terminal output: rich tables on a terminal, plain lines otherwise (journald), JSON for scripts.

Only the CLI uses this module; the core never prints. rich is imported only when a terminal will
show it, so plain runs (the timer, pipes, `--json`) start fast.

Output is never a reason to stop a transaction (dpkg and apt ignore EPIPE/EIO on their progress): a
stream that fails once (a closed pipe, `| head`, /dev/full, a dead terminal, a closed descriptor) is
dropped for the rest of the run, and its descriptor pointed at /dev/null so that nothing later (a
swap's progress, Python's own flush at exit) fails on it again. The swap goes on, the run is recorded.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from t3track.results import to_jsonable

_dropped: set[str] = set()  # "stdout", "stderr": streams that failed once this run


def _stream(name: str) -> TextIO | None:
    return None if name in _dropped else getattr(sys, name)


def _drop(name: str) -> None:
    """Never write to this stream again, and make its descriptor /dev/null: the bytes still buffered
    (and Python's flush at exit) then go nowhere instead of raising "Exception ignored ... BrokenPipe"."""
    _dropped.add(name)
    stream = getattr(sys, name)
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    except (AttributeError, OSError, ValueError):  # no stream, no descriptor: nothing left to fail
        setattr(sys, name, None)


def emit(name: str, text: str) -> None:
    """Write and flush `text` on sys.stdout or sys.stderr; a failure drops the stream (see above)."""
    stream = _stream(name)
    if stream is None:
        return
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # EPIPE, EIO, ENOSPC; ValueError: the stream was closed
        _drop(name)


def settle_streams() -> None:
    """At exit: flush what is left, dropping a stream that fails (Python's own flush then has nothing to say)."""
    for name in ("stdout", "stderr"):
        stream = _stream(name)
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                _drop(name)


def ensure_std_descriptors() -> None:
    """Descriptors 0-2 closed at start (`t3track run >&- 2>&-`) become /dev/null: otherwise the next
    file t3track opens (the lock, state.json) would take descriptor 1 or 2 and receive the output."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:  # lower descriptors are open, so it took `fd`; otherwise put it there
            os.dup2(null, fd)
            os.close(null)
        if name != "stdin":
            _dropped.add(name)


class Out:
    def __init__(self, as_json: bool):
        self.as_json = as_json

    @property
    def rich(self) -> bool:
        stream = _stream("stdout")
        try:
            return stream is not None and stream.isatty() and not self.as_json
        except (OSError, ValueError):
            return False

    def json(self, document: Any) -> None:
        emit("stdout", json.dumps(to_jsonable(document), indent=2, sort_keys=False) + "\n")

    def line(self, text: str = "", *, priority: int | None = None) -> None:
        """A line on stdout. `priority` (syslog: 2 crit, 3 err, 4 warning) is given to journald as a
        `<N>` prefix when running under systemd, so `journalctl -p err` finds the line."""
        if not self.as_json:
            prefix = f"<{priority}>" if priority is not None and os.environ.get("JOURNAL_STREAM") else ""
            emit("stdout", prefix + text + "\n")

    def info(self, text: str) -> None:
        """Progress for long steps: always to stderr, so --json stdout stays one document."""
        emit("stderr", text + "\n")

    def error(self, text: str) -> None:
        # under systemd, <3> makes journald store the line at priority err
        prefix = "<3>" if os.environ.get("JOURNAL_STREAM") else ""
        emit("stderr", f"{prefix}error: {text}\n")

    def warning(self, text: str) -> None:
        prefix = "<4>" if os.environ.get("JOURNAL_STREAM") else ""
        emit("stderr", f"{prefix}warning: {text}\n")

    def hint(self, text: str) -> None:
        emit("stderr", f"  {text}\n")

    def fields(self, rows: list[tuple[str, str]]) -> None:
        """Label/value lines, labels padded to one column."""
        width = max((len(label) for label, _ in rows), default=0) + 2
        for label, value in rows:
            self.line(f"{label:<{width}}{value}")

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.as_json:
            return
        if self.rich:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            cells = [["" if v is None else str(v) for v in row] for row in rows]
            for i, column in enumerate(columns):
                if i == len(columns) - 1:  # the free text (a reason, the details) wraps
                    table.add_column(column, overflow="fold")
                else:  # identifiers (versions, users, files) are never cut: two denied versions stay apart
                    widest = max([len(column), *(len(row[i]) for row in cells)])
                    table.add_column(column, no_wrap=True, min_width=widest)
            for row in cells:
                table.add_row(*row)
            try:
                Console(soft_wrap=True, highlight=False, no_color=bool(os.environ.get("NO_COLOR")) or None).print(table)
            except (OSError, ValueError):
                _drop("stdout")
        else:
            self.line(f"{title}:")
            for row in rows:
                self.line("  " + "  ".join(f"{c}={'' if v is None else v}" for c, v in zip(columns, row)))


def details(event: dict[str, Any], skip: set[str]) -> str:
    """A history event's fields as `key=value` text: lists joined with commas, empty values left out."""
    parts = []
    for key, value in event.items():
        if key in skip or value in (None, "", [], {}):
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ",".join(f"{k}:{v}" for k, v in value.items())
        parts.append(f"{key}={value}")
    return " ".join(parts)


def events_table(out: Out, title: str, events: list[dict[str, Any]], *, with_by: bool) -> None:
    skip = {"at", "event", "by"} if with_by else {"at", "event", "by", "run_id", "gates"}
    columns = ["at", "event", "by", "details"] if with_by else ["at", "event", "details"]
    out.table(title, columns, [[e.get("at"), e.get("event"), *([e.get("by") or ""] if with_by else []),
                                details(e, skip)] for e in events])


def gates_table(out: Out, gates: list[Any]) -> None:
    """Gate results, from a report or read back from its result.json (the same JSON shape)."""
    rows = [to_jsonable(g) for g in gates]
    out.table("gates", ["gate", "user", "outcome", "time", "detail"],
              [[g.get("name"), g.get("user"), g.get("outcome"), f"{g.get('duration_s') or 0:.1f}s", g.get("detail")]
               for g in rows])


def steps_table(out: Out, steps: list[Any]) -> None:
    rows = [to_jsonable(s) for s in steps]
    out.table("steps", ["step", "at", "time"],
              [[s.get("name"), f"+{s.get('at_s') or 0:.2f}s", f"{s.get('duration_s') or 0:.2f}s"] for s in rows])


def render_run(out: Out, report: Any) -> int:
    """A run's report (night, dry run, adopt, revert, drill): its notes, gates and verdict; returns its exit code."""
    if out.as_json:
        out.json(report)
    else:
        if report.recovered:
            out.line(f"recovered: {report.recovered}")
        for note in report.notes:
            out.line(f"  note: {note}")
        if report.gates:
            gates_table(out, report.gates)
        for held in getattr(report, "held", None) or []:
            out.line(f"held: {held.reason}: {held.user} ({', '.join(held.what)}; {len(held.threads)} thread(s)) "
                     "stays on the old version tonight")
        verb = "dry-run" if report.dry_run else str(report.outcome)
        # the verdict of a run that fails the unit is an error in the journal, a critical one crit
        code = int(report.exit_code)
        out.line(f"{verb}: {report.reason}", priority=None if code in (0, 75) else 2 if code == 4 else 3)
        if report.evidence:
            out.line(f"evidence: {report.evidence}")
    return int(report.exit_code)
