"""Evaluation cycle at scale: 10 rules over 10, 100, 1,000 and 10,000 services.

For each size, synthetic series (13 per service: requests by code, a latency
histogram, auth attempts, data-loss events, a feature check and the version
metric) are written as OpenMetrics, backfilled with promtool into a fresh TSDB,
and served by a real Prometheus. A fresh child process per size (so that sizes
do not share a heap: its ``ru_maxrss`` is the peak RSS of that size alone)
loads a config with that many services and 10 rules modelled on the default
rule set, and runs ``LiveCycle.gather`` + ``Engine.step`` for N cycles at
instants inside the backfilled range, one poll interval apart.

Per cycle it separates rollbackd's own CPU (``time.process_time`` around the
cycle: parsing the answers, evaluating rules, deciding; waiting costs no CPU)
from Prometheus' time (wall time of the source calls minus the CPU spent in
them, i.e. the time spent waiting for Prometheus; and Prometheus' own CPU from
``/proc/<pid>/stat``). A counting wrapper around the source checks that each
rule costs one query per cycle whatever the number of services. 1% of the
services have a 20% error rate and 1% lose data, so some rules are pending or
firing and the engine decides something.

Next to it, the reading floor: what fetching the cycle's answers and decoding them
into bare (service, value) pairs costs with nothing else done, once in the fresh
process and once after its cycles (whose heap makes the same decoding slower). It
says how much of a cycle any Python reader of Prometheus' JSON must spend.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import pstats
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.processes import Prometheus

from bench.common import (
    OpenMetricsWriter,
    Report,
    arguments,
    counter_series,
    cpu_seconds,
    median,
    promtool_backfill,
    run_json,
    workdir,
)

SCRAPE = 15.0
POLL = timedelta(seconds=15)
HISTORY_BEFORE = 420.0
BUCKETS = ("0.05", "0.1", "0.25", "0.5", "1", "+Inf")
BUCKET_SHARE = (0.50, 0.80, 0.95, 0.99, 1.0, 1.0)
TARGET_OWN_MS = 100.0
TARGET_OWN_SHARE = 0.10
"""Own CPU per cycle at most this share of the CPU Prometheus spends answering the cycle."""
TARGET_RSS_MIB = 150.0

RULES = """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = 'sum by (service) (rate(http_requests_total{code=~"5.."}[2m])) / sum by (service) (rate(http_requests_total[2m]))'
condition = "> 0.05"
for = "2m"

[[rules]]
name = "outage-no-traffic-served"
trigger = "outage"
query = 'sum by (service) (rate(http_requests_total{code!~"5.."}[2m])) / sum by (service) (rate(http_requests_total[2m]))'
condition = "< 0.05"
for = "2m"

[[rules]]
name = "traffic-gone"
trigger = "outage"
query = 'sum by (service) (rate(http_requests_total[2m]))'
condition = "< 0.1"
for = "2m"

[[rules]]
name = "error-burst"
trigger = "high_error_rate"
query = 'sum by (service) (increase(http_requests_total{code=~"5.."}[2m]))'
condition = "> 1000"
for = "1m"

[[rules]]
name = "latency-regression"
trigger = "performance_degradation"
query = 'histogram_quantile(0.95, sum by (service, le) (rate(http_request_duration_seconds_bucket[2m])))'
condition = "> +50%"
baseline = "before_deploy"
baseline_window = "5m"
min_change = 0.05
for = "5m"

[[rules]]
name = "noticeable-slowdown"
trigger = "noticeable_slowdown"
query = 'histogram_quantile(0.5, sum by (service, le) (rate(http_request_duration_seconds_bucket[2m])))'
condition = "> +20%"
baseline = "before_deploy"
baseline_window = "5m"
min_change = 0.02
for = "10m"

[[rules]]
name = "latency-p99-absolute"
trigger = "performance_degradation"
query = 'histogram_quantile(0.99, sum by (service, le) (rate(http_request_duration_seconds_bucket[2m])))'
condition = "> 2"
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
query = 'sum by (service) (increase(app_data_loss_events_total[2m]))'
condition = "> 0"
for = "0s"

