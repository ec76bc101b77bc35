"""The lease that makes one replica the leader, and the fencing of writes by its epoch.

On every store, a claimant leads and keeps its epoch while it renews, and a write fenced by
an epoch that is not the cluster's is refused and not kept. In PostgreSQL, where replicas
share the lease, it changes hands only once it ran out by the server's clock, each new
term has a greater epoch, and a paused former leader cannot write.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest

from rollbackd.cluster import Leader
from rollbackd.errors import JournalUnavailable, NotLeader
from rollbackd.journal import Journal, Lease
from rollbackd.journal.postgresql import PostgresJournal
from tests.journal.support import T0, incident
from tests.support.postgres import PostgresServer
from tests.support.processes import LOOPBACK
from tests.support.tcpproxy import TcpProxy

LONG = timedelta(seconds=30)
SHORT = timedelta(seconds=1)


def test_a_claimant_leads_and_keeps_its_epoch_while_it_renews(journal: Journal) -> None:
    """The first claim makes the claimant leader; renewing keeps the same epoch."""
    first = journal.claim("main", "a", LONG)
    assert first.holder == "a"
    again = journal.claim("main", "a", LONG)
    assert (again.holder, again.epoch) == ("a", first.epoch)
    assert journal.lease("main") == again
    number = incident(journal)
    with journal.fenced("main", first.epoch):
        journal.step_started(number, "document", T0)
    record = journal.incident(number)
    assert record is not None
    assert [s.name for s in record.steps] == ["document"]


def test_a_write_fenced_by_another_epoch_is_refused_and_not_kept(journal: Journal) -> None:
    """Under an epoch that is not the cluster's, a step is refused with NotLeader, not kept."""
    held = journal.claim("main", "a", LONG)
    number = incident(journal)
    with pytest.raises(NotLeader), journal.fenced("main", held.epoch + 1):
        journal.step_started(number, "execute", T0)
    record = journal.incident(number)
    assert record is not None
    assert not record.steps


# -- PostgreSQL: replicas sharing the lease ------------------------------------------------


def server_now(url: str) -> float:
    with psycopg.connect(url) as db:
        row = db.execute("SELECT extract(epoch FROM now())").fetchone()
    assert row is not None
    return float(row[0])


def wait_out(url: str, lease: Lease) -> None:
    """Sleep until the server's clock is past the lease's end."""
    assert lease.expires_at is not None
    while server_now(url) <= lease.expires_at.timestamp():
        time.sleep(0.05)


def test_the_lease_changes_hands_only_once_it_ran_out_by_the_servers_clock(
    postgres_url: str,
) -> None:
    """While a's lease runs, b's claims show a leading; once the server's clock passes its
    end, b takes it with a greater epoch; a taking it again later gets another."""
    journal = PostgresJournal(postgres_url)
    try:
        before = server_now(postgres_url)
        held = journal.claim("main", "a", SHORT)
        assert held.expires_at is not None
        assert 0.9 <= held.expires_at.timestamp() - before <= 1.5  # the server's now() + 1s
        assert journal.claim("main", "b", LONG) == held
        wait_out(postgres_url, held)
        taken = journal.claim("main", "b", SHORT)
        assert (taken.holder, taken.epoch) == ("b", held.epoch + 1)
        wait_out(postgres_url, taken)
        assert journal.claim("main", "b", SHORT).epoch == taken.epoch + 1  # a new term
        assert journal.claim("other", "a", LONG).epoch == 1  # clusters do not share
    finally:
        journal.close()


def test_a_paused_former_leader_cannot_write_once_another_leads(postgres_url: str) -> None:
    """a's writes under its epoch are kept; after b took the lease they are refused, and a
    cannot take it back while b renews."""
    a, b = PostgresJournal(postgres_url), PostgresJournal(postgres_url)
    try:
        held = a.claim("main", "a", SHORT)
        number = incident(a)
        with a.fenced("main", held.epoch):
            a.step_started(number, "document", T0)
        wait_out(postgres_url, held)
        with pytest.raises(NotLeader, match="lease ran out"), a.fenced("main", held.epoch):
            a.step_started(number, "notify", T0)
        taken = b.claim("main", "b", LONG)
        with pytest.raises(NotLeader, match="epoch 2, b"), a.fenced("main", held.epoch):
            a.step_started(number, "execute", T0)
        assert a.claim("main", "a", SHORT) == taken
        with b.fenced("main", taken.epoch):
            b.step_started(number, "execute", T0)
        record = b.incident(number)
        assert record is not None
        assert [s.name for s in record.steps] == ["document", "execute"]
    finally:
        a.close()
        b.close()


