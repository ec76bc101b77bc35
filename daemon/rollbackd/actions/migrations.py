"""The migration gate, live: which migrations would a rollback undo, read with git.

Design §5 and the playbook's database decision tree. Before the git executor
rolls a service back from ``head`` to ``target``, :func:`check` looks at the
files the rollback would undo (``git diff --name-status -M target head``) and
keeps the migration files among them:

* no migration → PROCEED;
* every migration declared backwards compatible and none declared to change
  data → PROCEED (the code goes back, the schema stays: old code runs on the
  new schema, which is what "backwards compatible" promises);
* otherwise → BLOCKED: no automatic rollback, the incident escalates to the
  database role with the list of migrations, each one saying whether it is
  backwards compatible and whether it changes data.

Which files are migrations, how they declare themselves and the verdict are
:mod:`rollbackd.core.migrations`; this module reads the repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from rollbackd.core.deploys import MigrationFact
from rollbackd.core.migrations import (
    Change,
    GateReport,
    could_not_check,
    decide_gate,
    declared,
    normal,
    read_markers,
    selected,
)
from rollbackd.errors import GitError, MigrationCheckError
from rollbackd.git import Repository, open_repository, run_git
from rollbackd.sources.deploys import valid_ref
from rollbackd.text import one_line, quoted

MARKER_READ_LIMIT = 1024 * 1024
"""Files larger than this are not read for markers: undeclared unless a deploy event says."""
GIT_TEXT_LIMIT = 200
"""Characters kept of a ref or of git's error in a reason."""

GIT_TIMEOUT_SECONDS = 60.0
"""How long each git command of the gate may take before the gate gives up (and blocks)."""
GIT_TIMEOUT = timedelta(seconds=GIT_TIMEOUT_SECONDS)

CHANGE_KINDS = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "T": "modified"}
"""``git diff --name-status`` letters, from ``target`` to ``head``, in words."""


# --- git ---------------------------------------------------------------------


def migrations_to_undo(
    repo: Path, head: str, target: str, globs: Sequence[str]
) -> list[tuple[str, str]]:
    """The migration files that differ between ``target`` and ``head``, with their change.

    Each item is ``(path, change)``: the path at ``head`` (for a deleted
    file, at ``target``) and ``added``, ``modified``, ``deleted`` or
    ``renamed`` (from ``target`` to ``head``; a rename counts when either
    path matches). Raises :class:`MigrationCheckError` naming the problem.
    """
    _check_refs(head, target)
    _, changes = _changes(_open(repo), head, target)
    return [(c.path, c.change) for c in changes if selected(c, globs, ())]


def _check_refs(head: str, target: str) -> None:
    """Both refs are safe to hand to git: never read as an option, never a range."""
    for name, ref in (("target", target), ("head", head)):
        if not valid_ref(ref):
            raise MigrationCheckError(
                f"the {name} {quoted(ref, GIT_TEXT_LIMIT)} is not a valid git ref (letters, "
                "digits and . _ / + -, not starting with '-'), so it was not passed to git"
            )


def _open(repo: Path) -> Repository:
    """``repo`` as a git repository, or a MigrationCheckError saying why it is not one."""
    try:
        return open_repository(repo, GIT_TIMEOUT)
    except GitError as exc:  # names the path: "does not exist", "is not a git repository"…
        raise MigrationCheckError(str(exc)) from exc


def _resolve(repo: Repository, name: str, ref: str) -> str:
    """The commit that ``ref`` (already checked with ``valid_ref``) names."""
    resolved = run_git(
        repo.path,
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        f"{ref}^{{commit}}",
        timeout=GIT_TIMEOUT,
    )
    if resolved.timed_out:
        raise MigrationCheckError(f"resolving the {name} {ref!r}: {resolved.why()}")
    if not resolved.ok:
        raise MigrationCheckError(f"the {name} {ref!r} is not a commit in {repo.git_dir}")
    return resolved.out.strip()


def _changes(repo: Repository, head: str, target: str) -> tuple[str, list[Change]]:
    """The commit ``head`` names, and every file that differs from ``target`` to it."""
    head_sha = _resolve(repo, "head", head)
    target_sha = _resolve(repo, "target", target)
    diff = run_git(
        repo.path,
        "diff",
        "--name-status",
        "-z",
        "-M",
        "--no-color",
        "--no-ext-diff",
        "--end-of-options",
        target_sha,
        head_sha,
        "--",
        timeout=GIT_TIMEOUT,
    )
    if not diff.ok or diff.cut:
        raise MigrationCheckError(f"git diff {target} {head} failed: {one_line(diff.why(), 200)}")
    fields = [_printable_path(f) for f in diff.out.split("\0")]
    changes: list[Change] = []
    index = 0
    try:
        while index < len(fields) and fields[index]:
            status = fields[index][:1]
            if status in ("R", "C"):
                old, new = fields[index + 1], fields[index + 2]
                changes.append(Change(new, "renamed" if status == "R" else "added", old))
                index += 3
            else:
                changes.append(Change(fields[index + 1], CHANGE_KINDS.get(status, "modified")))
                index += 2
    except IndexError as exc:
        raise MigrationCheckError(f"git diff {target} {head} gave unexpected output") from exc
    return head_sha, changes


def _markers_at(repo: Repository, head_sha: str, path: str) -> tuple[bool, bool]:
    """The markers of ``path`` as it is at ``head``; none if it is absent, big or unreadable."""
    blob = f"{head_sha}:{path}"  # starts with the commit id: never read as an option
    kind = run_git(repo.path, "cat-file", "-t", blob, timeout=GIT_TIMEOUT)
    size = run_git(repo.path, "cat-file", "-s", blob, timeout=GIT_TIMEOUT)
    if not kind.ok or kind.out.strip() != "blob" or not size.ok:
        return False, False
    if not size.out.strip().isdigit() or int(size.out.strip()) > MARKER_READ_LIMIT:
        return False, False
    data = run_git(repo.path, "cat-file", "blob", blob, timeout=GIT_TIMEOUT)
    if not data.ok or data.cut:
        return False, False
    return read_markers(data.out)


# --- the gate ----------------------------------------------------------------


def check(
    repo: Path,
    head: str,
    target: str,
    globs: Sequence[str],
    facts: Sequence[MigrationFact],
) -> GateReport:
    """The gate's verdict on rolling ``repo`` back from ``head`` to ``target``; never raises.

    ``facts`` are the deploy event's ``migrations``; they win over markers
    for the files they name, and a file they name counts as a migration even
    if no glob matches it.
    """
    by_file: dict[str, MigrationFact] = {normal(f.file): f for f in facts}
    try:
        _check_refs(head, target)
        opened = _open(repo)
        head_sha, changes = _changes(opened, head, target)
        migrations = tuple(
            declared(
                change,
                by_file,
                (False, False)
                if change.change == "deleted"
                else _markers_at(opened, head_sha, change.path),
            )
            for change in changes
            if selected(change, globs, by_file)
        )
    except MigrationCheckError as exc:
        return GateReport(could_not_check(str(exc)), ())
    except Exception as exc:  # noqa: BLE001 -- the gate fails closed: any failure blocks
        why = f"{type(exc).__name__} while reading {repo}: {one_line(str(exc), GIT_TEXT_LIMIT)}"
        return GateReport(could_not_check(why), ())
    return GateReport(decide_gate(migrations, target=target, head=head), migrations)


def _printable_path(path: str) -> str:
    """A path from git (surrogate-escaped if not UTF-8) as text that can be logged."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
