"""Backtest throughput: ``Replay.run`` over days of history in a real Prometheus.

7 days at a 30 s step, 100 services, 5 rules (quick: 1 day, 20 services).
The history is synthetic and scraped every 30 s: every service deploys a new
version once a day (the version metric ``app_build_info`` says so), one deploy
in ten is bad for 40 minutes (20% errors, p95 latency doubled), and one
service in fifty loses data once. It is written as OpenMetrics, backfilled
with promtool, and served by a real Prometheus.

Measured: the wall time of ``Replay.run`` over the whole range (fetching the
rules' range queries window by window, 1,000 steps at a time, the next window
while the engine steps through the current one), evaluated points per second
(steps x services x rules / wall time), and the ratio to Prometheus alone
answering the same queries: every query the replay made (recorded by a
counting wrapper of the source) is sent again with a plain HTTP client, chunked
the same way, and timed until the body has arrived. The replay is bounded by a
time budget; past it, the figure is projected from the steps done (and says so).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from tests.support.processes import Prometheus

from bench.common import OpenMetricsWriter, Report, arguments, promtool_backfill, workdir
from bench.cycle import CountingSource

STEP = 30.0
DAY = 86400.0
FAULT_AFTER = 300.0
FAULT_FOR = 2400.0
TARGET_SECONDS = 60.0
TARGET_RATIO = 1.3

RULES = """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = 'sum by (service) (rate(http_requests_total{code=~"5.."}[2m])) / sum by (service) (rate(http_requests_total[2m]))'
condition = "> 0.05"
for = "2m"

[[rules]]
name = "traffic-gone"
trigger = "outage"
query = 'sum by (service) (rate(http_requests_total[2m]))'
condition = "< 0.1"
for = "2m"

[[rules]]
name = "latency-regression"
trigger = "performance_degradation"
query = 'max by (service) (app_request_latency_p95_seconds)'
condition = "> +50%"
baseline = "before_deploy"
baseline_window = "30m"
min_change = 0.05
for = "5m"

[[rules]]
name = "auth-failures"
trigger = "auth_failure"
query = 'sum by (service) (rate(app_auth_attempts_total{result="failure"}[2m])) / sum by (service) (rate(app_auth_attempts_total[2m]))'
condition = "> 0.5"
for = "2m"

