"""`rollbackd evaluate` against a real Prometheus scraping a real app with a fault switch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunCli
from tests.support.fixtures import DemoAppFactory, PrometheusFactory
from tests.support.processes import DemoApp, Prometheus

pytestmark = pytest.mark.integration

ERROR_RATIO = (
    'sum by (service) (rate(http_requests_total{code=~"5.."}[5s]))'
    " / sum by (service) (rate(http_requests_total[5s]))"
    " or (sum by (service) (rate(http_requests_total[5s])) > 0) * 0"
)
RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERROR_RATIO}'
condition = "> 0.05"
for = "15s"

[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
"""

KNOWN_GOOD_AFTER = 12
"""Seconds a version runs clean to be known good: v2 runs a few seconds before its fault, more
when the machine is busy (the wait for Prometheus to show it), and must stay short of this."""


def write_config(directory: Path, prometheus: Prometheus, app: DemoApp) -> Path:
    (directory / "rules").mkdir(exist_ok=True)
    (directory / "rules" / "live.toml").write_text(RULES)
    config = directory / "config.toml"
    config.write_text(
        f"""
[daemon]
poll_interval = "1s"
rules = ["rules/*.toml"]
[prometheus]
url = "{prometheus.url}"
timeout = "10s"
[[services]]
name = "web"
health_url = "{app.url}/health"
repo = "{directory / "no-repo"}"
[deploys]
version_metric = "app_build_info"
known_good_after = "{KNOWN_GOOD_AFTER}s"
attribution_window = "10m"
"""
    )
    return config


