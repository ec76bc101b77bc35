"""The journal in Python structures: what :class:`~rollbackd.journal.sqlite.SqliteJournal`
does, without a file, for tests and fakes.

The same test suite runs against both (``tests/journal/``): the same numbering,
ordering and compare-and-set, one-step ``open_incident``, alerts keyed by
(fingerprint, startsAt) that never go back from resolved, and values given back
as the SQLite store gives them (:mod:`rollbackd.journal.codec`). What only a
file has (a full disk, a removed file, schema versions) it has not:
:meth:`MemoryJournal.problem` is always None, and nothing survives the process.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from rollbackd.core.deploys import Deploy
from rollbackd.core.incident import (
    ACTIVE_STATES,
    AlertRecord,
    DecisionRecord,
    Delivery,
    EvidenceKind,
    EvidenceRecord,
    IncidentRecord,
    IncidentState,
    NewIncident,
    Outcome,
    RollbackFacts,
    StepRecord,
    check_transition,
    evidence_kind,
)
from rollbackd.core.model import Decision
from rollbackd.errors import JournalError
from rollbackd.journal.codec import (
    decode_optional_time,
    encode_optional_time,
    encode_time,
    kept_json,
    kept_optional_time,
    kept_time,
)
from rollbackd.journal.sole import SoleLeadership


@dataclass
class _Incident:
    """One incident and what is kept with it, in the order it was written."""

    record: IncidentRecord
    decisions: list[DecisionRecord] = field(default_factory=list)
    evidence: list[EvidenceRecord] = field(default_factory=list)
    samples: list[tuple[datetime, str, float]] = field(default_factory=list)


@dataclass
class _Step:
    incident: int
    record: StepRecord


@dataclass
class _Alert:
    """An alert as kept: its latest word, and when it was last received (coded as stored)."""

    record: AlertRecord
    ends_at: str | None
    last_received: str


class MemoryJournal(SoleLeadership):
    """The whole :class:`~rollbackd.journal.stores.Journal` in memory; safe to share between
    threads (one lock, held by every call)."""

    location = "memory"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._incidents: dict[int, _Incident] = {}
        self._steps: dict[int, _Step] = {}
        self._alerts: dict[tuple[str, str], _Alert] = {}
        self._deliveries = 0
        self._deploys: list[Deploy] = []
        self._closed = False

    # -- the journal as a whole -------------------------------------------------------

    def problem(self) -> str | None:
        """Always None: memory can always be written."""
        return None

    def close(self) -> None:
        """Every later call is refused, as a closed file's would be."""
        with self._lock:
            self._closed = True

    def _open(self) -> None:
        """Called with the lock held by every call: a closed journal refuses."""
        if self._closed:
            raise JournalError(f"the journal in {self.location} is closed")

    def _incident(self, incident: int) -> _Incident:
        try:
            return self._incidents[incident]
        except KeyError:
            raise JournalError(
                f"the journal in {self.location} has no incident {incident}"
            ) from None

    # -- incidents ----------------------------------------------------------------------

    def open_incident(self, new: NewIncident) -> int:
        """Journal a new incident with its decision and first evidence, all or nothing."""
        opened_at = kept_time(new.opened_at)
        with self._lock:
            self._open()
            number = max(self._incidents, default=0) + 1
            kept = _Incident(
                IncidentRecord(
                    id=number,
                    service=new.service,
                    opened_at=opened_at,
                    closed_at=opened_at if new.state.finished else None,
                    state=new.state,
                    severity=new.severity,
                    action=new.action,
                    origin=new.origin,
                    target=new.target,
                    current_version=new.current_version,
                    reason=new.reason,
                    summary="",
                    facts=RollbackFacts.from_json(kept_json(new.facts.to_json())),
                    updated_at=opened_at,
                ),
                decisions=[] if new.decision is None else [_decision(new.decision, new.decided_by)],
                evidence=[
                    EvidenceRecord(opened_at, evidence_kind(kind), kept_json(body))
                    for kind, body in new.evidence.items()
                ],
            )
            self._incidents[number] = kept  # last: a failure above leaves nothing
            return number

    def set_state(
        self,
        incident: int,
        state: IncidentState,
        summary: str,
        at: datetime,
        expect: Collection[IncidentState] | None = None,
    ) -> bool:
        """Move an incident to ``state``; with ``expect``, only from one of those states.

        InvalidTransition, writing nothing, for a move the incident model does not allow.
        """
        moment = kept_time(at)
        with self._lock:
            self._open()
            kept = self._incidents.get(incident)
            if kept is None or (expect is not None and kept.record.state not in expect):
                return False
            check_transition(incident, kept.record.state, state)
            kept.record = replace(
                kept.record,
                state=state,
                summary=summary,
                updated_at=moment,
                closed_at=moment if state.finished else None,
            )
            return True

    def add_decision(self, incident: int, decision: Decision, actor: str) -> None:
        kept = _decision(decision, actor)
        with self._lock:
            self._open()
            self._incident(incident).decisions.append(kept)

    def add_evidence(
        self, incident: int, at: datetime, kind: EvidenceKind | str, body: Any
    ) -> None:
        kept = EvidenceRecord(kept_time(at), evidence_kind(kind), kept_json(body))
        with self._lock:
            self._open()
            self._incident(incident).evidence.append(kept)

    def add_samples(self, incident: int, rows: Sequence[tuple[datetime, str, float]]) -> None:
        kept = [(kept_time(t), series, value) for t, series, value in rows if math.isfinite(value)]
        with self._lock:
            self._open()
            self._incident(incident).samples.extend(kept)

    def step_started(
        self, incident: int, name: str, at: datetime, data: Mapping[str, str] | None = None
    ) -> int:
        started = kept_time(at)
        with self._lock:
            self._open()
            self._incident(incident)
            number = max(self._steps, default=0) + 1
            self._steps[number] = _Step(
                incident,
                StepRecord(
                    id=number,
                    name=name,
                    started_at=started,
                    finished_at=None,
                    outcome=None,
                    summary="",
                    output="",
                    data=kept_json(dict(data or {})),
                ),
            )
            return number

    def step_finished(
        self,
        step: int,
        at: datetime,
        outcome: Outcome,
        summary: str,
        output: str = "",
        data: Mapping[str, str] | None = None,
    ) -> None:
        finished = kept_time(at)
        with self._lock:
            self._open()
            kept = self._steps.get(step)
            if kept is None:
                raise JournalError(f"the journal in {self.location} has no step {step} to finish")
            kept.record = replace(
                kept.record,
                finished_at=finished,
                outcome=outcome,
                summary=summary,
                output=output,
                data=kept_json({**kept.record.data, **dict(data or {})}),
            )

    def incident(self, incident: int) -> IncidentRecord | None:
        with self._lock:
            self._open()
            kept = self._incidents.get(incident)
            if kept is None:
                return None
            samples: dict[str, list[tuple[datetime, float]]] = {}
            for t, series, value in sorted(kept.samples, key=lambda row: row[0]):
                samples.setdefault(series, []).append((t, value))
            return replace(
                kept.record,
                decisions=tuple(kept.decisions),
                steps=tuple(s.record for s in self._steps.values() if s.incident == incident),
                evidence=tuple(kept.evidence),
                samples=samples,
            )

    def incidents(
        self,
        limit: int | None = 50,
        service: str | None = None,
        active_only: bool = False,
        unfinished_only: bool = False,
    ) -> list[IncidentRecord]:
        """Incidents, newest first; ``limit`` None lists them all."""
        with self._lock:
            self._open()
            found = [
                kept.record
                for kept in reversed(self._incidents.values())
                if (service is None or kept.record.service == service)
                and (not active_only or kept.record.state in ACTIVE_STATES)
                and (not unfinished_only or kept.record.closed_at is None)
            ]
        return found if limit is None else found[:limit]

    def rollbacks(self, service: str) -> list[datetime]:
        """When rollbacks of ``service`` were executed (or may have been: outcome unknown)."""
        with self._lock:
            self._open()
            return [
                s.record.started_at
                for s in self._steps.values()
                if s.record.name == "execute"
                and self._incidents[s.incident].record.service == service
                and s.record.outcome in (None, Outcome.OK, Outcome.UNKNOWN)
            ]

    # -- alerts -------------------------------------------------------------------------

    def record_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> tuple[int, int]:
        """Journal one webhook delivery and its alerts at once; (new or changed, duplicates)."""
        return self.submit_delivery(received_at, delivery, body).result()

    def submit_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> Future[tuple[int, int]]:
        """Journal a delivery now; the future returned is already done."""
        future: Future[tuple[int, int]] = Future()
        with self._lock:
            self._open()
            future.set_result(self._apply(encode_time(received_at), delivery))
        return future

    def _apply(self, when: str, delivery: Delivery) -> tuple[int, int]:
        """A delivery's alerts, as the SQLite store's upsert does; (new or changed, duplicates)."""
        changed = 0
        for alert in delivery.alerts:
            key = (alert.fingerprint, encode_time(alert.starts_at))
            status, ends_at = alert.status, encode_optional_time(alert.ends_at)
            before = self._alerts.get(key)
            if before is not None and before.record.status == "resolved":
                status, ends_at = "resolved", before.ends_at or ends_at  # never back to firing
            if before is not None and (before.record.status, before.ends_at) == (status, ends_at):
                before.last_received = when
                continue
            changed += 1
            self._alerts[key] = _Alert(
                AlertRecord(
                    fingerprint=alert.fingerprint,
                    starts_at=kept_time(alert.starts_at),
                    status=status,
                    ends_at=decode_optional_time(ends_at),
                    # Service and name are those of the first delivery, as in SQLite.
                    service=alert.service if before is None else before.record.service,
                    name=alert.name if before is None else before.record.name,
                    labels=dict(alert.labels),
                    annotations=dict(alert.annotations),
                ),
                ends_at=ends_at,
                last_received=when,
            )
        self._deliveries += 1
        return changed, len(delivery.alerts) - changed

    def firing_alerts(
        self,
        now: datetime,
        services: Collection[str] | None = None,
        received_after: datetime | None = None,
    ) -> list[AlertRecord]:
        """The alerts firing at ``now``, oldest first (see the SQLite store's)."""
        at = encode_time(now)
        since = encode_optional_time(received_after) or ""
        with self._lock:
            self._open()
            firing = [
                kept
                for kept in self._alerts.values()
                if kept.record.status == "firing"
                and (kept.ends_at is None or kept.ends_at > at)
                and kept.last_received > since
            ]
        if services is not None:
            watched = [k for k in firing if k.record.service in services]
            elsewhere = [k for k in firing if k.record.service not in services][:1]
            firing = watched + elsewhere
        firing.sort(key=lambda kept: encode_time(kept.record.starts_at))
        return [
            replace(k.record, labels=dict(k.record.labels), annotations=dict(k.record.annotations))
            for k in firing
        ]

    def deliveries(self) -> int:
        """How many webhook deliveries were journaled."""
        with self._lock:
            self._open()
            return self._deliveries

    # -- deploys ------------------------------------------------------------------------

    def record_deploy(self, deploy: Deploy, received_at: datetime) -> None:
        kept = Deploy(
            service=deploy.service,
            version=deploy.version,
            time=kept_time(deploy.time),
            source="event",
            ref=deploy.ref,
            migrations=tuple(deploy.migrations),
        )
        with self._lock:
            self._open()
            self._deploys.append(kept)

    def deploys(self, skip: int = 0) -> list[Deploy]:
        """Every deploy event received, oldest first, less the first ``skip``."""
        with self._lock:
            self._open()
            return list(self._deploys[max(skip, 0) :])


def _decision(decision: Decision, actor: str) -> DecisionRecord:
    return DecisionRecord(
        time=kept_time(decision.time),
        actor=actor,
        action=decision.action,
        proposed=decision.proposed,
        severity=decision.severity,
        rules=list(decision.rules),
        reason=decision.reason,
        approver=decision.approver,
        deadline=kept_optional_time(decision.deadline),
        guards=list(decision.guards),
        value=decision.value,
        target=decision.target,
    )
