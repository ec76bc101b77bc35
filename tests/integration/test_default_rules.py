"""The shipped rules (`rules/*.toml`) on a real Prometheus, fed the way real apps are instrumented.

prometheus_client creates a labelled series at its first use and a restart
resets every counter, so a 5xx series does not exist before the first failed
request, nor again after a restart. The rules must read that as "nothing
happened" (0) while there is traffic, keep "no traffic" and "not exported"
inconclusive (absent), and see a complete outage in Prometheus alone.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.core.rules import Rule, parse_rules
from tests.conftest import REPO, RunCli
from tests.support.cli import rfc3339
from tests.support.fixtures import (
    DemoAppFactory,
    PrometheusFactory,
    backfilled_prometheus,
)
from tests.support.processes import (
    Point,
    Prometheus,
    QueryResult,
    counter_points,
    gauge_points,
    openmetrics_document,
    openmetrics_family,
)

pytestmark = pytest.mark.integration

SHIPPED: dict[str, Rule] = {
    rule.name: rule
    for path in sorted((REPO / "rules").glob("*.toml"))
    for rule in parse_rules(path.read_text(encoding="utf-8"), path.name)
}
PROMQL = {name: rule for name, rule in SHIPPED.items() if rule.query is not None}

DEMO_EXPORTS = {
    "outage-no-traffic-served",
    "outage-targets-down",
    "targets-gone",
    "traffic-vanished",
    "auth-failures",
    "data-loss",
    "error-rate",
    "latency-regression",
    "noticeable-slowdown",
}
"""The PromQL rules whose metrics the demo app (with a `service` target label) exports."""

DEMO_DOES_NOT_EXPORT = {
    "security-breach",
    "major-feature-broken",
    "data-integrity",
    "minor-feature-broken",
    "ui-errors",
}


def query_of(name: str) -> str:
    query = PROMQL[name].query
    assert query is not None
    return query


def shortened(query: str, window: str = "5s") -> str:
    """``query`` with every range and offset cut to ``window``, so a test waits seconds."""
    query = re.sub(r"\[\d+[smhd]\]", f"[{window}]", query)
    return re.sub(r"offset \d+[smhd]", f"offset {window}", query)


def by_service(result: QueryResult) -> dict[str, float]:
    """An instant vector as {service: value}; a series without a service label fails."""
    values = {}
    for sample in result:
        assert sample["metric"].get("service"), f"a series without a service label: {sample}"
        values[sample["metric"]["service"]] = float(sample["value"][1])
    return values


# -- a fresh demo app, lazily instrumented ---------------------------------------------------


def test_every_exported_rule_reads_a_healthy_value_on_a_fresh_app_without_errors(
    demoapp_factory: DemoAppFactory, prometheus_factory: PrometheusFactory
) -> None:
    """Before any error: a value (0, not "no data") for each rule the app feeds, none firing."""
    assert set(PROMQL) == DEMO_EXPORTS | DEMO_DOES_NOT_EXPORT, "a shipped rule is not covered"
    app = demoapp_factory(app_toml='version = "v1"\n')
    prometheus = prometheus_factory([app.scrape_target()])
    assert 'code="500"' not in app.metrics()
    for name in sorted(DEMO_EXPORTS):
        rule = PROMQL[name]
        result = prometheus.wait_for(query_of(name), lambda r: "web" in by_service(r), timeout=30)
        value = by_service(result)["web"]
        assert math.isfinite(value), (name, value)
        if not rule.relative:
            threshold = rule.condition.threshold(None)
            assert not rule.condition.holds(value, threshold), (name, value)
    for name in ("error-rate", "auth-failures", "data-loss"):
        assert by_service(prometheus.query(query_of(name))) == {"web": 0.0}, name
    for name in sorted(DEMO_DOES_NOT_EXPORT):
        assert prometheus.query(query_of(name)) == [], f"{name}: not exported, so no data"


def test_error_rate_rises_with_errors_and_reads_0_after_a_restart(
    demoapp_factory: DemoAppFactory, prometheus_factory: PrometheusFactory
) -> None:
    """Errors push error-rate over 5%; after a restart (no 5xx series) it is 0, never absent."""
    app = demoapp_factory(app_toml='version = "v1"\n', traffic=40)
    prometheus = prometheus_factory([app.scrape_target()])
    query = shortened(query_of("error-rate"))
    prometheus.wait_for(query, lambda r: by_service(r) == {"web": 0.0}, timeout=30)

    app.set_fault(error_rate=0.5)
    prometheus.wait_for(query, lambda r: by_service(r).get("web", 0) > 0.05, timeout=30)

    app.restart_in_place()
    assert 'code="500"' not in app.metrics(), "a restart starts counters from nothing"
    readings: list[float | None] = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        readings.append(by_service(prometheus.query(query)).get("web"))
        if readings[-1] == 0.0:
            break
        time.sleep(0.5)
    assert readings[-1] == 0.0, f"error-rate never read 0 after the restart: {readings}"
    assert None not in readings, f"error-rate was absent after the restart: {readings}"


# -- backfilled history: edge cases at exact times -------------------------------------------

HISTORY_START = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
HISTORY_END = HISTORY_START + 3600
STEP = 15.0
BORN = HISTORY_START + 1800
"""When the "born" service's event counters appear, at their first event."""


