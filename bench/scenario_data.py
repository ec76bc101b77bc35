"""The scored scenario suite's incident histories: what each service did, scrape by scrape.

Each :class:`Scenario` is one incident history of our own design (one service,
or a fleet of healthy ones), described by its traffic, error ratio and latency
as functions of time, its deploys, restarts and gaps; :func:`simulate` turns a
service into what Prometheus would have stored, the way an app instrumented
with the official ``prometheus_client`` exports it:

- ``http_requests_total{handler, code}`` counters and an
  ``http_request_duration_seconds`` histogram labelled by ``handler``: a
  labelled child exists from its first use (the ``code="500"`` series from the
  first error, the histogram from the first request), so a service with no
  traffic has no request series at all;
- every process start (a deploy, a crash, a restart) resets every counter and
  forgets every child until it is used again;
- ``app_build_info{version}`` = 1 from the process' start, ``up`` = 1 for every
  scrape that answered and 0 for one that did not (the app down, restarting);
  nothing at all where Prometheus itself has no data;
- scrapes every 15 s at the target's own phase, a few milliseconds of jitter
  and now and then a late one; requests are Poisson, errors binomial,
  latencies log-normal (drawn per request at low traffic, by a normal
  approximation per bucket at high traffic).

What the backfill cannot reproduce: Prometheus writes staleness markers when a
scrape fails or a series disappears, so live, a vanished series ends at once;
backfilled, it is still returned for up to 5 minutes (the lookback delta).

The expected outcome of every scenario is data of its own, in
``scenario_labels.json``; the generator only knows when the fault began.
Times are seconds relative to the start of the evaluated window (W0).
"""

from __future__ import annotations

import heapq
import json
import math
import random
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SCRAPE = 15.0
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
BLOCK_SECONDS = 7200
LABELS_PATH = Path(__file__).with_name("scenario_labels.json")
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bounds (plus +Inf), as an app that sets its own buckets has them."""
LATENCY_SIGMA = 0.6
"""Spread of the log-normal latency: p95 is about 2.7 times the median."""
HANDLER = "/api"

Expect = Literal["rollback", "request_approval", "escalate", "nothing"]
EXPECTATIONS: tuple[str, ...] = ("rollback", "request_approval", "escalate", "nothing")
TimeFn = Callable[[float], float]


def constant(value: float) -> TimeFn:
    return lambda _t: value


def step_at(moment: float, before: float, after: float) -> TimeFn:
    """``before`` until ``moment``, ``after`` from it."""
    return lambda t: after if t >= moment else before


def window(start: float, end: float, inside: float, outside: float) -> TimeFn:
    """``inside`` in [start, end), ``outside`` elsewhere."""
    return lambda t: inside if start <= t < end else outside


def ramp(start: float, end: float, low: float, high: float) -> TimeFn:
    """``low`` until ``start``, rising linearly to ``high`` at ``end``, then ``high``."""

    def value(t: float) -> float:
        if t <= start:
            return low
        if t >= end:
            return high
        return low + (high - low) * (t - start) / (end - start)

    return value


def daily_rush(peak: float, width: float, amplitude: float) -> TimeFn:
    """A factor of 1 + ``amplitude`` at the same time of day as ``peak``, every day.

    A smooth bump ``width`` seconds wide (cosine-shaped): the morning rush.
    """

    def factor(t: float) -> float:
        distance = (t - peak + DAY / 2) % DAY - DAY / 2
        if abs(distance) >= width / 2:
            return 1.0
        return 1.0 + amplitude * 0.5 * (1 + math.cos(2 * math.pi * distance / width))

    return factor


def times(factor: TimeFn, base: TimeFn) -> TimeFn:
    return lambda t: factor(t) * base(t)


@dataclass(frozen=True)
class Service:
    """One service's behaviour over time (seconds relative to W0).

    ``versions``: (time, version) of each deploy, the first being the version
    running when its history begins (its time is ignored). ``restarts``: other
    process starts (counters reset). ``down``: spans when scrapes fail (``up``
    = 0, no app series). ``missing``: spans Prometheus has no data for at all.
    ``forced_errors``: (time, count) of extra failing requests, for errors
    clustered by chance. ``logins`` / ``login_failures``: login attempts per
    second and the failing fraction (``app_auth_attempts_total{result}``).
    """

    name: str
    rps: TimeFn
    errors: TimeFn = field(default=constant(0.0))
    latency: TimeFn = field(default=constant(0.05))
    versions: tuple[tuple[float, str], ...] = ((0.0, "v1"),)
    restarts: tuple[float, ...] = ()
    down: tuple[tuple[float, float], ...] = ()
    missing: tuple[tuple[float, float], ...] = ()
    forced_errors: tuple[tuple[float, int], ...] = ()
    logins: TimeFn | None = None
    login_failures: TimeFn = field(default=constant(0.0))
    history_start: float | None = None
    """When the service began to exist (relative to W0); None: the suite's history start."""
    instances: tuple[Instance, ...] = ()
    """Its processes, each its own scrape target; none: one (``SERVICE:8000``) that runs
    ``versions`` and takes every request."""
    version_errors: Mapping[str, TimeFn] = field(default_factory=dict)
    """By version, its error ratio where it differs from ``errors`` (a failing canary)."""
    version_latency: Mapping[str, TimeFn] = field(default_factory=dict)
    """By version, its median latency where it differs from ``latency``."""


