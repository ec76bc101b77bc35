"""The severity policy (design §1.4) and the guards between it and any rollback."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from rollbackd.core.model import Action, Decision, Finding, FindingState, Severity, Trigger
from rollbackd.core.policy import (
    DEFAULT_POLICY,
    GateVerdict,
    Guards,
    MigrationGate,
    PolicyEntry,
    ServiceFacts,
    Silence,
    decide,
)

DEPLOYED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = DEPLOYED + timedelta(minutes=20)
FACTS = ServiceFacts(current_version="v2", deployed_at=DEPLOYED, last_good_version="v1")

TRIGGERS = {
    Severity.CRITICAL: Trigger.OUTAGE,
    Severity.HIGH: Trigger.HIGH_ERROR_RATE,
    Severity.MEDIUM: Trigger.UI_ISSUE,
    Severity.LOW: Trigger.UI_ISSUE,
}


def finding(
    severity: Severity = Severity.HIGH,
    rule: str = "error-rate",
    *,
    service: str = "web",
    state: FindingState = FindingState.FIRING,
    started: datetime = DEPLOYED + timedelta(minutes=5),
    value: float = 0.2,
    condition: str = "> 0.05",
    threshold: float = 0.05,
    baseline: float | None = None,
) -> Finding:
    trigger = TRIGGERS[severity]
    return Finding(
        rule=rule,
        service=service,
        trigger=trigger,
        state=state,
        time=NOW,
        value=value,
        threshold=threshold,
        baseline=baseline,
        condition=condition,
        severity=severity,
        reason="test finding",
        since=started + timedelta(minutes=2),
        started=started,
        severity_reason=f"trigger {trigger.value} is {severity.value}",
    )


def decision(
    *findings: Finding,
    facts: ServiceFacts = FACTS,
    guards: Guards = Guards(),  # noqa: B008 -- frozen dataclass
    policy: dict[Severity, PolicyEntry] | None = None,
    now: datetime = NOW,
) -> Decision:
    result = decide("web", findings, facts, now, policy or DEFAULT_POLICY, guards)
    assert result is not None
    return result


# --- the default policy ----------------------------------------------------------------------


def test_critical_rolls_back_now_with_admin_as_approver() -> None:
    """A critical finding rolls back at once to the last good version, no deadline."""
    d = decision(finding(Severity.CRITICAL, "outage"))
    assert (d.action, d.proposed, d.approver, d.deadline) == (
        Action.ROLLBACK,
        Action.ROLLBACK,
        "admin",
        None,
    )
    assert d.target == "v1"
    assert d.guards == ()
    assert "roll back v2 to v1" in d.reason


def test_high_asks_a_senior_admin_with_a_15_minute_deadline() -> None:
    """A high finding requests approval, rolling back at now + 15m unless vetoed."""
    d = decision(finding(Severity.HIGH))
    assert d.action is Action.REQUEST_APPROVAL
    assert d.approver == "senior_admin"
    assert d.deadline == NOW + timedelta(minutes=15)
    assert d.target == "v1"


def test_medium_escalates_to_the_team_within_2_hours() -> None:
    """A medium finding escalates to the team with a 2h deadline and never rolls back."""
    d = decision(finding(Severity.MEDIUM, "ui"))
    assert d.action is Action.ESCALATE
    assert d.approver == "team"
    assert d.deadline == NOW + timedelta(hours=2)
    assert d.target is None
    assert "roll back" not in d.reason


def test_low_is_only_recorded() -> None:
    """A low finding is recorded for the next deploy: no approver, no deadline, no target."""
    d = decision(finding(Severity.LOW, "ui"))
    assert (d.action, d.approver, d.deadline, d.target) == (Action.RECORD, None, None, None)


@pytest.mark.parametrize(
    ("severity", "action"),
    [
        (Severity.CRITICAL, Action.ROLLBACK),
        (Severity.HIGH, Action.REQUEST_APPROVAL),
        (Severity.MEDIUM, Action.ESCALATE),
        (Severity.LOW, Action.RECORD),
    ],
)
def test_the_decision_carries_the_severity_and_its_reason(
    severity: Severity, action: Action
) -> None:
    """The decision names the severity, why, and the policy applied to it."""
    d = decision(finding(severity))
    assert d.severity is severity
    assert d.action is action
    assert f"severity {severity.value} (trigger " in d.reason
    assert f"policy for {severity.value}: {action.value}" in d.reason


# --- overridden policy -----------------------------------------------------------------------


def test_an_overridden_policy_replaces_the_default() -> None:
    """A config that makes critical escalate to 'oncall' does exactly that."""
    policy = {Severity.CRITICAL: PolicyEntry(Action.ESCALATE, timedelta(minutes=30), "oncall")}
    d = decision(finding(Severity.CRITICAL, "outage"), policy=policy)
    assert d.action is Action.ESCALATE
    assert d.approver == "oncall"
    assert d.deadline == NOW + timedelta(minutes=30)


def test_severities_missing_from_an_overridden_policy_keep_their_defaults() -> None:
    """Overriding only critical leaves high at request_approval to senior_admin."""
    policy = {Severity.CRITICAL: PolicyEntry(Action.ESCALATE, None, "oncall")}
    d = decision(finding(Severity.HIGH), policy=policy)
    assert d.action is Action.REQUEST_APPROVAL
    assert d.approver == "senior_admin"


def test_rollback_with_a_deadline_acts_as_request_approval() -> None:
    """Design §4's '[policy.high] action = "rollback", deadline = "15m"' asks first."""
    policy = {Severity.HIGH: PolicyEntry(Action.ROLLBACK, timedelta(minutes=15), "senior_admin")}
    d = decision(finding(Severity.HIGH), policy=policy)
    assert d.action is Action.REQUEST_APPROVAL
    assert d.proposed is Action.REQUEST_APPROVAL
    assert d.deadline == NOW + timedelta(minutes=15)
    assert d.approver == "senior_admin"


