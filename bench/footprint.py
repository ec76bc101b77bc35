"""Footprint: idle RSS and CPU of ``rollbackd run`` with the default rules.

``rollbackd run`` watches one healthy service (the demo app, scraped every 5 s
by a real Prometheus) with the default rule set (``rules/*.toml``: 15 rules,
PromQL and probes) and the default ``poll_interval`` (15s), for 5 minutes
(quick: 30 s) after its first cycle. Every second the benchmark reads
``/proc/<pid>/stat`` (user + system CPU) and ``/proc/<pid>/status`` (VmRSS,
VmHWM, threads). Reported: RSS (first, last, peak), CPU as a percentage of one
core over the whole window and over the busiest poll interval, and the
cycles run meanwhile (from the daemon's own ``/metrics``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from pathlib import Path

import httpx
from tests.support.processes import DemoApp, Prometheus, free_port

from bench.common import (
    REPO,
    ProcSample,
    Report,
    arguments,
    proc_sample,
    start_rollbackd,
    stop,
    wait_until,
    workdir,
)

POLL_SECONDS = 15.0


def config_text(root: Path, port: int, app_url: str, prometheus_url: str) -> str:
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
rules = ["rules/*.toml"]
log_format = "json"

[prometheus]
url = "{prometheus_url}"

[[services]]
name = "web"
health_url = "{app_url}/health"
executor = "command"
command = ["true"]

[[services.probes]]
name = "login"
url = "{app_url}/login"

[[services.probes]]
name = "critical_path"
url = "{app_url}/clients"

[deploys]
version_metric = "app_build_info"
"""


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main() -> None:  # noqa: PLR0915 -- one benchmark reads as one story
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seconds", type=float, help="idle time (default 300, quick 30)")
        parser.add_argument(
            "--alongside", action="store_true", help="say that other benchmarks ran meanwhile"
        )

    args = arguments(__doc__.splitlines()[0] if __doc__ else "footprint", extra)
    seconds: float = args.seconds or (30.0 if args.quick else 300.0)
    report = Report("footprint", args.quick)
    report.title(f"rollbackd run, default rules, one idle service, {seconds:g}s")
    samples: list[ProcSample] = []
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(workdir("footprint", args.keep))
        app = DemoApp(root / "app", service="web", traffic=20.0, log_dir=root / "app-logs").start()
        stack.callback(app.stop)
        prometheus = Prometheus(
            root / "prometheus", [("demo", app.target, {})], scrape_interval="5s"
        ).start()
        stack.callback(prometheus.stop)
        shutil.copytree(REPO / "rules", root / "rules")
        rules = sorted(p.name for p in (root / "rules").glob("*.toml"))
        port = free_port()
        config = root / "config.toml"
        config.write_text(config_text(root, port, app.url, prometheus.url))
        daemon = start_rollbackd(root, config, stack)
        base = f"http://127.0.0.1:{port}"

        def first_cycle() -> bool:
            if daemon.poll() is not None:
                raise RuntimeError(f"rollbackd exited {daemon.returncode}; see {root}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                body = httpx.get(f"{base}/readyz", timeout=2).json()
                return body.get("last_cycle") is not None
            return False

        wait_until(first_cycle, 60, "rollbackd run did not complete a first cycle")
        started = time.monotonic()
        deadline = started + seconds
        while time.monotonic() < deadline and daemon.poll() is None:
            sample = proc_sample(daemon.pid)
            if sample is not None:
                samples.append(sample)
            time.sleep(1.0)
        last = proc_sample(daemon.pid)
        if last is not None:
            samples.append(last)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        readiness = httpx.get(f"{base}/readyz", timeout=10).json()
        code = stop(daemon, timeout=30)
    if len(samples) < 2:
        report.note("the daemon could not be sampled")
        report.write()
        return
    first, end = samples[0], samples[-1]
    wall = end.at - first.at
    cpu = end.cpu_seconds - first.cpu_seconds
    window = int(POLL_SECONDS)
    busiest = max(
        (
            (samples[i + window].cpu_seconds - samples[i].cpu_seconds)
            / (samples[i + window].at - samples[i].at)
            for i in range(len(samples) - window)
        ),
        default=cpu / wall if wall else 0.0,
    )
    cycles = metric(metrics, "rollbackd_evaluations_total")
    cycle_sum = metric(metrics, "rollbackd_cycle_duration_seconds_sum")
    cycle_count = metric(metrics, "rollbackd_cycle_duration_seconds_count")
    report.fact("ran_alongside_other_benchmarks", bool(args.alongside))
    report.fact("rules", rules)
    report.fact("poll_interval_seconds", POLL_SECONDS)
    report.fact("samples", len(samples))
    report.fact("degraded_sources", readiness.get("degraded"))
    report.fact("exit_code_after_sigterm", code)
    report.figure("RSS at the start of the window", first.rss_kib / 1024, "MiB")
    report.figure("RSS at the end", end.rss_kib / 1024, "MiB")
    report.figure("peak RSS (VmHWM)", end.hwm_kib / 1024, "MiB", note="no target: measured")
    report.figure("RSS growth over the window", (end.rss_kib - first.rss_kib) / 1024, "MiB")
    report.figure(
        "CPU, whole window",
        100 * cpu / wall if wall else None,
        "% of one core",
        note=f"{cpu:.2f} s of CPU in {wall:.0f} s",
    )
    report.figure(
        "CPU, busiest poll interval", 100 * busiest, "% of one core", note=f"{window}s window"
    )
    report.figure("threads", end.threads, "")
    report.figure(
        "cycles in the window",
        cycles,
        "",
        note=f"mean cycle {1000 * (cycle_sum or 0) / (cycle_count or 1):.0f} ms; degraded:"
        f" {', '.join(sorted(readiness.get('degraded') or {})) or 'none'}",
    )
    report.write()


if __name__ == "__main__":
    main()
