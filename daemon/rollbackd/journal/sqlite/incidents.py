"""The SQL of the incident store: incidents, their decisions, checklist steps, evidence and
samples, in the tables of :mod:`rollbackd.journal.sqlite.schema`."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
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
from rollbackd.journal.codec import (
    decode_optional_time,
    decode_time,
    encode_json,
    encode_optional_time,
)
from rollbackd.journal.sqlite.database import SqliteStore


class SqliteIncidents(SqliteStore):
    """:class:`~rollbackd.journal.stores.IncidentStore` in SQLite."""

    def open_incident(self, new: NewIncident) -> int:
        """Journal a new incident with its decision and first evidence, all or nothing."""
        with self._database.transaction() as db:
            cursor = db.execute(
                "INSERT INTO incidents (service, opened_at, state, severity, action, origin,"
                " target, current_version, reason, facts, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    new.service,
                    encode_optional_time(new.opened_at),
                    new.state.value,
                    new.severity.value,
                    new.action.value,
                    new.origin,
                    new.target,
                    new.current_version,
                    new.reason,
                    encode_json(new.facts.to_json()),
                    encode_optional_time(new.opened_at),
                ),
            )
            number = int(cursor.lastrowid or 0)
            if new.state.finished:
                db.execute("UPDATE incidents SET closed_at = opened_at WHERE id = ?", (number,))
            if new.decision is not None:
                _insert_decision(db, number, new.decision, new.decided_by)
            for kind, body in new.evidence.items():
                _insert_evidence(db, number, new.opened_at, kind, body)
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

        One write transaction, so two callers racing on one incident (an approval and
        a veto, a deadline and a resolution) cannot both win: False for the one that
        lost. InvalidTransition, writing nothing, for a move the incident model does
        not allow from the state the incident is in.
        """
        condition, params = "", []
        if expect is not None:
            condition = f" AND state IN ({','.join('?' * len(expect))})"
            params = [s.value for s in expect]
        with self._database.transaction() as db:
            row = db.execute("SELECT state FROM incidents WHERE id = ?", (incident,)).fetchone()
            if row is None or (expect is not None and row[0] not in params):
                return False
            check_transition(incident, IncidentState(row[0]), state)
            cursor = db.execute(
                "UPDATE incidents SET state = ?, summary = ?, updated_at = ?,"  # noqa: S608 -- placeholders only
                " closed_at = CASE WHEN ? THEN ? ELSE NULL END WHERE id = ?" + condition,
                (
                    state.value,
                    summary,
                    encode_optional_time(at),
                    state.finished,
                    encode_optional_time(at),
                    incident,
                    *params,
                ),
            )
            return cursor.rowcount == 1

    def add_decision(self, incident: int, decision: Decision, actor: str) -> None:
        with self._database.transaction() as db:
            _insert_decision(db, incident, decision, actor)

    def add_evidence(
        self, incident: int, at: datetime, kind: EvidenceKind | str, body: Any
    ) -> None:
        with self._database.transaction() as db:
            _insert_evidence(db, incident, at, kind, body)

    def add_samples(self, incident: int, rows: Sequence[tuple[datetime, str, float]]) -> None:
        with self._database.transaction() as db:
            db.executemany(
                "INSERT INTO samples (incident_id, time, series, value) VALUES (?,?,?,?)",
                [
                    (incident, encode_optional_time(t), series, value)
                    for t, series, value in rows
                    if math.isfinite(value)
                ],
            )

    def step_started(
        self, incident: int, name: str, at: datetime, data: Mapping[str, str] | None = None
    ) -> int:
        with self._database.transaction() as db:
            cursor = db.execute(
                "INSERT INTO steps (incident_id, name, started_at, data) VALUES (?,?,?,?)",
                (incident, name, encode_optional_time(at), json.dumps(dict(data or {}))),
            )
            return int(cursor.lastrowid or 0)

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
            row = db.execute("SELECT data FROM steps WHERE id = ?", (step,)).fetchone()
            if row is None:
                raise JournalError(f"the journal {self.path} has no step {step} to finish")
            merged = {**json.loads(row[0] if row else "{}"), **dict(data or {})}
            db.execute(
                "UPDATE steps SET finished_at = ?, outcome = ?, summary = ?, output = ?, data = ?"
                " WHERE id = ?",
                (
                    encode_optional_time(at),
                    outcome.value,
                    summary,
                    output,
                    json.dumps(merged),
                    step,
                ),
            )

    def incident(self, incident: int) -> IncidentRecord | None:
        with self._database.read() as db:
            row = db.execute(_INCIDENT_COLUMNS + " WHERE id = ?", (incident,)).fetchone()
            if row is None:
                return None
            base = _incident(row)
            decisions = tuple(
                DecisionRecord(
                    time=decode_time(r[0]),
                    actor=r[1],
                    action=action_of(r[2]),
                    proposed=action_of(r[3]),
                    severity=severity_of(r[4]),
                    rules=json.loads(r[5]),
                    reason=r[6],
                    approver=r[7],
                    deadline=decode_optional_time(r[8]),
                    guards=json.loads(r[9]),
                    value=r[10],
                    target=r[11],
                )
                for r in db.execute(
                    "SELECT time, actor, action, proposed, severity, rules, reason, approver,"
                    " deadline, guards, value, target FROM decisions WHERE incident_id = ?"
                    " ORDER BY id",
                    (incident,),
                )
            )
            steps = tuple(
                StepRecord(
                    id=r[0],
                    name=r[1],
                    started_at=decode_time(r[2]),
                    finished_at=decode_optional_time(r[3]),
                    outcome=Outcome(r[4]) if r[4] else None,
                    summary=r[5],
                    output=r[6],
                    data=json.loads(r[7]),
                )
                for r in db.execute(
                    "SELECT id, name, started_at, finished_at, outcome, summary, output, data"
                    " FROM steps WHERE incident_id = ? ORDER BY id",
                    (incident,),
                )
            )
            evidence = tuple(
                EvidenceRecord(decode_time(r[0]), evidence_kind(r[1]), json.loads(r[2]))
                for r in db.execute(
                    "SELECT time, kind, body FROM evidence WHERE incident_id = ? ORDER BY id",
                    (incident,),
                )
            )
            samples: dict[str, list[tuple[datetime, float]]] = {}
            for r in db.execute(
                "SELECT series, time, value FROM samples WHERE incident_id = ? ORDER BY time",
                (incident,),
            ):
                samples.setdefault(r[0], []).append((decode_time(r[1]), r[2]))
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
            clauses.append("service = ?")
            params.append(service)
        if active_only:
            clauses.append(f"state IN ({','.join('?' * len(ACTIVE_STATES))})")
            params.extend(s.value for s in sorted(ACTIVE_STATES))
        if unfinished_only:
            clauses.append("closed_at IS NULL")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._database.read() as db:
            rows = db.execute(
                _INCIDENT_COLUMNS + where + " ORDER BY id DESC LIMIT ?",
                (*params, -1 if limit is None else limit),
            ).fetchall()
        return [_incident(r) for r in rows]

    def rollbacks(self, service: str) -> list[datetime]:
        """When rollbacks of ``service`` were executed (or may have been: outcome unknown)."""
        with self._database.read() as db:
            rows = db.execute(
                "SELECT s.started_at FROM steps s JOIN incidents i ON i.id = s.incident_id"
                " WHERE i.service = ? AND s.name = 'execute'"
                " AND (s.outcome IS NULL OR s.outcome IN ('ok', 'unknown')) ORDER BY s.id",
                (service,),
            ).fetchall()
        return [decode_time(r[0]) for r in rows]


