"""rollbackd against VictoriaMetrics decides as against Prometheus, with the shipped rules.

One history goes into a Prometheus (backfilled with promtool) and into a
VictoriaMetrics (imported): ``backtest``, ``evaluate`` and a running daemon give
the same decisions against both. VictoriaMetrics scrapes nothing here, so ``up``
is part of the imported history, as the other series are.

The history (2026-10-02, and the same hours of the day before for the seasonal
baseline): web deploys v2 at 02:00 and from 02:05 one request in five fails until
v1 is back at 02:40; a data-loss counter is born on web at 02:25. api deploys v2
at 02:00 and its p95 latency doubles on top of the rush it has every day from
02:10 to 02:40. db's targets are down from 02:10 and gone from 02:20. shop runs a
v2 canary beside v1 from 02:00, and three of its requests in ten fail. Samples
are taken 7 s into every 30 s, off the grid rollbackd evaluates on, as scrapes are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollbackd.core.model import Decision
from rollbackd.evaluation import evaluate_now
from rollbackd.loader import load
from rollbackd.testing import FixedClock
from tests.conftest import RunCli
from tests.reliability.support import close_daemon, in_process_daemon
from tests.support.fixtures import backfilled_prometheus, imported_victoriametrics
from tests.support.processes import (
    REPO,
    Point,
    Prometheus,
    VictoriaMetrics,
    counter_points,
    gauge_points,
    openmetrics_document,
    openmetrics_family,
)

pytestmark = pytest.mark.integration

DAY = datetime(2026, 10, 2, tzinfo=UTC)
STEP = 30.0
SCRAPED = 7.0
"""Seconds after each 30 s step that samples are taken: off the evaluation grid."""
RPS = 10.0
BUCKETS = ("0.1", "0.25", "0.5", "1.0", "+Inf")
NORMAL = (0.85, 1.0, 1.0, 1.0, 1.0)  # cumulative share of requests per bucket: p95 0.2 s
RUSH = (0.5, 0.8, 1.0, 1.0, 1.0)  # p95 0.44 s
RUSH_REGRESSED = (0.2, 0.4, 0.6, 1.0, 1.0)  # p95 0.94 s
RULE_FILES = ("critical.toml", "high.toml", "medium.toml")

Series = list[tuple[dict[str, str], list[Point]]]


def at(hours: float, minutes: float = 0, day: int = 0) -> datetime:
    return DAY + timedelta(days=day, hours=hours, minutes=minutes)


def ts(hours: float, minutes: float = 0, day: int = 0) -> float:
    return at(hours, minutes, day).timestamp()


def latency_buckets() -> Series:
    """api's request durations: 01:00 to 03:00 the day before (every minute), all of today."""
    times = [ts(1, day=-1) + SCRAPED + i * 60 for i in range(121)]
    times += [ts(0) + SCRAPED + i * STEP for i in range(int(4 * 3600 / STEP) + 1)]
    totals = [0.0] * len(BUCKETS)
    points: list[list[Point]] = [[] for _ in BUCKETS]
    rush = (timedelta(hours=2, minutes=10), timedelta(hours=2, minutes=40))
    for index, t in enumerate(times):
        if index:
            shares = NORMAL
            if rush[0].total_seconds() <= t % 86400 < rush[1].total_seconds():
                shares = RUSH_REGRESSED if t >= ts(2) else RUSH  # today, v2 is slower
            elapsed = min(t - times[index - 1], 60.0)  # the counters carry over the night
            for bucket, share in enumerate(shares):
                totals[bucket] += RPS * elapsed * share
        for bucket in range(len(BUCKETS)):
            points[bucket].append((t, totals[bucket]))
    return [({"service": "api", "le": le}, points[i]) for i, le in enumerate(BUCKETS)]


def canary_split(start: float, end: float) -> tuple[Series, Series]:
    """shop: v1 on instances a and b throughout; from 02:00 a canary instance runs v2, and
    three of its requests in ten fail. Its 500 series is born at its first failure, as
    prometheus_client creates it: (requests, versions)."""
    requests: Series = []
    builds: Series = []
    for instance, version, born, failing in (
        ("a", "v1", start, 0.0),
        ("b", "v1", start, 0.0),
        ("canary", "v2", ts(2) + SCRAPED, 0.3),
    ):
        labels = {"service": "shop", "instance": instance}
        ok = counter_points(born, end, STEP, RPS * (1 - failing))
        requests.append(({**labels, "code": "200"}, ok))
        if failing:
            failed = counter_points(
                born + STEP, end, STEP, RPS * failing, initial=RPS * failing * STEP
            )
            requests.append(({**labels, "code": "500"}, failed))
        builds.append(({**labels, "version": version}, gauge_points(born, end, STEP, 1.0)))
    return requests, builds