@dataclass(frozen=True)
class Instance:
    """One process of a service that runs several (a canary, a rolling deploy).

    It serves from ``start`` to ``stop`` (None: the whole history) and takes
    ``weight`` of the traffic among the instances serving at that moment.
    ``versions``: (time, version) it runs, the first being the one it starts
    with; each later one restarts it (counters reset) into that version; None:
    the service's ``versions``. ``forced_errors``: as the service's, on this
    instance. The service's ``restarts``, ``down`` and ``missing`` apply to
    every instance.
    """

    name: str
    weight: float = 1.0
    versions: tuple[tuple[float, str], ...] | None = None
    start: float | None = None
    stop: float | None = None
    forced_errors: tuple[tuple[float, int], ...] = ()

    def label(self, service: str) -> str:
        """Its ``instance`` label: the address Prometheus scrapes."""
        return f"{service}-{self.name}:8000"


@dataclass(frozen=True)
class Scenario:
    """One labelled incident history: its services, when the fault began, its grid cell.

    ``onset``: when the trouble a rollback should answer began (None: there is
    none); ``regression`` and ``traffic`` place it in the time-to-decision
    table; ``quick``: part of the ``--quick`` subset; ``history_days``: how much
    history before W0 its services have (seasonal baselines need days).
    """

    name: str
    description: str
    services: tuple[Service, ...]
    onset: float | None = None
    regression: str | None = None
    traffic: str | None = None
    quick: bool = False
    history_days: float = 0.125


# --- the scenarios -------------------------------------------------------------------------

DEPLOY = 50 * MINUTE
"""When most scenarios deploy: after v1 has run 30 minutes on evaluated data (known good)."""
LOW, MID, HIGH = 0.1, 1.0, 20.0
"""Requests per second: 6 a minute, 1 a second, 20 a second."""


def _deployed(at: float = DEPLOY) -> tuple[tuple[float, str], ...]:
    return ((0.0, "v1"), (at, "v2"))


def _error_grid() -> list[Scenario]:
    """Error-ratio regressions by size and traffic: the time-to-decision table's rows."""
    cells = [
        ("low", LOW, 0.03, 0.30, "gross (30 %)", True),
        ("low", LOW, 0.01, 0.12, "marginal (12 %)", False),
        ("mid", MID, 0.01, 0.30, "gross (30 %)", True),
        ("mid", MID, 0.01, 0.08, "marginal (8 %)", False),
        ("high", HIGH, 0.005, 0.30, "gross (30 %)", True),
        ("high", HIGH, 0.005, 0.07, "marginal (7 %)", True),
        ("high", HIGH, 0.005, 1.0, "outage (100 %)", False),
        ("low", LOW, 0.01, 1.0, "outage (100 %)", True),
    ]
    scenarios = []
    for traffic, rps, chronic, bad, size, quick in cells:
        kind = size.split()[0]
        name = f"errors-{kind}-{traffic}"
        scenarios.append(
            Scenario(
                name,
                f"{rps:g} req/s with {chronic:.1%} chronic errors; the deploy fails {bad:.0%}",
                (
                    Service(
                        name, constant(rps), step_at(DEPLOY, chronic, bad), versions=_deployed()
                    ),
                ),
                onset=DEPLOY,
                regression=size,
                traffic=f"{traffic} ({rps:g} req/s)",
                quick=quick,
            )
        )
    return scenarios


def _noise() -> list[Scenario]:
    """Healthy deploys with noise a raw ratio mistakes for a regression."""
    return [
        Scenario(
            "low-chronic-cluster",
            "6 req/min with a chronic 3 % error rate; 3 errors cluster in the minute after "
            "the deploy (chance), then nothing changes",
            (
                Service(
                    "low-chronic-cluster",
                    constant(LOW),
                    constant(0.03),
                    versions=_deployed(),
                    forced_errors=((DEPLOY + 4 * MINUTE, 2), (DEPLOY + 4.5 * MINUTE, 1)),
                ),
            ),
            quick=True,
        ),
        Scenario(
            "mid-chronic-near-threshold",
            "1 req/s with a chronic 3.5 % error rate, just under the 5 % rule; deploys change "
            "nothing",
            (
                Service(
                    "mid-chronic-near-threshold",
                    constant(MID),
                    constant(0.035),
                    versions=((0.0, "v1"), (DEPLOY, "v2"), (3 * HOUR, "v3")),
                ),
            ),
            quick=True,
        ),
        Scenario(
            "high-small-rise",
            "20 req/s, the deploy raises errors from 1 % to 3 %: worse, but under the "
            "playbook's 5 %",
            (
                Service(
                    "high-small-rise",
                    constant(HIGH),
                    step_at(DEPLOY, 0.01, 0.03),
                    versions=_deployed(),
                ),
            ),
        ),
        Scenario(
            "spike-errors-short",
            "20 req/s; 30 s of 50 % errors 10 minutes after the deploy (a dependency "
            "blipped), far shorter than the rule's `for`",
            (
                Service(
                    "spike-errors-short",
                    constant(HIGH),
                    window(DEPLOY + 10 * MINUTE, DEPLOY + 10.5 * MINUTE, 0.5, 0.005),
                    versions=_deployed(),
                ),
            ),
            quick=True,
        ),
        Scenario(
            "spike-latency-short",
            "5 req/s; latency five times higher for 90 s, 15 minutes after the deploy "
            "(a garbage collection storm), shorter than `for`",
            (
                Service(
                    "spike-latency-short",
                    constant(5.0),
                    constant(0.002),
                    window(DEPLOY + 15 * MINUTE, DEPLOY + 16.5 * MINUTE, 0.4, 0.08),
                    versions=_deployed(),
                ),
            ),
        ),
        Scenario(
            "latency-low-traffic-noise",
            "6 req/min, latency unchanged by the deploy: a p95 over 5 minutes has ~30 "
            "requests behind it",
            (
                Service(
                    "latency-low-traffic-noise",
                    constant(LOW),
                    constant(0.0),
                    constant(0.12),
                    versions=_deployed(),
                ),
            ),
            quick=True,
        ),
    ]