def test_rollback_without_a_deadline_rolls_back_at_once() -> None:
    """A high policy of plain 'rollback' rolls back now, without asking."""
    policy = {Severity.HIGH: PolicyEntry(Action.ROLLBACK, None, "senior_admin")}
    d = decision(finding(Severity.HIGH), policy=policy)
    assert d.action is Action.ROLLBACK
    assert d.deadline is None


# --- which findings count --------------------------------------------------------------------


def test_no_findings_means_no_decision() -> None:
    """With nothing to go on there is nothing to decide."""
    assert decide("web", [], FACTS, NOW) is None


@pytest.mark.parametrize(
    "state", [FindingState.OK, FindingState.PENDING, FindingState.INCONCLUSIVE]
)
def test_findings_that_are_not_firing_never_lead_to_a_decision(state: FindingState) -> None:
    """Pending, inconclusive and OK findings, however severe, produce no decision."""
    findings = [finding(s, f"rule-{s.value}", state=state) for s in Severity]
    assert decide("web", findings, FACTS, NOW) is None


def test_findings_of_other_services_are_ignored() -> None:
    """A critical finding on 'api' decides nothing for 'web'."""
    assert decide("web", [finding(Severity.CRITICAL, service="api")], FACTS, NOW) is None


def test_the_highest_severity_among_firing_findings_decides() -> None:
    """With medium, high and critical firing, critical decides, and names its rule and value."""
    d = decision(
        finding(Severity.MEDIUM, "ui", value=3.0),
        finding(Severity.CRITICAL, "login-probe", value=1.0, condition="> 0", threshold=0.0),
        finding(Severity.HIGH, "error-rate", value=0.2),
        finding(Severity.CRITICAL, "outage", state=FindingState.PENDING),
    )
    assert d.severity is Severity.CRITICAL
    assert d.rules == ("login-probe",)
    assert d.value == 1.0
    assert "rule login-probe (outage) firing: 1 > 0" in d.reason
    assert "severity critical" in d.reason
    assert "error-rate" not in d.reason


def test_every_rule_at_the_highest_severity_is_named() -> None:
    """Two high findings are both named in the decision, with their values."""
    d = decision(
        finding(
            Severity.HIGH, "latency", value=0.9, condition="> +50%", threshold=0.3, baseline=0.2
        ),
        finding(Severity.HIGH, "error-rate", value=0.2),
    )
    assert set(d.rules) == {"latency", "error-rate"}
    assert "rule error-rate (high_error_rate) firing: 0.2 > 0.05" in d.reason
    assert "rule latency (high_error_rate) firing: 0.9 > +50% (threshold 0.3, baseline 0.2)" in (
        d.reason
    )


