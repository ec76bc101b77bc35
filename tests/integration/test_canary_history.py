"""Side by side while two versions serve: backtested on a real Prometheus over backfilled
history, a canary is judged against the version serving alongside it at the same moment.

Each service runs v1 on three instances; at the deploy a fourth instance (a canary pod, a
new `instance`) appears running v2. Counters and histograms are written as
prometheus_client exports them and Prometheus scrapes them, every 15 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.support.cli import actions_by_service
from tests.support.cli import backtest as run_backtest
from tests.support.fixtures import backfilled_prometheus
from tests.support.processes import (
    Point,
    Prometheus,
    gauge_points,
    openmetrics_document,
    openmetrics_family,
)

pytestmark = pytest.mark.integration

START = datetime(2025, 4, 1, tzinfo=UTC).timestamp()
DEPLOY = START + 30 * 60
RUSH = DEPLOY + 3 * 60
END = START + 50 * 60
SCRAPE = 15.0
OLD = ("a", "b", "c")
"""The instances that run v1 throughout; instance "canary" runs v2 from the deploy."""
BUCKETS = (0.1, 0.25, 0.5, 1.0)


def scrapes(start: float) -> list[float]:
    """Scrape times from ``start`` to the end of the history."""
    return [moment for moment, _ in gauge_points(start, END, SCRAPE, 0)]


def counter(
    start: float, per_second: float, failing: Callable[[float], float]
) -> tuple[list[Point], list[Point]]:
    """(successful requests, failed requests) of one instance from ``start``: integer counts
    as scraped; the failed series exists from its first failure (prometheus_client)."""
    ok_points: list[Point] = []
    failed: list[Point] = []
    arrived = 0.0
    ok = bad = 0
    owed = 0.0
    for moment in scrapes(start):
        if moment > start:
            before = int(arrived)
            arrived += per_second * SCRAPE
            new = int(arrived) - before
            owed += new * failing(moment)
            failures = min(int(owed), new)
            owed -= failures
            bad += failures
            ok += new - failures
        ok_points.append((moment, float(ok)))
        if bad > 0:
            failed.append((moment, float(bad)))
    return ok_points, failed


def requests(
    service: str, instance: str, start: float, per_second: float, failing: Callable[[float], float]
) -> list[tuple[dict[str, str], list[Point]]]:
    """http_requests_total of one instance: 200s and 500s (the 500s from the first one)."""
    labels = {"job": "app", "service": service, "instance": instance}
    ok, failed = counter(start, per_second, failing)
    series = [({**labels, "code": "200"}, ok)]
    if failed:
        series.append(({**labels, "code": "500"}, failed))
    return series


def latency(
    service: str, instance: str, start: float, per_second: float, seconds: Callable[[float], float]
) -> list[tuple[dict[str, str], list[Point]]]:
    """http_request_duration_seconds buckets of one instance: every request takes
    ``seconds(t)``."""
    labels = {"job": "app", "service": service, "instance": instance}
    bounds = [*(str(b) for b in BUCKETS), "+Inf"]
    points: dict[str, list[Point]] = {le: [] for le in bounds}
    counts = dict.fromkeys(bounds, 0.0)
    for moment in scrapes(start):
        if moment > start:
            took = seconds(moment)
            for le in bounds:
                if le == "+Inf" or took <= float(le):
                    counts[le] += per_second * SCRAPE
        for le in bounds:
            points[le].append((moment, counts[le]))
    return [({**labels, "le": le}, points[le]) for le in bounds]


def versions(service: str, canary_version: str = "v2") -> list[tuple[dict[str, str], list[Point]]]:
    labels = {"job": "app", "service": service}
    series = [
        ({**labels, "instance": name, "version": "v1"}, gauge_points(START, END, SCRAPE, 1))
        for name in OLD
    ]
    series.append(
        (
            {**labels, "instance": "canary", "version": canary_version},
            gauge_points(DEPLOY, END, SCRAPE, 1),
        )
    )
    return series


def rush(moment: float) -> float:
    """Latency of every request: 0.2 s, and 0.4 s in the morning rush from RUSH on."""
    return 0.4 if moment >= RUSH else 0.2


def history() -> str:
    """canary: v1 at 0.3 % errors, the v2 canary at 30 %; both: an incident from ten
    minutes before the deploy, 20 % errors on every version; quiet: v1 at 1 req/s without
    errors, the canary at one request in ten seconds, two of its first four failing;
    rush: latency rises equally on both versions three minutes after the deploy; alone:
    the same rush, but the deploy replaces v1 everywhere (one version serves)."""
    http: list[tuple[dict[str, str], list[Point]]] = []
    buckets: list[tuple[dict[str, str], list[Point]]] = []
    build: list[tuple[dict[str, str], list[Point]]] = []
    for name in OLD:
        http += requests("canary", name, START, 5.0, lambda _: 0.003)
        http += requests("both", name, START, 5.0, lambda t: 0.2 if t >= DEPLOY - 600 else 0.003)
        http += requests("quiet", name, START, 1.0, lambda _: 0.0)
        for service in ("rush", "alone"):
            http += requests(service, name, START, 5.0, lambda _: 0.0)
            buckets += latency(service, name, START, 5.0, rush)
    http += requests("canary", "canary", DEPLOY, 5.0, lambda _: 0.3)
    http += requests("both", "canary", DEPLOY, 5.0, lambda _: 0.2)
    early = {DEPLOY + SCRAPE, DEPLOY + 3 * SCRAPE}
    http += requests("quiet", "canary", DEPLOY, 0.1, lambda t: 1.0 if t in early else 0.0)
    http += requests("rush", "canary", DEPLOY, 5.0, lambda _: 0.0)
    buckets += latency("rush", "canary", DEPLOY, 5.0, rush)
    for service in ("canary", "both", "quiet", "rush"):
        build += versions(service)
    labels = {"job": "app", "service": "alone"}
    for name in OLD:  # every instance moves to v2 at the deploy
        build.append(
            ({**labels, "instance": name, "version": "v1"}, gauge_points(START, DEPLOY - 1, 15, 1))
        )
        build.append(
            ({**labels, "instance": name, "version": "v2"}, gauge_points(DEPLOY, END, 15, 1))
        )
    return openmetrics_document(
        openmetrics_family("http_requests_total", http, kind="counter"),
        openmetrics_family("http_request_duration_seconds_bucket", buckets),
        openmetrics_family("app_build_info", build),
    )


SERVICES = ("canary", "both", "quiet", "rush", "alone")


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One Prometheus over the backfilled history, shared by this module's tests."""
    with backfilled_prometheus(tmp_path_factory, "canary-history", history()) as prometheus:
        yield prometheus