def minutes_after_birth(minutes: float) -> float:
    return BORN + minutes * 60


def counter(rate: float, start: float = HISTORY_START, initial: float = 0.0) -> list[Point]:
    return counter_points(start, HISTORY_END, STEP, rate, initial)


def gauge(value: float, start: float = HISTORY_START, end: float = HISTORY_END) -> list[Point]:
    return gauge_points(start, end, STEP, value)


def target(service: str, instance: str = "a", job: str = "app", **labels: str) -> dict[str, str]:
    """The labels of a series scraped from ``service``'s target, as Prometheus attaches them."""
    return {"job": job, "instance": f"{service}-{instance}", "service": service, **labels}


def history() -> str:
    """steady: traffic, no errors, counters at 0; born: event counters created at an event;
    failing: every request fails, targets down; quiet: no traffic; gone: targets vanish;
    vanished: its target stays up, its requests stop at BORN (a process that never served);
    restored: a job Prometheus stopped scraping for 10 minutes, its counter at 3 throughout."""
    requests = [
        (target("steady", code="200"), counter(10)),
        (target("born", code="200"), counter(10)),
        (target("failing", code="500"), counter(5, initial=1)),
        (target("quiet", code="200"), counter(0, initial=7)),
        (target("vanished", code="200"), counter_points(HISTORY_START, BORN, STEP, 5)),
    ]
    auth = [(target("steady", result="success"), counter(2))]
    page_views = [(target("steady"), counter(3)), (target("quiet"), counter(0, initial=4))]
    restored = {"job": "restored"}
    data_loss = [
        (target("steady"), gauge(0)),
        (target("born"), gauge(1, start=BORN)),
        (target("restored", **restored), gauge(3, end=BORN - 600) + gauge(3, start=BORN)),
    ]
    security = [
        (target("born", kind="unauthorized_access"), gauge(1, start=BORN)),
        (target("steady", kind="login_throttled"), gauge(1, start=BORN)),
    ]
    integrity = [(target("born"), gauge(2, start=BORN))]
    up = [
        (target("steady"), gauge(1)),
        (target("steady", instance="b"), gauge(0)),
        (target("born"), gauge(1)),
        (target("failing"), gauge(0)),
        (target("gone"), gauge(1, end=BORN)),
        (target("vanished"), gauge(1)),
        (target("restored", **restored), gauge(1, end=BORN - 600) + gauge(1, start=BORN)),
        ({"job": "prometheus", "instance": "self"}, gauge(1)),
    ]
    return openmetrics_document(
        openmetrics_family("http_requests_total", requests, kind="counter"),
        openmetrics_family("app_auth_attempts_total", auth, kind="counter"),
        openmetrics_family("app_page_views_total", page_views, kind="counter"),
        openmetrics_family("app_data_loss_events_total", data_loss, kind="counter"),
        openmetrics_family("app_security_events_total", security, kind="counter"),
        openmetrics_family("app_data_integrity_errors_total", integrity, kind="counter"),
        openmetrics_family("up", up),
    )


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One Prometheus over the backfilled history, shared by this module's history tests."""
    with backfilled_prometheus(tmp_path_factory, "default-rules-history", history()) as prometheus:
        yield prometheus


