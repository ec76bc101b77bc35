"""``rollbackd journal migrate``: a SQLite journal copied into PostgreSQL whole.

Everything is copied (incidents with their decisions, steps, evidence and samples; alerts,
webhook deliveries, deploy events), keeping every number and time, in one transaction: the
target holds all of it or none. A target that already holds a journal is refused (its
numbers would collide with those copied). The SQLite file is read in one read transaction,
a consistent snapshot, after bringing its schema up to date as the daemon would.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollbackd.errors import JournalError
from rollbackd.journal.codec import decode_time
from rollbackd.journal.postgresql import PostgresJournal
from rollbackd.journal.postgresql.database import json_text
from rollbackd.journal.postgresql.schema import TABLES_WITH_IDS
from rollbackd.journal.sqlite import SqliteJournal


class TargetNotEmpty(JournalError):  # noqa: N818 -- names the condition
    """The PostgreSQL journal already holds incidents, deliveries or deploys."""


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    times: frozenset[str] = frozenset()
    json: frozenset[str] = frozenset()
    read_as: dict[str, str] | None = None
    """SQL to read a column with, where it is not the column itself."""


_TABLES = (
    _Table(
        "incidents",
        (
            "id",
            "service",
            "opened_at",
            "closed_at",
            "state",
            "severity",
            "action",
            "origin",
            "target",
            "current_version",
            "reason",
            "summary",
            "facts",
            "updated_at",
        ),
        times=frozenset({"opened_at", "closed_at", "updated_at"}),
        json=frozenset({"facts"}),
        read_as={"updated_at": "COALESCE(updated_at, closed_at, opened_at)"},
    ),
    _Table(
        "decisions",
        (
            "id",
            "incident_id",
            "time",
            "actor",
            "action",
            "proposed",
            "severity",
            "rules",
            "reason",
            "approver",
            "deadline",
            "guards",
            "value",
            "target",
        ),
        times=frozenset({"time", "deadline"}),
        json=frozenset({"rules", "guards"}),
    ),
    _Table(
        "steps",
        (
            "id",
            "incident_id",
            "name",
            "started_at",
            "finished_at",
            "outcome",
            "summary",
            "output",
            "data",
        ),
        times=frozenset({"started_at", "finished_at"}),
        json=frozenset({"data"}),
    ),
    _Table(
        "evidence",
        ("id", "incident_id", "time", "kind", "body"),
        times=frozenset({"time"}),
        json=frozenset({"body"}),
    ),
    _Table("samples", ("incident_id", "time", "series", "value"), times=frozenset({"time"})),
    _Table(
        "alerts",
        (
            "fingerprint",
            "starts_at",
            "status",
            "ends_at",
            "service",
            "name",
            "labels",
            "annotations",
            "first_received",
            "last_received",
        ),
        times=frozenset({"starts_at", "ends_at", "first_received", "last_received"}),
        json=frozenset({"labels", "annotations"}),
    ),
    _Table(
        "deliveries",
        ("id", "received_at", "source", "group_key", "status", "alerts", "duplicates", "body"),
        times=frozenset({"received_at"}),
    ),
    _Table(
        "deploys",
        ("id", "service", "version", "ref", "time", "migrations", "received_at"),
        times=frozenset({"time", "received_at"}),
        json=frozenset({"migrations"}),
    ),
)


def copy_sqlite(source: Path, target: PostgresJournal) -> dict[str, int]:
    """Copy the SQLite journal at ``source`` into ``target``; rows copied, by table.

    TargetNotEmpty if the target holds a journal already; JournalError if either cannot
    be read or written (then nothing was copied).
    """
    if not source.is_file():
        raise JournalError(f"no SQLite journal at {source}")
    SqliteJournal(source).close()  # its schema brought up to date, as the daemon would
    try:
        reader = sqlite3.connect(f"{source.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {source}: {exc}") from None
    copied: dict[str, int] = {}
    try:
        reader.execute("BEGIN")
        with target.database.transaction(bounded=False) as db:
            db.execute("SET LOCAL statement_timeout = 0")  # a large journal takes its time
            held = db.execute(
                "SELECT (SELECT count(*) FROM incidents), (SELECT count(*) FROM deliveries),"
                " (SELECT count(*) FROM deploys)"
            ).fetchone()
            if held is not None and any(held):
                raise TargetNotEmpty(
                    f"the journal {target.location} already holds {held[0]} incidents, "
                    f"{held[1]} deliveries and {held[2]} deploys: copy only into an empty one"
                )
            for table in _TABLES:
                columns = ", ".join(table.columns)
                with (
                    db.cursor() as cursor,
                    cursor.copy(f"COPY {table.name} ({columns}) FROM STDIN") as copy,
                ):
                    count = 0
                    for row in _rows(reader, table):
                        copy.write_row(row)
                        count += 1
                copied[table.name] = count
            for name in TABLES_WITH_IDS:
                db.execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), max(id))"  # noqa: S608
                    f" FROM {name}"
                )
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {source}: {exc}") from None
    finally:
        reader.close()
    return copied


def _rows(reader: sqlite3.Connection, table: _Table) -> Iterator[Sequence[Any]]:
    """The table's rows as PostgreSQL takes them: times as datetimes, JSON valid."""
    read_as = table.read_as or {}
    selected = ", ".join(read_as.get(c, c) for c in table.columns)
    order = "id" if "id" in table.columns else "rowid"
    cursor = reader.execute(f"SELECT {selected} FROM {table.name} ORDER BY {order}")  # noqa: S608
    for row in cursor:
        yield [
            _value(column, value, table) for column, value in zip(table.columns, row, strict=True)
        ]


def _value(column: str, value: Any, table: _Table) -> Any:
    if value is None:
        return None
    if column in table.times:
        return decode_time(value)
    if column in table.json:
        return _json(value)
    return value


def _json(text: str) -> str:
    """JSON text PostgreSQL takes: as written when it is (key order kept), else re-encoded
    (NaN as text, :func:`json_text`); text that is no JSON at all (an edited journal) as null,
    which the stores read leniently."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return "null"
    return text if "NaN" not in text and "Infinity" not in text else json_text(value)