def evaluate(run_cli: RunCli, config: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run `evaluate --json`; return (findings, actions)."""
    result = run_cli("evaluate", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    findings = [r for r in records if r["type"] == "finding"]
    actions = [r for r in records if r["type"] == "action"]
    return findings, actions


def finding(findings: list[dict[str, Any]], rule: str) -> dict[str, Any] | None:
    return next((f for f in findings if f["rule"] == rule), None)


def poll(check: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def healthy_v1_then_v2(
    tmp_path: Path, demoapp_factory: DemoAppFactory, prometheus_factory: PrometheusFactory
) -> tuple[DemoApp, Prometheus, Path]:
    """v1 runs clean long enough to be known good, then v2 is deployed.

    Faults must follow at once: a v2 that ran clean for known_good_after would
    itself be known good, and then there is nothing to roll back to.
    """
    app = demoapp_factory(app_toml='version = "v1"\n')
    prometheus = prometheus_factory([("demo", app.target, {})])
    prometheus.wait_for(
        'sum by (service) (rate(http_requests_total{service="web"}[5s]))',
        lambda result: len(result) == 1 and float(result[0]["value"][1]) > 0,
        timeout=30,
    )
    time.sleep(KNOWN_GOOD_AFTER + 6)  # v1 must run clean for known_good_after
    app.set_fault(version="v2")
    prometheus.wait_for('app_build_info{version="v2"}', lambda result: len(result) == 1, timeout=15)
    return app, prometheus, write_config(tmp_path, prometheus, app)


def test_a_fault_after_a_deploy_fires_after_for_and_asks_for_approval(
    tmp_path: Path,
    run_cli: RunCli,
    demoapp_factory: DemoAppFactory,
    prometheus_factory: PrometheusFactory,
) -> None:
    """30% errors after v2: pending first, then firing after `for` with request_approval to v1."""
    app, _, config = healthy_v1_then_v2(tmp_path, demoapp_factory, prometheus_factory)
    app.set_fault(error_rate=0.3)
    seen_pending: list[bool] = []
    result: dict[str, Any] = {}

    def fired() -> bool:
        findings, actions = evaluate(run_cli, config)
        state = finding(findings, "error-rate")
        if state is not None and state["state"] == "pending" and not actions:
            seen_pending.append(True)
        if actions:
            result["finding"], result["action"] = state, actions[0]
            return True
        return False

    assert poll(fired, timeout=90), "the error-rate rule never led to an action"
    assert seen_pending, "the rule fired without first being pending for `for`"
    assert result["finding"]["state"] == "firing"
    action = result["action"]
    assert action["service"] == "web"
    assert action["rule"] == "error-rate"
    assert action["severity"] == "high"
    assert action["action"] == "request_approval"
    assert action["approver"] == "senior_admin"
    assert action["target"] == "v1"
    assert "roll back v2 to v1" in action["reason"]


def test_a_spike_shorter_than_for_takes_no_action(
    tmp_path: Path,
    run_cli: RunCli,
    demoapp_factory: DemoAppFactory,
    prometheus_factory: PrometheusFactory,
) -> None:
    """A 2-second burst of errors never holds for 15s: no evaluation proposes an action."""
    app, _, config = healthy_v1_then_v2(tmp_path, demoapp_factory, prometheus_factory)
    app.set_fault(error_rate=0.8)
    time.sleep(2)
    app.set_fault(error_rate=0.0)
    states = []
    for _ in range(8):
        findings, actions = evaluate(run_cli, config)
        assert actions == []
        state = finding(findings, "error-rate")
        states.append(state["state"] if state else "ok")
        time.sleep(2)
    assert "firing" not in states


def test_a_metric_gap_is_inconclusive_and_takes_no_action(
    tmp_path: Path,
    run_cli: RunCli,
    demoapp_factory: DemoAppFactory,
    prometheus_factory: PrometheusFactory,
) -> None:
    """The app stops exporting its metrics: the rule is inconclusive, with the reason."""
    app, _, config = healthy_v1_then_v2(tmp_path, demoapp_factory, prometheus_factory)
    app.set_fault(gap=True, error_rate=0.5)

    def inconclusive() -> bool:
        state = finding(evaluate(run_cli, config)[0], "error-rate")
        return state is not None and state["state"] == "inconclusive"

    assert poll(inconclusive, timeout=40)
    findings, actions = evaluate(run_cli, config)
    state = finding(findings, "error-rate")
    assert state is not None
    assert state["state"] == "inconclusive"
    assert "no data" in state["reason"]
    assert state["missing_for"] is not None
    assert actions == []


def test_a_stopped_app_is_caught_by_its_health_probe(
    tmp_path: Path,
    run_cli: RunCli,
    demoapp_factory: DemoAppFactory,
    prometheus_factory: PrometheusFactory,
) -> None:
    """With the app down and no metrics at all, the health probe fires the outage rule."""
    app, _, config = healthy_v1_then_v2(tmp_path, demoapp_factory, prometheus_factory)
    time.sleep(2)  # v2 runs a moment: killed in the very scrape that showed it, no replay sees v2
    app.kill()
    findings, actions = evaluate(run_cli, config)
    outage = finding(findings, "outage-health")
    assert outage is not None
    assert outage["state"] == "firing"
    assert "failed" in outage["reason"] or "answered" in outage["reason"]
    assert [(a["action"], a["severity"], a["target"]) for a in actions] == [
        ("rollback", "critical", "v1")
    ], [a["reason"] for a in actions]


def test_prometheus_stopped_makes_every_rule_inconclusive(
    tmp_path: Path,
    run_cli: RunCli,
    demoapp_factory: DemoAppFactory,
    prometheus_factory: PrometheusFactory,
) -> None:
    """evaluate exits 0, every PromQL rule is inconclusive with the reason, no action."""
    app, prometheus, config = healthy_v1_then_v2(tmp_path, demoapp_factory, prometheus_factory)
    app.set_fault(error_rate=0.5)
    prometheus.stop()
    findings, actions = evaluate(run_cli, config)
    state = finding(findings, "error-rate")
    assert state is not None
    assert state["state"] == "inconclusive"
    assert "unreachable" in state["reason"]
    assert actions == []
    human = run_cli("evaluate", "--config", str(config))
    assert human.returncode == 0
    assert "source error: Prometheus at" in human.stdout
    assert "no action" in human.stdout
