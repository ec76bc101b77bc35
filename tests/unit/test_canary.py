"""Side-by-side judgement: the PromQL rewriter, and the engine's step on a split service."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from rollbackd.core.canary import SideBySide, Split, forms_of
from rollbackd.core.deploys import Deploy, DeployHistory
from rollbackd.core.engine import Engine, EngineSettings, Inputs
from rollbackd.core.model import Action, Decision, Measurement, Vector
from rollbackd.core.policy import DEFAULT_POLICY, Guards
from rollbackd.core.promql_split import Labels, NotRewritable, per_version
from rollbackd.core.rules import parse_rules
from tests.conftest import REPO

LABELS = Labels("service", "version", "instance", "app_build_info")
JOIN = (
    "* on (service, instance) group_left (version) (group by (service, instance, version) "
    "(app_build_info) unless on (service, instance) count by (service, instance) (group by "
    "(service, instance, version) (app_build_info)) > 1)"
)


def test_an_aggregation_by_service_is_grouped_by_version_through_the_instance() -> None:
    """`sum by (service) (X)` becomes the same sum by (service, version), X joined to the
    version metric on the instance."""
    assert per_version("sum by (service) (rate(x[1m]))", LABELS) == (
        f"sum by (service, version) ((rate(x[1m])) {JOIN})"
    )


def test_by_after_the_body_and_extra_labels_are_kept() -> None:
    """`sum(X) by (service, le)` keeps `le` and gains the version after the service."""
    assert per_version("histogram_quantile(0.9, sum(rate(b[5m])) by (service, le))", LABELS) == (
        f"histogram_quantile(0.9, sum by (service, version, le) ((rate(b[5m])) {JOIN}))"
    )


def test_strings_with_parentheses_and_braces_are_not_parsed() -> None:
    """Label matchers whose values hold `(`, `)`, `{`, `}` or `sum by` are left as they are."""
    query = 'sum by (service) (rate(x{path=~"/a(b)?}{", q="sum by (x) ("}[1m]))'
    rewritten = per_version(query, LABELS)
    assert rewritten.startswith('sum by (service, version) ((rate(x{path=~"/a(b)?}{", q="sum by')


def test_a_nested_aggregation_joins_once_at_the_innermost() -> None:
    """The outer aggregation only groups by version: the inner one joined already."""
    rewritten = per_version("max by (service) (sum by (service, instance) (x))", LABELS)
    assert rewritten == (
        f"max by (service, version) (sum by (service, version, instance) ((x) {JOIN}))"
    )


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("rate(x[1m])", "no aggregation by service"),
        ("sum without (instance) (x)", "without"),
        ("sum by (job) (x)", "does not group by service"),
        ("sum by (service) (x) and on () count(up) > 0", "'count (...)' does not group"),
        ("sum by (service, version) (x)", "already groups by version"),
        ("sum by (service) (x", "unbalanced"),
    ],
)
def test_what_cannot_be_rewritten_says_why(query: str, why: str) -> None:
    """A query the rewriter cannot judge per version is refused with the reason."""
    with pytest.raises(NotRewritable, match=re.escape(why)):
        per_version(query, LABELS)


def test_the_shipped_rules_are_judged_side_by_side() -> None:
    """error-rate, auth-failures, latency-regression and noticeable-slowdown are rewritable."""
    rules = [
        rule
        for name in ("critical", "high", "medium")
        for rule in parse_rules((REPO / "rules" / f"{name}.toml").read_text(), name)
    ]
    forms, unsplittable = forms_of(rules, LABELS)
    for name in ("error-rate", "auth-failures", "latency-regression", "noticeable-slowdown"):
        assert name in forms, unsplittable.get(name)
    assert forms["error-rate"].events is not None and forms["error-rate"].volume is not None


# -- the engine's step ---------------------------------------------------------------

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DEPLOYED = T0 + timedelta(minutes=30)
RULES = parse_rules(
    """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = 'sum by (service) (rate(r{code="500"}[1m])) / sum by (service) (rate(r[1m]))'
events = 'sum by (service) (increase(r{code="500"}[1m]))'
volume = 'sum by (service) (increase(r[1m]))'
condition = "> 0.05"
min_volume = 10