def history() -> str:
    """The whole history as OpenMetrics text, for promtool and for VictoriaMetrics' import."""
    start, end = ts(0) + SCRAPED, ts(4) + SCRAPED
    fault = (ts(2, 5), ts(2, 40))

    def failing(service: str, t: float) -> float:
        return 0.2 if service == "web" and fault[0] <= t < fault[1] else 0.0

    versions = {
        "web": [
            (start, ts(2), "v1"),
            (ts(2) + SCRAPED, ts(2, 40), "v2"),
            (ts(2, 40) + SCRAPED, end + STEP, "v1"),
        ],
        "api": [(start, ts(2), "v1"), (ts(2) + SCRAPED, end + STEP, "v2")],
        "db": [(start, end + STEP, "d1")],
    }
    requests: Series = []
    builds: Series = []
    up: Series = []
    for service, spans in versions.items():
        for code, rate in (
            ("200", lambda t, s=service: RPS * (1 - failing(s, t))),
            ("500", lambda t, s=service: RPS * failing(s, t)),
        ):
            requests.append(
                ({"service": service, "code": code}, counter_points(start, end, STEP, rate))
            )
        for begin, finish, version in spans:
            builds.append(
                (
                    {"service": service, "version": version},
                    gauge_points(begin, finish - STEP, STEP, 1.0),
                )
            )
        target = {"job": service, "service": service, "instance": f"{service}:8080"}
        if service == "db":  # down from 02:10, gone from 02:20
            up.append(
                (target, gauge_points(start, ts(2, 20), STEP, lambda t: float(t < ts(2, 10))))
            )
        else:
            up.append((target, gauge_points(start, end, STEP, 1.0)))
    shop_requests, shop_builds = canary_split(start, end)
    requests += shop_requests
    builds += shop_builds
    lost = [({"service": "web", "job": "web"}, gauge_points(ts(2, 25) + SCRAPED, end, STEP, 1.0))]
    return openmetrics_document(
        openmetrics_family("http_requests_total", requests, kind="counter"),
        openmetrics_family("http_request_duration_seconds_bucket", latency_buckets()),
        openmetrics_family("app_data_loss_events_total", lost, kind="counter"),
        openmetrics_family("app_build_info", builds),
        openmetrics_family("up", up),
    )


@dataclass(frozen=True)
class Engines:
    """The two servers over the same history."""

    prometheus: Prometheus
    victoriametrics: VictoriaMetrics

    def each(self) -> list[tuple[str, str]]:
        """(name, url) of each, Prometheus first."""
        return [("prometheus", self.prometheus.url), ("victoriametrics", self.victoriametrics.url)]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """One Prometheus and one VictoriaMetrics over the history, shared by the module."""
    text = history()
    with (
        backfilled_prometheus(tmp_path_factory, "prometheus", text) as prometheus,
        imported_victoriametrics(tmp_path_factory, "victoriametrics", text) as victoriametrics,
    ):
        yield Engines(prometheus, victoriametrics)


def rules_text() -> str:
    """Every shipped rule, verbatim."""
    return "\n".join((REPO / "rules" / name).read_text() for name in RULE_FILES)


def config_text(directory: Path, url: str) -> str:
    """The four services on ``url``, deploys from the version metric."""
    services = "".join(
        f'[[services]]\nname = "{name}"\nexecutor = "command"\ncommand = ["true"]\n'
        for name in ("web", "api", "db", "shop")
    )
    return f"""
[daemon]
rules = ["rules/*.toml"]
state_dir = "{directory / "state"}"
dry_run = true
[prometheus]
url = "{url}"
timeout = "10s"
{services}
[deploys]
version_metric = "app_build_info"
known_good_after = "30m"
attribution_window = "2h"
"""


def write_config(directory: Path, url: str) -> Path:
    """The config file and the shipped rules in ``directory``."""
    (directory / "rules").mkdir(parents=True, exist_ok=True)
    (directory / "rules" / "rules.toml").write_text(rules_text())
    path = directory / "config.toml"
    path.write_text(config_text(directory, url))
    return path


Decided = tuple[str, str, str, str, str, str | None, str]
"""What was decided: (time, service, action, scope, severity, target, leading rule)."""


def decided(action: dict[str, Any] | Decision) -> Decided:
    """A decision without its values and reasons: rates and evidence counts differ between
    the engines (Prometheus extrapolates increase() to the window's edges, VictoriaMetrics
    counts from the sample before the window), what is decided does not. Of the rules,
    the one leading the decision: whether another fires in the same look (the whole
    service's error rate beside the canary's) can differ with that arithmetic."""
    if isinstance(action, Decision):
        return (
            action.time.strftime("%H:%M:%S"),
            action.service,
            action.action.value,
            action.scope,
            action.severity.value,
            action.target,
            action.rules[0],
        )
    return (
        action["time"][11:19],
        action["service"],
        action["action"],
        action["scope"],
        action["severity"],
        action["target"],
        action["rules"][0],
    )