[[rules]]
name = "major-feature-broken"
trigger = "major_feature_broken"
query = 'max by (service) (app_feature_check_failed{tier="major"})'
condition = "> 0"
for = "2m"
"""  # noqa: E501 -- rule files as users write them, one line per key
RULE_COUNT = RULES.count("[[rules]]")


def service_name(index: int) -> str:
    return f"svc{index:05d}"


def erroring(index: int) -> bool:
    return index % 100 == 3


def losing_data(index: int) -> bool:
    return index % 100 == 5


def constant(rate: float) -> Callable[[float], float]:
    """A counter's rate that does not change with time."""
    return lambda _moment: rate


def write_history(
    directory: Path, services: int, start: float, end: float
) -> tuple[list[Path], int, int]:
    """The synthetic series of ``services`` services over [start, end]; (series, samples)."""
    count = int((end - start) // SCRAPE) + 1
    writer = OpenMetricsWriter(directory)
    writer.family("http_requests_total", "counter")
    for index in range(services):
        name = service_name(index)
        rps = 5.0 + index % 7
        errors = 0.2 * rps if erroring(index) else 0.0
        times, ok = counter_series(start, count, SCRAPE, constant(rps - errors))
        writer.series_points("http_requests_total", {"service": name, "code": "200"}, times, ok)
        _, bad = counter_series(start, count, SCRAPE, constant(errors))
        writer.series_points("http_requests_total", {"service": name, "code": "500"}, times, bad)
    writer.family("http_request_duration_seconds_bucket", "counter")
    for index in range(services):
        name = service_name(index)
        rps = 5.0 + index % 7
        for le, share in zip(BUCKETS, BUCKET_SHARE, strict=True):
            times, values = counter_series(start, count, SCRAPE, constant(rps * share))
            writer.series_points(
                "http_request_duration_seconds_bucket", {"service": name, "le": le}, times, values
            )
    writer.family("app_auth_attempts_total", "counter")
    for index in range(services):
        name = service_name(index)
        for result, rate in (("success", 1.0), ("failure", 0.05)):
            times, values = counter_series(start, count, SCRAPE, constant(rate))
            writer.series_points(
                "app_auth_attempts_total", {"service": name, "result": result}, times, values
            )
    writer.family("app_data_loss_events_total", "counter")
    for index in range(services):
        loss = 0.05 if losing_data(index) else 0.0
        times, values = counter_series(start, count, SCRAPE, constant(loss))
        writer.series_points(
            "app_data_loss_events_total", {"service": service_name(index)}, times, values
        )
    times = [start + i * SCRAPE for i in range(count)]
    writer.family("app_feature_check_failed", "gauge")
    for index in range(services):
        labels = {"service": service_name(index), "tier": "major", "feature": "checkout"}
        writer.series_points("app_feature_check_failed", labels, times, [0.0] * count)
    writer.family("app_build_info", "gauge")
    for index in range(services):
        labels = {"service": service_name(index), "version": "v1"}
        writer.series_points("app_build_info", labels, times, [1.0] * count)
    files = writer.close()
    return files, writer.series, writer.samples


def config_text(services: int, prometheus_url: str) -> str:
    tables = "".join(
        f'[[services]]\nname = "{service_name(i)}"\nexecutor = "command"\ncommand = ["true"]\n'
        for i in range(services)
    )
    return f"""
[daemon]
poll_interval = "{int(POLL.total_seconds())}s"
rules = ["rules/*.toml"]

[prometheus]
url = "{prometheus_url}"
timeout = "60s"

[deploys]
version_metric = "app_build_info"
known_good_after = "30m"

{tables}
"""


# --- the child: one size, a fresh process ---------------------------------------------------


@dataclass
class Call:
    kind: str
    query: str
    wall: float
    cpu: float


@dataclass
class CountingSource:
    """Wraps the real source: counts every query and times it (wall and this thread's CPU)."""

    inner: Any
    calls: list[Call] = field(default_factory=list)

    def _timed(self, kind: str, query: str, call: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return call()
        finally:
            self.calls.append(
                Call(kind, query, time.perf_counter() - wall, time.thread_time() - cpu)
            )

    def instant(self, query: str, at: datetime) -> Any:
        return self._timed("instant", query, lambda: self.inner.instant(query, at))

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> Any:
        return self._timed("range", query, lambda: self.inner.range(query, start, end, step))

    def labels_over_time(
        self, query: str, label: str, start: datetime, end: datetime, step: timedelta
    ) -> Any:
        return self._timed(
            "labels_over_time",
            query,
            lambda: self.inner.labels_over_time(query, label, start, end, step),
        )


class ProfiledPool(ThreadPoolExecutor):
    """Runs each read under its own profiler while ``profiles`` is a list: cProfile sees
    only the thread that enables it, and most of a cycle's work is on the reading threads."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers, thread_name_prefix="measure")
        self.profiles: list[cProfile.Profile] | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        profiles = self.profiles
        if profiles is None:
            return super().submit(fn, *args, **kwargs)

        def profiled() -> Any:
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
            try:
                return fn(*args, **kwargs)
            finally:
                profiler.disable()
                profiles.append(profiler)

        return super().submit(profiled)


@dataclass
class Collections:
    """The garbage collector's passes (gc.callbacks): their time, and the full ones."""

    seconds: float = 0.0
    full: int = 0
    _began: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._began
        self.full += info["generation"] == 2  # the oldest generation


def count_calls(
    calls: list[Call], rule_queries: dict[str, str]
) -> tuple[dict[str, int], dict[str, int]]:
    """A cycle's source calls: instant queries by rule, and every other call by its query."""
    per_rule: dict[str, int] = {}
    other: dict[str, int] = {}
    for call in calls:
        name = rule_queries.get(call.query)
        if name is not None and call.kind == "instant":
            per_rule[name] = per_rule.get(name, 0) + 1
        else:
            key = f"{call.kind}: {call.query[:60]}"
            other[key] = other.get(key, 0) + 1
    return per_rule, other


def child(  # noqa: PLR0915 -- one cycle measured reads as one story
    config_path: Path, at: float, cycles: int, budget: float, prom_pid: int, profile: Path | None
) -> None:
    """Run the cycles of one size and print one JSON object (and a cProfile dump if asked)."""
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from rollbackd.core.deploys import DeployHistory  # noqa: PLC0415 -- imports are measured
    from rollbackd.core.engine import Engine  # noqa: PLC0415
    from rollbackd.core.model import FindingState  # noqa: PLC0415
    from rollbackd.loader import load  # noqa: PLC0415
    from rollbackd.runtime import settle_heap  # noqa: PLC0415
    from rollbackd.sources.gather import (  # noqa: PLC0415
        MEASURE_WORKERS,
        LiveCycle,
        version_query,
    )
    from rollbackd.sources.prometheus import PrometheusSource  # noqa: PLC0415

    loaded = load(config_path)
    config = loaded.config
    source = CountingSource(
        PrometheusSource(config.prometheus.url, config.prometheus.timeout, "service")
    )
    engine = Engine(
        config.engine_settings(), loaded.rules, DeployHistory(config.deploys.known_good_after)
    )
    live = LiveCycle(engine, config, source, None)
    pool = ProfiledPool(MEASURE_WORKERS)
    live._pool.shutdown()
    live._pool = pool
    rule_queries = {r.query: r.name for r in loaded.rules if r.query}
    settle_heap()  # as `rollbackd run` does once it has started
    version = version_query(config)
    queries = [*rule_queries, *([version] if version else [])]
    floors = [reading_floor(config.prometheus.url, queries, at)]
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = []
    collections = Collections()
    gc.callbacks.append(collections)
    began = time.monotonic()
    last = 0.0
    # CPU time, per thread: the main thread's waits for the reads cost nothing.
    profiler = cProfile.Profile(time.thread_time) if profile is not None else None
    for index in range(cycles):
        if profiler is not None and index == 1:
            profiler.enable()  # steady cycles only: the first one also fetches baselines
            pool.profiles = []
        # At least two cycles (the first one also fetches baselines); then only as many as
        # the budget allows, judged by the last cycle's length.
        if index >= 2 and time.monotonic() - began + last > budget:
            break
        cycle_began = time.monotonic()
        now = datetime.fromtimestamp(at, UTC) + index * POLL
        source.calls.clear()
        prom_before = cpu_seconds(prom_pid) or 0.0
        collections.seconds, collections.full = 0.0, 0
        wall, cpu = time.perf_counter(), time.process_time()
        inputs = live.gather(now)
        gather_wall, gather_cpu = time.perf_counter() - wall, time.process_time() - cpu
        wall, cpu = time.perf_counter(), time.process_time()
        report = engine.step(now, inputs)
        step_wall, step_cpu = time.perf_counter() - wall, time.process_time() - cpu
        prom_cpu = (cpu_seconds(prom_pid) or 0.0) - prom_before
        last = time.monotonic() - cycle_began
        per_rule, other = count_calls(source.calls, rule_queries)
        states: dict[str, int] = {FindingState.OK.value: sum(report.quiet.values())}
        for finding in report.notable:
            states[finding.state.value] = states.get(finding.state.value, 0) + 1
        results.append(
            {
                "gather_wall": gather_wall,
                "gather_cpu": gather_cpu,
                "step_wall": step_wall,
                "step_cpu": step_cpu,
                "gc_seconds": collections.seconds,
                "gc_full": collections.full,
                "calls": len(source.calls),
                "calls_wall": sum(c.wall for c in source.calls),
                "calls_cpu": sum(c.cpu for c in source.calls),
                "prometheus_cpu": prom_cpu,
                "per_rule": per_rule,
                "other_queries": other,
                "findings": states,
                "firing": states.get(FindingState.FIRING.value, 0),
                "decisions": len(report.decisions),
                "errors": dict(report.source_errors),
            }
        )
    if profiler is not None and profile is not None:
        profiler.disable()
        pstats.Stats(profiler, *(pool.profiles or [])).dump_stats(profile)
    floors.append(reading_floor(config.prometheus.url, queries, at))
    print(
        json.dumps(
            {
                "floor_fresh": floors[0],
                "floor_after": floors[1],
                "rss_start_kib": rss_start,
                "rss_ready_kib": rss_ready,
                "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "services": len(config.services),
                "rules": len(loaded.rules),
                "cycles": results,
            }
        )
    )


FLOOR_TRIALS = 5


def reading_floor(url: str, queries: list[str], at: float) -> dict[str, float]:
    """What any Python reader of a cycle's answers spends doing nothing else: the CPU (median
    of :data:`FLOOR_TRIALS`) to fetch each answer as rollbackd does (requests, gzip), and to
    decode it with msgspec into each series' ``service`` and value, keeping nothing.
    Rule work, checks and the engine come on top of it."""
    import msgspec  # noqa: PLC0415 -- imports are measured
    import requests  # noqa: PLC0415

    metric = msgspec.defstruct("Metric", [("service", str)], gc=False)
    series = msgspec.defstruct(
        "Series", [("metric", metric), ("value", tuple[float, float])], gc=False
    )
    data = msgspec.defstruct("Data", [("result", list[series])], gc=False)  # type: ignore[valid-type]
    decoder = msgspec.json.Decoder(msgspec.defstruct("Answer", [("data", data)]), strict=False)
    session = requests.Session()
    when = at + POLL.total_seconds()
    fetching: list[float] = []
    decoding: list[float] = []
    for _ in range(FLOOR_TRIALS):
        cpu = time.process_time()
        bodies = [
            session.get(
                f"{url}/api/v1/query", params={"query": query, "time": when}, timeout=60
            ).content
            for query in queries
        ]
        fetching.append(time.process_time() - cpu)
        cpu = time.process_time()
        for body in bodies:
            decoder.decode(body)
        decoding.append(time.process_time() - cpu)
    return {"fetch": median(fetching) or 0.0, "decode": median(decoding) or 0.0}


# --- the parent -----------------------------------------------------------------------------


def measure_size(
    root: Path, services: int, cycles: int, budget: float, report: Report, profile: Path | None
) -> dict[str, Any]:
    here = root / f"n{services}"
    here.mkdir()
    at = (time.time() // 7200) * 7200 - 3 * 3600.0  # inside one 2h block, in the past
    start, end = at - HISTORY_BEFORE, at + cycles * POLL.total_seconds() + 60
    began = time.monotonic()
    files, series, samples = write_history(here / "history", services, start, end)
    generated = time.monotonic() - began
    backfill = promtool_backfill(files, here / "data", timeout=900)
    with Prometheus(here / "prometheus", storage_dir=here / "data") as prometheus:
        (here / "rules").mkdir()
        (here / "rules" / "rules.toml").write_text(RULES)
        (here / "config.toml").write_text(config_text(services, prometheus.url))
        assert prometheus._process is not None  # noqa: S101 -- started just above
        result = run_json(
            [
                sys.executable,
                "-m",
                "bench.cycle",
                "--child",
                "--config",
                str(here / "config.toml"),
                "--at",
                str(at),
                "--cycles",
                str(cycles),
                "--budget",
                str(budget),
                "--prom-pid",
                str(prometheus._process.pid),
                *(
                    ["--profile", str(profile.with_suffix(f".n{services}.pstats"))]
                    if profile
                    else []
                ),
            ],
            timeout=budget + 600,
        )
    result["series"], result["samples"] = series, samples
    result["generate_seconds"], result["backfill_seconds"] = generated, backfill
    report.say(
        f"  n={services}: {series} series, {samples} samples (generated {generated:.1f}s,"
        f" promtool {backfill:.1f}s); {len(result['cycles'])} cycles"
    )
    return result


def main() -> None:  # noqa: PLR0915 -- one benchmark reads as one story
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
        parser.add_argument("--at", type=float, help=argparse.SUPPRESS)
        parser.add_argument("--cycles", type=int, help="cycles per size (default 10, quick 5)")
        parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
        parser.add_argument("--prom-pid", type=int, help=argparse.SUPPRESS)
        parser.add_argument("--sizes", help="comma-separated service counts")
        parser.add_argument(
            "--profile", type=Path, help="write a cProfile dump of the steady cycles per size"
        )

    args = arguments(__doc__.splitlines()[0] if __doc__ else "cycle", extra)
    if args.child:
        child(args.config, args.at, args.cycles, args.budget, args.prom_pid, args.profile)
        return
    quick: bool = args.quick
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10, 100, 1000] if quick else [10, 100, 1000, 10000])
    )
    cycles: int = args.cycles or (5 if quick else 10)
    report = Report("cycle", quick)
    report.title(
        f"{RULE_COUNT} rules over {', '.join(map(str, sizes))} services; up to {cycles} cycles each"
    )
    measured: dict[int, dict[str, Any]] = {}
    with workdir("cycle", args.keep) as root:
        for size in sizes:
            # Budget per size: small sizes finish their cycles long before it.
            budget = 20.0 if quick else (100.0 if size >= 10000 else 60.0)
            measured[size] = measure_size(root, size, cycles, budget, report, args.profile)
    own_by_size: dict[int, float] = {}
    for size, result in measured.items():
        runs = result["cycles"]
        steady = runs[1:] or runs
        own = median(r["gather_cpu"] + r["step_cpu"] for r in steady) or 0.0
        own_by_size[size] = own
        wall = median(r["gather_wall"] + r["step_wall"] for r in steady) or 0.0
        waiting = median(r["calls_wall"] - r["calls_cpu"] for r in steady) or 0.0
        client = median(r["calls_cpu"] for r in steady) or 0.0
        step = median(r["step_cpu"] for r in steady) or 0.0
        collecting = median(r["gc_seconds"] for r in steady) or 0.0
        full_passes = median(r["gc_full"] for r in steady) or 0
        prom = median(r["prometheus_cpu"] for r in steady) or 0.0
        first = runs[0]
        per_rule_max = max((max(r["per_rule"].values(), default=0) for r in runs), default=0)
        per_rule_min = min((min(r["per_rule"].values(), default=0) for r in runs), default=0)
        rules_seen = max((len(r["per_rule"]) for r in runs), default=0)
        other_steady = median(sum(r["other_queries"].values()) for r in steady) or 0
        is_big = size == max(sizes)
        target_own = TARGET_OWN_MS if size == 10000 else None
        target_rss = TARGET_RSS_MIB if size == 10000 else None
        report.say(f"  -- {size} services ({len(runs)} cycles; steady = cycles after the first)")
        report.figure(
            f"n={size} own CPU per cycle",
            own * 1000,
            "ms",
            target_own,
            note="process_time of gather + step",
        )
        own_share = median(
            (r["gather_cpu"] + r["step_cpu"]) / r["prometheus_cpu"]
            for r in steady
            if r["prometheus_cpu"] > 0
        )
        report.figure(
            f"n={size} own CPU / Prometheus' CPU",
            own_share,
            "x",
            TARGET_OWN_SHARE if size == 10000 else None,
            note="per cycle, median: rollbackd's own CPU against Prometheus' for the same cycle",
        )
        report.figure(f"n={size}   of which Engine.step", step * 1000, "ms")
        report.figure(
            f"n={size}   of which garbage collection",
            collecting * 1000,
            "ms",
            note=f"{full_passes:g} full passes per cycle (median); wall time of the passes",
        )
        report.figure(
            f"n={size}   of which reading answers",
            client * 1000,
            "ms",
            note="CPU inside the source calls: fetching and decoding",
        )
        for key, when in (
            ("floor_fresh", "in a fresh process"),
            ("floor_after", "after the cycles"),
        ):
            floor = result[key]
            report.figure(
                f"n={size}   reading floor {when}",
                (floor["fetch"] + floor["decode"]) * 1000,
                "ms",
                note=f"fetch {floor['fetch'] * 1000:.0f} + bare msgspec decode"
                f" {floor['decode'] * 1000:.0f} ms of the cycle's answers, nothing else",
            )
        report.figure(
            f"n={size} waiting for Prometheus per cycle",
            waiting * 1000,
            "ms",
            note=f"Prometheus' own CPU {prom * 1000:.0f} ms",
        )
        report.figure(f"n={size} cycle wall time", wall * 1000, "ms")
        report.figure(
            f"n={size} first cycle own CPU",
            (first["gather_cpu"] + first["step_cpu"]) * 1000,
            "ms",
            note=f"includes {sum(first['other_queries'].values())} other queries"
            " (version metric, baselines)",
        )
        report.figure(
            f"n={size} queries per rule per cycle (max)",
            per_rule_max,
            "",
            1,
            "equal",
            note=f"min {per_rule_min}; {rules_seen} of {RULE_COUNT} rules queried;"
            f" plus {other_steady:g} other per steady cycle (the version metric)",
        )
        report.figure(
            f"n={size} peak RSS",
            result["rss_peak_kib"] / 1024,
            "MiB",
            target_rss,
            note=f"fresh process; {result['rss_ready_kib'] / 1024:.0f} MiB after loading",
        )
        report.fact(f"n{size}", result)
        if is_big and target_own is None:
            report.note(f"the 10,000-service targets apply to n=10000; largest size here: {size}")
    ordered = sorted(own_by_size)
    for small, big in itertools.pairwise(ordered):
        if own_by_size[small] > 0:
            growth = own_by_size[big] / own_by_size[small]
            factor = big / small
            report.figure(
                f"own CPU growth {small} → {big} services",
                growth,
                "x",
                factor,
                note=f"{factor:g}x services; linear = {factor:g}x",
            )
    report.write()


if __name__ == "__main__":
    main()