def test_of_replicas_claiming_a_free_lease_at_once_one_wins(postgres_url: str) -> None:
    """Eight replicas claim at the same moment: all see the same single holder and epoch."""
    journals = [PostgresJournal(postgres_url) for _ in range(8)]
    start = threading.Barrier(len(journals))

    def claim(index: int) -> Lease:
        start.wait()
        return journals[index].claim("main", f"r{index}", LONG)

    try:
        with ThreadPoolExecutor(len(journals)) as pool:
            seen = set(pool.map(claim, range(len(journals))))
        assert len(seen) == 1
        [lease] = seen
        assert lease.epoch == 1
    finally:
        for journal in journals:
            journal.close()


def test_a_released_lease_is_taken_at_once(postgres_url: str) -> None:
    """A leader stopping cleanly gives the lease up: the next claim takes it, epoch + 1."""
    journal = PostgresJournal(postgres_url)
    try:
        held = journal.claim("main", "a", LONG)
        journal.release("main", "a")
        taken = journal.claim("main", "b", LONG)
        assert (taken.holder, taken.epoch) == ("b", held.epoch + 1)
    finally:
        journal.close()


def test_a_follower_takes_the_lease_when_it_runs_out_not_a_renewal_later(
    postgres_url: str,
) -> None:
    """A follower claims again at the held lease's end by the server's clock (here well before
    its next renewal, a third of a 6 s lease), then tells its listeners it leads."""
    journal = PostgresJournal(postgres_url)
    lease = timedelta(seconds=6)
    follower = Leader(journal, "main", "b", lease)
    took: list[tuple[int, float]] = []
    follower.on_lead(lambda epoch: took.append((epoch, time.monotonic())))
    try:
        held = journal.claim("main", "a", timedelta(seconds=0.5))
        follower.start()
        deadline = time.monotonic() + 1.5  # its next renewal would come at 2 s
        while not took and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [epoch for epoch, _ in took] == [held.epoch + 1]  # before its first renewal
        assert follower.view()["role"] == "leader"
    finally:
        follower.stop()
        journal.close()


class _UnreachableAfterOneClaim:
    """A lease store that answers one claim (another replica's lease, about to end), then
    cannot be reached; it counts the claims."""

    def __init__(self) -> None:
        self.claims = 0

    def claim(self, cluster: str, replica: str, lease: timedelta) -> Lease:
        self.claims += 1
        if self.claims == 1:
            return Lease("a", 1, None, remaining=timedelta(0))
        raise JournalUnavailable("the journal cannot be reached: connection refused")


def test_a_follower_that_cannot_reach_the_journal_claims_once_a_renewal_not_in_a_loop() -> None:
    """Claims that fail are not repeated at the stale lease's end: one per third of a lease."""
    store = _UnreachableAfterOneClaim()
    follower = Leader(store, "main", "b", timedelta(seconds=3))  # type: ignore[arg-type]
    follower.start()
    try:
        time.sleep(1.5)
    finally:
        follower.stop()
    assert 2 <= store.claims <= 3  # at 0, at once after the lease seen ended, then at 1 s


def test_a_leader_that_cannot_renew_stops_before_the_server_could_give_the_lease_away(
    postgres_url: str,
) -> None:
    """A Leader whose renewals stop (no thread) no longer leads by its own clock while the
    server still holds its lease: no other replica can lead yet."""
    journal = PostgresJournal(postgres_url)
    leader = Leader(journal, "main", "a", SHORT)
    try:
        epoch = leader.renew()
        assert epoch == 1
        assert leader.leads() == 1
        while leader.leads() is not None:
            time.sleep(0.01)
        assert journal.claim("main", "b", SHORT).holder == "a"  # still a's on the server
        assert leader.view()["role"] == "follower"
    finally:
        journal.close()


def test_over_a_frozen_path_a_claim_and_a_write_end_on_the_clients_own_deadline(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    """A path that takes what is sent and never answers (no timeout of the server's or of
    TCP ends it) fails a claim within a third of the lease and a write within twice the
    journal's timeout, as unavailable; once it flows again, both work."""
    with TcpProxy((LOOPBACK, postgres_server.port)) as proxy:
        url = postgres_url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
        journal = PostgresJournal(url, timeout=1.0)
        try:
            journal.claim("main", "a", timedelta(seconds=3))
            number = incident(journal)
            proxy.freeze()
            started = time.monotonic()
            with pytest.raises(JournalUnavailable, match="no answer in time"):
                journal.claim("main", "a", timedelta(seconds=3))
            assert time.monotonic() - started < 2.0
            started = time.monotonic()
            with pytest.raises(JournalUnavailable):
                journal.step_started(number, "document", T0)
            assert time.monotonic() - started < 4.0
            proxy.thaw()
            assert journal.claim("main", "a", timedelta(seconds=3)).holder == "a"
            journal.step_started(number, "verify_target", T0)
        finally:
            proxy.thaw()
            journal.close()
