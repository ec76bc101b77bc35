"""The exception tree of rollbackd, translated into exit codes and statuses at the boundary.

::

    RollbackdError                  anything rollbackd raises on purpose
    ├── InvalidInput                bad config, rule, argument or request body (carries Problems)
    │                                 CLI: exit 2 · HTTP: 422
    ├── NotPermitted                the caller's role may not do this          HTTP: 403
    ├── NotFound                    no such incident or service                HTTP: 404
    ├── Conflict                    the request does not fit the current state HTTP: 409
    ├── InvalidTransition           a state change the incident model does not allow
    │                                 (a bug in the caller, never a race): HTTP: 500
    ├── RollbackRefused             a rollback that must not start (one is under way,
    │                                 the target is invalid, the incident moved on)
    ├── NoTarget                    no target named, and no version is known good
    ├── AlreadyThere                the service already runs the target
    ├── StateDirBusy                another rollbackd holds the state directory: exit 1
    ├── OutOfTime                   a replay with a deadline did not finish by it
    ├── MigrationCheckError         the files between two commits could not be listed
    ├── JournalError                the journal cannot be opened or written    HTTP: 503
    │   └── JournalUnavailable      not now, and nothing was written (disk full, file gone)
    ├── GitError                    a git command failed, timed out or answered unreadably
    │   ├── NoSuchRepository        the repository's path does not exist
    │   └── NotARepository          the path is not a git repository
    └── DaemonUnavailable           no daemon answers at the configured address
        ├── NoDaemon                nothing listens there: no daemon runs
        DaemonRefused               (a sibling) the daemon answered with an error status

A journal error is never answered with a 2xx: what was not stored was not
accepted. Library errors (httpx, sqlite3, subprocess) are caught where the call
is made and turned into these, or into a step's outcome or a rule's missing
data: they never cross a module boundary. The HTTP layer maps this tree to
statuses in one table (``rollbackd.api.errors.STATUS``); the CLI maps it to
exit codes.

A :class:`Problem` names the unit of work at fault (``config.toml:
services[0].repo: ...``, ``rules/errors.toml: rule "error-rate": condition:
...``) so a person can fix it without reading code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is and what is wrong."""

    source: str
    location: str
    message: str

    def __str__(self) -> str:
        if self.location:
            return f"{self.source}: {self.location}: {self.message}"
        return f"{self.source}: {self.message}"


class RollbackdError(Exception):
    """Base of every error rollbackd raises on purpose."""


class InvalidInput(RollbackdError):  # noqa: N818 -- names the condition, like httpx's InvalidURL
    """One or more problems in config, rules, arguments or a request; nothing was applied."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class NotPermitted(RollbackdError):  # noqa: N818 -- names the condition
    """The caller's role may not do this."""


class NotFound(RollbackdError):  # noqa: N818 -- names the condition
    """No such incident or service."""


class Conflict(RollbackdError):  # noqa: N818 -- names the condition
    """The request does not fit the current state (the message says which)."""


class InvalidTransition(RollbackdError):  # noqa: N818 -- names the condition
    """An incident was to move between two states the incident model's table does not join.

    Not a :class:`Conflict`: callers that race on an incident say which states
    they expect and are told they lost; a move the table does not allow is a
    mistake in the code that asked for it, and nothing is written.
    """


class RollbackRefused(RollbackdError):  # noqa: N818 -- names the outcome for the caller
    """A rollback that must not start (another is under way, or the target is invalid)."""


class NoTarget(RollbackdError):  # noqa: N818 -- names the condition
    """No target was named and no version of the service is known good."""


class AlreadyThere(RollbackdError):  # noqa: N818 -- names the condition
    """The service already runs the target: there is nothing to roll back."""


class StateDirBusy(RollbackdError):  # noqa: N818 -- names the condition
    """Another rollbackd holds the state directory; the message names it."""


class OutOfTime(RollbackdError):  # noqa: N818 -- names the condition
    """A replay with a deadline did not finish by it."""


class MigrationCheckError(RollbackdError):
    """The files between two commits could not be listed; the message says why."""


class GitError(RollbackdError):
    """A git command failed, timed out or gave an answer that cannot be read."""


class NoSuchRepository(GitError):  # noqa: N818 -- names the condition
    """The repository's path does not exist."""


class NotARepository(GitError):  # noqa: N818 -- names the condition
    """The path exists but is not a git repository (git does not look above it)."""


class JournalError(RollbackdError):
    """The journal cannot be opened or written (disk, permissions, a newer schema)."""


class JournalUnavailable(JournalError):  # noqa: N818 -- names the condition
    """The journal cannot be written now, and nothing was: the disk is full, the file is
    read-only, or it was removed or replaced under the running process.

    Unlike a bad request, this may pass: the same write can be tried again later
    (:meth:`Journal.problem` says whether it is worth it yet).
    """


class NotLeader(JournalError):  # noqa: N818 -- names the condition
    """This replica no longer leads (its lease ran out, another replica holds it): the write
    was refused and nothing was kept. Not a fault to retry: the leader carries on."""


class DaemonUnavailable(RollbackdError):  # noqa: N818 -- names the condition
    """No daemon answers at the configured address."""


class NoDaemon(DaemonUnavailable):
    """Nothing listens at the daemon's address: no daemon runs there."""


class DaemonRefused(RollbackdError):  # noqa: N818 -- names the condition
    """The daemon answered with an error (its message says why)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
