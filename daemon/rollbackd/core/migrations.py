"""What a rollback would undo in the schema, and the migration gate's decision.

A rollback never runs a down-migration and never deletes data; a blocked gate
means the code rollback was not done either. Any failure to look (an unknown
or unsafe ref, a path that is not a repository, git failing) is BLOCKED with
its reason: the gate fails closed and never raises.

**Which files are migrations.** A changed path is a migration when it matches
at least one glob of the service's list and no exclusion (a glob starting with
``!``). Globs are matched against the whole path from the repository root, one
``/``-separated segment at a time, with :func:`fnmatch.fnmatchcase` per segment
(so ``*``, ``?`` and ``[...]`` never cross a ``/``, and matching is case
sensitive, as git paths are); a segment that is exactly ``**`` matches any
number of whole segments, as in ``.gitignore``: a leading ``**/`` matches in
every directory (including the root), ``/**/`` matches zero or more
directories, and a trailing ``/**`` matches everything inside a directory (not
the directory's name itself). The defaults (:data:`DEFAULT_MIGRATION_GLOBS`)
cover the common layouts and exclude documentation (``*.md``, ``*.rst``,
``*.adoc``, ``*.txt``, ``README``) that lives next to migrations: prose cannot
change a schema. ``docs/migrations.md`` matches nothing in the first place. The
defaults err on the side of blocking: any ``*.sql`` file counts (a sample query
in ``docs/`` too), and so do helper files inside a migrations directory (an
Alembic ``env.py``); a service with such files narrows its list. A file that a
deploy event names in its ``migrations`` facts counts as a migration wherever
it lives.

:func:`decide_gate` gives the verdict on the migrations found;
:mod:`rollbackd.actions.migrations` finds them with git.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from rollbackd.core.deploys import MigrationFact
from rollbackd.core.policy import GateVerdict, MigrationGate
from rollbackd.text import printable

DEFAULT_MIGRATION_GLOBS: tuple[str, ...] = (
    "migrations/**",  # Django, Knex, Sequelize, golang-migrate, Diesel, Flask-Migrate …
    "**/migrations/**",  # the same one level down (Django apps, Ecto priv/repo/migrations)
    "**/Migrations/**",  # Entity Framework Core, Doctrine
    "db/migrate/**",  # Rails
    "alembic/versions/**",  # Alembic
    "**/db/migration/**",  # Flyway (src/main/resources/db/migration)
    "prisma/migrations/**",  # Prisma
    "**/db/changelog/**",  # Liquibase (src/main/resources/db/changelog)
    "**/db.changelog*",  # Liquibase's naming convention (db.changelog-master.xml)
    "**/*.sql",  # plain SQL anywhere
    "!**/*.md",  # documentation next to migrations is not a migration
    "!**/*.markdown",
    "!**/*.rst",
    "!**/*.adoc",
    "!**/*.txt",
    "!**/README",
)
"""Where migrations usually live; a glob starting with ``!`` excludes (module docstring)."""


@dataclass(frozen=True)
class Migration:
    """A migration file the rollback would undo, and what is declared about it.

    ``change`` is what happened to the file between the target and HEAD
    (``added``, ``modified``, ``deleted``, ``renamed``); ``declared_by`` is
    ``deploy event``, ``marker in file`` or ``undeclared``; ``changes_data``
    is None when unknown (nothing declared about data, and not declared
    backwards compatible).
    """

    file: str
    backwards_compatible: bool
    changes_data: bool | None
    declared_by: str
    change: str

    def describe(self) -> str:
        """One line for people: the file, its change, and its declarations."""
        source = "undeclared" if self.declared_by == "undeclared" else f"per {self.declared_by}"
        compatible = (
            "backwards compatible" if self.backwards_compatible else "NOT backwards compatible"
        )
        return (
            f"{printable(self.file)} ({self.change}): {compatible}, "
            f"changes data: {_yes_no(self.changes_data)}; {source}"
        )


@dataclass(frozen=True)
class GateReport:
    """The gate's verdict and the migrations it judged (empty when it could not look)."""

    gate: MigrationGate
    migrations: tuple[Migration, ...]

    def describe(self) -> str:
        """One line per migration for people; the verdict and reason when there is none."""
        if not self.migrations:
            return f"{self.gate.verdict.value}: {self.gate.reason}"
        return "\n".join(m.describe() for m in self.migrations)


# --- globs -------------------------------------------------------------------


def glob_match(path: str, pattern: str) -> bool:
    """``path`` (relative, ``/``-separated) matches ``pattern`` (module docstring semantics)."""
    segments: tuple[str, ...] = ()
    for segment in (s for s in pattern.split("/") if s):
        if not (segment == "**" and segments[-1:] == ("**",)):  # **/** is just **
            segments = (*segments, segment)
    parts = tuple(p for p in path.split("/") if p)
    if not segments or not parts:
        return False
    return _match_segments(parts, 0, segments, 0)


