"""Whether the journal's PostgreSQL can be reached, said for ``rollbackd check-config``.

One short connection, reading only: the schema version, never creating it. What is wrong
is said in words a person acts on (refused, authentication failed, no such database, no
answer), never with the password.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from rollbackd.journal.pgurl import password_of, place, scrub, shown_url
from rollbackd.journal.postgresql.schema import SCHEMA_VERSION, version_of

CHECK_TIMEOUT = 3.0
"""check-config waits at most this long (seconds) for PostgreSQL, whatever the config says."""


def check_journal(url: str, password: str | None, timeout: float = CHECK_TIMEOUT) -> str:
    """A line saying the journal is reachable, and its schema; ValueError saying what is wrong."""
    extra: dict[str, Any] = {} if password is None else {"password": password}
    seconds = max(1, round(min(timeout, CHECK_TIMEOUT)))
    try:
        with psycopg.connect(
            url,
            connect_timeout=seconds,
            options=f"-c statement_timeout={seconds * 1000}",
            application_name="rollbackd check-config",
            **extra,
        ) as db:
            version = version_of(db)
            standby = db.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error as exc:
        raise ValueError(_wrong(url, exc, password)) from None
    where = f"journal: PostgreSQL at {place(url)}"
    if standby is not None and standby[0]:
        raise ValueError(f"{where} is a standby (read-only): rollbackd cannot write to it")
    if version is None:
        return f"{where} reachable, no schema yet (rollbackd run creates it)"
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{where} has schema version {version}, newer than this rollbackd "
            f"({SCHEMA_VERSION}): upgrade rollbackd"
        )
    return f"{where} reachable, schema version {version}"


_KNOWN = (
    (re.compile(r"connection refused", re.I), "connection refused: is PostgreSQL running there?"),
    (
        re.compile(r'password authentication failed for user "([^"]*)"', re.I),
        "authentication failed for user {0} (the password in url, password_file or PGPASSFILE)",
    ),
    (
        re.compile(r"no password supplied|fe_sendauth", re.I),
        "PostgreSQL asks for a password and none was given (url, password_file or PGPASSFILE)",
    ),
    (re.compile(r'database "([^"]*)" does not exist', re.I), "database {0} does not exist"),
    (re.compile(r'role "([^"]*)" does not exist', re.I), "user {0} does not exist"),
    (re.compile(r"timeout expired|timed out", re.I), "no answer in time"),
    (
        re.compile(r"could not translate host name|Name or service not known", re.I),
        "the host name cannot be resolved",
    ),
)


def _wrong(url: str, exc: psycopg.Error, password: str | None) -> str:
    """What is wrong, for a person; the server's own words when it is none of the known."""
    text = " ".join(str(exc).split())
    for pattern, meaning in _KNOWN:
        found = pattern.search(text)
        if found:
            said = meaning.format(*found.groups())
            break
    else:
        said = text or type(exc).__name__
    return scrub(f"cannot reach the journal {shown_url(url)}: {said}", password, password_of(url))