# --- maintenance silences --------------------------------------------------------------------


def silence(
    service: str = "web", start: timedelta = timedelta(hours=-1), hours: int = 2
) -> Silence:
    return Silence(service, NOW + start, NOW + start + timedelta(hours=hours), "db maintenance")


@pytest.mark.parametrize("severity", [Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM])
def test_an_active_silence_records_instead_of_acting(severity: Severity) -> None:
    """During maintenance any action becomes a record; what was proposed is kept and explained."""
    d = decision(finding(severity), guards=Guards(silences=(silence(),)))
    assert d.action is Action.RECORD
    assert d.proposed is DEFAULT_POLICY[severity].action
    assert d.guards == ("silence",)
    assert (d.approver, d.deadline, d.target) == (None, None, None)
    assert "maintenance silence for web" in d.reason
    assert "db maintenance" in d.reason


def test_a_wildcard_silence_covers_every_service() -> None:
    """A silence for '*' silences 'web' too."""
    d = decision(finding(Severity.CRITICAL), guards=Guards(silences=(silence("*"),)))
    assert d.action is Action.RECORD
    assert d.guards == ("silence",)


@pytest.mark.parametrize(
    "window",
    [
        silence(start=timedelta(hours=-3)),  # ended an hour ago
        silence(start=timedelta(hours=1)),  # starts in an hour
        silence(start=timedelta(hours=-2)),  # ends exactly now: [start, end)
        silence("api"),  # another service
    ],
    ids=["expired", "future", "ends-now", "other-service"],
)
def test_a_silence_that_does_not_cover_now_and_this_service_has_no_effect(
    window: Silence,
) -> None:
    """Expired, future or other services' silences leave the rollback alone."""
    d = decision(finding(Severity.CRITICAL), guards=Guards(silences=(window,)))
    assert d.action is Action.ROLLBACK
    assert d.guards == ()


def test_a_silence_covers_its_start_instant() -> None:
    """A silence starting exactly now is already in force."""
    d = decision(finding(Severity.CRITICAL), guards=Guards(silences=(silence(start=timedelta(0)),)))
    assert d.action is Action.RECORD


def test_a_silence_does_not_mark_a_decision_that_only_records() -> None:
    """A low finding is recorded anyway; the silence changes nothing and is not named."""
    d = decision(finding(Severity.LOW), guards=Guards(silences=(silence(),)))
    assert d.action is Action.RECORD
    assert d.guards == ()


# --- guards on rollbacks ---------------------------------------------------------------------

ROLLING_BACK = [Severity.CRITICAL, Severity.HIGH]


def assert_escalated(d: Decision, guards: tuple[str, ...], approver: str) -> None:
    assert d.action is Action.ESCALATE
    assert d.guards == guards
    assert d.approver == approver
    assert d.target is None
    assert d.deadline is None
    assert f"escalated to {approver} instead of {d.proposed.value}" in d.reason


@pytest.mark.parametrize("severity", ROLLING_BACK)
@pytest.mark.parametrize(
    "facts",
    [
        replace(FACTS, current_version=None, deployed_at=None),
        replace(FACTS, deployed_at=None),
        replace(FACTS, current_version=None),
    ],
    ids=["nothing-known", "no-deploy-time", "no-version"],
)
def test_without_a_known_deploy_nothing_is_rolled_back(
    severity: Severity, facts: ServiceFacts
) -> None:
    """No deploy to blame: the rollback becomes an escalation saying why."""
    d = decision(finding(severity), facts=facts)
    assert_escalated(d, ("no_deploy",), DEFAULT_POLICY[severity].approver or "")
    assert "no deploy is known" in d.reason


@pytest.mark.parametrize("severity", ROLLING_BACK)
def test_a_finding_that_started_before_the_deploy_is_not_blamed_on_it(severity: Severity) -> None:
    """A problem older than the deploy escalates instead of rolling the deploy back."""
    d = decision(finding(severity, started=DEPLOYED - timedelta(seconds=1)))
    assert_escalated(d, ("attribution",), DEFAULT_POLICY[severity].approver or "")
    assert "before the deploy of v2" in d.reason