[[rules]]
name = "latency"
trigger = "performance_degradation"
query = 'histogram_quantile(0.95, sum by (service, le) (rate(b[5m])))'
condition = "> +50%"
min_change = 0.05
for = "1m"
""",
    "rules",
)


def engine() -> Engine:
    """An engine over one service "web": v1 since T0, v2 (the canary) since DEPLOYED."""
    history = DeployHistory(timedelta(minutes=5))
    history.record(Deploy("web", "v1", T0, "metric"))
    history.record(Deploy("web", "v2", DEPLOYED, "metric"))
    settings = EngineSettings({"web": ()}, DEFAULT_POLICY, Guards(), timedelta(hours=24))
    return Engine(settings, RULES, history)


def per_version_vector(new: float, old: float) -> Vector:
    return Vector({"web/v2": new, "web/v1": old})


def look(
    minute: float,
    error: tuple[float, float],
    per_second: tuple[float, float],
    latency: tuple[float, float] = (0.2, 0.2),
    whole_latency: float = 0.2,
) -> Inputs:
    """One look: per-version error rates and request rates (new, old), latencies."""
    whole_errors = (error[0] * per_second[0] + error[1] * per_second[1]) / sum(per_second)
    window = 60.0
    events = per_version_vector(
        error[0] * per_second[0] * window, error[1] * per_second[1] * window
    )
    volume = per_version_vector(per_second[0] * window, per_second[1] * window)
    return Inputs(
        vectors={
            "error-rate": Vector({"web": whole_errors}),
            "latency": Vector({"web": whole_latency}),
        },
        baselines={("latency", "web"): Measurement(0.2)},
        counts={
            "error-rate": (
                Vector({"web": (events.numbers["web/v2"] + events.numbers["web/v1"])}),
                Vector({"web": (volume.numbers["web/v2"] + volume.numbers["web/v1"])}),
            )
        },
        side_by_side=SideBySide(
            {"web": Split("web", "v2", "v1", DEPLOYED)},
            {"error-rate": per_version_vector(*error), "latency": per_version_vector(*latency)},
            {"error-rate": (events, volume)},
            Vector({"web/v2": 1, "web/v1": 3}),
        ),
    )


def test_a_failing_canary_is_rolled_back_to_the_version_alongside() -> None:
    """v2 at 30 % errors beside v1 at 0.3 %: the decision rolls back v2's share to v1."""
    subject = engine()
    decisions: list[Decision] = []
    for step in range(1, 9):
        now = DEPLOYED + timedelta(seconds=15 * step)
        decisions += subject.step(now, look(step / 4, (0.3, 0.003), (5.0, 15.0))).decisions
    assert decisions, "the canary is decided"
    decision = decisions[0]
    assert decision.rules == ("canary:error-rate",)
    assert decision.action is Action.REQUEST_APPROVAL
    assert (decision.target, decision.scope, decision.canary_version) == ("v1", "canary", "v2")
    assert "v2 serves 1 of 4 instances, 25 % of requests" in decision.reason


def test_the_old_version_past_the_threshold_too_is_not_the_canarys_doing() -> None:
    """Both versions at 20 % errors: no side-by-side decision (the whole service's rule
    decides as it would, for the whole service)."""
    subject = engine()
    for step in range(1, 13):
        now = DEPLOYED + timedelta(seconds=15 * step)
        for decision in subject.step(now, look(step / 4, (0.2, 0.2), (5.0, 15.0))).decisions:
            assert decision.scope == "all" and "canary:error-rate" not in decision.rules


def test_a_chronic_old_rate_at_the_canarys_level_is_no_side_by_side_finding() -> None:
    """v2 at 8 %, v1 at 7 % (both past 5 %): the canary is not blamed side by side."""
    subject = engine()
    for step in range(1, 41):
        report = subject.step(
            DEPLOYED + timedelta(seconds=15 * step), look(step / 4, (0.08, 0.07), (5.0, 15.0))
        )
        firing = [f.rule for f in report.notable if f.firing]
        assert "canary:error-rate" not in firing


def test_latency_rising_on_both_versions_is_judged_against_the_old_one() -> None:
    """Both versions at 0.45 s (pre-deploy 0.2 s): the baseline is v1's value now, so nothing
    fires; the finding names the baseline."""
    subject = engine()
    for step in range(1, 13):
        report = subject.step(
            DEPLOYED + timedelta(seconds=15 * step),
            look(step / 4, (0.0, 0.0), (5.0, 15.0), (0.45, 0.45), whole_latency=0.45),
            explain=("web",),
        )
        assert report.decisions == ()
    [latency] = [f for f in report.explanations["web"].findings if f.rule == "latency"]
    assert latency.baseline == 0.45
    assert latency.baseline_basis == "v1 serving alongside at the same moment"


def test_a_slow_canary_is_rolled_back_by_the_latency_rule_side_by_side() -> None:
    """v2 at 0.6 s beside v1 at 0.2 s for the rule's `for`: rolled back to v1, scope canary."""
    subject = engine()
    decisions: list[Decision] = []
    for step in range(1, 13):
        now = DEPLOYED + timedelta(seconds=15 * step)
        inputs = look(step / 4, (0.0, 0.0), (5.0, 15.0), (0.6, 0.2), whole_latency=0.3)
        decisions += subject.step(now, inputs).decisions
    assert [d.rules for d in decisions] == [("latency",)]
    assert (decisions[0].target, decisions[0].scope) == ("v1", "canary")
    assert "v1 serving alongside at the same moment" in decisions[0].reason


def test_per_version_reads_that_fail_never_roll_back_a_canary() -> None:
    """Prometheus refuses the per-version queries (an instance showing two versions, garbage):
    no side-by-side finding fires, whatever the canary did; only the whole service is judged."""
    refused = "Prometheus at http://prom:9090 refused the query: many-to-many matching"
    subject = engine()
    for step in range(1, 13):
        now = DEPLOYED + timedelta(seconds=15 * step)
        inputs = look(step / 4, (0.3, 0.003), (5.0, 15.0))
        assert inputs.side_by_side is not None
        failed = replace(
            inputs.side_by_side,
            vectors={"error-rate": Vector(error=refused), "latency": Vector(error=refused)},
            counts={"error-rate": (Vector(error=refused), Vector(error=refused))},
        )
        report = subject.step(now, replace(inputs, side_by_side=failed))
        assert not [f for f in report.notable if f.rule.startswith("canary:") and f.firing]
        for decision in report.decisions:
            assert decision.scope == "all" and decision.canary_version is None
