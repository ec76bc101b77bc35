"""The shipped latency rule against a week of morning rushes backfilled into a real Prometheus.

Every day from 09:00 to 11:00 the p95 latency of every service rises from 0.2 s to
0.44 s (a histogram from prometheus_client, its buckets shifting). On the eighth
day each service deploys v2 at 08:55: "steady" changes nothing; "regressed" doubles
its latency on top of the rush; "newbie" has no history before that morning.
Expected from `backtest` with the shipped rules: steady is not blamed for the rush,
regressed is, and newbie falls back to the pre-deploy baseline and says so.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import RunCli
from tests.support.fixtures import backfilled_prometheus
from tests.support.processes import (
    REPO,
    Point,
    Prometheus,
    openmetrics_document,
    openmetrics_family,
)

pytestmark = pytest.mark.integration

FIRST_DAY = datetime(2025, 6, 2, tzinfo=UTC)
DEPLOY_DAY = FIRST_DAY + timedelta(days=7)
DEPLOYED = DEPLOY_DAY + timedelta(hours=8, minutes=55)
STEP = 60.0
RPS = 10.0
BUCKETS = ("0.1", "0.25", "0.5", "1.0", "+Inf")
NORMAL = (0.85, 1.0, 1.0, 1.0, 1.0)  # cumulative share of requests per bucket: p95 0.2 s
RUSH = (0.5, 0.8, 1.0, 1.0, 1.0)  # p95 0.44 s
RUSH_REGRESSED = (0.2, 0.4, 0.6, 1.0, 1.0)  # p95 0.94 s
SERVICES = ("steady", "regressed", "newbie")


def shares(service: str, t: float) -> tuple[float, ...]:
    moment = datetime.fromtimestamp(t, tz=UTC)
    rush = 9 <= moment.hour < 11
    if rush and service == "regressed" and moment >= DEPLOYED:
        return RUSH_REGRESSED
    return RUSH if rush else NORMAL


def sample_times(service: str) -> Iterator[float]:
    """07:00 to 11:30 of every day (only the deploy day for newbie): the hours that matter."""
    first = DEPLOY_DAY if service == "newbie" else FIRST_DAY
    day = first
    while day <= DEPLOY_DAY:
        t = (day + timedelta(hours=7)).timestamp()
        while t <= (day + timedelta(hours=11, minutes=30)).timestamp():
            yield t
            t += STEP
        day += timedelta(days=1)


def history() -> str:
    buckets: list[tuple[dict[str, str], list[Point]]] = []
    requests: list[tuple[dict[str, str], list[Point]]] = []
    builds: list[tuple[dict[str, str], list[Point]]] = []
    for service in SERVICES:
        times = list(sample_times(service))
        totals = [0.0] * len(BUCKETS)
        points: list[list[Point]] = [[] for _ in BUCKETS]
        for index, t in enumerate(times):
            if index and t - times[index - 1] == STEP:  # counters carry over the night
                for bucket, share in enumerate(shares(service, t)):
                    totals[bucket] += RPS * STEP * share
            for bucket in range(len(BUCKETS)):
                points[bucket].append((t, totals[bucket]))
        for bucket, le in enumerate(BUCKETS):
            buckets.append(({"service": service, "le": le}, points[bucket]))
        requests.append(({"service": service, "code": "200"}, points[-1]))
        versions: dict[str, list[Point]] = {}
        t = max((DEPLOY_DAY - timedelta(days=1)).timestamp(), times[0])
        while t <= times[-1]:
            versions.setdefault("v2" if t >= DEPLOYED.timestamp() else "v1", []).append((t, 1.0))
            t += STEP
        builds.extend(({"service": service, "version": v}, p) for v, p in versions.items())
    return openmetrics_document(
        openmetrics_family("http_request_duration_seconds_bucket", buckets),
        openmetrics_family("http_requests_total", requests, kind="counter"),
        openmetrics_family("app_build_info", builds),
    )


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One Prometheus over the backfilled week, shared by this module's tests."""
    with backfilled_prometheus(tmp_path_factory, "seasonal-history", history()) as prometheus:
        yield prometheus


def write_config(directory: Path, prometheus_url: str) -> Path:
    """The shipped high-priority rules, as installed."""
    (directory / "rules").mkdir(exist_ok=True)
    shutil.copy(REPO / "rules" / "high.toml", directory / "rules" / "high.toml")
    services = "".join(
        f'[[services]]\nname = "{name}"\nrepo = "/srv/{name}"\n' for name in SERVICES
    )
    config = directory / "config.toml"
    config.write_text(
        f"""
[daemon]
rules = ["rules/*.toml"]
[prometheus]
url = "{prometheus_url}"
timeout = "10s"
{services}
[deploys]
version_metric = "app_build_info"
known_good_after = "30m"
attribution_window = "2h"
"""
    )
    return config


WINDOW = ["--start", "2025-06-09T07:45:00Z", "--end", "2025-06-09T10:00:00Z", "--step", "30s"]


def test_the_morning_rush_is_not_blamed_and_a_regression_on_top_of_it_is(
    tmp_path: Path, run_cli: RunCli, prometheus: Prometheus
) -> None:
    """Only regressed (the real regression) and newbie (no history to know the rush) act."""
    config = write_config(tmp_path, prometheus.url)
    result = run_cli("backtest", "--config", str(config), *WINDOW, "--json")
    assert result.returncode == 0, result.stderr
    actions = [json.loads(line) for line in result.stdout.splitlines()]
    by_service = {a["service"]: a for a in actions}
    assert sorted(by_service) == ["newbie", "regressed"], actions
    regressed, newbie = by_service["regressed"], by_service["newbie"]
    assert regressed["rule"] == newbie["rule"] == "latency-regression"
    assert regressed["action"] == "request_approval"
    assert regressed["value"] == pytest.approx(0.94, abs=0.02)
    assert "baseline 0.4375 = pre-deploy 0.2 x 2.188, the usual rise" in regressed["reason"]
    assert "1d ago x2.188 (0.2 -> 0.4375), 7d ago x2.188" in regressed["reason"]
    assert "pre-deploy 0.2: no seasonal history" in newbie["reason"]


def test_explain_says_which_baseline_the_latency_rule_used(
    tmp_path: Path, run_cli: RunCli, prometheus: Prometheus
) -> None:
    """--explain steady shows the rush's value compared with the seasonal baseline."""
    config = write_config(tmp_path, prometheus.url)
    result = run_cli("backtest", "--config", str(config), *WINDOW, "--explain", "steady")
    assert result.returncode == 0, result.stderr
    rush = [
        line
        for line in result.stdout.splitlines()
        if "latency-regression" in line and " ok " in line and "0.4375 > 0.65625" in line
    ]
    assert "(+50% of baseline 0.4375 = pre-deploy 0.2 x 2.188" in rush[-1]