def _match_segments(parts: tuple[str, ...], i: int, segments: tuple[str, ...], j: int) -> bool:
    while j < len(segments):
        segment = segments[j]
        if segment == "**":
            if j == len(segments) - 1:
                return i < len(parts)  # a trailing ** matches everything inside, not the dir
            return any(_match_segments(parts, k, segments, j + 1) for k in range(i, len(parts)))
        if i >= len(parts) or not fnmatchcase(parts[i], segment):
            return False
        i += 1
        j += 1
    return i == len(parts)


def is_migration(path: str, globs: Sequence[str]) -> bool:
    """``path`` matches a glob of ``globs`` and none of its ``!`` exclusions."""
    included = any(glob_match(path, g) for g in globs if not g.startswith("!"))
    return included and not any(glob_match(path, g[1:]) for g in globs if g.startswith("!"))


# --- markers -----------------------------------------------------------------

_MARKER = re.compile(
    r"rollbackd\s*:\s*(?:(?P<compatible>backwards?[\s_-]*compatible)|(?P<data>changes[\s_-]*data))",
    re.IGNORECASE,
)

_TOKEN = re.compile(r"<!--|/\*|--|//|#|\"\"\"|'''|[\"'`]|\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
"""What starts a comment or a string, leftmost first (``<!--`` before ``--``)."""

_BLOCK_CLOSERS = {"/*": "*/", "<!--": "-->"}


@dataclass(frozen=True)
class _Comment:
    start: int  # where the opener begins
    body_start: int
    body_end: int
    end: int  # just past the closer (or the end of the line)
    decoration: str  # characters that may repeat around a body line (``**``, ``---``)


def _comments(text: str) -> Iterable[_Comment]:
    """The comments of ``text``, skipping strings, for SQL, Python, shell, C-like and XML.

    Strings: ``'…'`` and ``"…"`` (backslash escapes; they end at the end of
    the line at the latest, so a stray apostrophe in prose hides nothing
    below it), and the ones that may span lines: backquoted, triple-quoted
    and PostgreSQL dollar-quoted (``$$…$$``, ``$body$…$body$``). Comments:
    ``--``, ``#``, ``//`` to the end of the line; ``/* */`` and ``<!-- -->``.
    Other languages' syntax (Ruby heredocs, shell ``$$``) may hide a marker,
    which then does not count: the gate errs towards blocking.
    """
    i, n = 0, len(text)
    while True:
        token = _TOKEN.search(text, i)
        if token is None:
            return
        opener, start = token.group(), token.start()
        if opener in _BLOCK_CLOSERS:
            close = text.find(_BLOCK_CLOSERS[opener], token.end())
            body_end = n if close < 0 else close
            end = n if close < 0 else close + len(_BLOCK_CLOSERS[opener])
            yield _Comment(start, token.end(), body_end, end, "*" if opener == "/*" else "-")
            i = end
        elif opener in ("--", "//", "#"):
            newline = text.find("\n", start)
            end = n if newline < 0 else newline
            yield _Comment(start, token.end(), end, end, opener[0])
            i = end
        elif opener.startswith("$"):
            close = text.find(opener, token.end())
            i = n if close < 0 else close + len(opener)
        else:
            i = _skip_string(text, token.end(), opener, multiline=opener not in ("'", '"'))


def _skip_string(text: str, i: int, quote: str, multiline: bool) -> int:
    """Where the string that started before ``i`` ends (just past its closing quote)."""
    n = len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(quote, i):
            return i + len(quote)
        if text[i] == "\n" and not multiline:
            return i
        i += 1
    return n


def read_markers(text: str) -> tuple[bool, bool]:
    """``(backwards_compatible, changes_data)``: the markers ``text`` declares.

    A marker counts only in a comment and only on its own line: nothing but
    white space and the comment's own syntax may share the line, so a marker
    after code, inside a string, or with words around it (``not
    backwards-compatible``) does not count. The forms are ``-- rollbackd:
    backwards-compatible``, ``# …``, ``// …``, ``/* … */``, ``<!-- … -->`` and
    a line inside a block comment (a leading ``*`` is allowed); likewise
    ``rollbackd: changes-data``. Case and the spaces around the colon do not
    matter; ``backward``, ``_`` or a space for the hyphen are accepted.
    """
    compatible = changes_data = False
    for comment in _comments(text):
        for body in _own_lines(text, comment):
            match = _MARKER.fullmatch(body)
            if match is not None:
                compatible = compatible or match.group("compatible") is not None
                changes_data = changes_data or match.group("data") is not None
    return compatible, changes_data


def _own_lines(text: str, comment: _Comment) -> Iterable[str]:
    """Each line of the comment's body that has its physical line to itself, trimmed."""
    position = comment.body_start
    while position <= comment.body_end:
        newline = text.find("\n", position, comment.body_end)
        piece_end = comment.body_end if newline < 0 else newline
        line_start = text.rfind("\n", 0, position) + 1
        line_end = text.find("\n", piece_end)
        line_end = len(text) if line_end < 0 else line_end
        before = text[line_start : comment.start if position == comment.body_start else position]
        after = text[comment.end if piece_end == comment.body_end else piece_end : line_end]
        if not before.strip() and not after.strip():
            yield text[position:piece_end].strip().strip(comment.decoration).strip()
        if newline < 0:
            break
        position = newline + 1


@dataclass(frozen=True)
class Change:
    path: str  # at head (the path at target for a deleted file)
    change: str
    previous: str | None = None  # a renamed file's path at target


def selected(change: Change, globs: Sequence[str], named: Iterable[str]) -> bool:
    paths = {change.path} if change.previous is None else {change.path, change.previous}
    return bool(paths & set(named)) or any(is_migration(p, globs) for p in paths)


def declared(
    change: Change, facts: Mapping[str, MigrationFact], markers: tuple[bool, bool]
) -> Migration:
    """What is declared about one migration: the deploy event's facts first, then markers.

    Silence about data means "no data change" only for a migration declared
    backwards compatible; otherwise it is unknown.
    """
    fact = facts.get(change.path) or (facts.get(change.previous) if change.previous else None)
    marked_compatible, marked_data = markers
    compatible: bool = marked_compatible
    changes_data: bool | None = True if marked_data else None
    declared_by = "marker in file" if marked_compatible or marked_data else "undeclared"
    if fact is not None and (fact.backwards_compatible, fact.changes_data) != (None, None):
        declared_by = "deploy event"
        if fact.backwards_compatible is not None:
            compatible = fact.backwards_compatible
        if fact.changes_data is not None:
            changes_data = fact.changes_data
    if changes_data is None and compatible:
        changes_data = False
    return Migration(change.path, compatible, changes_data, declared_by, change.change)


def decide_gate(
    migrations: Sequence[Migration], *, target: str | None = None, head: str = "HEAD"
) -> MigrationGate:
    """The verdict on the migrations a rollback would undo (pure: no I/O).

    PROCEED when there is none, or when every one is backwards compatible and
    none changes data; otherwise BLOCKED, naming the migrations that block and
    listing all of them, and saying which branch of the playbook's decision
    tree applies (data changes: consult the database role; none: a forward
    fix may be the better way).
    """
    between = f"between {target} and {head}" if target else "in this rollback"
    if not migrations:
        return MigrationGate(GateVerdict.PROCEED, f"no migration {between}")
    count = _count(len(migrations))
    listing = "; ".join(_listed(m) for m in migrations)
    blocking = [m for m in migrations if not m.backwards_compatible or m.changes_data is not False]
    if not blocking:
        return MigrationGate(
            GateVerdict.PROCEED,
            f"{count} would be undone {between}, all declared backwards compatible and none "
            f"changing data: {listing}; the code goes back, the schema and data stay as they are",
        )
    data = [m.changes_data for m in blocking]
    if any(d is True for d in data):
        tree = "data changes are involved"
    elif any(d is None for d in data):
        tree = "whether data changes are involved is unknown"
    else:
        tree = "no data changes are declared, so a forward fix may be better"
    return MigrationGate(
        GateVerdict.BLOCKED,
        f"{count} would be undone {between}: {listing}; blocked by "
        f"{', '.join(printable(m.file) for m in blocking)}; {tree}; the code rollback was not done "
        "and no data was touched; consult the database role",
    )


def could_not_check(why: str) -> MigrationGate:
    return MigrationGate(
        GateVerdict.BLOCKED,
        f"the migrations this rollback would undo could not be checked: {why}; the gate fails "
        "closed: the code rollback was not done and no data was touched; check the migrations "
        "by hand",
    )


def _listed(migration: Migration) -> str:
    compatible = (
        "backwards compatible"
        if migration.backwards_compatible
        else "not declared backwards compatible"
    )
    source = "" if migration.declared_by == "undeclared" else f", per {migration.declared_by}"
    return (
        f"{printable(migration.file)} ({migration.change}; {compatible}, "
        f"changes data: {_yes_no(migration.changes_data)}{source})"
    )


def _count(number: int) -> str:
    return f"{number} migration" if number == 1 else f"{number} migrations"


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else "yes" if value else "no"


def normal(path: str) -> str:
    return path.removeprefix("./")
