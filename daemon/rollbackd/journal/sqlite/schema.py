"""The journal's SQLite schema, versioned with ``PRAGMA user_version`` and migrated forward.

:data:`MIGRATIONS` holds, for each version, the statements that take a file to
the next one; :func:`migrate` runs those a file lacks when it is opened, each
version in one transaction. A file of a newer schema is refused: an older
rollbackd never writes into a schema it does not know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rollbackd.errors import JournalError

if TYPE_CHECKING:
    from rollbackd.journal.sqlite.database import Database

_V1 = [
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        closed_at TEXT,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        action TEXT NOT NULL,
        origin TEXT NOT NULL,
        target TEXT,
        current_version TEXT,
        reason TEXT NOT NULL,
        summary TEXT NOT NULL DEFAULT '',
        facts TEXT NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX incidents_service ON incidents (service, state)",
    """
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        proposed TEXT NOT NULL,
        severity TEXT NOT NULL,
        rules TEXT NOT NULL,
        reason TEXT NOT NULL,
        approver TEXT,
        deadline TEXT,
        guards TEXT NOT NULL,
        value REAL,
        target TEXT
    )
    """,
    """
    CREATE TABLE steps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        name TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT,
        summary TEXT NOT NULL DEFAULT '',
        output TEXT NOT NULL DEFAULT '',
        data TEXT NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX steps_incident ON steps (incident_id, id)",
    """
    CREATE TABLE evidence (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        time TEXT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE samples (
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        time TEXT NOT NULL,
        series TEXT NOT NULL,
        value REAL NOT NULL
    )
    """,
    "CREATE INDEX samples_incident ON samples (incident_id, series, time)",
]
_V2 = [
    """
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at TEXT NOT NULL,
        source TEXT NOT NULL,
        group_key TEXT,
        status TEXT,
        alerts INTEGER NOT NULL,
        duplicates INTEGER NOT NULL,
        body TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE alerts (
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        status TEXT NOT NULL,
        ends_at TEXT,
        service TEXT,
        name TEXT,
        labels TEXT NOT NULL,
        annotations TEXT NOT NULL,
        first_received TEXT NOT NULL,
        last_received TEXT NOT NULL,
        PRIMARY KEY (fingerprint, starts_at)
    )
    """,
    "CREATE INDEX alerts_status ON alerts (status)",
    """
    CREATE TABLE deploys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        version TEXT NOT NULL,
        ref TEXT,
        time TEXT NOT NULL,
        migrations TEXT NOT NULL,
        received_at TEXT NOT NULL
    )
    """,
]
_V3 = [
    # The cycle asks for the firing alerts of the services it watches: an index of firing
    # alerts only, by service, instead of every alert by status (resolved ones are most).
    "DROP INDEX alerts_status",
    "CREATE INDEX alerts_firing ON alerts (service) WHERE status = 'firing'",
]
_V4 = [
    # An incident that waits on people (escalated, vetoed, recorded, not recovered) is open
    # until what fired is OK again or it expires: its last change dates the expiry.
    "ALTER TABLE incidents ADD COLUMN updated_at TEXT",
    "UPDATE incidents SET updated_at = COALESCE(closed_at, opened_at)",
    "CREATE INDEX incidents_unfinished ON incidents (service) WHERE closed_at IS NULL",
]
MIGRATIONS = [_V1, _V2, _V3, _V4]
"""Statements taking the schema from version i to i + 1."""
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(database: Database) -> None:
    """Bring the file's schema to :data:`SCHEMA_VERSION`; refuse one from a newer rollbackd."""
    version = database.connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the journal {database.path} has schema {version}, newer than this rollbackd "
            f"({SCHEMA_VERSION}): upgrade rollbackd"
        )
    for step in range(version, SCHEMA_VERSION):
        with database.transaction() as db:
            for statement in MIGRATIONS[step]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {step + 1}")