def _latency() -> list[Scenario]:
    rush_peak = DEPLOY + 70 * MINUTE
    rush = daily_rush(rush_peak, 2.5 * HOUR, 1.0)
    traffic_rush = daily_rush(rush_peak, 2.5 * HOUR, 2.0)
    regression = step_at(DEPLOY, 1.0, 2.0)
    return [
        Scenario(
            "latency-regression",
            "5 req/s, p95 from 0.2 s to 0.5 s at the deploy",
            (
                Service(
                    "latency-regression",
                    constant(5.0),
                    constant(0.002),
                    step_at(DEPLOY, 0.075, 0.19),
                    versions=_deployed(),
                ),
            ),
            onset=DEPLOY,
            regression="latency x2.5",
            traffic="mid (5 req/s)",
            quick=True,
        ),
        Scenario(
            "latency-marginal",
            "5 req/s, every latency 30 % higher after the deploy: a noticeable slowdown, "
            "not a +50 % degradation",
            (
                Service(
                    "latency-marginal",
                    constant(5.0),
                    constant(0.002),
                    step_at(DEPLOY, 0.1, 0.13),
                    versions=_deployed(),
                ),
            ),
            onset=DEPLOY,
        ),
        Scenario(
            "rhythm-rush",
            "the morning rush every day: traffic x3 and latency x2 over 2.5 h; the deploy "
            "lands 30 minutes before the rush, which is the same as every other day",
            (
                Service(
                    "rhythm-rush",
                    times(traffic_rush, constant(2.0)),
                    constant(0.002),
                    times(rush, constant(0.08)),
                    versions=_deployed(),
                ),
            ),
            history_days=7.0,
            quick=True,
        ),
        Scenario(
            "rhythm-rush-regression",
            "the same morning rush, and the deploy doubles latency on top of it",
            (
                Service(
                    "rhythm-rush-regression",
                    times(traffic_rush, constant(2.0)),
                    constant(0.002),
                    times(regression, times(rush, constant(0.08))),
                    versions=_deployed(),
                ),
            ),
            onset=DEPLOY,
            regression="latency x2 on the rush",
            traffic="mid (2-6 req/s)",
            history_days=7.0,
            quick=True,
        ),
    ]


