"""What the journal suites write, shared by the suite of every store and SQLite's own."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from rollbackd.core.model import Action, Decision, Severity
from rollbackd.journal import (
    BATCH_ALERTS,
    AlertRecord,
    Delivery,
    EvidenceKind,
    IncidentRecord,
    IncidentState,
    Journal,
    NewIncident,
    Outcome,
    RollbackFacts,
    SqliteJournal,
)
from rollbackd.journal.postgresql import PostgresJournal

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
HOSTILE = "--upload-pack=touch /tmp/x; $(rm -rf /)\n`id` <script>"


def incident(journal: Journal, service: str = "web") -> int:
    return journal.open_incident(
        NewIncident(
            service=service,
            opened_at=T0,
            severity=Severity.CRITICAL,
            action=Action.ROLLBACK,
            origin="automatic",
            reason=HOSTILE,
            target="v1",
            current_version="v2",
            state=IncidentState.ROLLING_BACK,
            facts=RollbackFacts(baselines={"latency": 0.2}),
        )
    )


def write_everything(journal: Journal) -> int:
    """An incident with a decision, a finished step, evidence and samples; its number."""
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
    return number


def assert_everything(again: IncidentRecord | None) -> None:
    """What :func:`write_everything` wrote, read back whole."""
    assert again is not None
    assert again.reason == HOSTILE
    assert again.facts == RollbackFacts(baselines={"latency": 0.2})
    assert [d.rules for d in again.decisions] == [["outage"]]
    executed = again.step("execute")
    assert executed is not None
    assert executed.outcome is Outcome.OK
    assert executed.data == {"head": "abc", "after": "def"}
    assert again.evidence[0].body == {"findings": [{"rule": "outage"}]}
    assert [v for _, v in again.samples["error-rate"]] == [0.2, 0.1]


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
        severity=Severity.HIGH,
        action=Action.REQUEST_APPROVAL,
        origin="automatic",
        reason="rule error-rate firing",
        target="v1",
        current_version="v2",
        state=IncidentState.AWAITING_APPROVAL,
        decision=approval_decision(),
        evidence={EvidenceKind.SNAPSHOT: {"findings": [{"rule": "error-rate"}]}},
    )


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
def one_batch(journal: Journal) -> Iterator[None]:
    """What is queued inside is written in one batch (SQLite, PostgreSQL: the writer is kept
    busy meanwhile).

    A delivery of BATCH_ALERTS (resolved) alerts is a batch of its own; the
    writer waits with it for the journal's write lock, held here, while the
    deliveries queued inside wait together for the next batch. A store
    without a writer thread applies each delivery at once.
    """
    if not isinstance(journal, SqliteJournal | PostgresJournal):
        yield
        return
    with journal.database.lock:
        fill = [alert(f"fill{n}", "resolved", T0) for n in range(BATCH_ALERTS)]
        journal.submit_delivery(T0, delivery(*fill), "fill")
        yield


def firing_resolved_then_late_retry(journal: Journal) -> list[Future[tuple[int, int]]]:
    """Firing, a retry, resolved, then a late firing retry, and one alert twice, in one batch."""
    ended = T0 + timedelta(minutes=5)
    with one_batch(journal):
        return [
            journal.submit_delivery(T0, delivery(alert("a1")), "firing"),
            journal.submit_delivery(T0, delivery(alert("a1")), "firing, retried"),
            journal.submit_delivery(T0, delivery(alert("a1", "resolved", ended)), "resolved"),
            journal.submit_delivery(T0, delivery(alert("a1")), "firing, late"),
            journal.submit_delivery(T0, delivery(alert("a2"), alert("a2")), "twice in one"),
        ]
