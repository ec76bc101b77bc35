"""What only the SQLite journal has: a file that must survive crashes, full disks, removal
and replacement under the running process, schema versions, and the group-commit writer
thread. The behaviour every store shares is in test_stores.py."""

from __future__ import annotations

import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from rollbackd.core.model import Action, Severity
from rollbackd.journal import (
    SCHEMA_VERSION,
    IncidentState,
    JournalError,
    JournalUnavailable,
    RollbackFacts,
    SqliteJournal,
    journal_path,
)
from rollbackd.journal.sqlite.database import Database
from rollbackd.journal.sqlite.schema import MIGRATIONS
from tests.journal.support import (
    T0,
    alert,
    assert_everything,
    awaiting_approval,
    delivery,
    firing_resolved_then_late_retry,
    incident,
    one_batch,
    write_everything,
)


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 -- the test's own table names


def install_failure(path: Path, group: str, how: str) -> None:
    """A trigger that makes SQLite refuse a delivery of that group: ABORT it, or ROLLBACK all."""
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TRIGGER refuse_{how.lower()} BEFORE INSERT ON deliveries"
            f" WHEN NEW.group_key = '{group}' BEGIN SELECT RAISE({how}, 'refused by test'); END"
        )


def test_everything_written_is_there_after_reopening(tmp_path: Path) -> None:
    """A new process sees every incident, decision, step, evidence and sample."""
    path = journal_path(tmp_path)
    journal = SqliteJournal(path)
    number = write_everything(journal)
    journal.close()
    assert_everything(SqliteJournal(path).incident(number))


def test_a_resolved_alert_keeps_its_end_through_a_late_firing_retry(tmp_path: Path) -> None:
    """The row of an alert resolved in a batch keeps its status and endsAt on disk."""
    journal = SqliteJournal(journal_path(tmp_path))
    for queued in firing_resolved_then_late_retry(journal):
        queued.result()
    with sqlite3.connect(journal.path) as db:
        assert db.execute(
            "SELECT status, ends_at FROM alerts WHERE fingerprint = 'a1'"
        ).fetchall() == [("resolved", "2026-05-01T12:05:00.000+00:00")]


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


def test_an_incident_sqlite_refuses_in_the_middle_leaves_no_row_behind(tmp_path: Path) -> None:
    """Opening fails in the middle (SQLite refuses its evidence): no incident, no decision row;
    once SQLite accepts it, one of each."""
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
    number = journal.open_incident(awaiting_approval())  # what it holds: test_stores.py
    assert [(i.id, i.state) for i in journal.incidents()] == [
        (number, IncidentState.AWAITING_APPROVAL)
    ]
    assert rows(journal.path, "decisions") == 1


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


def test_a_replaced_journal_whose_copy_failed_is_copied_when_rollbackd_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that could not be made while the daemon ran (no room for it then) is made at
    close, so a shutdown right after the replacement loses nothing that was journaled."""
    path = journal_path(tmp_path)
    journal = SqliteJournal(path)
    number = incident(journal)
    other = journal_path(tmp_path / "other")
    SqliteJournal(other).close()
    aside = tmp_path / "moved-away.sqlite3"
    path.rename(aside)
    other.rename(path)
    copy_to = Database._copy_to

    def no_room(self: Database, destination: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Database, "_copy_to", no_room)
    with pytest.raises(JournalUnavailable, match="was replaced while rollbackd had it open"):
        journal.add_evidence(number, T0, "note", "refused")
    problem = journal.problem()
    assert problem is not None and "no copy could be kept" in problem
    assert list(tmp_path.glob("journal.sqlite3.kept-*")) == []

    monkeypatch.setattr(Database, "_copy_to", copy_to)  # room again, within the retry pause
    journal.close()
    [kept] = tmp_path.glob("journal.sqlite3.kept-*")
    assert rows(kept, "incidents") == 1
    assert rows(path, "incidents") == 0  # the file put in its place was left alone


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


def test_an_old_or_edited_journal_reads_leniently(tmp_path: Path) -> None:
    """Values no version writes now (a severity, an action, odd facts) read as documented, and
    the deadline an older version kept as "approval" evidence is still the incident's."""
    path = journal_path(tmp_path)
    journal = SqliteJournal(path)
    number = journal.open_incident(awaiting_approval())
    journal.close()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE incidents SET severity = 'sev1', action = 'page', facts = ? WHERE id = ?",
            (
                '{"baselines": {"latency": "fast", "errors": 0.01}, "migrations": [1, {}],'
                ' "deployed_at": "yesterday", "target_version": 7, "owner": "team-a"}',
                number,
            ),
        )
        db.execute("UPDATE decisions SET severity = '', action = 'page', deadline = NULL")
        db.execute(
            "INSERT INTO evidence (incident_id, time, kind, body) VALUES (?, ?, 'approval', ?)",
            (number, T0.isoformat(), '{"deadline": "2026-05-01T12:15:00+00:00"}'),
        )
    journal = SqliteJournal(path)
    try:
        record = journal.incident(number)
    finally:
        journal.close()
    assert record is not None
    assert (record.severity, record.action) == (Severity.CRITICAL, Action.ESCALATE)
    assert (record.decisions[0].severity, record.decisions[0].action) == (
        Severity.CRITICAL,
        Action.ESCALATE,
    )
    assert record.facts == RollbackFacts(baselines={"errors": 0.01})
    assert record.approval_deadline == T0 + timedelta(minutes=15)