def _data_trouble() -> list[Scenario]:
    """Gaps, resets, no traffic, new services."""
    return [
        Scenario(
            "gap-after-deploy",
            "1 req/s, healthy; Prometheus has no data for 12 minutes right after the deploy",
            (
                Service(
                    "gap-after-deploy",
                    constant(MID),
                    constant(0.005),
                    versions=_deployed(),
                    missing=((DEPLOY + 2 * MINUTE, DEPLOY + 14 * MINUTE),),
                ),
            ),
            quick=True,
        ),
        Scenario(
            "gap-hides-regression",
            "20 req/s, the deploy fails 30 %; Prometheus has no data from 1 to 8 minutes after it",
            (
                Service(
                    "gap-hides-regression",
                    constant(HIGH),
                    step_at(DEPLOY, 0.005, 0.3),
                    versions=_deployed(),
                    missing=((DEPLOY + MINUTE, DEPLOY + 8 * MINUTE),),
                ),
            ),
            onset=DEPLOY,
        ),
        Scenario(
            "counter-resets",
            "5 req/s, 0.5 % errors; the process restarts three times after the deploy "
            "(counters reset, the 5xx series gone until the next error)",
            (
                Service(
                    "counter-resets",
                    constant(5.0),
                    constant(0.005),
                    versions=_deployed(),
                    restarts=(DEPLOY + 20 * MINUTE, DEPLOY + 50 * MINUTE, DEPLOY + 55 * MINUTE),
                    down=((DEPLOY + 50 * MINUTE, DEPLOY + 50 * MINUTE + 20),),
                ),
            ),
            quick=True,
        ),
        Scenario(
            "zero-traffic",
            "no request at all (a batch service at night); deploys come and go",
            (
                Service(
                    "zero-traffic",
                    constant(0.0),
                    versions=((0.0, "v1"), (DEPLOY, "v2"), (2 * HOUR, "v3")),
                ),
            ),
            quick=True,
        ),
        Scenario(
            "traffic-vanishes",
            "5 req/s until the deploy, then none: the new version stopped receiving traffic "
            "(no errors to count; people must look)",
            (
                Service(
                    "traffic-vanishes",
                    step_at(DEPLOY + 30, 5.0, 0.0),
                    constant(0.002),
                    versions=_deployed(),
                ),
            ),
            onset=DEPLOY,
        ),
        Scenario(
            "new-service-healthy",
            "a service first deployed inside the window (no history, no known good "
            "version), 6 req/min, 2 % errors",
            (
                Service(
                    "new-service-healthy",
                    constant(LOW),
                    constant(0.02),
                    versions=((0.0, "v1"),),
                    history_start=DEPLOY,
                ),
            ),
            quick=True,
        ),
        Scenario(
            "new-service-failing",
            "a service first deployed inside the window that fails 40 % of 2 req/s from "
            "the start: nothing to roll back to",
            (
                Service(
                    "new-service-failing",
                    constant(2.0),
                    constant(0.4),
                    versions=((0.0, "v1"),),
                    history_start=DEPLOY,
                ),
            ),
            onset=DEPLOY,
        ),
    ]


def _deploy_stories() -> list[Scenario]:
    """Incidents under way at a deploy, successive deploys, slow regressions, logins."""
    return [
        Scenario(
            "incident-under-way",
            "2 req/s; a dependency fails 30 % of requests from 20 minutes before the deploy "
            "to 40 minutes after it: the deploy did not cause it",
            (
                Service(
                    "incident-under-way",
                    constant(2.0),
                    window(DEPLOY - 20 * MINUTE, DEPLOY + 40 * MINUTE, 0.3, 0.005),
                    versions=((0.0, "v1"), (DEPLOY, "v2")),
                ),
            ),
            quick=True,
        ),
        Scenario(
            "hotfix-during-incident",
            "2 req/s; a bad deploy's errors (25 %) are fixed by the next deploy 4 minutes "
            "later, before anyone could act",
            (
                Service(
                    "hotfix-during-incident",
                    constant(2.0),
                    window(DEPLOY, DEPLOY + 4 * MINUTE, 0.25, 0.005),
                    versions=((0.0, "v1"), (DEPLOY, "v2"), (DEPLOY + 4 * MINUTE, "v3")),
                ),
            ),
            onset=DEPLOY,
        ),
        Scenario(
            "successive-second-bad",
            "2 req/s; v2 is healthy, v3 an hour later fails 25 %",
            (
                Service(
                    "successive-second-bad",
                    constant(2.0),
                    step_at(DEPLOY + HOUR, 0.005, 0.25),
                    versions=((0.0, "v1"), (DEPLOY, "v2"), (DEPLOY + HOUR, "v3")),
                ),
            ),
            onset=DEPLOY + HOUR,
            regression="gross (25 %)",
            traffic="mid (2 req/s)",
            quick=True,
        ),
        Scenario(
            "successive-quick-deploys",
            "5 req/s; four healthy deploys 10 minutes apart (a busy release day)",
            (
                Service(
                    "successive-quick-deploys",
                    constant(5.0),
                    constant(0.01),
                    latency=constant(0.06),
                    versions=tuple(
                        [(0.0, "v1")] + [(DEPLOY + k * 10 * MINUTE, f"v{k + 2}") for k in range(4)]
                    ),
                ),
            ),
        ),
        Scenario(
            "slow-regression",
            "3 req/s; after the deploy errors creep from 0.5 % to 20 % over two hours (a leak)",
            (
                Service(
                    "slow-regression",
                    constant(3.0),
                    ramp(DEPLOY, DEPLOY + 2 * HOUR, 0.005, 0.2),
                    versions=_deployed(),
                ),
            ),
            onset=DEPLOY,
            regression="slow (0.5 -> 20 % over 2 h)",
            traffic="mid (3 req/s)",
            quick=True,
        ),
        Scenario(
            "auth-broken",
            "1 login/s with 5 % failures (typos); after the deploy 90 % fail",
            (
                Service(
                    "auth-broken",
                    constant(MID),
                    constant(0.002),
                    versions=_deployed(),
                    logins=constant(1.0),
                    login_failures=step_at(DEPLOY, 0.05, 0.9),
                ),
            ),
            onset=DEPLOY,
            regression="logins fail (90 %)",
            traffic="mid (1 login/s)",
            quick=True,
        ),
        Scenario(
            "auth-low-noise",
            "3 logins/min with 15 % failures; 3 failures cluster after the deploy by chance",
            (
                Service(
                    "auth-low-noise",
                    constant(LOW),
                    constant(0.0),
                    versions=_deployed(),
                    logins=lambda t: (
                        0.05 if not DEPLOY + 3 * MINUTE <= t < DEPLOY + 4 * MINUTE else 0.2
                    ),
                    login_failures=lambda t: (
                        0.15 if not DEPLOY + 3 * MINUTE <= t < DEPLOY + 4 * MINUTE else 0.9
                    ),
                ),
            ),
            quick=True,
        ),
    ]