def test_a_finding_that_started_at_the_deploy_instant_is_attributed() -> None:
    """Starting at the very moment of the deploy counts as caused by it."""
    d = decision(finding(Severity.CRITICAL, started=DEPLOYED))
    assert d.action is Action.ROLLBACK


def test_a_finding_that_started_after_the_attribution_window_escalates() -> None:
    """Starting more than attribution_window (2h) after the deploy is not blamed on it."""
    started = DEPLOYED + timedelta(hours=2, seconds=1)
    d = decision(finding(Severity.CRITICAL, started=started), now=started + timedelta(minutes=5))
    assert_escalated(d, ("attribution",), "admin")
    assert "outside the attribution window of 2h" in d.reason


def test_a_finding_that_started_exactly_at_the_window_edge_is_attributed() -> None:
    """Starting exactly attribution_window after the deploy still counts."""
    started = DEPLOYED + timedelta(hours=2)
    d = decision(finding(Severity.CRITICAL, started=started), now=started + timedelta(minutes=5))
    assert d.action is Action.ROLLBACK


def test_the_attribution_window_is_configurable() -> None:
    """With a 10m window, a finding 15m after the deploy escalates."""
    d = decision(
        finding(Severity.CRITICAL, started=DEPLOYED + timedelta(minutes=15)),
        guards=Guards(attribution_window=timedelta(minutes=10)),
    )
    assert d.guards == ("attribution",)


@pytest.mark.parametrize("severity", ROLLING_BACK)
@pytest.mark.parametrize(
    ("facts", "why"),
    [
        (replace(FACTS, last_good_version=None), "no last known good version"),
        (replace(FACTS, last_good_version="v2"), "v2 is already the last known good"),
    ],
    ids=["no-last-good", "current-is-last-good"],
)
def test_with_nothing_to_roll_back_to_it_escalates(
    severity: Severity, facts: ServiceFacts, why: str
) -> None:
    """No last good version, or the current one is it: escalate instead of rolling back."""
    d = decision(finding(severity), facts=facts)
    assert_escalated(d, ("nothing_to_roll_back",), DEFAULT_POLICY[severity].approver or "")
    assert why in d.reason


@pytest.mark.parametrize(
    ("ago", "blocked"),
    [
        (timedelta(minutes=1), True),
        (timedelta(minutes=29, seconds=59), True),
        (timedelta(minutes=30), False),
        (timedelta(minutes=31), False),
    ],
)
def test_a_rollback_within_the_cooldown_blocks_the_next(ago: timedelta, blocked: bool) -> None:
    """Within 30m of the last rollback the next one escalates; from 30m on it may proceed."""
    d = decision(finding(Severity.CRITICAL), facts=replace(FACTS, rollbacks=(NOW - ago,)))
    if blocked:
        assert_escalated(d, ("cooldown",), "admin")
        assert "cooling down" in d.reason
    else:
        assert d.action is Action.ROLLBACK


@pytest.mark.parametrize(
    ("rollbacks", "blocked"),
    [
        ((NOW - timedelta(hours=1),), False),  # below the limit of 2
        ((NOW - timedelta(hours=1), NOW - timedelta(hours=5)), True),  # at the limit
        ((NOW - timedelta(hours=1), NOW - timedelta(hours=25), NOW - timedelta(hours=30)), False),
        ((NOW - timedelta(hours=1), NOW - timedelta(hours=24)), False),  # window is 24h exactly
    ],
    ids=["below", "at-limit", "old-ones-outside-window", "one-at-window-edge"],
)
def test_at_most_max_rollbacks_per_window(rollbacks: tuple[datetime, ...], blocked: bool) -> None:
    """Two rollbacks in 24h reach the limit (no loops); older rollbacks do not count."""
    d = decision(finding(Severity.CRITICAL), facts=replace(FACTS, rollbacks=rollbacks))
    if blocked:
        assert_escalated(d, ("rollback_limit",), "admin")
        assert "reach the limit of 2" in d.reason
    else:
        assert d.action is Action.ROLLBACK


def test_the_rollback_limit_is_configurable() -> None:
    """With max_rollbacks = 1, one earlier rollback in the window is enough to stop."""
    d = decision(
        finding(Severity.CRITICAL),
        facts=replace(FACTS, rollbacks=(NOW - timedelta(hours=3),)),
        guards=Guards(max_rollbacks=1),
    )
    assert d.guards == ("rollback_limit",)


