"""The SQL of the incident store in PostgreSQL: incidents, their decisions, checklist steps,
evidence and samples, in the tables of :mod:`rollbackd.journal.postgresql.schema`."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from rollbackd.core.incident import (
    ACTIVE_STATES,
    DecisionRecord,
    EvidenceKind,
    EvidenceRecord,
    IncidentRecord,
    IncidentState,
    NewIncident,
    Outcome,
    RollbackFacts,
    StepRecord,
    action_of,
    check_transition,
    evidence_kind,
    severity_of,
)
from rollbackd.core.model import Decision
from rollbackd.errors import JournalError
from rollbackd.journal.codec import kept_optional_time, kept_time
from rollbackd.journal.postgresql.database import Connection, Database, json_text


class PostgresStore:
    """A store whose SQL runs on a :class:`Database`: the stores of one journal share it."""

    def __init__(self, database: Database) -> None:
        self._database = database

    @property
    def location(self) -> str:
        """``postgresql://user@host:port/db``: never the password."""
        return self._database.location


class PostgresIncidents(PostgresStore):
    """:class:`~rollbackd.journal.stores.IncidentStore` in PostgreSQL."""

    def open_incident(self, new: NewIncident) -> int:
        """Journal a new incident with its decision and first evidence, all or nothing."""
        opened_at = kept_time(new.opened_at)
        facts = json_text(new.facts.to_json())
        evidence = [(kind, json_text(body)) for kind, body in new.evidence.items()]
        decision = None if new.decision is None else _decision_row(new.decision, new.decided_by)
        with self._database.transaction() as db:
            row = db.execute(
                "INSERT INTO incidents (service, opened_at, closed_at, state, severity, action,"
                " origin, target, current_version, reason, facts, updated_at)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::json,%s) RETURNING id",
                (
                    new.service,
                    opened_at,
                    opened_at if new.state.finished else None,
                    new.state.value,
                    new.severity.value,
                    new.action.value,
                    new.origin,
                    new.target,
                    new.current_version,
                    new.reason,
                    facts,
                    opened_at,
                ),
            ).fetchone()
            assert row is not None  # noqa: S101 -- INSERT ... RETURNING returns the row
            number = int(row[0])
            if decision is not None:
                _insert_decision(db, number, decision)
            for kind, body in evidence:
                _insert_evidence(db, number, opened_at, kind, body)
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

        The row is locked (``FOR UPDATE``) for the transaction, so two callers racing on
        one incident, in one process or two, cannot both win: False for the one that lost.
        InvalidTransition, writing nothing, for a move the incident model does not allow
        from the state the incident is in.
        """
        moment = kept_time(at)
        allowed = None if expect is None else [s.value for s in expect]
        with self._database.transaction() as db:
            row = db.execute(
                "SELECT state FROM incidents WHERE id = %s FOR UPDATE", (incident,)
            ).fetchone()
            if row is None or (allowed is not None and row[0] not in allowed):
                return False
            check_transition(incident, IncidentState(row[0]), state)
            changed = db.execute(
                "UPDATE incidents SET state = %s, summary = %s, updated_at = %s, closed_at = %s"
                " WHERE id = %s AND (%s::text[] IS NULL OR state = ANY(%s::text[])) RETURNING id",
                (
                    state.value,
                    summary,
                    moment,
                    moment if state.finished else None,
                    incident,
                    allowed,
                    allowed,
                ),
            ).fetchone()
            return changed is not None

    def add_decision(self, incident: int, decision: Decision, actor: str) -> None:
        row = _decision_row(decision, actor)
        with self._database.transaction() as db:
            _insert_decision(db, incident, row)

    def add_evidence(
        self, incident: int, at: datetime, kind: EvidenceKind | str, body: Any
    ) -> None:
        text = json_text(body)
        with self._database.transaction() as db:
            _insert_evidence(db, incident, kept_time(at), kind, text)

    def add_samples(self, incident: int, rows: Sequence[tuple[datetime, str, float]]) -> None:
        kept = [(incident, kept_time(t), s, v) for t, s, v in rows if math.isfinite(v)]
        with self._database.transaction() as db, db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO samples (incident_id, time, series, value) VALUES (%s,%s,%s,%s)",
                kept,
            )

    def step_started(
        self, incident: int, name: str, at: datetime, data: Mapping[str, str] | None = None
    ) -> int:
        with self._database.transaction() as db:
            row = db.execute(
                "INSERT INTO steps (incident_id, name, started_at, data)"
                " VALUES (%s,%s,%s,%s::json) RETURNING id",
                (incident, name, kept_time(at), json.dumps(dict(data or {}))),
            ).fetchone()
            assert row is not None  # noqa: S101 -- INSERT ... RETURNING returns the row
            return int(row[0])

    def step_finished(
        self,
        step: int,
        at: datetime,
        outcome: Outcome,
        summary: str,
        output: str = "",
        data: Mapping[str, str] | None = None,
    ) -> None:
        with self._database.transaction() as db:
            row = db.execute("SELECT data FROM steps WHERE id = %s FOR UPDATE", (step,)).fetchone()
            if row is None:
                raise JournalError(f"the journal {self.location} has no step {step} to finish")
            merged = {**(row[0] or {}), **dict(data or {})}
            db.execute(
                "UPDATE steps SET finished_at = %s, outcome = %s, summary = %s, output = %s,"
                " data = %s::json WHERE id = %s",
                (kept_time(at), outcome.value, summary, output, json.dumps(merged), step),
            )

    def incident(self, incident: int) -> IncidentRecord | None:
        with self._database.read() as db:
            row = db.execute(_INCIDENT_COLUMNS + " WHERE id = %s", (incident,)).fetchone()
            if row is None:
                return None
            base = _incident(row)
            decisions = tuple(
                DecisionRecord(
                    time=_utc(r[0]),
                    actor=r[1],
                    action=action_of(r[2]),
                    proposed=action_of(r[3]),
                    severity=severity_of(r[4]),
                    rules=r[5],
                    reason=r[6],
                    approver=r[7],
                    deadline=_optional_utc(r[8]),
                    guards=r[9],
                    value=r[10],
                    target=r[11],
                )
                for r in db.execute(
                    "SELECT time, actor, action, proposed, severity, rules, reason, approver,"
                    " deadline, guards, value, target FROM decisions WHERE incident_id = %s"
                    " ORDER BY id",
                    (incident,),
                )
            )
            steps = tuple(
                StepRecord(
                    id=r[0],
                    name=r[1],
                    started_at=_utc(r[2]),
                    finished_at=_optional_utc(r[3]),
                    outcome=Outcome(r[4]) if r[4] else None,
                    summary=r[5],
                    output=r[6],
                    data=r[7],
                )
                for r in db.execute(
                    "SELECT id, name, started_at, finished_at, outcome, summary, output, data"
                    " FROM steps WHERE incident_id = %s ORDER BY id",
                    (incident,),
                )
            )
            evidence = tuple(
                EvidenceRecord(_utc(r[0]), evidence_kind(r[1]), r[2])
                for r in db.execute(
                    "SELECT time, kind, body FROM evidence WHERE incident_id = %s ORDER BY id",
                    (incident,),
                )
            )
            samples: dict[str, list[tuple[datetime, float]]] = {}
            for r in db.execute(
                "SELECT series, time, value FROM samples WHERE incident_id = %s"
                " ORDER BY time, series",
                (incident,),
            ):
                samples.setdefault(r[0], []).append((_utc(r[1]), r[2]))
        return replace(base, decisions=decisions, steps=steps, evidence=evidence, samples=samples)

    def incidents(
        self,
        limit: int | None = 50,
        service: str | None = None,
        active_only: bool = False,
        unfinished_only: bool = False,
    ) -> list[IncidentRecord]:
        """Incidents, newest first; ``limit`` None lists them all.

        ``active_only``: a rollback pending or under way; ``unfinished_only``: not over
        (active, or waiting on people).
        """
        clauses: list[str] = []
        params: list[object] = []
        if service is not None:
            clauses.append("service = %s")
            params.append(service)
        if active_only:
            clauses.append("state = ANY(%s::text[])")
            params.append([s.value for s in sorted(ACTIVE_STATES)])
        if unfinished_only:
            clauses.append("closed_at IS NULL")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._database.read() as db:
            rows = db.execute(
                _INCIDENT_COLUMNS + where + " ORDER BY id DESC LIMIT %s",
                (*params, limit),
            ).fetchall()
        return [_incident(r) for r in rows]

    def rollbacks(self, service: str) -> list[datetime]:
        """When rollbacks of ``service`` were executed (or may have been: outcome unknown)."""
        with self._database.read() as db:
            rows = db.execute(
                "SELECT s.started_at FROM steps s JOIN incidents i ON i.id = s.incident_id"
                " WHERE i.service = %s AND s.name = 'execute'"
                " AND (s.outcome IS NULL OR s.outcome IN ('ok', 'unknown')) ORDER BY s.id",
                (service,),
            ).fetchall()
        return [_utc(r[0]) for r in rows]


def _decision_row(decision: Decision, actor: str) -> tuple[Any, ...]:
    """A decision's columns after the incident's, encoded before any transaction begins."""
    return (
        kept_time(decision.time),
        actor,
        decision.action.value,
        decision.proposed.value,
        decision.severity.value,
        json.dumps(list(decision.rules)),
        decision.reason,
        decision.approver,
        kept_optional_time(decision.deadline),
        json.dumps(list(decision.guards)),
        decision.value,
        decision.target,
    )


def _insert_decision(db: Connection, incident: int, row: tuple[Any, ...]) -> None:
    db.execute(
        "INSERT INTO decisions (incident_id, time, actor, action, proposed, severity,"
        " rules, reason, approver, deadline, guards, value, target)"
        " VALUES (%s,%s,%s,%s,%s,%s,%s::json,%s,%s,%s,%s::json,%s,%s)",
        (incident, *row),
    )


def _insert_evidence(
    db: Connection, incident: int, at: datetime, kind: EvidenceKind | str, body: str
) -> None:
    db.execute(
        "INSERT INTO evidence (incident_id, time, kind, body) VALUES (%s,%s,%s,%s::json)",
        (incident, at, str(kind), body),
    )


_INCIDENT_COLUMNS = (
    "SELECT id, service, opened_at, closed_at, state, severity, action, origin, target,"
    " current_version, reason, summary, facts, updated_at FROM incidents"
)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _optional_utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def _incident(row: Sequence[Any]) -> IncidentRecord:
    return IncidentRecord(
        id=row[0],
        service=row[1],
        opened_at=_utc(row[2]),
        closed_at=_optional_utc(row[3]),
        state=IncidentState(row[4]),
        severity=severity_of(row[5]),
        action=action_of(row[6]),
        origin=row[7],
        target=row[8],
        current_version=row[9],
        reason=row[10],
        summary=row[11],
        facts=RollbackFacts.from_json(row[12]),
        updated_at=_utc(row[13]),
    )