def values_at(prometheus: Prometheus, name: str, at: float) -> dict[str, float]:
    return by_service(prometheus.query(query_of(name), at=at))


def test_ratio_rules_read_0_without_a_numerator_series_and_no_data_without_traffic(
    backfilled: Prometheus,
) -> None:
    """No error series yet: 0 while requests come in; no traffic: absent, never 0."""
    at = minutes_after_birth(1)
    assert values_at(backfilled, "error-rate", at) == {"steady": 0.0, "born": 0.0, "failing": 1.0}
    served = values_at(backfilled, "outage-no-traffic-served", at)
    assert {service: served[service] for service in ("steady", "born", "failing")} == {
        "steady": 1.0,
        "born": 1.0,
        "failing": 0.0,
    }
    assert math.isnan(served["quiet"]), "no traffic: 0/0, inconclusive"
    assert values_at(backfilled, "auth-failures", at) == {"steady": 0.0}
    assert values_at(backfilled, "ui-errors", at) == {"steady": 0.0}


def test_event_counters_born_at_their_first_event_are_counted(backfilled: Prometheus) -> None:
    """A counter created at 1 counts for its window; one never exported stays absent."""
    assert values_at(backfilled, "data-loss", minutes_after_birth(-1)) == {"steady": 0.0}
    for minutes in (1, 4.5):
        assert values_at(backfilled, "data-loss", minutes_after_birth(minutes)) == {
            "steady": 0.0,
            "born": 1.0,
            "restored": 0.0,
        }, minutes
    assert values_at(backfilled, "data-loss", minutes_after_birth(6)) == {
        "steady": 0.0,
        "born": 0.0,
        "restored": 0.0,
    }
    assert values_at(backfilled, "security-breach", minutes_after_birth(1)) == {"born": 1.0}
    assert values_at(backfilled, "security-breach", minutes_after_birth(6)) == {"born": 0.0}
    assert values_at(backfilled, "data-integrity", minutes_after_birth(9)) == {"born": 2.0}
    assert values_at(backfilled, "data-integrity", minutes_after_birth(11)) == {"born": 0.0}


def test_a_counter_seen_again_after_a_scrape_gap_is_history_not_an_event(
    backfilled: Prometheus,
) -> None:
    """Back after 10 minutes unscraped, a counter at 3 is not 3 new events (0, not 3)."""
    assert values_at(backfilled, "data-loss", minutes_after_birth(0.25))["restored"] == 0.0


def test_targets_down_read_0_and_unlabelled_targets_are_ignored(
    backfilled: Prometheus,
) -> None:
    """One target up is enough; all down is 0; targets gone are no data, not an outage."""
    assert values_at(backfilled, "outage-targets-down", minutes_after_birth(-1)) == {
        "steady": 1.0,
        "born": 1.0,
        "vanished": 1.0,
        "failing": 0.0,
        "gone": 1.0,
    }
    for minutes in (6, 11):
        assert values_at(backfilled, "outage-targets-down", minutes_after_birth(minutes)) == {
            "steady": 1.0,
            "born": 1.0,
            "vanished": 1.0,
            "failing": 0.0,
            "restored": 1.0,
        }, minutes


def test_targets_gone_within_10_minutes_read_0_for_the_medium_rule(
    backfilled: Prometheus,
) -> None:
    """Every target of a service vanished (no up series) reads 0 for 10 minutes for
    targets-gone, which escalates; a target scraped at all, up or down, reads 1."""
    assert values_at(backfilled, "targets-gone", minutes_after_birth(-1)) == {
        "steady": 1.0,
        "born": 1.0,
        "vanished": 1.0,
        "failing": 1.0,
        "gone": 1.0,
        "restored": 0.0,
    }
    assert values_at(backfilled, "targets-gone", minutes_after_birth(6)) == {
        "steady": 1.0,
        "born": 1.0,
        "vanished": 1.0,
        "failing": 1.0,
        "gone": 0.0,
        "restored": 1.0,
    }
    assert values_at(backfilled, "targets-gone", minutes_after_birth(11)) == {
        "steady": 1.0,
        "born": 1.0,
        "vanished": 1.0,
        "failing": 1.0,
        "restored": 1.0,
    }
    assert SHIPPED["targets-gone"].severity == "medium"


