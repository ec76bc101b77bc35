"""The shipped error-rate rule weighs its traffic: backtested on a real Prometheus over
backfilled history, low traffic is judged on evidence and a gross regression is fast.

Counters are written as prometheus_client exports them and Prometheus scrapes them: every
15 s, integer counts of real requests, a 5xx series that exists only from its first error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollbackd.core.rules import parse_rules
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
END = START + 60 * 60
SCRAPE = 15.0

ERROR_RATE = next(
    rule
    for rule in parse_rules((REPO / "rules" / "high.toml").read_text(encoding="utf-8"), "high")
    if rule.name == "error-rate"
)


def requests_every(seconds: float) -> list[float]:
    """Request times, one every ``seconds``, over the whole history."""
    count = int((END - START) / seconds)
    return [START + seconds * (index + 0.5) for index in range(count)]


def counted(times: list[float]) -> list[Point]:
    """A counter of the events at ``times`` as scraped every 15 s, from its first event on
    (prometheus_client creates a labelled series at its first use)."""
    if not times:
        return []
    first = times[0]
    points = []
    moment = START
    index = 0
    while moment <= END:
        while index < len(times) and times[index] <= moment:
            index += 1
        if moment >= first:
            points.append((moment, float(index)))
        moment += SCRAPE
    return points


def service_traffic(
    service: str, requests: list[float], fails: Callable[[int, float], bool]
) -> list[tuple[dict[str, str], list[Point]]]:
    """http_requests_total series of ``service``: request ``i`` at time ``t`` fails if
    ``fails(i, t)``."""
    bad = [t for i, t in enumerate(requests) if fails(i, t)]
    good = [t for i, t in enumerate(requests) if not fails(i, t)]
    labels = {"job": "app", "instance": f"{service}-a", "service": service}
    return [({**labels, "code": "200"}, counted(good)), ({**labels, "code": "500"}, counted(bad))]


def after_deploy(requests: list[float]) -> int:
    """The index of the first request after the deploy."""
    return next(i for i, t in enumerate(requests) if t >= DEPLOY)


SLOW = requests_every(10.0)  # six requests a minute
FAST = requests_every(0.05)  # twenty requests a second
FIRST_SLOW = after_deploy(SLOW)


def chronic(i: int) -> bool:
    """A chronic 3 % error rate: one request in 33 fails."""
    return i % 33 == 0


def history() -> str:
    """quiet: 6 req/min, 3 % failing, and three of the first five requests after the
    deploy fail; broken: 6 req/min, 3 % failing, then 30 % after the deploy; busy: 20
    req/s, 0.5 % failing, then 30 % after the deploy. Each deploys v2 over v1 at DEPLOY."""
    cluster = {FIRST_SLOW, FIRST_SLOW + 2, FIRST_SLOW + 3}
    requests = [
        *service_traffic("quiet", SLOW, lambda i, _: chronic(i) or i in cluster),
        *service_traffic(
            "broken", SLOW, lambda i, t: i % 10 in (1, 4, 7) if t >= DEPLOY else chronic(i)
        ),
        *service_traffic(
            "busy", FAST, lambda i, t: i % 10 in (1, 4, 7) if t >= DEPLOY else i % 200 == 0
        ),
    ]
    versions = []
    for service in ("quiet", "broken", "busy"):
        labels = {"job": "app", "instance": f"{service}-a", "service": service}
        versions.append(({**labels, "version": "v1"}, gauge_points(START, DEPLOY - 1, SCRAPE, 1)))
        versions.append(({**labels, "version": "v2"}, gauge_points(DEPLOY, END, SCRAPE, 1)))
    return openmetrics_document(
        openmetrics_family("http_requests_total", requests, kind="counter"),
        openmetrics_family("app_build_info", versions),
    )


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One Prometheus over the backfilled history, shared by this module's tests."""
    with backfilled_prometheus(tmp_path_factory, "evidence-history", history()) as prometheus:
        yield prometheus


def write_config(directory: Path, prometheus: Prometheus) -> Path:
    """The shipped error-rate rule, verbatim, and the three services."""
    rule = ERROR_RATE
    (directory / "rules").mkdir(exist_ok=True)
    (directory / "rules" / "high.toml").write_text(
        f"""
[[rules]]
name = "{rule.name}"
trigger = "{rule.trigger.value}"
query = '{rule.query}'
events = '{rule.events}'
volume = '{rule.volume}'
condition = "{rule.condition.text}"
confidence = {rule.confidence}
min_volume = {rule.min_volume}
""",
        encoding="utf-8",
    )
    services = "".join(
        f'[[services]]\nname = "{name}"\nrepo = "/srv/{name}"\n'
        for name in ("quiet", "broken", "busy")
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
attribution_window = "10m"
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
    config = write_config(tmp_path_factory.mktemp("evidence-config"), backfilled)
    return actions_by_service(backtest(config, "--json"))


def after_the_deploy(action: dict[str, Any]) -> timedelta:
    return datetime.fromisoformat(action["time"]) - datetime.fromtimestamp(DEPLOY, UTC)


def test_low_traffic_with_a_chronic_error_rate_is_not_rolled_back_for_a_cluster(
    decisions: dict[str, list[dict[str, Any]]],
) -> None:
    """Six requests a minute, 3 % failing, three errors in the first five after the deploy:
    the ratio over a minute is far above 5 %, but nothing is decided in half an hour."""
    assert decisions.get("quiet", []) == []


def test_low_traffic_failing_30_percent_is_rolled_back_within_minutes(
    decisions: dict[str, list[dict[str, Any]]],
) -> None:
    """The same six requests a minute, 30 % failing after the deploy: decided to roll back
    to v1 within ten minutes, naming the evidence."""
    actions = decisions.get("broken", [])
    assert len(actions) == 1, actions
    action = actions[0]
    assert action["rule"] == "error-rate"
    assert action["target"] == "v1"
    assert action["action"] in ("rollback", "request_approval")
    assert timedelta(0) < after_the_deploy(action) <= timedelta(minutes=10), action["time"]
    assert "evidence:" in action["reason"] and "confidence 0.99" in action["reason"]


def test_a_gross_regression_at_20_requests_a_second_is_decided_within_30_seconds(
    decisions: dict[str, list[dict[str, Any]]],
) -> None:
    """30 % of 20 req/s failing after the deploy: decided within 30 s of it (the ratio
    rule with `for = "2m"` took more than two minutes)."""
    actions = decisions.get("busy", [])
    assert len(actions) == 1, actions
    assert actions[0]["target"] == "v1"
    assert timedelta(0) < after_the_deploy(actions[0]) <= timedelta(seconds=30), actions[0]


def test_explain_shows_the_volume_and_the_bound(backfilled: Prometheus, tmp_path: Path) -> None:
    """`backtest --explain quiet` says, for error-rate, the events, the volume, the bound
    and the confidence behind its value."""
    lines = backtest(write_config(tmp_path, backfilled), "--explain", "quiet")
    weighed = [line for line in lines if "error-rate" in line and "events in a volume of" in line]
    assert weighed, "\n".join(lines[:40])
    assert any("lower bound" in line and "confidence 0.99" in line for line in weighed)
    assert any("evidence is not enough yet" in line for line in weighed), "\n".join(weighed)