OLD_PODS = tuple(Instance(name, versions=((0.0, "v1"),)) for name in ("a", "b", "c"))
"""Three instances on v1 throughout; a canary scenario's fourth runs v2 from the deploy."""


def _canary_pod(forced_errors: tuple[tuple[float, int], ...] = ()) -> Instance:
    """The canary: a new instance running v2 from the deploy, as a canary ReplicaSet's pod."""
    return Instance("canary", versions=((DEPLOY, "v2"),), start=DEPLOY, forced_errors=forced_errors)


def _rolling(count: int, every: float) -> tuple[Instance, ...]:
    """A rolling deploy of ``count`` instances: every ``every`` seconds from the deploy, one
    new instance on v2 starts and one old one on v1 stops (a Deployment's rolling update)."""
    old = tuple(
        Instance(f"old{k}", versions=((0.0, "v1"),), stop=DEPLOY + k * every) for k in range(count)
    )
    new = tuple(
        Instance(f"new{k}", versions=((DEPLOY + k * every, "v2"),), start=DEPLOY + k * every)
        for k in range(count)
    )
    return old + new


def _canaries() -> list[Scenario]:
    """Two versions serving at once: judged side by side, the new one against the old one."""
    rush_peak = DEPLOY + 70 * MINUTE
    rush = daily_rush(rush_peak, 2.5 * HOUR, 1.0)
    traffic_rush = daily_rush(rush_peak, 2.5 * HOUR, 2.0)
    return [
        Scenario(
            "canary-failing",
            "8 req/s over 3 instances of v1 at 0.5 % errors; at the deploy a fourth instance "
            "(the canary, a quarter of the traffic) runs v2, which fails 30 %",
            (
                Service(
                    "canary-failing",
                    constant(8.0),
                    constant(0.005),
                    versions=_deployed(),
                    instances=(*OLD_PODS, _canary_pod()),
                    version_errors={"v2": constant(0.3)},
                ),
            ),
            onset=DEPLOY,
            regression="canary fails 30 % (1 of 4 instances)",
            traffic="mid (2 of 8 req/s)",
            quick=True,
        ),
        Scenario(
            "canary-rush",
            "the morning rush (traffic x3, latency x2 over 2.5 h) on 3 instances of v1; a v2 "
            "canary joins 30 minutes before it and is as fast as v1. No earlier days in "
            "Prometheus: side by side alone must tell the rush from a regression",
            (
                Service(
                    "canary-rush",
                    times(traffic_rush, constant(8.0)),
                    constant(0.002),
                    times(rush, constant(0.08)),
                    versions=_deployed(),
                    instances=(*OLD_PODS, _canary_pod()),
                ),
            ),
        ),
        Scenario(
            "canary-incident-both",
            "8 req/s over 3 instances of v1; a dependency fails 20 % of every version's "
            "requests from 10 minutes before the canary's deploy to 40 minutes after it",
            (
                Service(
                    "canary-incident-both",
                    constant(8.0),
                    window(DEPLOY - 10 * MINUTE, DEPLOY + 40 * MINUTE, 0.2, 0.005),
                    versions=_deployed(),
                    instances=(*OLD_PODS, _canary_pod()),
                ),
            ),
        ),
        Scenario(
            "canary-low-traffic",
            "0.4 req/s over 3 instances of v1 at 1 % errors; the v2 canary serves 6 requests "
            "a minute, two of its first ten fail (chance), then it is as good as v1",
            (
                Service(
                    "canary-low-traffic",
                    constant(0.4),
                    constant(0.01),
                    versions=_deployed(),
                    instances=(
                        *OLD_PODS,
                        _canary_pod(forced_errors=((DEPLOY + 40, 1), (DEPLOY + 85, 1))),
                    ),
                ),
            ),
            quick=True,
        ),
        Scenario(
            "rolling-slower",
            "8 req/s over 4 instances; a rolling deploy replaces one instance every 5 minutes "
            "with v2, whose every request takes twice as long",
            (
                Service(
                    "rolling-slower",
                    constant(8.0),
                    constant(0.002),
                    constant(0.08),
                    versions=_deployed(),
                    instances=_rolling(4, 5 * MINUTE),
                    version_latency={"v2": constant(0.16)},
                ),
            ),
            onset=DEPLOY,
            regression="rolling deploy, latency x2",
            traffic="mid (8 req/s)",
        ),
    ]