def test_backtest_finds_the_same_actions_in_both(
    tmp_path: Path, run_cli: RunCli, engines: Engines
) -> None:
    """The same actions at the same times: the canary, the error rate, the outage, the
    latency regression on top of the daily rush, and the data loss."""
    window = ["--start", "2026-10-02T01:00:00Z", "--end", "2026-10-02T03:00:00Z", "--json"]
    actions = {}
    for name, url in engines.each():
        config = write_config(tmp_path / name, url)
        result = run_cli("backtest", "--config", str(config), *window)
        assert result.returncode == 0, result.stderr
        actions[name] = [decided(json.loads(line)) for line in result.stdout.splitlines()]
    assert actions["prometheus"] == [
        ("02:01:30", "shop", "request_approval", "canary", "high", "v1", "canary:error-rate"),
        ("02:07:30", "web", "request_approval", "all", "high", "v1", "error-rate"),
        ("02:11:30", "db", "escalate", "all", "critical", None, "outage-targets-down"),
        ("02:18:00", "api", "request_approval", "all", "high", "v1", "latency-regression"),
        ("02:25:30", "web", "rollback", "all", "critical", "v1", "data-loss"),
    ]
    assert actions["victoriametrics"] == actions["prometheus"]


def decisions_of_a_running_daemon(root: Path, url: str) -> list[Decided]:
    """A daemon (in process, on a clock, dry run) warmed up from history at 02:00, then its
    cycles every 30 s to 02:18."""
    clock = FixedClock(at(2))
    daemon = in_process_daemon(root, config_text(root, url), rules_text(), clock)
    decisions: list[Decided] = []
    try:
        daemon.loop.warm_up(clock.now)
        while clock.now < at(2, 18):
            clock.advance(timedelta(seconds=30))
            report = daemon.loop.cycle()
            assert report is not None, daemon.loop.last_cycle_error
            assert not report.source_errors, report.source_errors
            decisions.extend(decided(d) for d in report.decisions)
    finally:
        close_daemon(daemon)
    return decisions


def test_evaluate_and_a_running_daemon_decide_the_same_on_both(
    tmp_path: Path, engines: Engines
) -> None:
    """evaluate at 02:28:03 (between two samples) and a daemon's cycles from 02:00 decide
    alike (dry run: decisions are recorded)."""
    evaluated = {}
    ran = {}
    for name, url in engines.each():
        loaded = load(write_config(tmp_path / name / "evaluate", url), env={})
        result = evaluate_now(loaded.config, loaded.rules, at(2, 28.05))
        assert not result.report.source_errors, result.report.source_errors
        evaluated[name] = [decided(d) for d in result.decisions]
        ran[name] = decisions_of_a_running_daemon(tmp_path / name / "run", url)
    assert evaluated["prometheus"] == [
        ("02:17:45", "api", "record", "all", "high", None, "latency-regression"),
        ("02:11:15", "db", "escalate", "all", "critical", None, "outage-targets-down"),
        ("02:01:15", "shop", "record", "canary", "high", None, "canary:error-rate"),
        ("02:25:15", "web", "record", "all", "critical", None, "data-loss"),
    ]
    assert evaluated["victoriametrics"] == evaluated["prometheus"]
    assert ran["prometheus"] == [
        ("02:01:30", "shop", "record", "canary", "high", None, "canary:error-rate"),
        ("02:07:30", "web", "record", "all", "high", None, "error-rate"),
        ("02:11:30", "db", "escalate", "all", "critical", None, "outage-targets-down"),
        ("02:18:00", "api", "record", "all", "high", None, "latency-regression"),
    ]
    assert ran["victoriametrics"] == ran["prometheus"]


def test_a_cycle_now_sees_the_version_running_now(tmp_path: Path, engines: Engines) -> None:
    """VictoriaMetrics answers no range query within its last 30 s: the daemon still sees the
    version a service runs now (else no deploy would ever be found live)."""
    now = datetime.now(UTC).replace(microsecond=0)
    running = [
        (
            {"service": "web", "version": "v7"},
            gauge_points(now.timestamp() - 300, now.timestamp(), 15.0, 1.0),
        )
    ]
    engines.victoriametrics.import_history(
        openmetrics_document(openmetrics_family("app_build_info", running))
    )
    daemon = in_process_daemon(
        tmp_path, config_text(tmp_path, engines.victoriametrics.url), rules_text(), FixedClock(now)
    )
    try:
        report = daemon.loop.cycle()
        assert report is not None, daemon.loop.last_cycle_error
        assert daemon.state.engine.history.serving("web") == {"v7"}
    finally:
        close_daemon(daemon)
