"""rollbackd against a VictoriaMetrics that scrapes a live app decides as against Prometheus.

A real Prometheus and a real VictoriaMetrics (``-promscrape.config``) both scrape
one demo app (prometheus_client) every second, and ``evaluate`` looks at the app
through each while it lives through three things, in this order (one timeline,
shared by the module's tests, so its processes start once):

1. v2 is deployed, and the app restarts for it: counters start again from
   nothing (healthy, it has no 5xx series: one is born at the first failure);
2. the app stops: its target is down, its series go stale;
3. v3 starts where it stopped, failing three requests in ten.

What differs between the engines here (see the README's VictoriaMetrics section):
VictoriaMetrics' ``rate`` over a window does not extrapolate, so when a target
stops it keeps the target's last rate whole until its last sample leaves the
window, where Prometheus' fades; and it answers queries near its clock as of
``-search.latencyOffset`` ago (30 s by default), which this module lowers to 5 s
so that it stays lean: with the default every step below comes 30 s later. Not
lower: a series VictoriaMetrics has never seen (the new version's
``app_build_info``, a 5xx series born at its first failure) becomes searchable 2-3 s
after the samples of series it knows that came in the same scrape, so with a 1 s
offset the new version's first requests are judged before its deploy is seen.
"""

from __future__ import annotations

import contextlib
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from rollbackd.core.model import NO_SERIES, Finding, FindingState
from rollbackd.evaluation import evaluate_now
from rollbackd.loader import load
from tests.support.processes import REPO, DemoApp, Prometheus, VictoriaMetrics

pytestmark = pytest.mark.integration

WINDOW = "10s"
"""The rules' window, for the shipped ``[1m]``: a stopped target leaves it within seconds."""
LATENCY_OFFSET = "5s"
"""Above the 2-3 s a new series takes to become searchable (see the docstring)."""
KNOWN_GOOD_AFTER = 6.0
RESTART_WATCHED = 12.0
"""Seconds the restarted app is looked at: longer than the window, so the reset passes
through every window the rules read."""
GONE_WITHIN = 30.0
"""Seconds after the stop by which each engine must answer no data: the window, the
latency offset, and room for a busy machine."""
DECIDED_WITHIN = 40.0

ERROR_RATE = "error-rate"
TRAFFIC = "traffic-fell"
WATCHED = (ERROR_RATE, TRAFFIC)
ENGINES = ("prometheus", "victoriametrics")


def shipped_error_rate() -> str:
    """The shipped error-rate rule (high.toml), its windows shortened to ``WINDOW``."""
    rules = tomllib.loads((REPO / "rules" / "high.toml").read_text())["rules"]
    rule = next(r for r in rules if r["name"] == ERROR_RATE)
    lines = ["[[rules]]"]
    for key in ("name", "trigger", "query", "events", "volume", "condition", "sustain"):
        lines.append(f"{key} = '{rule[key].replace('[1m]', f'[{WINDOW}]')}'")
    lines += [f"confidence = {rule['confidence']}", f"min_volume = {rule['min_volume']}"]
    return "\n".join(lines) + "\n"


RULES = (
    shipped_error_rate()
    + f"""
[[rules]]
name = "{TRAFFIC}"
trigger = "outage"
severity = "medium"
query = 'sum by (service) (rate(http_requests_total[{WINDOW}]))'
condition = "< -50%"
baseline = "before_deploy"
baseline_window = "{WINDOW}"
for = "6s"
"""
)


def write_config(directory: Path, url: str, rules: str = RULES) -> Path:
    """web on ``url``, deploys from its version metric, ``rules`` (the two by default)."""
    (directory / "rules").mkdir(parents=True)
    (directory / "rules" / "live.toml").write_text(rules)
    config = directory / "config.toml"
    config.write_text(
        f"""
[daemon]
poll_interval = "1s"
rules = ["rules/*.toml"]
[prometheus]
url = "{url}"
timeout = "10s"
[[services]]
name = "web"
executor = "command"
command = ["true"]
[deploys]
version_metric = "app_build_info"
known_good_after = "{KNOWN_GOOD_AFTER:g}s"
attribution_window = "2m"
"""
    )
    return config


Decided = tuple[str, str, str, str, str | None, str]
"""What was decided, without when (the engines see the deploy a scrape apart):
(service, action, scope, severity, target, leading rule)."""


@dataclass(frozen=True)
class Look:
    """One ``evaluate`` through one engine, ``after`` seconds into a phase."""

    after: float
    findings: dict[str, Finding]
    decisions: tuple[Decided, ...]
    deployed: tuple[str, ...]

    def state(self, rule: str) -> FindingState | None:
        finding = self.findings.get(rule)
        return finding.state if finding else None


@dataclass
class Timeline:
    """Every look, by phase, then by engine."""

    looks: dict[str, dict[str, list[Look]]] = field(default_factory=dict)

    def of(self, phase: str, engine: str) -> list[Look]:
        return self.looks.setdefault(phase, {}).setdefault(engine, [])


def evaluated(config: Path, after: float) -> Look:
    """``evaluate`` now, as the CLI would (in process, for speed)."""
    loaded = load(config, env={})
    result = evaluate_now(loaded.config, loaded.rules, datetime.now(UTC))
    assert not result.report.source_errors, result.report.source_errors
    return Look(
        after,
        {f.rule: f for f in result.report.findings if f.service == "web"},
        tuple(
            (d.service, d.action.value, d.scope, d.severity.value, d.target, d.rules[0])
            for d in result.decisions
        ),
        tuple(d.version for d in result.history.deploys("web")),
    )