FLEET_RPS = (0.05, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
FLEET_ERRORS = (0.0, 0.002, 0.01, 0.02, 0.03)


def fleet(count: int, hours: float) -> Scenario:
    """Healthy services over the whole window: rhythm, chronic errors, benign deploys, restarts."""
    rng = random.Random(15)  # noqa: S311 -- simulated traffic, seeded
    services = []
    for index in range(count):
        rps = FLEET_RPS[index % len(FLEET_RPS)]
        chronic = FLEET_ERRORS[(index * 3) % len(FLEET_ERRORS)]
        median = 0.03 + 0.02 * (index % 6)
        peak = rng.uniform(0, DAY)
        traffic = daily_rush(peak, 6 * HOUR, rng.uniform(0.5, 2.0))
        slower = daily_rush(peak, 6 * HOUR, rng.uniform(0.0, 0.3))
        deploys = sorted(rng.uniform(45 * MINUTE, hours * HOUR - 30 * MINUTE) for _ in range(3))
        deploys = [d for i, d in enumerate(deploys) if i == 0 or d - deploys[i - 1] > 20 * MINUTE]
        restart = rng.uniform(HOUR, hours * HOUR)
        services.append(
            Service(
                f"fleet-{index:02d}",
                times(traffic, constant(rps)),
                constant(chronic),
                times(slower, constant(median)),
                versions=((0.0, "v1"), *((t, f"v{k + 2}") for k, t in enumerate(deploys))),
                restarts=(restart,),
            )
        )
    return Scenario(
        "healthy-fleet",
        f"{count} healthy services for {hours:g} h: 0.05-30 req/s with a daily rhythm, "
        "0-3 % chronic errors, benign deploys and a restart each",
        tuple(services),
        quick=True,
        history_days=1.0,
    )


def scenarios(quick: bool, hours: float, fleet_size: int) -> list[Scenario]:
    """Every scenario (the ``--quick`` subset when ``quick``), the fleet last."""
    chosen = (
        _error_grid() + _noise() + _latency() + _data_trouble() + _deploy_stories() + _canaries()
    )
    if quick:
        chosen = [s for s in chosen if s.quick]
    return [*chosen, fleet(fleet_size, hours)]


def every_scenario_name() -> list[str]:
    return [s.name for s in scenarios(False, 24.0, 1)]


def load_labels(path: Path = LABELS_PATH) -> dict[str, dict[str, str]]:
    """``scenario_labels.json``: by scenario, ``expect`` (one of EXPECTATIONS) and ``why``."""
    body: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))["scenarios"]
    return body


# --- simulation ----------------------------------------------------------------------------


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _binomial(rng: random.Random, trials: int, chance: float) -> int:
    if trials <= 0 or chance <= 0:
        return 0
    if chance >= 1:
        return trials
    if trials < 40 or trials * chance * (1 - chance) < 9:
        return sum(1 for _ in range(trials) if rng.random() < chance)
    spread = math.sqrt(trials * chance * (1 - chance))
    return min(trials, max(0, round(rng.gauss(trials * chance, spread))))


def _below(bound: float, median: float) -> float:
    """P(latency <= bound) for the log-normal with this median."""
    return 0.5 * (1 + math.erf(math.log(bound / median) / (LATENCY_SIGMA * math.sqrt(2))))


def _latencies(rng: random.Random, count: int, median: float) -> tuple[list[int], float]:
    """Per-bucket counts (not cumulative; the last is above every bound) and the sum."""
    counts = [0] * (len(BUCKETS) + 1)
    if count <= 0:
        return counts, 0.0
    if count < 40:
        total = 0.0
        for _ in range(count):
            latency = median * math.exp(rng.gauss(0.0, LATENCY_SIGMA))
            total += latency
            position = next((i for i, b in enumerate(BUCKETS) if latency <= b), len(BUCKETS))
            counts[position] += 1
        return counts, total
    left, below = count, 0.0
    for index, bound in enumerate(BUCKETS):
        upto = _below(bound, median)
        chance = 0.0 if below >= 1 else (upto - below) / (1 - below)
        drawn = _binomial(rng, left, min(max(chance, 0.0), 1.0))
        counts[index] = drawn
        left -= drawn
        below = upto
    counts[-1] = left
    mean = median * math.exp(LATENCY_SIGMA**2 / 2)
    return counts, max(0.0, count * mean + rng.gauss(0.0, mean * math.sqrt(count) * 0.8))


@dataclass
class _Process:
    """One process of the app: its counters since it started, and which children exist."""

    version: str
    ok: float = 0.0
    failed: float = 0.0
    failed_exists: bool = False
    requests_exist: bool = False
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(BUCKETS) + 1))
    latency_sum: float = 0.0
    logins: dict[str, float] = field(default_factory=dict)


Sample = tuple[str, str, float, float]
"""(family, series as ``name{labels}``, time relative to W0, value): one sample."""


def selector(name: str, labels: Mapping[str, str]) -> str:
    """``name{k="v",...}`` with the labels sorted, as the OpenMetrics sample line starts."""
    rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{rendered}}}"


