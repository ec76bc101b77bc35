"""The scenario suite's generator: labelled, valid for promtool, shaped like prometheus_client.

`make bench` scores the rules against these histories, so a history promtool
rejects, a scenario without a label, or counters that do not behave the way
an instrumented app's do would make the score mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.common import promtool_backfill
from bench.scenario_data import (
    EXPECTATIONS,
    HOUR,
    MINUTE,
    generate,
    load_labels,
    scenarios,
    simulate,
)

ORIGIN = 1_764_460_800.0  # 2025-11-30T00:00:00Z, on a 2h block boundary


def test_every_scenario_has_a_label_and_every_label_a_scenario() -> None:
    """scenario_labels.json labels exactly the generated scenarios, with a known outcome."""
    labels = load_labels()
    names = [s.name for s in scenarios(False, 24.0, 3)]
    assert len(names) >= 30
    assert len(set(names)) == len(names)
    assert sorted(labels) == sorted(names)
    assert {label["expect"] for label in labels.values()} <= set(EXPECTATIONS)
    for scenario in scenarios(False, 24.0, 3):
        if labels[scenario.name]["expect"] in ("rollback", "request_approval"):
            assert scenario.onset is not None, scenario.name


def test_quick_subset_is_labelled_and_smaller() -> None:
    """--quick runs a labelled subset that still has trouble to find and health to keep."""
    labels = load_labels()
    quick = scenarios(True, 4.0, 3)
    assert len(quick) < len(scenarios(False, 4.0, 3))
    expected = {labels[s.name]["expect"] for s in quick}
    assert {"nothing", "request_approval", "rollback"} <= expected


@pytest.mark.integration
def test_generated_history_is_openmetrics_that_promtool_backfills(tmp_path: Path) -> None:
    """A slice of the suite's history (restarts, gaps, logins, a new service, a canary and
    a rolling deploy on several instances) backfills."""
    chosen = [
        s
        for s in scenarios(False, 1.5, 2)
        if s.name
        in (
            "counter-resets",
            "gap-after-deploy",
            "auth-broken",
            "new-service-healthy",
            "canary-failing",
            "rolling-slower",
        )
    ]
    files, series, samples = generate(chosen, tmp_path / "om", ORIGIN, 1.5, history_cap=0.02)
    assert series > 20
    assert samples > 1000
    text = files[0].read_text()
    assert text.endswith("# EOF\n")
    assert "\n\n" not in text
    family_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(family_lines) == len(set(family_lines))
    promtool_backfill(files, tmp_path / "data", timeout=120)
    assert list((tmp_path / "data").glob("*/meta.json"))


def test_counters_reset_on_restart_and_the_5xx_series_is_born_at_the_first_error() -> None:
    """Like prometheus_client: a restart resets counters; a labelled child exists from first use."""
    scenario = next(s for s in scenarios(False, 3.0, 1) if s.name == "counter-resets")
    service = scenario.services[0]
    series = simulate(service, -10 * MINUTE, 3 * HOUR, "test")
    ok = next(points for name, points in series.items() if 'code="200"' in name)
    restart = service.restarts[0]
    before = [value for at, value in ok if at < restart]
    after = [value for at, value in ok if at >= restart]
    assert after[0] < before[-1]
    failed = next(points for name, points in series.items() if 'code="500"' in name)
    assert failed[0][0] > ok[0][0]
    assert failed[0][1] >= 1


def test_no_traffic_means_no_request_series_and_gaps_mean_no_samples() -> None:
    """Zero traffic exports no request series; where Prometheus has no data there is no sample."""
    zero = next(s for s in scenarios(False, 3.0, 1) if s.name == "zero-traffic").services[0]
    names = list(simulate(zero, 0.0, HOUR, "test"))
    assert not [n for n in names if n.startswith("http_request")]
    assert [n for n in names if n.startswith("up{")]
    gap = next(s for s in scenarios(False, 3.0, 1) if s.name == "gap-after-deploy").services[0]
    start, end = gap.missing[0]
    up = next(points for name, points in simulate(gap, 0.0, 3 * HOUR, "t").items() if "up{" in name)
    assert not [at for at, _ in up if start <= at < end]
    assert [at for at, _ in up if at >= end]


def test_a_canary_is_its_own_instance_with_its_own_version_counters_and_share() -> None:
    """The canary's series carry its own instance, its counters start at its start, it runs
    v2 beside v1's instances, takes a quarter of the traffic and fails at v2's rate."""
    scenario = next(s for s in scenarios(False, 3.0, 1) if s.name == "canary-failing")
    service = scenario.services[0]
    deploy = scenario.onset
    assert deploy is not None
    series = simulate(service, 0.0, deploy + HOUR, "test")
    for name in series:
        assert 'instance="canary-failing-' in name, name
    builds = sorted(name for name in series if name.startswith("app_build_info"))
    assert [("canary:8000" in b, 'version="v2"' in b) for b in builds] == [
        (False, False),
        (False, False),
        (False, False),
        (True, True),
    ]

    def requests(instance: str, code: str) -> list[tuple[float, float]]:
        return next(
            points
            for name, points in series.items()
            if name.startswith("http_requests_total{")
            and f'code="{code}"' in name
            and f'instance="canary-failing-{instance}:8000"' in name
        )

    canary_ok, canary_failed = requests("canary", "200"), requests("canary", "500")
    assert canary_ok[0][0] >= deploy and canary_ok[0][1] < 60
    served = canary_ok[-1][1] + canary_failed[-1][1]
    old_ok, old_failed = requests("a", "200"), requests("a", "500")
    old_after = (
        old_ok[-1][1]
        + old_failed[-1][1]
        - next(v for t, v in old_ok if t >= deploy)
        - next(v for t, v in old_failed if t >= deploy)
    )
    assert 0.7 < served / old_after < 1.3  # one of four instances each, after the deploy
    assert 0.25 < canary_failed[-1][1] / served < 0.35
    assert old_failed[-1][1] / (old_ok[-1][1] + old_failed[-1][1]) < 0.02


def test_a_rolling_deploy_replaces_one_instance_at_a_time() -> None:
    """Every few minutes one new instance on v2 starts and one old one on v1 stops: midway,
    two of each serve."""
    scenario = next(s for s in scenarios(False, 3.0, 1) if s.name == "rolling-slower")
    service = scenario.services[0]
    deploy = scenario.onset
    assert deploy is not None
    series = simulate(service, 0.0, deploy + HOUR, "test")
    midway = deploy + 7 * MINUTE

    def serving(version: str) -> int:
        return sum(
            1
            for name, points in series.items()
            if name.startswith("app_build_info")
            and f'version="{version}"' in name
            and any(abs(at - midway) < 15 for at, _ in points)
        )

    assert (serving("v1"), serving("v2")) == (2, 2)
