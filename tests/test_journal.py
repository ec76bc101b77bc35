"""The incident journal on a real SQLite file: durable, versioned, complete."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.journal import (
    BATCH_ALERTS,
    SCHEMA_VERSION,
    AlertRecord,
    Delivery,
    IncidentState,
    JournalError,
    JournalUnavailable,
    NewIncident,
    Outcome,
    SqliteJournal,
    journal_path,
)
from rollbackd.journal.sqlite.schema import MIGRATIONS
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


def test_an_incident_waiting_on_people_stays_open_until_it_ends(tmp_path: Path) -> None:
    """Escalated is unfinished (no closing time); resolved closes it and dates the change."""
    journal = SqliteJournal(journal_path(tmp_path))
    number = incident(journal)
    journal.set_state(number, IncidentState.ESCALATED, "a person must act", T0)
    assert [i.id for i in journal.incidents(unfinished_only=True)] == [number]
    assert journal.incidents(active_only=True) == []
    later = T0 + timedelta(hours=1)
    journal.set_state(number, IncidentState.RESOLVED, "what fired is OK again", later)
    assert journal.incidents(unfinished_only=True) == []
    record = journal.incident(number)
    assert record is not None and record.closed_at == later and record.updated_at == later


def test_a_state_change_from_an_expected_state_has_one_winner(tmp_path: Path) -> None:
    """Approve and veto racing on one incident: the first change wins, the second is refused."""
    journal = SqliteJournal(journal_path(tmp_path))
    number = incident(journal)
    journal.set_state(number, IncidentState.AWAITING_APPROVAL, "asks", T0)
    awaiting = (IncidentState.AWAITING_APPROVAL,)
    vetoed = journal.set_state(number, IncidentState.VETOED, "vetoed", T0, expect=awaiting)
    approved = journal.set_state(
        number, IncidentState.ROLLING_BACK, "approved", T0, expect=awaiting
    )
    assert (vetoed, approved) == (True, False)
    record = journal.incident(number)
    assert record is not None and record.state is IncidentState.VETOED


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
    assert journal.database.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.database.connection.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_an_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A journal that cannot be created says where and why."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match="cannot open the journal"):
        SqliteJournal(blocker / "journal.sqlite3")


def approval_decision() -> Decision:
    """A high finding that asks senior_admin, with a deadline an hour out."""
    return Decision(
        service="web",
        time=T0,
        severity=Severity.HIGH,
        action=Action.REQUEST_APPROVAL,
        proposed=Action.REQUEST_APPROVAL,
        rules=("error-rate",),
        reason="rule error-rate firing: 0.2 > 0.05",
        approver="senior_admin",
        deadline=T0 + timedelta(hours=1),
        target="v1",
    )


def awaiting_approval() -> NewIncident:
    return NewIncident(
        service="web",
        opened_at=T0,
        severity="high",
        action="request_approval",
        origin="automatic",
        reason="rule error-rate firing",
        target="v1",
        current_version="v2",
        state=IncidentState.AWAITING_APPROVAL,
        decision=approval_decision(),
        evidence={"snapshot": {"findings": [{"rule": "error-rate"}]}},
    )


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 -- the test's own table names


def test_an_incident_opens_with_its_decision_and_evidence_or_not_at_all(tmp_path: Path) -> None:
    """Opening fails in the middle (its evidence refused): no incident, no decision is left."""
    journal = SqliteJournal(journal_path(tmp_path))
    with sqlite3.connect(journal.path) as db:
        db.execute(
            "CREATE TRIGGER refuse_evidence BEFORE INSERT ON evidence"
            " BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )
    with pytest.raises(JournalError, match="refused by test"):
        journal.open_incident(awaiting_approval())
    assert journal.incidents() == []
    assert rows(journal.path, "decisions") == 0

    with sqlite3.connect(journal.path) as db:
        db.execute("DROP TRIGGER refuse_evidence")
    number = journal.open_incident(awaiting_approval())
    record = journal.incident(number)
    assert record is not None and record.state is IncidentState.AWAITING_APPROVAL
    [decision] = record.decisions
    assert (decision.actor, decision.approver) == ("rollbackd", "senior_admin")
    assert decision.deadline == T0 + timedelta(hours=1)
    assert [(e.kind, e.time) for e in record.evidence] == [("snapshot", T0)]


def test_a_journal_file_removed_under_it_is_not_written_and_is_put_back(tmp_path: Path) -> None:
    """Removed while open: writes are refused (they would be lost), and what was journaled is
    copied back to the path, where the next start finds all of it."""
    path = journal_path(tmp_path)
    journal = SqliteJournal(path)
    number = incident(journal)
    assert journal.record_delivery(T0, delivery(alert("before")), "before") == (1, 0)
    path.unlink()

    with pytest.raises(JournalUnavailable, match="was removed while rollbackd had it open"):
        journal.record_delivery(T0, delivery(alert("after")), "after")
    with pytest.raises(JournalUnavailable, match="was removed"):
        journal.add_evidence(number, T0, "note", "after the removal")
    problem = journal.problem()
    assert problem is not None
    assert (
        f"was removed while rollbackd had it open; everything journaled was copied back to {path}"
        in problem
    )
    journal.close()

    again = SqliteJournal(path)
    assert again.problem() is None
    record = again.incident(number)
    assert record is not None and [e.kind for e in record.evidence] == []
    assert {a.fingerprint for a in again.firing_alerts(T0)} == {"before"}
    assert again.record_delivery(T0, delivery(alert("later")), "later") == (1, 0)


def test_a_journal_file_replaced_under_it_is_left_alone_and_ours_is_kept_beside(
    tmp_path: Path,
) -> None:
    """Replaced while open: nothing is written to either file, a copy of ours is kept beside
    the new one; once ours is back at the path, writes go on."""
    path = journal_path(tmp_path)
    journal = SqliteJournal(path)
    number = incident(journal)
    other = journal_path(tmp_path / "other")
    SqliteJournal(other).close()
    aside = tmp_path / "moved-away.sqlite3"
    path.rename(aside)
    other.rename(path)  # another, empty journal in its place

    with pytest.raises(JournalUnavailable, match="was replaced while rollbackd had it open"):
        journal.add_evidence(number, T0, "note", "refused")
    problem = journal.problem()
    assert problem is not None
    [kept] = tmp_path.glob("journal.sqlite3.kept-*")
    assert f"everything journaled was copied to {kept}" in problem
    assert rows(kept, "incidents") == 1

    path.rename(other)
    aside.rename(path)
    assert journal.problem() is None
    journal.add_evidence(number, T0, "note", "written once ours is back")
    record = journal.incident(number)
    assert record is not None
    assert [e.body for e in record.evidence] == ["written once ours is back"]
    assert rows(other, "incidents") == 0  # the other file was never written


def test_a_full_journal_refuses_writes_and_says_so_until_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLITE_FULL: the write fails as unavailable, problem() names it while it lasts, and its
    test writes, once there is room, clear it and leave nothing behind."""
    monkeypatch.setattr("rollbackd.journal.sqlite.database.PROBE_PAUSE", 0.0)
    journal = SqliteJournal(journal_path(tmp_path))
    number = incident(journal)
    pages = journal.database.connection.execute("PRAGMA page_count").fetchone()[0]
    journal.database.connection.execute(
        f"PRAGMA max_page_count = {pages}"
    )  # as full as a disk can be
    with pytest.raises(JournalUnavailable, match="database or disk is full"):
        journal.add_evidence(number, T0, "output", "x" * 20_000)
    future = journal.submit_delivery(T0, delivery(alert("big", service="x" * 20_000)), "full")
    with pytest.raises(JournalUnavailable, match="database or disk is full"):
        future.result()
    problem = journal.problem()
    assert problem is not None and "cannot be written: database or disk is full" in problem

    journal.database.connection.execute(f"PRAGMA max_page_count = {pages * 100}")
    assert journal.problem() is None
    assert rows(journal.path, "deliveries") == 0  # the test writes left nothing
    journal.add_evidence(number, T0, "output", "x" * 20_000)


