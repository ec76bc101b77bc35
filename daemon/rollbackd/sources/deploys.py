"""Where deploys are learned: events from CI, and the git HEAD of a working copy.

:func:`parse_event` validates a deploy event for ``POST /api/v1/deploys`` (the
request body is untrusted). :func:`git_deploys` reads the HEAD reflog of a
service's working copy: each time HEAD moved is a deploy of that commit, at the
time it moved. Both git reads run through :mod:`rollbackd.git`, each ended at
its deadline (:data:`~rollbackd.git.READ_TIMEOUT`): a working copy that cannot
answer is logged with the reason and gives no deploys, never a hung reading thread.
The version metric is read by the engine's live cycle and by the replay.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rollbackd.core.deploys import Deploy, MigrationFact
from rollbackd.core.durations import format_duration, format_instant
from rollbackd.errors import GitError, InvalidInput, Problem
from rollbackd.git import READ_TIMEOUT, read_git
from rollbackd.logs import get_logger
from rollbackd.text import clip, printable, quoted

log = get_logger("rollbackd.core.deploys")

_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}$")
"""Versions and refs: no leading '-' (never read as an option), no spaces, '..', or '@{'."""
MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far ahead of rollbackd's clock an event's time may be, by default
(``[deploys] max_clock_skew``): CI's clock may run a little fast, but a deploy from the
future would stay the "current" one however many deploys follow it."""
SHOWN_LIMIT = 60
"""Characters of a bad name or field from a deploy event shown in the error."""


def valid_ref(value: str) -> bool:
    """A version or git ref that is safe to hand to git after ``--`` and to log."""
    return (
        bool(_REF.match(value))
        and ".." not in value
        and "@{" not in value
        and not value.endswith((".", "/", ".lock"))
        and "//" not in value
    )


def parse_event(
    body: Mapping[str, Any],
    now: datetime,
    services: set[str],
    source: str = "request",
    max_skew: timedelta = MAX_CLOCK_SKEW,
) -> Deploy:
    """A deploy event's fields, checked: ``service`` and ``version`` required, and a
    ``time`` no more than ``max_skew`` ahead of ``now``."""
    problems: list[Problem] = []

    def bad(where: str, message: str) -> None:
        problems.append(Problem(source, where, message))

    allowed = {"service", "version", "ref", "time", "migrations"}
    for key in body:
        if key not in allowed:
            bad(printable(clip(str(key), SHOWN_LIMIT)), "unknown field")
    service = body.get("service")
    if not isinstance(service, str) or not service:
        bad("service", "required, a configured service name")
    elif service not in services:
        bad("service", f"no service named {quoted(service, SHOWN_LIMIT)} is configured")
    version = body.get("version")
    if not isinstance(version, str) or not valid_ref(version):
        bad("version", "required: letters, digits and . _ / + -, not starting with '-'")
    ref = body.get("ref")
    if ref is not None and (not isinstance(ref, str) or not valid_ref(ref)):
        bad("ref", "a git commit or tag: letters, digits and . _ / + -, not starting with '-'")
    moment = now
    raw_time = body.get("time")
    if raw_time is not None:
        try:
            if not isinstance(raw_time, str):
                raise ValueError
            moment = datetime.fromisoformat(raw_time)
            if moment.tzinfo is None:
                raise ValueError
            moment = moment.astimezone(UTC)
        except (ValueError, OverflowError):
            bad("time", "an RFC 3339 time with a zone, e.g. 2026-01-01T12:00:00Z")
        else:
            if moment - now > max_skew:
                bad(
                    "time",
                    f"{quoted(raw_time, 40)} is more than {format_duration(max_skew)} after "
                    f"rollbackd's clock ({format_instant(now)}): a deploy cannot be in the "
                    "future (is CI's clock wrong?)",
                )
    migrations = _migrations(body.get("migrations"), bad)
    if problems:
        raise InvalidInput(problems)
    assert isinstance(service, str) and isinstance(version, str)  # noqa: S101 -- checked above
    return Deploy(
        service=service,
        version=version,
        time=moment,
        source="event",
        ref=ref if isinstance(ref, str) else None,
        migrations=migrations,
    )


def _migrations(raw: Any, bad: Any) -> tuple[MigrationFact, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        bad("migrations", "a list of {file, backwards_compatible, changes_data}")
        return ()
    facts = []
    for index, item in enumerate(raw):
        where = f"migrations[{index}]"
        if not isinstance(item, dict):
            bad(where, "an object {file, backwards_compatible, changes_data}")
            continue
        unknown = set(item) - {"file", "backwards_compatible", "changes_data"}
        if unknown:
            bad(f"{where}.{printable(clip(sorted(unknown)[0], SHOWN_LIMIT))}", "unknown field")
        file = item.get("file")
        if not isinstance(file, str) or not file or file.startswith("-") or "\x00" in file:
            bad(f"{where}.file", "required, the migration file's path in the repository")
            continue
        flags = {}
        for flag in ("backwards_compatible", "changes_data"):
            value = item.get(flag)
            if value is not None and not isinstance(value, bool):
                bad(f"{where}.{flag}", "true or false")
            flags[flag] = value if isinstance(value, bool) else None
        facts.append(MigrationFact(file, flags["backwards_compatible"], flags["changes_data"]))
    return tuple(facts)


REFLOG_ENTRIES = 10_000
"""The most recent moves of HEAD read as deploys: far more than the reflog's default 90 days
hold on a deploy box, and few enough that the answer fits git's output limit."""

_REFLOG_ENTRY = re.compile(r"^([0-9a-f]{40}(?:[0-9a-f]{24})?) HEAD@\{(\d+)\}$")


def git_deploys(
    service: str, repo: Path, since: datetime | None = None, timeout: timedelta = READ_TIMEOUT
) -> list[Deploy]:
    """Deploys from the HEAD reflog of ``repo``: each move of HEAD, oldest first.

    Returns nothing (rather than failing the cycle) if the repository is
    missing, unreadable or does not answer within ``timeout``; the reason is
    logged, and the caller reports deploys as unknown then.
    """
    try:
        answer = read_git(
            repo,
            "log",
            "--walk-reflogs",
            "--date=unix",
            "--format=%H %gd",
            f"--max-count={REFLOG_ENTRIES}",
            "HEAD",
            "--",
            timeout=timeout,
        )
    except GitError as exc:
        log.warning("git_deploys_unread", service=service, repo=str(repo), why=str(exc))
        return []
    deploys: list[Deploy] = []
    for line in reversed(answer.splitlines()):
        entry = _REFLOG_ENTRY.match(line)
        if entry is None:
            continue
        sha = entry.group(1)
        if deploys and deploys[-1].ref == sha:
            continue
        moment = datetime.fromtimestamp(int(entry.group(2)), tz=UTC)
        deploys.append(Deploy(service, sha[:12], moment, "git", ref=sha))
    return [d for d in deploys if since is None or d.time >= since]


def git_head(repo: Path, timeout: timedelta = READ_TIMEOUT) -> str | None:
    """The commit HEAD points at, or None (the reason logged) if the working copy cannot be
    read within ``timeout``."""
    try:
        sha = read_git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", timeout=timeout)
    except GitError as exc:
        log.warning("git_head_unread", repo=str(repo), why=str(exc))
        return None
    return sha.strip() or None