[[rules]]
name = "data-loss"
trigger = "data_loss"
query = 'sum by (service) (increase(app_data_loss_events_total[5m]))'
condition = "> 0"
for = "0s"
"""  # noqa: E501 -- rule files as users write them
RULE_COUNT = RULES.count("[[rules]]")


def service_name(index: int) -> str:
    return f"svc{index:03d}"


def deploy_times(index: int, start: float, end: float) -> list[float]:
    """One deploy a day per service, at its own time of day (whole steps)."""
    offset = (index * 877 * STEP) % DAY
    first = start - DAY + offset
    return [first + k * DAY for k in range(int((end - first) // DAY) + 1)]


def write_history(
    directory: Path, services: int, start: float, end: float
) -> tuple[list[Path], int, int]:
    """Every series from start - 25h (the replay looks 24h back for deploys) to end."""
    begin = start - DAY - 3600
    times = [begin + i * STEP for i in range(int((end - begin) // STEP) + 1)]
    recent = [t for t in times if t >= start - 3600]
    writer = OpenMetricsWriter(directory)
    faults: dict[int, list[tuple[float, float]]] = {}
    deploys: dict[int, list[float]] = {}
    for index in range(services):
        deploys[index] = deploy_times(index, start, end)
        faults[index] = [
            (moment + FAULT_AFTER, moment + FAULT_AFTER + FAULT_FOR)
            for day, moment in enumerate(deploys[index])
            if (index + day) % 10 == 0
        ]

    def faulty(index: int, moment: float) -> bool:
        return any(a <= moment < b for a, b in faults[index])

    writer.family("http_requests_total", "counter")
    for index in range(services):
        rps = 5.0 + index % 7
        ok, bad, total_ok, total_bad = [], [], 0.0, 0.0
        for position, moment in enumerate(recent):
            if position:
                errors = 0.2 * rps if faulty(index, moment) else 0.0
                total_ok += (rps - errors) * STEP
                total_bad += errors * STEP
            ok.append(total_ok)
            bad.append(total_bad)
        name = service_name(index)
        writer.series_points("http_requests_total", {"service": name, "code": "200"}, recent, ok)
        writer.series_points("http_requests_total", {"service": name, "code": "500"}, recent, bad)
    writer.family("app_request_latency_p95_seconds", "gauge")
    for index in range(services):
        base = 0.1 + 0.01 * (index % 5)
        values = [2 * base if faulty(index, t) else base for t in recent]
        writer.series_points(
            "app_request_latency_p95_seconds", {"service": service_name(index)}, recent, values
        )
    writer.family("app_auth_attempts_total", "counter")
    for index in range(services):
        for result, rate in (("success", 1.0), ("failure", 0.05)):
            values = [rate * STEP * i for i in range(len(recent))]
            writer.series_points(
                "app_auth_attempts_total",
                {"service": service_name(index), "result": result},
                recent,
                values,
            )
    writer.family("app_data_loss_events_total", "counter")
    for index in range(services):
        loss_at = start + (index % 7) * DAY / 2 if index % 50 == 7 else None
        values = [1.0 if loss_at is not None and t >= loss_at else 0.0 for t in recent]
        writer.series_points(
            "app_data_loss_events_total", {"service": service_name(index)}, recent, values
        )
    writer.family("app_build_info", "gauge")
    for index in range(services):
        moments = deploys[index]
        for number, moment in enumerate(moments):
            until = moments[number + 1] if number + 1 < len(moments) else end + STEP
            present = [t for t in times if moment <= t < until]
            if present:
                labels = {"service": service_name(index), "version": f"v{number + 1}"}
                writer.series_points("app_build_info", labels, present, [1.0] * len(present))
    files = writer.close()
    return files, writer.series, writer.samples


def config_text(services: int, prometheus_url: str) -> str:
    tables = "".join(
        f'[[services]]\nname = "{service_name(i)}"\nexecutor = "command"\ncommand = ["true"]\n'
        for i in range(services)
    )
    return f"""
[daemon]
rules = ["rules/*.toml"]

[prometheus]
url = "{prometheus_url}"
timeout = "120s"

[deploys]
version_metric = "app_build_info"
known_good_after = "30m"
attribution_window = "2h"

{tables}
"""


def prometheus_alone(url: str, calls: list[tuple[str, str, Any]]) -> tuple[float, float, int]:
    """The replay's queries again, with a plain client: (seconds to the body, + JSON, requests)."""
    from rollbackd.sources.prometheus import chunks  # noqa: PLC0415 -- the same chunking

    requests: list[tuple[str, dict[str, str]]] = []
    for kind, query, extent in calls:
        if kind == "instant":
            requests.append(("query", {"query": query, "time": str(extent.timestamp())}))
            continue
        start, end, step = extent
        for chunk_start, chunk_end in chunks(start, end, step):
            requests.append(
                (
                    "query_range",
                    {
                        "query": query,
                        "start": str(round(chunk_start.timestamp())),
                        "end": str(round(chunk_end.timestamp())),
                        "step": f"{step.total_seconds():g}s",
                    },
                )
            )
    fetch = decode = 0.0
    with httpx.Client(timeout=300.0) as client:
        for endpoint, params in requests:
            began = time.perf_counter()
            response = client.get(f"{url}/api/v1/{endpoint}", params=params)
            body = response.content
            fetch += time.perf_counter() - began
            began = time.perf_counter()
            json.loads(body)
            decode += time.perf_counter() - began
            response.raise_for_status()
    return fetch, fetch + decode, len(requests)