def test_a_write_refused_for_what_it_is_does_not_make_the_journal_unavailable(
    tmp_path: Path,
) -> None:
    """A decision for an incident that does not exist is a JournalError of its own; the
    journal is still writable and says so."""
    journal = SqliteJournal(journal_path(tmp_path))
    with pytest.raises(JournalError) as refused:
        journal.add_decision(404, approval_decision(), "rollbackd")
    assert not isinstance(refused.value, JournalUnavailable)
    assert journal.problem() is None


# -- webhook deliveries: group commit ---------------------------------------------------------


def alert(
    fingerprint: str,
    status: str = "firing",
    ends_at: datetime | None = None,
    service: str | None = "web",
    starts_at: datetime = T0,
) -> AlertRecord:
    return AlertRecord(
        fingerprint=fingerprint,
        starts_at=starts_at,
        status=status,
        ends_at=ends_at,
        service=service,
        name=f"Alert{fingerprint}",
        labels={"alertname": f"Alert{fingerprint}", "service": service or ""},
        annotations={},
    )


def delivery(*alerts: AlertRecord, group: str = "{}:{}") -> Delivery:
    return Delivery(source="alertmanager", group_key=group, status="firing", alerts=alerts)


@contextmanager
def one_batch(journal: SqliteJournal) -> Iterator[None]:
    """What is queued inside is written in one batch: the writer is kept busy meanwhile.

    A delivery of BATCH_ALERTS (resolved) alerts is a batch of its own; the
    writer waits with it for the journal's write lock, held here, while the
    deliveries queued inside wait together for the next batch.
    """
    with journal.database.lock:
        fill = [alert(f"fill{n}", "resolved", T0) for n in range(BATCH_ALERTS)]
        journal.submit_delivery(T0, delivery(*fill), "fill")
        yield