@dataclass(frozen=True)
class _Selectors:
    """The series one process exports, rendered once."""

    up: str
    ok: str
    failed: str
    buckets: tuple[str, ...]
    count: str
    total: str
    logins: dict[str, str]
    service: str
    instance: str

    @classmethod
    def of(cls, service: str, instance: str) -> _Selectors:
        own = {"service": service, "instance": instance}
        handler = {**own, "handler": HANDLER}
        bounds = [*(repr(b) for b in BUCKETS), "+Inf"]
        return cls(
            up=selector("up", {**own, "job": service}),
            ok=selector("http_requests_total", {**handler, "code": "200"}),
            failed=selector("http_requests_total", {**handler, "code": "500"}),
            buckets=tuple(
                selector("http_request_duration_seconds_bucket", {**handler, "le": le})
                for le in bounds
            ),
            count=selector("http_request_duration_seconds_count", handler),
            total=selector("http_request_duration_seconds_sum", handler),
            logins={
                result: selector("app_auth_attempts_total", {**own, "result": result})
                for result in ("success", "failure")
            },
            service=service,
            instance=instance,
        )

    def build(self, version: str) -> str:
        return selector(
            "app_build_info",
            {"service": self.service, "instance": self.instance, "version": version},
        )


def _inside(moment: float, spans: Sequence[tuple[float, float]]) -> bool:
    return any(a <= moment < b for a, b in spans)


@dataclass(frozen=True)
class _Serving:
    """One process of a service as simulated: its instance, versions, span and share."""

    service: Service
    instance: Instance

    def share(self, moment: float) -> float:
        """Its share of the service's requests at ``moment`` (0 while it does not serve)."""
        if not _serves(self.instance, moment):
            return 0.0
        if len(self.service.instances) <= 1:
            return 1.0
        total = sum(i.weight for i in self.service.instances if _serves(i, moment))
        return self.instance.weight / total if total > 0 else 0.0

    def errors(self, version: str) -> TimeFn:
        return self.service.version_errors.get(version, self.service.errors)

    def latency(self, version: str) -> TimeFn:
        return self.service.version_latency.get(version, self.service.latency)


def _serves(instance: Instance, moment: float) -> bool:
    return (instance.start is None or instance.start <= moment) and (
        instance.stop is None or moment < instance.stop
    )


def scrapes(service: Service, begin: float, end: float, seed: str) -> Iterator[list[Sample]]:
    """Each scrape of every process of ``service`` from ``begin`` (or its own start) to
    ``end``, in time order: its samples."""
    if not service.instances:
        only = Instance("", versions=service.versions, forced_errors=service.forced_errors)
        return _process_scrapes(_Serving(service, only), f"{service.name}:8000", begin, end, seed)
    streams = [
        _process_scrapes(
            _Serving(service, instance),
            instance.label(service.name),
            begin,
            end,
            f"{seed}/{instance.name}",
        )
        for instance in service.instances
    ]
    return heapq.merge(*streams, key=lambda samples: samples[0][2])


def _process_scrapes(
    serving: _Serving, instance: str, begin: float, end: float, seed: str
) -> Iterator[list[Sample]]:
    """Each scrape of one process (its instance restarting as its versions change)."""
    service = serving.service
    rng = random.Random(zlib.crc32(seed.encode()))  # noqa: S311 -- simulated, seeded
    start = begin if service.history_start is None else max(begin, service.history_start)
    if serving.instance.start is not None:
        start = max(start, serving.instance.start)
    if serving.instance.stop is not None:
        end = min(end, serving.instance.stop)
    phase = rng.uniform(0.0, SCRAPE)
    runs = serving.instance.versions or service.versions
    versions = sorted(runs[1:])
    starts = sorted({t for t, _ in versions} | set(service.restarts))
    forced = sorted(serving.instance.forced_errors)
    names = _Selectors.of(service.name, instance)
    builds: dict[str, str] = {}
    process = _Process(runs[0][1])
    previous = start
    moment = start + phase
    while moment <= end:
        late = rng.uniform(0.3, 1.5) if rng.random() < 0.01 else 0.0
        at = moment + rng.uniform(-0.02, 0.02) + late
        while starts and starts[0] <= at:
            started = starts.pop(0)
            version = process.version
            for deploy_time, deployed in versions:
                if deploy_time <= started:
                    version = deployed
            process = _Process(version)
        _serve(rng, serving, process, previous, at, forced)
        previous = at
        moment += SCRAPE
        if _inside(at, service.missing):
            continue
        if _inside(at, service.down):
            yield [("up", names.up, at, 0.0)]
            continue
        build = builds.get(process.version)
        if build is None:
            build = names.build(process.version)
            builds[process.version] = build
        samples: list[Sample] = [("up", names.up, at, 1.0), ("app_build_info", build, at, 1.0)]
        _export(samples, names, process, at)
        yield samples


def simulate(
    service: Service, begin: float, end: float, seed: str
) -> dict[str, list[tuple[float, float]]]:
    """Every series of ``service`` over [begin, end]: (time, value) points by selector."""
    series: dict[str, list[tuple[float, float]]] = {}
    for samples in scrapes(service, begin, end, seed):
        for _, name, at, value in samples:
            series.setdefault(name, []).append((at, value))
    return series


