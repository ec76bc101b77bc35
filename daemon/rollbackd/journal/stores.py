"""The journal's interfaces: one small protocol per concern, and :class:`Journal`, all of them.

Every part of rollbackd types against these, never against a backend, so that
the stores can change under them: :class:`~rollbackd.journal.sqlite.SqliteJournal`
keeps everything in one SQLite file, :class:`~rollbackd.journal.memory.MemoryJournal`
in Python structures for tests and the demo, and a PostgreSQL journal (for
replicas) implements the same methods. The same test suite runs against each
(``tests/journal/``), so that a behaviour promised here holds for all of them.

What every store promises:

- A write is kept when it returns, or raises :class:`JournalError` and is not
  kept at all (``open_incident`` writes the incident, its decision and its first
  evidence together, or nothing).
- :class:`JournalUnavailable` means nothing was written *and* the same write may
  succeed later (the disk is full, the file was removed); any other
  :class:`JournalError` is about the write itself (an incident that does not exist).
- Times come back in UTC, to the millisecond; evidence and step data come back
  as JSON would give them (lists, not tuples; times as RFC 3339 text); facts as
  :meth:`RollbackFacts.from_json <rollbackd.core.incident.RollbackFacts.from_json>`
  reads their JSON.
- Severities, actions and evidence kinds come back typed; a value an old or
  edited journal holds that is no member reads leniently (severity: critical,
  action: escalate, evidence kind: its text), never as an error.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from rollbackd.core.deploys import Deploy
from rollbackd.core.incident import (
    AlertRecord,
    Delivery,
    EvidenceKind,
    IncidentRecord,
    IncidentState,
    NewIncident,
    Outcome,
)
from rollbackd.core.model import Decision


class IncidentStore(Protocol):
    """Incidents and what is kept with them: decisions, checklist steps, evidence, samples."""

    def open_incident(self, new: NewIncident) -> int:
        """Journal a new incident with its decision and first evidence, all or nothing."""
        ...

    def set_state(
        self,
        incident: int,
        state: IncidentState,
        summary: str,
        at: datetime,
        expect: Collection[IncidentState] | None = None,
    ) -> bool:
        """Move an incident to ``state``; with ``expect``, only from one of those states.

        Compare and set: of two callers racing on one incident, one wins (True)
        and the other is told it lost (False), as is a caller naming no incident.
        A move :data:`~rollbackd.core.incident.TRANSITIONS` does not allow (from the
        state the incident is in) raises :class:`~rollbackd.errors.InvalidTransition`
        and writes nothing: a mistake of the caller's, not a race it lost.
        """
        ...

    def add_decision(self, incident: int, decision: Decision, actor: str) -> None: ...

    def add_evidence(
        self, incident: int, at: datetime, kind: EvidenceKind | str, body: Any
    ) -> None:
        """Keep ``body`` with the incident; read back, a kind rollbackd writes is its member."""
        ...

    def add_samples(self, incident: int, rows: Sequence[tuple[datetime, str, float]]) -> None:
        """Keep measured values with the incident; values that are not finite are left out."""
        ...

    def step_started(
        self, incident: int, name: str, at: datetime, data: Mapping[str, str] | None = None
    ) -> int:
        """Journal a checklist step before it runs; its number, for :meth:`step_finished`."""
        ...

    def step_finished(
        self,
        step: int,
        at: datetime,
        outcome: Outcome,
        summary: str,
        output: str = "",
        data: Mapping[str, str] | None = None,
    ) -> None:
        """Journal how a step ended; ``data`` is added to what it started with."""
        ...

    def incident(self, incident: int) -> IncidentRecord | None:
        """The incident whole (decisions, steps, evidence, samples), or None."""
        ...

    def incidents(
        self,
        limit: int | None = 50,
        service: str | None = None,
        active_only: bool = False,
        unfinished_only: bool = False,
    ) -> list[IncidentRecord]:
        """Incidents without what is kept with them, newest first; ``limit`` None: all.

        ``active_only``: a rollback pending or under way; ``unfinished_only``: not over
        (active, or waiting on people).
        """
        ...

    def rollbacks(self, service: str) -> list[datetime]:
        """When rollbacks of ``service`` were executed (or may have been: outcome unknown)."""
        ...


class AlertStore(Protocol):
    """Alertmanager's webhook deliveries and the alerts they carry, keyed by fingerprint."""

    def record_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> tuple[int, int]:
        """Journal one delivery and its alerts at once; (new or changed, duplicates)."""
        ...

    def submit_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> Future[tuple[int, int]]:
        """Journal one delivery; the future is done once it is kept.

        Alerts are keyed by (fingerprint, startsAt): a retried delivery changes
        nothing, and a resolved alert never goes back to firing. Deliveries are
        applied in the order they were submitted. A failed write fails the
        future with a :class:`JournalError`; a closed journal refuses at once.
        """
        ...

    def firing_alerts(
        self,
        now: datetime,
        services: Collection[str] | None = None,
        received_after: datetime | None = None,
    ) -> list[AlertRecord]:
        """The alerts firing at ``now``, oldest first.

        Firing: the latest word on the alert is "firing" and its endsAt, if it
        has one, is after ``now``; with ``received_after``, it was also last
        received after that. With ``services``: only those services' alerts,
        plus one firing alert of any other service or of none.
        """
        ...

    def deliveries(self) -> int:
        """How many webhook deliveries were journaled."""
        ...