def install_failure(path: Path, group: str, how: str) -> None:
    """A trigger that makes SQLite refuse a delivery of that group: ABORT it, or ROLLBACK all."""
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TRIGGER refuse_{how.lower()} BEFORE INSERT ON deliveries"
            f" WHEN NEW.group_key = '{group}' BEGIN SELECT RAISE({how}, 'refused by test'); END"
        )


def test_concurrent_deliveries_are_all_journaled_with_their_own_counts(tmp_path: Path) -> None:
    """Deliveries from many threads at once each get their own answer, and each is on disk."""
    journal = SqliteJournal(journal_path(tmp_path))

    def post(worker: int) -> list[tuple[int, int]]:
        return [
            journal.record_delivery(
                T0, delivery(alert(f"w{worker}n{n}"), alert("shared")), f"body {worker} {n}"
            )
            for n in range(20)
        ]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = [a for part in pool.map(post, range(8)) for a in part]
    assert len(answers) == 160
    assert sum(changed for changed, _ in answers) == 160 + 1  # "shared" is new exactly once
    assert sum(duplicates for _, duplicates in answers) == 160 - 1
    journal.close()
    with sqlite3.connect(journal_path(tmp_path)) as db:
        assert db.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 160
        assert db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 161


def test_deliveries_in_one_batch_are_applied_in_the_order_they_came(tmp_path: Path) -> None:
    """Firing, resolved, then a late firing retry, all in one commit: resolved stays resolved."""
    journal = SqliteJournal(journal_path(tmp_path))
    ended = T0 + timedelta(minutes=5)
    with one_batch(journal):
        queued = [
            journal.submit_delivery(T0, delivery(alert("a1")), "firing"),
            journal.submit_delivery(T0, delivery(alert("a1")), "firing, retried"),
            journal.submit_delivery(T0, delivery(alert("a1", "resolved", ended)), "resolved"),
            journal.submit_delivery(T0, delivery(alert("a1")), "firing, late"),
            journal.submit_delivery(T0, delivery(alert("a2"), alert("a2")), "twice in one"),
        ]
    assert [q.result() for q in queued] == [(1, 0), (0, 1), (1, 0), (0, 1), (1, 1)]
    assert [a.fingerprint for a in journal.firing_alerts(T0)] == ["a2"]
    with sqlite3.connect(journal.path) as db:
        assert db.execute(
            "SELECT status, ends_at FROM alerts WHERE fingerprint = 'a1'"
        ).fetchall() == [("resolved", "2026-05-01T12:05:00.000+00:00")]


def test_a_delivery_sqlite_refuses_fails_alone(tmp_path: Path) -> None:
    """One delivery that cannot be written fails with a JournalError; its batch is kept."""
    journal = SqliteJournal(journal_path(tmp_path))
    install_failure(journal.path, "poison", "ABORT")
    with one_batch(journal):
        before = journal.submit_delivery(T0, delivery(alert("b1")), "before")
        poisoned = journal.submit_delivery(T0, delivery(alert("p1"), group="poison"), "poison")
        after = journal.submit_delivery(T0, delivery(alert("b2")), "after")
    assert (before.result(), after.result()) == ((1, 0), (1, 0))
    with pytest.raises(JournalError, match=r"could not record this delivery: .*refused by test"):
        poisoned.result()
    assert {a.fingerprint for a in journal.firing_alerts(T0)} == {"b1", "b2"}
    assert journal.deliveries() == 3


def test_a_batch_that_cannot_be_committed_fails_whole_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    """A lost transaction fails every delivery of its batch, none is kept, later ones are."""
    journal = SqliteJournal(journal_path(tmp_path))
    install_failure(journal.path, "lost", "ROLLBACK")
    with one_batch(journal):
        innocent = journal.submit_delivery(T0, delivery(alert("c1")), "innocent")
        lost = journal.submit_delivery(T0, delivery(alert("c2"), group="lost"), "lost")
    for future in (innocent, lost):
        with pytest.raises(JournalError, match=f"the journal {journal.path}: refused by test"):
            future.result()
    assert journal.record_delivery(T0, delivery(alert("c3")), "later") == (1, 0)
    assert {a.fingerprint for a in journal.firing_alerts(T0)} == {"c3"}
    assert journal.deliveries() == 2