def answers(url: str, query: str) -> bool:
    """Whether an instant query has a series now."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10.0)
    return bool(response.json()["data"]["result"])


def watch(
    timeline: Timeline,
    phase: str,
    configs: dict[str, Path],
    done: Callable[[Look], bool],
    timeout: float,
) -> None:
    """Look through every engine about once a second, each until ``done`` holds for it,
    or ``timeout`` seconds into the phase."""
    began = time.monotonic()
    waiting = set(configs)
    while waiting and time.monotonic() - began < timeout:
        for engine in sorted(waiting):
            look = evaluated(configs[engine], time.monotonic() - began)
            timeline.of(phase, engine).append(look)
            if done(look):
                waiting.discard(engine)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - began) % 1.0))


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Timeline]:
    """The app's life, watched through both engines (see the module's docstring)."""
    root = tmp_path_factory.mktemp("vm-live")
    app_dir = root / "app"
    app_dir.mkdir()
    (app_dir / "app.toml").write_text('version = "v1"\n')
    app = DemoApp(app_dir, service="web", log_dir=root / "app-logs")
    recorded = Timeline()
    with contextlib.ExitStack() as stack:
        stack.callback(app.stop)
        app.start()
        prometheus = stack.enter_context(Prometheus(root / "prometheus", [app.scrape_target()]))
        victoriametrics = stack.enter_context(
            VictoriaMetrics(
                root / "victoriametrics",
                [app.scrape_target()],
                extra_args=[f"-search.latencyOffset={LATENCY_OFFSET}"],
            )
        )
        urls = {"prometheus": prometheus.url, "victoriametrics": victoriametrics.url}
        configs = {name: write_config(root / name, url) for name, url in urls.items()}
        traffic = f"sum(rate(http_requests_total[{WINDOW}])) > 0"
        deadline = time.monotonic() + 30
        while not all(answers(url, traffic) for url in urls.values()):
            assert time.monotonic() < deadline, "not both engines show the app's traffic"
            time.sleep(0.5)
        time.sleep(KNOWN_GOOD_AFTER + 2)  # v1 runs clean long enough to be known good

        (app_dir / "app.toml").write_text('version = "v2"\n')
        app.restart_in_place()
        watch(recorded, "restart", configs, lambda look: False, RESTART_WATCHED)

        app.stop()
        watch(
            recorded,
            "stop",
            configs,
            lambda look: all(look.state(rule) is FindingState.INCONCLUSIVE for rule in WATCHED),
            GONE_WITHIN,
        )

        # The error rate alone: a fall in traffic seen across the outage (fading with
        # the window, then rising with the new process) is pending on either engine or
        # not depending on where the looks fall (trial runs escalated it on each).
        errors_only = {
            name: write_config(root / name / "errors-only", url, shipped_error_rate())
            for name, url in urls.items()
        }
        (app_dir / "app.toml").write_text('version = "v3"\nerror_rate = 0.3\n')
        app.start()
        watch(
            recorded, "bad deploy", errors_only, lambda look: bool(look.decisions), DECIDED_WITHIN
        )
        yield recorded


def test_a_restart_for_a_healthy_deploy_fires_nothing_on_either(timeline: Timeline) -> None:
    """Counters that start again from nothing are no errors and no fall in traffic: at
    every look neither rule fires and nothing is decided, and at the last both rules have
    a value (the deploy seen, the traffic compared with its value before it)."""
    for engine in ENGINES:
        looks = timeline.of("restart", engine)
        assert len(looks) >= 3, f"{engine}: too few looks"  # each a replay: slow when busy
        for look in looks:
            assert look.decisions == (), f"{engine} at +{look.after:.0f}s"
            assert FindingState.FIRING not in map(look.state, WATCHED), (
                f"{engine} at +{look.after:.0f}s: {look.findings}"
            )
        last = looks[-1]
        assert last.deployed[-1] == "v2", engine
        assert [last.state(rule) for rule in WATCHED] == [FindingState.OK] * 2, (
            f"{engine}: {last.findings}"
        )
        assert last.findings[TRAFFIC].baseline is not None, engine


def test_a_stopped_app_is_no_data_on_both_within_the_window(timeline: Timeline) -> None:
    """After the stop each engine answers no series for both rules within the window plus
    its latency offset, and until then shows the healthy app, never a firing rule."""
    for engine in ENGINES:
        looks = timeline.of("stop", engine)
        last = looks[-1]
        assert [last.state(rule) for rule in WATCHED] == [FindingState.INCONCLUSIVE] * 2, (
            f"{engine}: after {last.after:.0f}s still {last.findings}"
        )
        for rule in WATCHED:
            assert NO_SERIES in last.findings[rule].reason, f"{engine}: {rule}"
        for look in looks:
            assert look.decisions == (), f"{engine} at +{look.after:.0f}s"
            assert FindingState.FIRING not in map(look.state, WATCHED), engine


def test_a_bad_deploy_is_decided_alike_on_both(timeline: Timeline) -> None:
    """v3 failing three requests in ten after the outage: both engines ask for approval to
    roll back to v2, the version that ran clean before it, for the error rate."""
    decided = {engine: timeline.of("bad deploy", engine)[-1].decisions for engine in ENGINES}
    assert decided["prometheus"] == (("web", "request_approval", "all", "high", "v2", ERROR_RATE),)
    assert decided["victoriametrics"] == decided["prometheus"]
