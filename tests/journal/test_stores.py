"""The journal's behaviour, the same on every store (memory and SQLite; see conftest.py)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rollbackd.core.deploys import Deploy, MigrationFact
from rollbackd.core.model import Action, Severity
from rollbackd.errors import InvalidTransition
from rollbackd.journal import (
    EvidenceKind,
    IncidentState,
    Journal,
    JournalError,
    JournalUnavailable,
    Outcome,
    RollbackFacts,
)
from tests.journal.support import (
    T0,
    alert,
    approval_decision,
    assert_everything,
    awaiting_approval,
    delivery,
    firing_resolved_then_late_retry,
    incident,
    write_everything,
)

# -- incidents ----------------------------------------------------------------------------


def test_everything_written_is_read_back(journal: Journal) -> None:
    """Every incident, decision, step, evidence and sample written is there to read."""
    number = write_everything(journal)
    assert_everything(journal.incident(number))


def test_an_interrupted_step_is_visible_as_such(journal: Journal) -> None:
    """A step started but never finished is what a restart looks for."""
    number = incident(journal)
    journal.step_started(number, "execute", T0)
    record = journal.incident(number)
    assert record is not None
    step = record.step("execute")
    assert step is not None and step.interrupted


def test_rollbacks_count_executed_and_unknown_but_not_failed(journal: Journal) -> None:
    """Guards see a rollback that ran or may have run, never one that failed."""
    for outcome in (Outcome.OK, Outcome.UNKNOWN, Outcome.FAILED):
        number = incident(journal)
        step = journal.step_started(number, "execute", T0)
        journal.step_finished(step, T0, outcome, outcome.value)
    assert len(journal.rollbacks("web")) == 2
    assert journal.rollbacks("api") == []


def test_states_close_incidents_and_active_ones_are_listed(journal: Journal) -> None:
    """Recovered incidents get a closing time; active ones are found by service."""
    first, second = incident(journal), incident(journal, "api")
    journal.set_state(first, IncidentState.RECOVERED, "recovered", T0 + timedelta(minutes=20))
    active = journal.incidents(active_only=True)
    assert [i.id for i in active] == [second]
    closed = journal.incident(first)
    assert closed is not None and closed.closed_at == T0 + timedelta(minutes=20)


def test_an_incident_waiting_on_people_stays_open_until_it_ends(journal: Journal) -> None:
    """Escalated is unfinished (no closing time); resolved closes it and dates the change."""
    number = incident(journal)
    journal.set_state(number, IncidentState.ESCALATED, "a person must act", T0)
    assert [i.id for i in journal.incidents(unfinished_only=True)] == [number]
    assert journal.incidents(active_only=True) == []
    later = T0 + timedelta(hours=1)
    journal.set_state(number, IncidentState.RESOLVED, "what fired is OK again", later)
    assert journal.incidents(unfinished_only=True) == []
    record = journal.incident(number)
    assert record is not None and record.closed_at == later and record.updated_at == later


def test_a_state_change_from_an_expected_state_has_one_winner(journal: Journal) -> None:
    """Approve and veto racing on one incident: the first change wins, the second is refused."""
    number = journal.open_incident(awaiting_approval())
    awaiting = (IncidentState.AWAITING_APPROVAL,)
    vetoed = journal.set_state(number, IncidentState.VETOED, "vetoed", T0, expect=awaiting)
    approved = journal.set_state(
        number, IncidentState.ROLLING_BACK, "approved", T0, expect=awaiting
    )
    assert (vetoed, approved) == (True, False)
    record = journal.incident(number)
    assert record is not None and record.state is IncidentState.VETOED
    assert not journal.set_state(404, IncidentState.RESOLVED, "no such incident", T0)


def test_a_state_change_the_incident_model_does_not_allow_is_refused_unwritten(
    journal: Journal,
) -> None:
    """A finished incident never reopens, nor a rollback under way is vetoed: nothing is
    written, and the error names the incident and both states."""
    number = incident(journal)
    assert journal.set_state(number, IncidentState.RECOVERING, "watching", T0)
    later = T0 + timedelta(minutes=5)
    with pytest.raises(InvalidTransition, match=rf"incident {number}: recovering → vetoed"):
        journal.set_state(number, IncidentState.VETOED, "vetoed", later)
    assert journal.set_state(number, IncidentState.RECOVERED, "recovered", later)
    with pytest.raises(InvalidTransition, match=rf"incident {number}: recovered → rolling_back"):
        journal.set_state(
            number,
            IncidentState.ROLLING_BACK,
            "again",
            later + timedelta(minutes=1),
            expect=(IncidentState.RECOVERED,),
        )
    record = journal.incident(number)
    assert record is not None
    assert (record.state, record.summary) == (IncidentState.RECOVERED, "recovered")
    assert record.updated_at == record.closed_at == later


def test_severities_actions_and_evidence_kinds_come_back_typed(journal: Journal) -> None:
    """What rollbackd wrote reads back as its members; a kind it does not write, as text."""
    number = write_everything(journal)
    journal.add_evidence(number, T0, "custom_probe", {"ok": True})
    record = journal.incident(number)
    assert record is not None
    assert (record.severity, record.action) == (Severity.CRITICAL, Action.ROLLBACK)
    decision = record.decisions[0]
    assert (decision.severity, decision.action, decision.proposed) == (
        Severity.CRITICAL,
        Action.ROLLBACK,
        Action.ROLLBACK,
    )
    assert [e.kind for e in record.evidence] == [EvidenceKind.SNAPSHOT, "custom_probe"]
    assert isinstance(record.evidence[0].kind, EvidenceKind)


def test_facts_are_read_back_as_they_were_kept(journal: Journal) -> None:
    """Baselines, migration facts, the deploy's time, the target version and a canary's scope
    survive the store."""
    deployed = datetime(2026, 5, 1, 11, 59, 30, 123456, tzinfo=UTC)
    facts = RollbackFacts(
        baselines={"latency": 0.2},
        migrations=(MigrationFact("db/001.sql", True, None),),
        deployed_at=deployed,
        target_version="v1",
        scope="canary",
        canary_version="v2",
    )
    number = journal.open_incident(replace(awaiting_approval(), facts=facts))
    again = journal.incident(number)
    assert again is not None and again.facts == facts
    assert [r.facts for r in journal.incidents()] == [facts]


def test_an_incident_opens_with_its_decision_and_evidence_or_not_at_all(journal: Journal) -> None:
    """Opening fails in the middle (evidence that cannot be written): nothing is left; once
    it can be written, the incident opens whole, its decision saying who decides by when."""
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        journal.open_incident(
            replace(awaiting_approval(), evidence={EvidenceKind.SNAPSHOT: circular})
        )
    assert journal.incidents() == []

    number = journal.open_incident(awaiting_approval())
    record = journal.incident(number)
    assert record is not None and record.state is IncidentState.AWAITING_APPROVAL
    [decision] = record.decisions
    assert (decision.actor, decision.approver) == ("rollbackd", "senior_admin")
    assert decision.deadline == T0 + timedelta(hours=1)
    assert [(e.kind, e.time) for e in record.evidence] == [("snapshot", T0)]


def test_a_write_refused_for_what_it_is_does_not_make_the_journal_unavailable(
    journal: Journal,
) -> None:
    """A decision for an incident that does not exist, or the end of a step never started,
    is a JournalError of its own; the journal is still writable and says so."""
    with pytest.raises(JournalError) as refused:
        journal.add_decision(404, approval_decision(), "rollbackd")
    assert not isinstance(refused.value, JournalUnavailable)
    with pytest.raises(JournalError, match="no step 404 to finish") as unfinished:
        journal.step_finished(404, T0, Outcome.OK, "never started")
    assert not isinstance(unfinished.value, JournalUnavailable)
    assert journal.problem() is None


def test_incidents_are_listed_newest_first_by_service_up_to_a_limit(journal: Journal) -> None:
    """The API's list: newest first, one service's when asked, at most ``limit``, or all."""
    numbers = [incident(journal, service) for service in ("web", "api", "web", "web")]
    assert [i.id for i in journal.incidents()] == numbers[::-1]
    assert [i.id for i in journal.incidents(limit=2, service="web")] == [numbers[3], numbers[2]]
    assert [i.id for i in journal.incidents(limit=None, service="web")] == [
        numbers[3],
        numbers[2],
        numbers[0],
    ]
    assert journal.incidents(service="db") == []


def test_samples_are_kept_by_series_in_time_order_without_non_finite_values(
    journal: Journal,
) -> None:
    """A chart gets each series in time order; NaN and infinities are never kept."""
    number = incident(journal)
    minute = timedelta(minutes=1)
    journal.add_samples(
        number,
        [
            (T0 + 2 * minute, "latency", 0.3),
            (T0, "latency", 0.1),
            (T0 + minute, "latency", math.nan),
            (T0 + minute, "error-rate", math.inf),
            (T0 + minute, "error-rate", 0.05),
        ],
    )
    record = journal.incident(number)
    assert record is not None
    assert record.samples == {
        "latency": [(T0, 0.1), (T0 + 2 * minute, 0.3)],
        "error-rate": [(T0 + minute, 0.05)],
    }


# -- webhook deliveries -------------------------------------------------------------------


def test_concurrent_deliveries_are_all_journaled_with_their_own_counts(journal: Journal) -> None:
    """Deliveries from many threads at once each get their own answer, and each is kept."""

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
    assert journal.deliveries() == 160
    assert len(journal.firing_alerts(T0)) == 161


def test_deliveries_in_one_batch_are_applied_in_the_order_they_came(journal: Journal) -> None:
    """Firing, resolved, then a late firing retry, all in one commit: resolved stays resolved."""
    queued = firing_resolved_then_late_retry(journal)
    assert [q.result() for q in queued] == [(1, 0), (0, 1), (1, 0), (0, 1), (1, 1)]
    assert [a.fingerprint for a in journal.firing_alerts(T0)] == ["a2"]


def test_a_closed_journal_refuses_deliveries_saying_why(journal: Journal) -> None:
    """After close, a delivery is refused at once with a JournalError, not queued."""
    journal.close()
    with pytest.raises(JournalError, match="is closed"):
        journal.submit_delivery(T0, delivery(alert("late")), "")


def test_firing_alerts_end_at_their_ends_at(journal: Journal) -> None:
    """An alert whose endsAt has passed no longer fires; without one it fires until resolved."""
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


def test_alerts_not_received_since_no_longer_fire(journal: Journal) -> None:
    """With ``received_after``, an alert last re-sent before it is taken as over."""
    journal.record_delivery(T0, delivery(alert("stale")), "")
    journal.record_delivery(T0 + timedelta(minutes=10), delivery(alert("fresh")), "")
    since = T0 + timedelta(minutes=5)
    assert [a.fingerprint for a in journal.firing_alerts(T0, received_after=since)] == ["fresh"]


def test_firing_alerts_of_some_services_keep_one_of_the_others(journal: Journal) -> None:
    """Asked for some services: theirs, oldest first, and one alert of any other service."""
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


# -- deploys ------------------------------------------------------------------------------


def test_deploy_events_are_kept_in_the_order_received(journal: Journal) -> None:
    """Deploys come back oldest first, as events, with their ref and migrations."""
    migration = MigrationFact("0042_add_column.sql", backwards_compatible=False)
    journal.record_deploy(
        Deploy("web", "v2", T0, source="webhook", ref="abc123", migrations=(migration,)), T0
    )
    journal.record_deploy(Deploy("api", "v7", T0 + timedelta(minutes=1), source="webhook"), T0)
    assert journal.deploys() == [
        Deploy("web", "v2", T0, source="event", ref="abc123", migrations=(migration,)),
        Deploy("api", "v7", T0 + timedelta(minutes=1), source="event"),
    ]


def test_deploys_less_the_first_ones_already_read(journal: Journal) -> None:
    """A replica following the journal reads only the deploys after those it read."""
    for version in ("v1", "v2", "v3"):
        journal.record_deploy(Deploy("web", version, T0, source="event"), T0)
    assert [d.version for d in journal.deploys(1)] == ["v2", "v3"]
    assert [d.version for d in journal.deploys(3)] == []
    assert [d.version for d in journal.deploys()] == ["v1", "v2", "v3"]