class RecordingSource(CountingSource):
    """A counting source that also keeps each call's time extent, to replay it alone."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.extents: list[tuple[str, str, Any]] = []

    def instant(self, query: str, at: datetime) -> Any:
        self.extents.append(("instant", query, at))
        return super().instant(query, at)

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> Any:
        self.extents.append(("range", query, (start, end, step)))
        return super().range(query, start, end, step)

    def labels_over_time(
        self, query: str, label: str, start: datetime, end: datetime, step: timedelta
    ) -> Any:
        self.extents.append(("range", query, (start, end, step)))
        return super().labels_over_time(query, label, start, end, step)


def predicted_extents(config_path: Path, start: float, end: float) -> list[tuple[str, str, Any]]:
    """The range queries a replay will make (rules and the version metric), to warm Prometheus."""
    from rollbackd.loader import load  # noqa: PLC0415
    from rollbackd.replay import DEPLOY_LOOKBACK, align  # noqa: PLC0415
    from rollbackd.sources.gather import version_query  # noqa: PLC0415

    loaded = load(config_path)
    step = timedelta(seconds=STEP)
    begin = align(datetime.fromtimestamp(start, UTC), step)
    finish = align(datetime.fromtimestamp(end, UTC), step)
    extents: list[tuple[str, str, Any]] = [
        ("range", rule.query, (begin, finish, step)) for rule in loaded.rules if rule.query
    ]
    versions = version_query(loaded.config)
    if versions is not None:
        extents.append(("range", versions, (begin - DEPLOY_LOOKBACK, finish, step)))
    return extents


def replay(
    config_path: Path, start: float, end: float, budget: float, profile: Path | None = None
) -> dict[str, Any]:
    """``Replay.run`` over [start, end], bounded by ``budget`` seconds of stepping."""
    from rollbackd.loader import load  # noqa: PLC0415 -- measured code
    from rollbackd.replay import Replay, align, step_times  # noqa: PLC0415
    from rollbackd.sources.prometheus import PrometheusSource  # noqa: PLC0415

    loaded = load(config_path)
    config = loaded.config
    source = RecordingSource(
        PrometheusSource(config.prometheus.url, config.prometheus.timeout, "service")
    )
    step = timedelta(seconds=STEP)
    engine_replay = Replay(config, loaded.rules, source, step)
    begin = datetime.fromtimestamp(start, UTC)
    finish = datetime.fromtimestamp(end, UTC)
    total_steps = len(step_times(align(begin, step), align(finish, step), step))
    steps = decisions = 0
    actions: dict[str, int] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    first: float | None = None
    deadline = time.monotonic() + budget
    complete = True
    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    for report in engine_replay.run(begin, finish):
        if first is None:
            first = time.perf_counter() - wall
        steps += 1
        for decision in report.decisions:
            decisions += 1
            actions[decision.action.value] = actions.get(decision.action.value, 0) + 1
        if time.monotonic() > deadline and steps < total_steps:
            complete = False
            break
    elapsed, used = time.perf_counter() - wall, time.process_time() - cpu
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    return {
        "wall": elapsed,
        "cpu": used,
        "fetch_wall": first or 0.0,
        "steps": steps,
        "total_steps": total_steps,
        "complete": complete,
        "decisions": decisions,
        "actions": actions,
        "services": len(config.services),
        "rules": len(loaded.rules),
        "calls": len(source.calls),
        "calls_wall": sum(c.wall for c in source.calls),
        "calls_cpu": sum(c.cpu for c in source.calls),
        "extents": source.extents,
    }


def main() -> None:  # noqa: PLR0915 -- one benchmark reads as one story
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--days", type=float, help="history length (default 7, quick 1)")
        parser.add_argument("--services", type=int, help="services (default 100, quick 20)")
        parser.add_argument("--budget", type=float, help="seconds of replay before projecting")
        parser.add_argument("--profile", type=Path, help="write a cProfile dump of the replay")

    args = arguments(__doc__.splitlines()[0] if __doc__ else "backtest", extra)
    quick: bool = args.quick
    days: float = args.days or (1.0 if quick else 7.0)
    services: int = args.services or (20 if quick else 100)
    budget: float = args.budget or (60.0 if quick else 240.0)
    report = Report("backtest", quick)
    report.title(f"{days:g} days at {STEP:g}s, {services} services, {RULE_COUNT} rules")
    end = (time.time() // 7200) * 7200 - 7200
    start = end - days * DAY
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(workdir("backtest", args.keep))
        began = time.monotonic()
        files, series, samples = write_history(root / "history", services, start, end)
        generated = time.monotonic() - began
        backfill = promtool_backfill(files, root / "data", timeout=1200)
        report.say(
            f"  {series} series, {samples} samples: generated in {generated:.1f}s,"
            f" promtool {backfill:.1f}s ({len(files)} files, one per 2h block)"
        )
        prometheus = stack.enter_context(Prometheus(root / "prometheus", storage_dir=root / "data"))
        (root / "rules").mkdir()
        (root / "rules" / "rules.toml").write_text(RULES)
        config = root / "config.toml"
        config.write_text(config_text(services, prometheus.url))
        cold, _, _ = prometheus_alone(prometheus.url, predicted_extents(config, start, end))
        result = replay(config, start, end, budget, args.profile)
        alone_fetch, alone_decoded, alone_requests = prometheus_alone(
            prometheus.url, result.pop("extents")
        )
    fraction = result["steps"] / max(result["total_steps"], 1)
    stepping = result["wall"] - result["fetch_wall"]
    projected = result["fetch_wall"] + (stepping / fraction if fraction else 0.0)
    wall = result["wall"] if result["complete"] else projected
    how = (
        "measured"
        if result["complete"]
        else f"projected from {result['steps']} of {result['total_steps']} steps"
    )
    points = result["total_steps"] * services * RULE_COUNT
    report.fact("series", series)
    report.fact("samples", samples)
    report.fact("generate_seconds", generated)
    report.fact("backfill_seconds", backfill)
    report.fact("replay", result)
    report.fact("prometheus_alone_requests", alone_requests)
    report.figure(
        "Replay.run wall time",
        wall,
        "s",
        TARGET_SECONDS,
        note=f"{how}; {result['total_steps']} steps",
    )
    report.figure(
        "  until the first step",
        result["fetch_wall"],
        "s",
        note=f"deploys and the first window fetched; {result['calls']} source calls in all",
    )
    decided = f"{result['decisions']} decisions {json.dumps(result['actions'])}"
    report.figure(
        "  after the first step",
        wall - result["fetch_wall"],
        "s",
        note=f"stepping, the next two windows fetched meanwhile; {decided}",
    )
    report.figure(
        "peak RSS of the benchmark process",
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "MiB",
        note="ru_maxrss; the replay holds three windows of 1,000 steps at a time",
    )
    report.figure(
        "evaluated points/s",
        points / wall if wall else None,
        "/s",
        note="steps x services x rules / wall",
    )
    report.figure(
        "Prometheus alone: the same queries",
        alone_fetch,
        "s",
        note=f"{alone_requests} requests, until the body arrived; after the replay",
    )
    report.figure(
        "Prometheus alone, cold (warm-up before the replay)",
        cold,
        "s",
        note="the rules' and the version metric's range queries",
    )
    report.figure("Prometheus alone + JSON decoding", alone_decoded, "s")
    report.figure(
        "Replay.run / Prometheus alone",
        wall / alone_fetch if alone_fetch else None,
        "x",
        TARGET_RATIO,
    )
    report.figure(
        "Replay's source calls / Prometheus alone",
        result["calls_wall"] / alone_fetch if alone_fetch else None,
        "x",
        note="wall time inside the replay's queries (HTTP + JSON + parsing), overlapped",
    )
    report.write()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