def _serve(
    rng: random.Random,
    serving: _Serving,
    process: _Process,
    since: float,
    until: float,
    forced: list[tuple[float, int]],
) -> None:
    """The requests (and logins) ``process`` served in (since, until]."""
    service = serving.service
    middle = (since + until) / 2
    span = until - since
    down = _inside(middle, service.down)
    share = serving.share(middle)
    count = 0 if down else _poisson(rng, service.rps(middle) * share * span)
    failed = _binomial(rng, count, serving.errors(process.version)(middle))
    while forced and forced[0][0] <= until:
        extra = forced.pop(0)[1]
        count += extra
        failed += extra
    if count:
        process.requests_exist = True
        process.ok += count - failed
        process.failed += failed
        process.failed_exists = process.failed_exists or failed > 0
        counts, total = _latencies(rng, count, serving.latency(process.version)(middle))
        for index, drawn in enumerate(counts):
            process.buckets[index] += drawn
        process.latency_sum += total
    if service.logins is not None and not down:
        attempts = _poisson(rng, service.logins(middle) * share * span)
        failures = _binomial(rng, attempts, service.login_failures(middle))
        for result, number in (("success", attempts - failures), ("failure", failures)):
            if number:
                process.logins[result] = process.logins.get(result, 0.0) + number


def _export(samples: list[Sample], names: _Selectors, process: _Process, at: float) -> None:
    """One scrape of the process: the children that exist, as prometheus_client exports them."""
    if process.requests_exist:
        family = "http_requests"
        samples.append((family, names.ok, at, process.ok))
        if process.failed_exists:
            samples.append((family, names.failed, at, process.failed))
        family = "http_request_duration_seconds"
        cumulative = 0.0
        for name, drawn in zip(names.buckets, process.buckets, strict=True):
            cumulative += drawn
            samples.append((family, name, at, cumulative))
        samples.append((family, names.count, at, cumulative))
        samples.append((family, names.total, at, process.latency_sum))
    for result, value in sorted(process.logins.items()):
        samples.append(("app_auth_attempts", names.logins[result], at, value))


# --- OpenMetrics ---------------------------------------------------------------------------

FAMILIES: dict[str, Literal["counter", "gauge", "histogram"]] = {
    "up": "gauge",
    "app_build_info": "gauge",
    "http_requests": "counter",
    "app_auth_attempts": "counter",
    "http_request_duration_seconds": "histogram",
}


def render_block(samples: Sequence[Sample], origin: float) -> str:
    """Samples as one OpenMetrics document: by family, one ``# TYPE`` each, series in time order.

    Timestamps are seconds since the epoch with milliseconds (``origin`` is
    W0's); the document ends with ``# EOF``.
    """
    by_family: dict[str, dict[str, list[str]]] = {}
    for family, name, at, value in samples:
        by_family.setdefault(family, {}).setdefault(name, []).append(
            f"{name} {value:.12g} {origin + at:.3f}\n"
        )
    parts: list[str] = []
    for family, series in by_family.items():
        parts.append(f"# TYPE {family} {FAMILIES[family]}\n")
        for lines in series.values():
            parts.extend(lines)
    parts.append("# EOF\n")
    return "".join(parts)


def generate(
    chosen: Sequence[Scenario],
    directory: Path,
    origin: float,
    hours: float,
    history_cap: float = 7.0,
) -> tuple[list[Path], int, int]:
    """Every chosen scenario's history as OpenMetrics, one file per 2h block of the epoch.

    The services are simulated side by side, one block at a time, so memory
    holds one block's samples. (promtool 2.42 parses its whole input once per
    2h block it writes: a file per block costs one pass.) ``history_cap``: days at most
    before W0. Returns (files, series, samples).
    """
    directory.mkdir(parents=True, exist_ok=True)
    streams: list[Iterator[list[Sample]]] = []
    pending: list[list[Sample] | None] = []
    earliest = 0.0
    for scenario, service in services_of(chosen):
        begin = -min(scenario.history_days, history_cap) * DAY
        earliest = min(earliest, begin)
        stream = scrapes(service, begin, hours * HOUR, f"{scenario.name}/{service.name}")
        streams.append(stream)
        pending.append(next(stream, None))
    files: list[Path] = []
    series: set[str] = set()
    count = 0
    block = int((origin + earliest) // BLOCK_SECONDS)
    while any(p is not None for p in pending):
        limit = (block + 1) * BLOCK_SECONDS - origin
        samples: list[Sample] = []
        for index, stream in enumerate(streams):
            while (scrape := pending[index]) is not None and scrape and scrape[0][2] < limit:
                samples.extend(scrape)
                pending[index] = next(stream, None)
            while (scrape := pending[index]) is not None and not scrape:
                pending[index] = next(stream, None)
        if samples:
            path = directory / f"block-{block}.om"
            path.write_text(render_block(samples, origin), encoding="utf-8")
            files.append(path)
            series.update(name for _, name, _, _ in samples)
            count += len(samples)
        block += 1
    return files, len(series), count


def services_of(chosen: Sequence[Scenario]) -> Iterator[tuple[Scenario, Service]]:
    for scenario in chosen:
        for service in scenario.services:
            yield scenario, service