def _insert_decision(db: sqlite3.Connection, incident: int, decision: Decision, actor: str) -> None:
    db.execute(
        "INSERT INTO decisions (incident_id, time, actor, action, proposed, severity,"
        " rules, reason, approver, deadline, guards, value, target)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            incident,
            encode_optional_time(decision.time),
            actor,
            decision.action.value,
            decision.proposed.value,
            decision.severity.value,
            json.dumps(list(decision.rules)),
            decision.reason,
            decision.approver,
            encode_optional_time(decision.deadline),
            json.dumps(list(decision.guards)),
            decision.value,
            decision.target,
        ),
    )


def _insert_evidence(
    db: sqlite3.Connection, incident: int, at: datetime, kind: EvidenceKind | str, body: Any
) -> None:
    db.execute(
        "INSERT INTO evidence (incident_id, time, kind, body) VALUES (?,?,?,?)",
        (incident, encode_optional_time(at), kind, encode_json(body)),
    )


_INCIDENT_COLUMNS = (
    "SELECT id, service, opened_at, closed_at, state, severity, action, origin, target,"
    " current_version, reason, summary, facts, updated_at FROM incidents"
)


def _incident(row: Sequence[Any]) -> IncidentRecord:
    return IncidentRecord(
        id=row[0],
        service=row[1],
        opened_at=decode_time(row[2]),
        closed_at=decode_optional_time(row[3]),
        state=IncidentState(row[4]),
        severity=severity_of(row[5]),
        action=action_of(row[6]),
        origin=row[7],
        target=row[8],
        current_version=row[9],
        reason=row[10],
        summary=row[11],
        facts=RollbackFacts.from_json(_json(row[12])),
        updated_at=decode_optional_time(row[13]) or decode_time(row[2]),
    )


def _json(text: str | None) -> Any:
    """Journaled JSON, or None where it is not (an edited journal): facts then read as none."""
    try:
        return json.loads(text or "null")
    except ValueError:
        return None