def write_config(directory: Path, prometheus: Prometheus) -> Path:
    """The shipped high-priority rules, verbatim (error-rate, latency-regression...)."""
    (directory / "rules").mkdir(exist_ok=True)
    shipped = (REPO / "rules" / "high.toml").read_text(encoding="utf-8")
    (directory / "rules" / "high.toml").write_text(shipped, encoding="utf-8")
    services = "".join(
        f'[[services]]\nname = "{name}"\nrepo = "/srv/{name}"\n' for name in SERVICES
    )
    config = directory / "config.toml"
    config.write_text(
        f"""
[daemon]
rules = ["rules/*.toml"]
[prometheus]
url = "{prometheus.url}"
timeout = "10s"
{services}
[deploys]
version_metric = "app_build_info"
known_good_after = "5m"
attribution_window = "15m"
""",
        encoding="utf-8",
    )
    return config


def backtest(config: Path, *extra: str) -> list[str]:
    """``rollbackd backtest`` over the history from ten minutes in, as a user runs it."""
    return run_backtest(config, START + 10 * 60, END, *extra)


@pytest.fixture(scope="module")
def decisions(
    backfilled: Prometheus, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[dict[str, Any]]]:
    """Every decision of a backtest over the history, by service."""
    config = write_config(tmp_path_factory.mktemp("canary-config"), backfilled)
    return actions_by_service(backtest(config, "--json"))


def after_the_deploy(action: dict[str, Any]) -> timedelta:
    return datetime.fromisoformat(action["time"]) - datetime.fromtimestamp(DEPLOY, UTC)


def test_a_failing_canary_is_rolled_back_to_the_version_alongside_within_a_minute(
    decisions: dict[str, list[dict[str, Any]]],
) -> None:
    """v2 on one instance of four fails 30 % while v1 serves at 0.3 %: its share is
    rolled back to v1 within about a minute, side by side, the reason naming the share."""
    actions = decisions.get("canary", [])
    assert actions, decisions
    action = actions[0]
    assert action["rule"] == "canary:error-rate", action
    assert action["action"] in ("rollback", "request_approval")
    assert action["target"] == "v1"
    assert action["scope"] == "canary" and action["canary_version"] == "v2"
    assert timedelta(0) < after_the_deploy(action) <= timedelta(seconds=75), action["time"]
    assert "side by side" in action["reason"]
    assert "v2 serves 1 of 4 instances" in action["reason"], action["reason"]


def test_a_rush_on_both_versions_is_not_the_canarys_doing(
    decisions: dict[str, list[dict[str, Any]]],
) -> None:
    """Latency doubles on v1 and the v2 canary alike three minutes after the deploy:
    judged side by side, nothing is decided; the same rush where v2 replaced v1 everywhere
    (one version, the plain pre-deploy baseline) is blamed on the deploy."""
    assert decisions.get("rush", []) == []
    alone = decisions.get("alone", [])
    assert [a["rule"] for a in alone] == ["latency-regression"], alone
    assert alone[0]["scope"] == "all"


def test_an_incident_on_both_versions_is_not_blamed_on_the_canary(
    decisions: dict[str, list[dict[str, Any]]],
) -> None:
    """20 % of requests fail on v1 and on the v2 canary alike (from before the deploy): no
    side-by-side decision; the whole-service rule sees it and is not attributed to v2."""
    actions = decisions.get("both", [])
    assert actions, "the whole-service error-rate sees the incident"
    for action in actions:
        assert not action["rule"].startswith("canary:"), action
        assert action["scope"] == "all", action
        assert "side by side" not in action["reason"], action


def test_a_canary_at_low_traffic_with_a_few_errors_is_not_rolled_back(
    decisions: dict[str, list[dict[str, Any]]],
) -> None:
    """A canary serving one request in ten seconds, two of its first four failing, next to
    v1 at 3 req/s without errors: nothing is decided."""
    assert decisions.get("quiet", []) == []


def test_explain_shows_the_side_by_side_judgement(backfilled: Prometheus, tmp_path: Path) -> None:
    """`backtest --explain canary` shows the canary's counts and the old version's beside them."""
    lines = backtest(write_config(tmp_path, backfilled), "--explain", "canary")
    side = [line for line in lines if "canary:error-rate" in line]
    assert any("v2 side by side with v1" in line for line in side), "\n".join(lines[:60])
    assert any("v1 alongside:" in line for line in side), "\n".join(side[:20])