def test_a_prometheus_without_any_data_is_no_outage_of_any_service(
    backfilled: Prometheus,
) -> None:
    """When Prometheus itself has no data (it was down: no series at all, its own included),
    targets-down and targets-gone are no data for every service, not 0: missing data never
    rolls back, nor escalates."""
    for name in ("outage-targets-down", "targets-gone"):
        assert values_at(backfilled, name, HISTORY_END - 60)["steady"] == 1.0
        assert values_at(backfilled, name, HISTORY_END + 6 * 60) == {}


def test_traffic_reads_0_while_the_target_is_up_and_no_request_series_exists(
    backfilled: Prometheus,
) -> None:
    """traffic-vanished: requests per second, 0 (not absent) once a scraped target's
    request series is gone; a service with no target and no series stays absent."""
    before = values_at(backfilled, "traffic-vanished", minutes_after_birth(-1))
    assert before["vanished"] == pytest.approx(5.0)
    after = values_at(backfilled, "traffic-vanished", minutes_after_birth(11))
    assert after["vanished"] == 0.0
    assert after["steady"] == pytest.approx(10.0)
    assert after["quiet"] == 0.0
    assert "gone" not in after


# -- backtest sees a killed app in Prometheus alone -------------------------------------------

OUTAGE_FOR = 3
KNOWN_GOOD_AFTER = 4


def write_backtest_config(directory: Path, prometheus: Prometheus) -> Path:
    """The shipped outage-targets-down rule with a short `for`, and nothing else."""
    (directory / "rules").mkdir(exist_ok=True)
    (directory / "rules" / "outage.toml").write_text(
        f"""
[[rules]]
name = "outage-targets-down"
trigger = "{PROMQL["outage-targets-down"].trigger.value}"
query = '{query_of("outage-targets-down")}'
condition = "{PROMQL["outage-targets-down"].condition.text}"
for = "{OUTAGE_FOR}s"
""",
        encoding="utf-8",
    )
    config = directory / "config.toml"
    config.write_text(
        f"""
[daemon]
rules = ["rules/*.toml"]
[prometheus]
url = "{prometheus.url}"
timeout = "10s"
[[services]]
name = "web"
repo = "/srv/web"
[deploys]
version_metric = "app_build_info"
known_good_after = "{KNOWN_GOOD_AFTER}s"
attribution_window = "10m"
""",
        encoding="utf-8",
    )
    return config


def test_backtest_rolls_back_a_killed_app_from_prometheus_history_alone(
    tmp_path: Path,
    run_cli: RunCli,
    demoapp_factory: DemoAppFactory,
    prometheus_factory: PrometheusFactory,
) -> None:
    """v2's process is killed: backtest decides a critical rollback to v1 `for` after the kill."""
    started = time.time()
    app = demoapp_factory(app_toml='version = "v1"\n', traffic=5)
    prometheus = prometheus_factory([app.scrape_target()])
    prometheus.wait_for('up{service="web"} == 1', lambda r: len(r) == 1, timeout=30)
    time.sleep(KNOWN_GOOD_AFTER + 2)  # v1 runs clean long enough to be known good
    app.set_fault(version="v2")
    prometheus.wait_for('app_build_info{version="v2"}', lambda r: len(r) == 1, timeout=15)
    killed = time.time()
    app.kill()
    prometheus.wait_for('up{service="web"} == 0', lambda r: len(r) == 1, timeout=15)
    time.sleep(OUTAGE_FOR + 3)  # history long enough for the rule to fire
    config = write_backtest_config(tmp_path, prometheus)
    result = run_cli(
        "backtest",
        "--config",
        str(config),
        "--start",
        rfc3339(started - 1),
        "--end",
        "now",
        "--step",
        "1s",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    actions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(a["service"], a["rule"], a["severity"], a["action"]) for a in actions] == [
        ("web", "outage-targets-down", "critical", "rollback")
    ], actions
    action = actions[0]
    assert action["target"] == "v1"
    after_kill = datetime.fromisoformat(action["time"]) - datetime.fromtimestamp(killed, UTC)
    assert timedelta(seconds=OUTAGE_FOR - 1) <= after_kill <= timedelta(seconds=OUTAGE_FOR + 4), (
        action["time"],
        after_kill,
    )