@pytest.mark.parametrize("severity", ROLLING_BACK)
def test_a_blocked_migration_gate_escalates_to_the_database_role(severity: Severity) -> None:
    """Migrations that are not backwards compatible stop the rollback and ask the database role."""
    gate = MigrationGate(GateVerdict.BLOCKED, "0042_drop_column.sql is not backwards compatible")
    d = decision(finding(severity), facts=replace(FACTS, migrations=gate))
    assert_escalated(d, ("migration_gate",), "database")
    assert "0042_drop_column.sql is not backwards compatible" in d.reason


def test_a_proceeding_migration_gate_does_not_stop_the_rollback() -> None:
    """Backwards-compatible migrations let the rollback go ahead."""
    gate = MigrationGate(GateVerdict.PROCEED, "0042_add_column.sql is backwards compatible")
    d = decision(finding(Severity.CRITICAL), facts=replace(FACTS, migrations=gate))
    assert d.action is Action.ROLLBACK
    assert d.guards == ()


@pytest.mark.parametrize(
    ("severity", "would"), [(Severity.CRITICAL, "rollback"), (Severity.HIGH, "request approval")]
)
def test_dry_run_records_what_would_have_happened(severity: Severity, would: str) -> None:
    """In dry run a rollback is recorded, with the proposed action kept for the report."""
    d = decision(finding(severity), guards=Guards(dry_run=True))
    assert d.action is Action.RECORD
    assert d.proposed is DEFAULT_POLICY[severity].action
    assert d.guards == ("dry_run",)
    assert (d.approver, d.deadline, d.target) == (None, None, None)
    assert f"dry run: would {would}" in d.reason


BAD_FACTS = ServiceFacts(
    current_version="v1",
    deployed_at=DEPLOYED,
    last_good_version="v1",
    rollbacks=(NOW - timedelta(minutes=5), NOW - timedelta(hours=2)),
    migrations=MigrationGate(GateVerdict.BLOCKED, "0042_drop_column.sql"),
)


@pytest.mark.parametrize(
    ("severity", "action", "deadline"),
    [(Severity.MEDIUM, Action.ESCALATE, timedelta(hours=2)), (Severity.LOW, Action.RECORD, None)],
)
def test_guards_leave_escalations_and_records_alone(
    severity: Severity, action: Action, deadline: timedelta | None
) -> None:
    """Rollback guards and dry run do not touch what never rolls back."""
    d = decision(
        finding(severity, started=DEPLOYED - timedelta(hours=1)),
        facts=BAD_FACTS,
        guards=Guards(dry_run=True),
    )
    assert d.action is action
    assert d.guards == ()
    assert d.deadline == (None if deadline is None else NOW + deadline)


def test_every_guard_that_acts_is_named_with_its_reason() -> None:
    """Several guards at once all appear in the decision's guards and reason, in check order."""
    d = decision(
        finding(Severity.CRITICAL, started=DEPLOYED - timedelta(minutes=1)), facts=BAD_FACTS
    )
    assert_escalated(
        d,
        ("attribution", "nothing_to_roll_back", "cooldown", "rollback_limit", "migration_gate"),
        "database",
    )
    for text in (
        "before the deploy of v1",
        "already the last known good",
        "cooling down",
        "reach the limit of 2",
        "migration gate: 0042_drop_column.sql",
    ):
        assert text in d.reason


def test_no_deploy_and_no_last_good_are_both_named() -> None:
    """A service with no deploy history lacks both a deploy to blame and a version to return to."""
    d = decision(finding(Severity.HIGH), facts=ServiceFacts())
    assert_escalated(d, ("no_deploy", "nothing_to_roll_back"), "senior_admin")


def test_a_blocked_rollback_is_not_rolled_back_even_in_dry_run() -> None:
    """Dry run never turns a blocked rollback back into one: the result does not roll back."""
    d = decision(
        finding(Severity.CRITICAL),
        facts=replace(FACTS, last_good_version=None),
        guards=Guards(dry_run=True),
    )
    assert not d.action.rolls_back
    assert "nothing_to_roll_back" in d.guards
