"""What only the PostgreSQL journal has: a server that can go away and come back, a password
that must never show, a schema several rollbackd may migrate at once, and text PostgreSQL
refuses (NUL). The behaviour every store shares is in test_stores.py, run here too."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest

from rollbackd.journal import (
    IncidentState,
    JournalError,
    JournalUnavailable,
)
from rollbackd.journal.postgresql import PostgresJournal
from rollbackd.journal.postgresql.schema import SCHEMA_VERSION
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
from tests.support.postgres import PostgresServer


def test_everything_written_is_there_for_another_process(postgres_url: str) -> None:
    """A second journal on the same database (a restart, or a replica) reads it all."""
    first = PostgresJournal(postgres_url)
    number = write_everything(first)
    first.close()
    again = PostgresJournal(postgres_url)
    assert_everything(again.incident(number))
    again.close()


def test_postgresql_stopped_mid_run_refuses_writes_until_it_is_back(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """PostgreSQL goes away: writes and reads are JournalUnavailable, problem() says why
    (never the password); once it is back the next write succeeds, on a journal that saw
    the failures and on one whose sessions went stale while it was idle (deliveries too,
    whose statements the lost session had prepared)."""
    journal = PostgresJournal(postgres_url, timeout=2)
    idle = PostgresJournal(postgres_url, timeout=2)  # its sessions go stale unnoticed
    number = incident(journal)
    assert idle.record_delivery(T0, delivery(alert("before")), "") == (1, 0)
    postgres_server.stop()
    try:
        with pytest.raises(JournalUnavailable, match="cannot be reached") as refused:
            journal.set_state(number, IncidentState.RECOVERING, "watching", T0)
        with pytest.raises(JournalUnavailable):
            journal.submit_delivery(T0, delivery(alert("lost")), "").result(timeout=30)
        with pytest.raises(JournalUnavailable):
            journal.incidents()
        problem = journal.problem()
        assert problem is not None and "cannot be reached" in problem
        assert postgres_server.password not in str(refused.value) + problem
    finally:
        postgres_server.start()
    assert journal.set_state(number, IncidentState.RECOVERING, "watching", T0)
    assert journal.record_delivery(T0, delivery(alert("kept")), "") == (1, 0)
    assert journal.problem() is None
    [record] = journal.incidents()
    assert record.state is IncidentState.RECOVERING
    assert sorted(a.fingerprint for a in journal.firing_alerts(T0)) == ["before", "kept"]
    assert incident(idle) == number + 1
    assert idle.record_delivery(T0, delivery(alert("before"), alert("after")), "") == (1, 1)
    journal.close()
    idle.close()


def test_the_password_is_never_in_a_message(postgres_server: PostgresServer) -> None:
    """Where the journal is, and why it cannot be opened, are said without the password."""
    wrong = postgres_server.url("postgres", password="not-" + postgres_server.password)
    with pytest.raises(JournalError) as refused:
        PostgresJournal(wrong, timeout=2)
    assert "password authentication failed" in str(refused.value)
    assert postgres_server.password not in str(refused.value)
    journal = PostgresJournal(postgres_server.create_database())
    assert journal.location.startswith("postgresql://rollbackd@127.0.0.1:")
    assert postgres_server.password not in journal.location
    journal.close()


def test_a_password_given_apart_from_the_url_is_used(postgres_server: PostgresServer) -> None:
    """password_file's password, with a URL that holds none."""
    url = postgres_server.create_database().replace(f":{postgres_server.password}@", "@")
    journal = PostgresJournal(url, password=postgres_server.password)
    assert journal.incidents() == []
    journal.close()


def test_rollbackd_starting_at_once_migrate_the_schema_once(postgres_url: str) -> None:
    """Four journals opened together on a new database: one creates the schema, all open."""
    opened: list[PostgresJournal] = []
    failed: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait()
        try:
            opened.append(PostgresJournal(postgres_url))
        except BaseException as exc:  # noqa: BLE001 -- the test reports it below
            failed.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failed == []
    assert len(opened) == 4
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    for journal in opened:
        journal.close()


def test_a_journal_from_a_newer_rollbackd_is_refused(postgres_url: str) -> None:
    """A schema this rollbackd does not know is never written into."""
    PostgresJournal(postgres_url).close()
    with psycopg.connect(postgres_url) as db:
        db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalError, match="newer than this rollbackd"):
        PostgresJournal(postgres_url)


def test_two_daemons_racing_on_one_incident_have_one_winner(postgres_url: str) -> None:
    """Two journals (two processes) approve and veto one incident at once: exactly one wins."""
    first, second = PostgresJournal(postgres_url), PostgresJournal(postgres_url)
    awaiting = (IncidentState.AWAITING_APPROVAL,)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(10):
            number = first.open_incident(awaiting_approval())
            start = threading.Barrier(2)

            def move(journal: PostgresJournal, state: IncidentState) -> bool:
                start.wait()  # noqa: B023 -- each round's barrier, waited on within the round
                return journal.set_state(number, state, state.value, T0, expect=awaiting)  # noqa: B023

            vetoed = pool.submit(move, first, IncidentState.VETOED)
            approved = pool.submit(move, second, IncidentState.ROLLING_BACK)
            assert sorted([vetoed.result(30), approved.result(30)]) == [False, True]
    first.close()
    second.close()