class DeployStore(Protocol):
    """Deploy events as received."""

    def record_deploy(self, deploy: Deploy, received_at: datetime) -> None: ...

    def deploys(self, skip: int = 0) -> list[Deploy]:
        """Every deploy event received, oldest first; without the first ``skip`` of them
        (a replica that follows the others reads only what it has not read)."""
        ...


@dataclass(frozen=True)
class Lease:
    """Who leads a cluster of replicas, since which change of leader, and until when."""

    holder: str
    """The replica that holds the lease (its ``[cluster] replica_name``)."""
    epoch: int
    """Grows each time the lease changes hands (or is taken again after it ran out): every
    side effect is journaled under the epoch it was decided in (:meth:`Leadership.fenced`)."""
    expires_at: datetime | None
    """When the lease ends unless renewed, by the journal's clock (PostgreSQL's ``now()``);
    None: it never does (a journal only one process uses)."""
    remaining: timedelta | None = field(default=None, compare=False)
    """How long it still ran when read, by the journal's clock (a follower claims again
    then, not a whole renewal later); None: it never ends, or unknown."""


class Leadership(Protocol):
    """The lease that makes one replica of a cluster the leader, and fencing by its epoch.

    A journal one process owns (memory, SQLite) has nobody to share with: whoever claims
    leads, at epoch 1, for ever. PostgreSQL's is a row per cluster, taken and renewed by
    compare and set, timed by the server's clock.
    """

    def claim(self, cluster: str, replica: str, lease: timedelta) -> Lease:
        """Take the lease if it is free or ran out, renew it if ``replica`` holds it; either
        way one compare and set. The lease as it stands after: ``replica``'s if it won."""
        ...

    def lease(self, cluster: str) -> Lease | None:
        """The lease as it stands (None: nobody ever claimed it)."""
        ...

    def release(self, cluster: str, replica: str) -> None:
        """Give the lease up at once if ``replica`` holds it (a clean stop: no one waits for
        it to run out); the epoch stays, the next holder's is one more."""
        ...

    def fenced(self, cluster: str, epoch: int) -> AbstractContextManager[None]:
        """Within it, this thread's writes are kept only while ``epoch`` is the cluster's
        and its lease runs: each is checked in its own transaction, and refused with
        :class:`~rollbackd.errors.NotLeader` (nothing kept) otherwise."""
        ...


class Journal(IncidentStore, AlertStore, DeployStore, Leadership, Protocol):
    """The whole journal: every store, whether it can be written, where it is, closing it."""

    @property
    def location(self) -> str:
        """Where the journal is kept, for people (a file's path; "memory")."""
        ...

    def problem(self) -> str | None:
        """Why the journal cannot be written now; None when it can, as far as is known."""
        ...

    def close(self) -> None:
        """Keep what was submitted, then close; later writes are refused."""
        ...
