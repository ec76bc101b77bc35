"""The incident journal on a real SQLite file: durable, versioned, complete."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.journal import (
    SCHEMA_VERSION,
    IncidentState,
    JournalError,
    NewIncident,
    Outcome,
    SqliteJournal,
    journal_path,
)
from rollbackd.model import Action, Decision, Severity

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
HOSTILE = "--upload-pack=touch /tmp/x; $(rm -rf /)\n`id` <script>"


def incident(journal: SqliteJournal, service: str = "web") -> int:
    return journal.open_incident(
        NewIncident(
            service=service,
            opened_at=T0,
            severity="critical",
            action="rollback",
            origin="automatic",
            reason=HOSTILE,
            target="v1",
            current_version="v2",
            state=IncidentState.ROLLING_BACK,
            facts={"baselines": {"latency": 0.2}},
        )
    )


def test_everything_written_is_there_after_reopening(tmp_path: Path) -> None:
    """A new process sees every incident, decision, step, evidence and sample."""
    path = journal_path(tmp_path)
    journal = SqliteJournal(path)
    number = incident(journal)
    journal.add_decision(
        number,
        Decision(
            service="web",
            time=T0,
            severity=Severity.CRITICAL,
            action=Action.ROLLBACK,
            proposed=Action.ROLLBACK,
            rules=("outage",),
            reason="rule outage firing",
            approver="admin",
        ),
        "rollbackd",
    )
    step = journal.step_started(number, "execute", T0, {"head": "abc"})
    journal.step_finished(
        step, T0 + timedelta(seconds=2), Outcome.OK, "reverted", "out", {"after": "def"}
    )
    journal.add_evidence(number, T0, "snapshot", {"findings": [{"rule": "outage"}]})
    journal.add_samples(
        number, [(T0, "error-rate", 0.2), (T0 + timedelta(seconds=15), "error-rate", 0.1)]
    )
    journal.close()

    again = SqliteJournal(path).incident(number)
    assert again is not None
    assert again.reason == HOSTILE
    assert again.facts == {"baselines": {"latency": 0.2}}
    assert [d.rules for d in again.decisions] == [["outage"]]
    executed = again.step("execute")
    assert executed is not None
    assert executed.outcome is Outcome.OK
    assert executed.data == {"head": "abc", "after": "def"}
    assert again.evidence[0].body == {"findings": [{"rule": "outage"}]}
    assert [v for _, v in again.samples["error-rate"]] == [0.2, 0.1]


def test_an_interrupted_step_is_visible_as_such(tmp_path: Path) -> None:
    """A step started but never finished is what a restart looks for."""
    journal = SqliteJournal(journal_path(tmp_path))
    number = incident(journal)
    journal.step_started(number, "execute", T0)
    record = journal.incident(number)
    assert record is not None
    step = record.step("execute")
    assert step is not None and step.interrupted


def test_rollbacks_count_executed_and_unknown_but_not_failed(tmp_path: Path) -> None:
    """Guards see a rollback that ran or may have run, never one that failed."""
    journal = SqliteJournal(journal_path(tmp_path))
    for outcome in (Outcome.OK, Outcome.UNKNOWN, Outcome.FAILED):
        number = incident(journal)
        step = journal.step_started(number, "execute", T0)
        journal.step_finished(step, T0, outcome, outcome.value)
    assert len(journal.rollbacks("web")) == 2
    assert journal.rollbacks("api") == []


def test_states_close_incidents_and_active_ones_are_listed(tmp_path: Path) -> None:
    """Recovered incidents get a closing time; active ones are found by service."""
    journal = SqliteJournal(journal_path(tmp_path))
    first, second = incident(journal), incident(journal, "api")
    journal.set_state(first, IncidentState.RECOVERED, "recovered", T0 + timedelta(minutes=20))
    active = journal.incidents(active_only=True)
    assert [i.id for i in active] == [second]
    closed = journal.incident(first)
    assert closed is not None and closed.closed_at == T0 + timedelta(minutes=20)


def test_a_journal_from_a_newer_rollbackd_is_refused(tmp_path: Path) -> None:
    """An older binary never writes into a schema it does not know."""
    path = journal_path(tmp_path)
    SqliteJournal(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match="newer than this rollbackd"):
        SqliteJournal(path)


def test_the_journal_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    """Durability settings are on: WAL and synchronous=FULL."""
    journal = SqliteJournal(journal_path(tmp_path))
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_an_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A journal that cannot be created says where and why."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match="cannot open the journal"):
        SqliteJournal(blocker / "journal.sqlite3")