def test_text_postgresql_refuses_is_kept_readable_not_refused(postgres_url: str) -> None:
    """A NUL in a service label and NaN in evidence (which PostgreSQL's text and JSON refuse)
    are journaled: the delivery is acknowledged, never refused for ever. Labels, kept as
    JSON, keep their NUL; a text column holds U+FFFD in its place."""
    journal = PostgresJournal(postgres_url)
    assert journal.record_delivery(T0, delivery(alert("nul", service="w\x00b")), "\x00") == (1, 0)
    [kept] = journal.firing_alerts(T0)
    assert kept.service == "w\ufffdb"
    assert kept.labels == {"alertname": "Alertnul", "service": "w\x00b"}
    number = incident(journal)
    journal.add_evidence(number, T0, "snapshot", {"value": math.nan, "limit": math.inf})
    record = journal.incident(number)
    assert record is not None
    assert record.evidence[-1].body == {"value": "NaN", "limit": "Infinity"}
    journal.close()


def test_a_batch_with_a_nul_and_a_lone_surrogate_is_journaled_whole(postgres_url: str) -> None:
    """Deliveries whose labels carry a NUL or a lone surrogate (a hostile webhook's JSON can
    hold both), written in one batch with a plain one, are all acknowledged and kept."""
    journal = PostgresJournal(postgres_url)
    with one_batch(journal):
        queued = [
            journal.submit_delivery(T0, delivery(alert("plain")), "plain"),
            journal.submit_delivery(T0, delivery(alert("nul", service="a\x00b")), "nul"),
            journal.submit_delivery(T0, delivery(alert("sur", service="c\ud800")), "sur"),
        ]
    assert [q.result() for q in queued] == [(1, 0), (1, 0), (1, 0)]
    kept = {a.fingerprint: a for a in journal.firing_alerts(T0)}
    assert (kept["nul"].service, kept["nul"].labels["service"]) == ("a\ufffdb", "a\x00b")
    assert (kept["sur"].service, kept["sur"].labels["service"]) == ("c?", "c\ud800")
    assert kept["plain"].service == "web"
    journal.close()


def test_deliveries_in_one_batch_keep_their_order_across_a_restart(postgres_url: str) -> None:
    """The group commit's outcome, read back by a new process: resolved stays resolved."""
    journal = PostgresJournal(postgres_url)
    queued = firing_resolved_then_late_retry(journal)
    assert [q.result() for q in queued] == [(1, 0), (0, 1), (1, 0), (0, 1), (1, 1)]
    journal.close()
    again = PostgresJournal(postgres_url)
    assert [a.fingerprint for a in again.firing_alerts(T0)] == ["a2"]
    assert [a.fingerprint for a in again.firing_alerts(T0 - timedelta(hours=1))] == ["a2"]
    again.close()


def test_a_delivery_postgresql_refuses_fails_alone_and_its_batch_is_kept(
    postgres_url: str,
) -> None:
    """A delivery PostgreSQL refuses (here a check of the test's) fails alone: the others of
    its batch, written together, are journaled with their own counts."""
    journal = PostgresJournal(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.group_key = 'poison' THEN RAISE EXCEPTION 'refused by test'"
            " USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$"
        )
        admin.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON deliveries"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    with one_batch(journal):
        before = journal.submit_delivery(T0, delivery(alert("b1"), alert("b1")), "before")
        poisoned = journal.submit_delivery(T0, delivery(alert("p1"), group="poison"), "poison")
        after = journal.submit_delivery(T0, delivery(alert("b2"), alert("b1")), "after")
    assert (before.result(), after.result()) == ((1, 1), (1, 1))
    with pytest.raises(JournalError, match=r"could not record this delivery: .*refused by test"):
        poisoned.result()
    assert {a.fingerprint for a in journal.firing_alerts(T0)} == {"b1", "b2"}
    assert journal.deliveries() == 3  # the batch-filling delivery of one_batch, and these two
    journal.close()


def test_fingerprints_an_array_literal_would_misread_are_found_again(postgres_url: str) -> None:
    """A quote, a backslash or the word NULL in a fingerprint: the retry is a duplicate."""
    journal = PostgresJournal(postgres_url)
    odd = delivery(alert('q"1'), alert("b\\2"), alert("NULL"))
    assert journal.record_delivery(T0, odd, "first") == (3, 0)
    assert journal.record_delivery(T0, odd, "retry") == (0, 3)
    assert sorted(a.fingerprint for a in journal.firing_alerts(T0)) == ["NULL", "b\\2", 'q"1']
    journal.close()


def test_a_late_firing_retry_racing_a_resolve_on_another_replica_never_reopens_it(
    postgres_url: str,
) -> None:
    """Two replicas journal one new alert at once: a resolve, and a late retry of its firing.
    The retry, which looked before the resolve was committed, still leaves it resolved."""
    resolving, retrying = PostgresJournal(postgres_url), PostgresJournal(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.status = 'resolved' THEN PERFORM pg_sleep(1.5); END IF; RETURN NEW; END $$"
        )
        admin.execute(  # once the resolved alert is inserted, its transaction waits
            "CREATE TRIGGER stall AFTER INSERT ON alerts FOR EACH ROW EXECUTE FUNCTION stall()"
        )
        ended = T0 + timedelta(minutes=5)
        resolve = delivery(alert("r1", status="resolved", ends_at=ended))
        with ThreadPoolExecutor(max_workers=1) as pool:
            resolved = pool.submit(resolving.record_delivery, ended, resolve, "resolved")
            while not admin.execute(  # its alert is written, not committed: it sleeps
                "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            ).fetchone():
                pass
            late = retrying.record_delivery(ended, delivery(alert("r1")), "late firing retry")
            assert resolved.result(30) == (1, 0)
    assert late == (1, 0)
    assert retrying.firing_alerts(ended) == []
    assert resolving.firing_alerts(ended) == []
    resolving.close()
    retrying.close()