def test_closing_writes_what_was_queued_and_refuses_the_rest(tmp_path: Path) -> None:
    """Deliveries queued before close are committed; one after close is refused, saying why."""
    journal = SqliteJournal(journal_path(tmp_path))
    with one_batch(journal):
        queued = [journal.submit_delivery(T0, delivery(alert(f"d{n}")), "") for n in range(5)]
        closing = threading.Thread(target=journal.close)
        closing.start()
    closing.join()
    assert [q.result() for q in queued] == [(1, 0)] * 5
    with pytest.raises(JournalError, match="is closed"):
        journal.submit_delivery(T0, delivery(alert("late")), "")
    again = SqliteJournal(journal_path(tmp_path))
    assert again.deliveries() == 6


def test_firing_alerts_end_at_their_ends_at(tmp_path: Path) -> None:
    """An alert whose endsAt has passed no longer fires; without one it fires until resolved."""
    journal = SqliteJournal(journal_path(tmp_path))
    journal.record_delivery(
        T0,
        delivery(
            alert("open"),
            alert("until1pm", ends_at=T0 + timedelta(hours=1)),
            alert("resolved", "resolved", T0),
        ),
        "",
    )
    assert {a.fingerprint for a in journal.firing_alerts(T0)} == {"open", "until1pm"}
    later = T0 + timedelta(hours=1)
    assert {a.fingerprint for a in journal.firing_alerts(later)} == {"open"}


def test_firing_alerts_of_some_services_keep_one_of_the_others(tmp_path: Path) -> None:
    """Asked for some services: theirs, oldest first, and one alert of any other service."""
    journal = SqliteJournal(journal_path(tmp_path))
    minute = timedelta(minutes=1)
    journal.record_delivery(
        T0,
        delivery(
            alert("web1", starts_at=T0 + 3 * minute),
            alert("db1", service="db", starts_at=T0 + 2 * minute),
            alert("none", service=None, starts_at=T0 + minute),
            alert("api1", service="api", starts_at=T0 + 4 * minute),
            alert("web0", starts_at=T0),
        ),
        "",
    )
    firing = journal.firing_alerts(T0, ["web", "api"])
    assert [a.fingerprint for a in firing if a.service in ("web", "api")] == [
        "web0",
        "web1",
        "api1",
    ]
    [other] = [a for a in firing if a.service not in ("web", "api")]
    assert other.fingerprint in {"db1", "none"}
    assert [a.fingerprint for a in journal.firing_alerts(T0, ["web", "api", "db"])] == [
        "web0",
        "none",
        "db1",
        "web1",
        "api1",
    ]


def test_a_journal_of_schema_2_is_migrated_and_keeps_its_alerts(tmp_path: Path) -> None:
    """A journal written before the firing-alerts index opens, keeps its alerts and is indexed."""
    path = journal_path(tmp_path)
    with sqlite3.connect(path) as db:
        for statement in [*MIGRATIONS[0], *MIGRATIONS[1]]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO alerts VALUES ('f1', ?, 'firing', NULL, 'web', 'A', '{}', '{}', ?, ?)",
            (T0.isoformat(), T0.isoformat(), T0.isoformat()),
        )
    journal = SqliteJournal(path)
    assert [a.fingerprint for a in journal.firing_alerts(T0, ["web"])] == ["f1"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "alerts_firing" in names and "alerts_status" not in names


def test_a_journal_of_schema_3_keeps_finished_incidents_finished(tmp_path: Path) -> None:
    """After the upgrade, an incident closed before stays closed and one under way stays open."""
    path = journal_path(tmp_path)
    with sqlite3.connect(path) as db:
        for statement in [*MIGRATIONS[0], *MIGRATIONS[1], *MIGRATIONS[2]]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 3")
        for state, closed in (("escalated", T0.isoformat()), ("rolling_back", None)):
            db.execute(
                "INSERT INTO incidents (service, opened_at, closed_at, state, severity, action,"
                " origin, reason) VALUES ('web', ?, ?, ?, 'high', 'rollback', 'automatic', 'x')",
                (T0.isoformat(), closed, state),
            )
    journal = SqliteJournal(path)
    unfinished = journal.incidents(unfinished_only=True)
    assert [i.state for i in unfinished] == [IncidentState.ROLLING_BACK]
    assert all(i.updated_at == T0 for i in journal.incidents())
