"""Replaying the engine over Prometheus history, for ``backtest`` and ``evaluate``.

The same :class:`~rollbackd.core.engine.Engine` that runs live is stepped through
time: each PromQL rule is fetched with range queries (chunked below
Prometheus' 11,000-points limit), deploys are found in the version metric's
history, and baselines are the queries' averages before each deploy. Probe
rules have no history: in a replay they are inconclusive, and ``evaluate``
runs them live at its last step.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, TypeVar, overload

from rollbackd.config import Config
from rollbackd.core.canary import SideBySide, Split, instances_query, split_of
from rollbackd.core.deploys import Deploy, DeployHistory, deploys_from_presence
from rollbackd.core.engine import CycleReport, Engine, Inputs
from rollbackd.core.model import Matrix, Measurement, Vector
from rollbackd.core.rules import Key, Rule
from rollbackd.core.seasonal import SLACK
from rollbackd.errors import OutOfTime
from rollbackd.sources import MetricSource, guarded_range
from rollbackd.sources.deploys import git_deploys
from rollbackd.sources.gather import (
    BaselineCache,
    Failed,
    around_query,
    side_by_side_forms,
    split_labels,
    version_query,
)
from rollbackd.sources.prometheus import QueryError
from rollbackd.text import one_line

_T = TypeVar("_T")

DEPLOY_LOOKBACK = timedelta(hours=24)
"""How far before a replay's start deploys are looked for, to date the running version."""


def step_times(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """The evaluation instants of a replay: start, start + step, ... up to end."""
    times = []
    moment = start
    while moment <= end:
        times.append(moment)
        moment += step
    return times


def align(moment: datetime, step: timedelta) -> datetime:
    """``moment`` rounded down to a multiple of ``step`` since the epoch (whole milliseconds).

    Prometheus answers range queries at start + k·step in milliseconds; aligned
    instants make its samples and the replay's steps the same times.
    """
    step_ms = max(round(step.total_seconds() * 1000), 1)
    moment_ms = int(moment.timestamp() * 1000)
    return datetime.fromtimestamp((moment_ms - moment_ms % step_ms) / 1000, tz=UTC)


AHEAD = 2
"""Windows fetched ahead of the one being stepped through, each on its own thread: while
one answer is decoded, Prometheus is already computing the next."""

WINDOW_STEPS = 1000
"""Steps fetched at once: small enough to overlap fetching and stepping, and to hold
little memory; large enough that each range query is worth its round trip."""


@dataclass(frozen=True)
class _Window:
    """The samples of one stretch of a replay, by rule name, and the rules that failed."""

    values: dict[str, Matrix]
    impacts: dict[str, Matrix]
    errors: dict[str, str]
    arounds: dict[tuple[str, timedelta], Matrix] = field(default_factory=dict)
    """Seasonal rules' values around each step's time of day, offset earlier, by (rule,
    offset), keyed by the step's own time."""
    counts: dict[str, tuple[Matrix, Matrix]] = field(default_factory=dict)


_Current = tuple[dict[Key, Measurement], dict[str, Deploy | None]]
"""The current deploys' pre-deploy baselines by (rule, service), and the deploys by service."""


@dataclass(frozen=True)
class FoundDeploys:
    """Deploys found in history, the versions running at the end, and any problem.

    ``first_seen`` holds, by service, the version metric's first samples: the
    versions running when it was first looked at, which are not known to have
    appeared then (a history that knows deploys from events decides).
    """

    deploys: list[Deploy]
    present_at_end: dict[str, set[str]]
    error: str | None
    first_seen: dict[str, tuple[datetime, set[str]]] = field(default_factory=dict)
    presence: dict[str, dict[str, list[datetime]]] = field(default_factory=dict)
    """By service and version, the times the version metric showed it (side by side)."""


def find_deploys(
    config: Config, prometheus: MetricSource, start: datetime, end: datetime, step: timedelta
) -> FoundDeploys:
    """Deploys in [start - DEPLOY_LOOKBACK, end]: the version metric, else git reflogs."""
    deploys: list[Deploy] = []
    presence: dict[str, dict[str, list[datetime]]] = {}
    present: dict[str, set[str]] = {}
    first_seen: dict[str, tuple[datetime, set[str]]] = {}
    error = None
    query = version_query(config)
    if query is None:
        error = "no [deploys] version_metric is configured"
    else:
        label = config.deploys.version_label
        try:
            presence = prometheus.labels_over_time(query, label, start - DEPLOY_LOOKBACK, end, step)
        except QueryError as exc:
            presence = {}
            error = f"cannot read deploys from {config.deploys.version_metric}: {exc}"
        except Exception as exc:  # noqa: BLE001 -- reported as the deploys' error, never fatal
            presence = {}
            error = (
                f"cannot read deploys from {config.deploys.version_metric}: "
                f"{type(exc).__name__}: {one_line(str(exc), 200)}"
            )
        for service, versions in presence.items():
            starts = deploys_from_presence(service, versions, step)
            if starts:
                first = starts[0].time
                first_seen[service] = (first, {d.version for d in starts if d.time == first})
                deploys.extend(d for d in starts if d.time != first)
            present[service] = {
                v for v, times in versions.items() if times and end - max(times) <= 2 * step
            }
    for configured in config.services:
        if configured.name in present or configured.executor != "git" or configured.repo is None:
            continue
        deploys.extend(git_deploys(configured.name, configured.repo))
    deploys.sort(key=lambda d: d.time)
    found = bool(deploys or first_seen)
    seen = presence if query is not None else {}
    return FoundDeploys(deploys, present, error if not found else None, first_seen, seen)


class Replay:
    """Steps an engine through [start, end] on Prometheus history."""

    def __init__(
        self,
        config: Config,
        rules: tuple[Rule, ...],
        prometheus: MetricSource,
        step: timedelta,
        history: DeployHistory | None = None,
        simulate_rollbacks: bool = True,
        explain: Collection[str] = (),
        armed: bool = False,
        deadline: float | None = None,
    ) -> None:
        """``explain``: services whose every finding and outcome each report carries;
        ``armed``: decide as with dry-run off (see :class:`Engine`); ``deadline``: a
        ``time.monotonic()`` by which the replay stops with :class:`OutOfTime` (a
        daemon's warm-up must not keep it from starting)."""
        self.config = config
        self.prometheus = prometheus
        self.step = step
        self.history = history or DeployHistory(config.deploys.known_good_after, step)
        self.engine = Engine(config.engine_settings(), rules, self.history, armed=armed)
        self.explain = tuple(explain)
        self.deadline = deadline
        self.baselines = BaselineCache(prometheus)
        self.deploy_error: str | None = None
        self.simulate_rollbacks = simulate_rollbacks
        self._split_window: tuple[int, dict[str, Matrix]] | None = None
        self._steps = _Steps([])

    def run(
        self,
        start: datetime,
        end: datetime,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[CycleReport]:
        """Yield one report per step, in time order; steps fall on multiples of the step."""
        start, end = align(start, self.step), align(end, self.step)
        times = step_times(start, end, self.step)
        windows = [times[i : i + WINDOW_STEPS] for i in range(0, len(times), WINDOW_STEPS)]
        # While the engine steps through one window, the next ones are fetched: Prometheus
        # answers on its own core, and the replay takes little longer than the queries.
        relative = [rule for rule in self.engine.rules if rule.relative]
        ahead = _Ahead(
            windows,
            self._fetch,
            lambda times: self.baselines.read_ahead(relative, times),
            self._in_time,
        )
        try:
            ahead.start(0)  # fetched while deploys are looked for
            found = find_deploys(self.config, self.prometheus, start, end, self.step)
            self._in_time()
            deploys, self.deploy_error = found.deploys, found.error
            services = self.engine.services
            looks = sorted(
                (first, service, versions)
                for service, (first, versions) in found.first_seen.items()
                if service in services
            )
            if relative:
                deployed_at = {d.time for d in deploys if d.service in services}
                ahead.baselines_for(deployed_at | {look[0] for look in looks})
            probe_missing = self._probes_missing()
            serving = _serving(found.presence, services)
            pending = list(deploys)
            current: _Current = ({}, {})
            done = 0
            for index, window in enumerate(windows):
                fetched, read = ahead.take(index)
                self.baselines.seed(read)
                self._steps = _Steps(window)
                for moment in window:
                    done += 1
                    deployed = False
                    while looks and looks[0][0] <= moment:
                        first, service, versions = looks.pop(0)
                        self.history.observe_versions(service, versions, first)
                        deployed = True
                    while pending and pending[0].time <= moment:
                        deploy = pending.pop(0)
                        if deploy.service in services:
                            self.history.record(deploy)
                            deployed = True
                    if deployed or done == 1:
                        current = self._current(services)
                    inputs = self._side_by_side(
                        self._inputs(moment, current, fetched, probe_missing),
                        serving,
                        (window, index),
                        moment,
                    )
                    report = self.engine.step(moment, inputs, self.explain)
                    for decision in report.decisions if self.simulate_rollbacks else ():
                        if decision.action.value == "rollback":
                            self.engine.record_rollback(decision.service, moment)
                    if progress is not None:
                        progress(done, len(times))
                    if done == len(times):
                        for service, versions in found.present_at_end.items():
                            self.history.set_present(service, versions)
                    yield report
        finally:  # out of time: the reads still in flight end with their own deadlines
            ahead.close(wait=self.deadline is None)

    def _side_by_side(
        self,
        inputs: Inputs,
        serving: dict[int, dict[str, set[str]]],
        where: tuple[list[datetime], int],
        moment: datetime,
    ) -> Inputs:
        """``inputs`` with the per-version answers at ``moment`` while some service serves two
        versions (the version metric's history says which); fetched once per window, and only
        for windows that need them."""
        ms = _ms(moment)
        splits: dict[str, Split] = {}
        for service, versions in serving.get(ms, {}).items():
            split = split_of(service, versions, self.history)
            if split is not None:
                splits[service] = split
        if not splits:
            return inputs
        window, index = where
        if self._split_window is None or self._split_window[0] != index:
            self._split_window = (index, self._fetch_split(window[0], window[-1]))
        matrices = self._split_window[1]
        at = self._steps.at
        vectors = {name: at(m, ms) for name, m in matrices.items() if ":" not in name}
        counts = {
            name.removeprefix("events:"): (at(m, ms), at(matrices[volume], ms))
            for name, m in matrices.items()
            if name.startswith("events:")
            and (volume := "volume:" + name.removeprefix("events:")) in matrices
        }
        instances = matrices.get("instances:")
        looked = SideBySide(
            splits,
            vectors,
            counts,
            at(instances, ms) if instances is not None else None,
        )
        return replace(inputs, side_by_side=looked)

    def _fetch_split(self, start: datetime, end: datetime) -> dict[str, Matrix]:
        """The per-version forms' samples in [start, end]: by rule name, ``events:``/``volume:``
        and the rule name for its counts, and ``instances:``."""
        labels = split_labels(self.config)
        forms, _ = side_by_side_forms(self.config, self.engine.rules)
        matrices: dict[str, Matrix] = {}
        if labels is None or not forms:
            return matrices
        step = self.step
        matrices["instances:"] = guarded_range(
            self.prometheus, instances_query(labels), start, end, step
        )
        for name, form in forms.items():
            matrices[name] = guarded_range(self.prometheus, form.query, start, end, step)
            if form.events is not None and form.volume is not None:
                for kind, query in (("events", form.events), ("volume", form.volume)):
                    matrices[f"{kind}:{name}"] = guarded_range(
                        self.prometheus, query, start, end, step
                    )
        return matrices

    def _probes_missing(self) -> dict[Key, Measurement]:
        """Probe rules have no history: missing, with the reason, for every service."""
        missing: dict[Key, Measurement] = {}
        for rule in self.engine.rules:
            if rule.query is None:
                why = Measurement.missing(
                    f"probe {rule.probe!r} has no history; probes are checked live only"
                )
                missing.update({(rule.name, s): why for s in self.engine.services})
        return missing

    @overload
    def _in_time(self) -> None: ...
    @overload
    def _in_time(self, fetch: Future[_T]) -> _T: ...
    def _in_time(self, fetch: Future[_T] | None = None) -> _T | None:
        """What ``fetch`` read, waited for no longer than the deadline; OutOfTime after it."""
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            raise OutOfTime("the replay ran out of its time")
        if fetch is None:
            return None
        try:
            return fetch.result(timeout=left)
        except FutureTimeout:
            raise OutOfTime("the replay ran out of its time waiting for Prometheus") from None

    def _fetch(self, start: datetime, end: datetime) -> _Window:
        """Every PromQL rule's (and impact, events and volume queries') samples in [start, end]."""
        window = _Window({}, {}, {})
        for rule in self.engine.rules:
            if rule.query is None:
                continue
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise OutOfTime("the replay ran out of its time")
            matrix = guarded_range(self.prometheus, rule.query, start, end, self.step)
            window.values[rule.name] = matrix
            if matrix.error is not None:
                window.errors[rule.name] = matrix.error
            if rule.impact_query is not None:
                impact = guarded_range(self.prometheus, rule.impact_query, start, end, self.step)
                window.impacts[rule.name] = impact
            if rule.seasonal:
                for offset in rule.seasonality:
                    window.arounds[(rule.name, offset)] = self._around(rule, offset, start, end)
            if rule.events is not None and rule.volume is not None:
                window.counts[rule.name] = (
                    guarded_range(self.prometheus, rule.events, start, end, self.step),
                    guarded_range(self.prometheus, rule.volume, start, end, self.step),
                )
        return window

    def _current(self, services: Collection[str]) -> _Current:
        """The current deploys' pre-deploy baselines (read at need), and those deploys."""
        baselines, _ = self.baselines.current(self.engine.rules, services, self.history)
        return baselines, {service: self.history.current(service) for service in services}

    def _inputs(
        self,
        moment: datetime,
        current: _Current,
        fetched: _Window,
        probe_missing: dict[Key, Measurement],
    ) -> Inputs:
        """The engine's inputs at ``moment``: the fetched values there, the baselines
        (seasonal rules' adjusted by earlier days at ``moment``)."""
        ms = _ms(moment)
        at = self._steps.at
        vectors = {name: at(m, ms) for name, m in fetched.values.items()}
        baselines, deploys = current
        if fetched.arounds:
            arounds = {key: at(matrix, ms) for key, matrix in fetched.arounds.items()}
            baselines = self.baselines.seasonal(
                self.engine.rules, baselines, deploys, arounds, moment, vectors
            )
        return Inputs(
            measurements=probe_missing,
            baselines=baselines,
            impacts=_impacts_at(fetched.impacts, ms, at),
            source_errors=fetched.errors,
            vectors=vectors,
            counts={
                name: (at(events, ms), at(volume, ms))
                for name, (events, volume) in fetched.counts.items()
            },
        )

    def _around(self, rule: Rule, offset: timedelta, start: datetime, end: datetime) -> Matrix:
        """The rule's values around each step's time of day ``offset`` earlier, keyed by the
        step's own time: one range query, read ``offset - SLACK`` back."""
        back = offset - SLACK
        query = around_query(rule)
        matrix = guarded_range(self.prometheus, query, start - back, end - back, self.step)
        if matrix.error is not None:
            return matrix
        shift = round(back.total_seconds() * 1000)
        return Matrix(
            {
                service: {ms + shift: value for ms, value in points.items()}
                for service, points in matrix.series.items()
            },
            ambiguous=matrix.ambiguous,
        )


def _serving(
    presence: dict[str, dict[str, list[datetime]]], services: Collection[str]
) -> dict[int, dict[str, set[str]]]:
    """By instant (unix ms) at which some service showed two versions or more, each such
    service's versions then: a week of every service's history, nearly all of it one
    version at a time, is looked at once (counted in C), not at every step."""
    serving: dict[int, dict[str, set[str]]] = {}
    for service, versions in presence.items():
        if service not in services or len(versions) < 2:
            continue
        counted = Counter(chain.from_iterable(versions.values()))
        together = {moment for moment, count in counted.items() if count > 1}
        for version, times in versions.items():
            for moment in together.intersection(times):
                at = serving.setdefault(_ms(moment), {})
                at.setdefault(service, set()).add(version)
    return {ms: at for ms, at in serving.items() if any(len(v) > 1 for v in at.values())}


class _Ahead:
    """What a replay reads on other threads ahead of its stepping, :data:`AHEAD` windows
    ahead: each window's samples, and the baselines of the deploys each window reaches,
    so that the stepping never waits for Prometheus."""

    def __init__(
        self,
        windows: list[list[datetime]],
        fetch: Callable[[datetime, datetime], _Window],
        read: Callable[[list[datetime]], Failed],
        wait: Callable[[Future[Any]], Any],
    ) -> None:
        """``fetch`` reads a window's samples, ``read`` the baselines of deploys at some
        times; ``wait`` waits for either within the replay's deadline."""
        self._windows = windows
        self._fetch, self._read, self._wait = fetch, read, wait
        self._pool = ThreadPoolExecutor(max_workers=AHEAD, thread_name_prefix="replay-fetch")
        self._fetches: dict[int, Future[_Window]] = {}
        self._reads: dict[int, Future[Failed]] = {}
        self._due: list[list[datetime]] = []

    def start(self, index: int) -> None:
        """Start the reads of window ``index`` and the ones after it, where not started."""
        for ahead in range(index, min(index + AHEAD, len(self._windows))):
            if ahead not in self._fetches:
                window = self._windows[ahead]
                self._fetches[ahead] = self._pool.submit(self._fetch, window[0], window[-1])
            if self._due and self._due[ahead] and ahead not in self._reads:
                self._reads[ahead] = self._pool.submit(self._read, self._due[ahead])

    def baselines_for(self, times: Collection[datetime]) -> None:
        """Deploy times whose baselines are read with the window whose steps reach them."""
        self._due = _by_window(sorted(times), self._windows)

    def take(self, index: int) -> tuple[_Window, Failed]:
        """Window ``index``'s samples and its deploys' baselines; the next ones started."""
        self.start(index)
        window: _Window = self._wait(self._fetches.pop(index))
        read: Failed = self._wait(self._reads.pop(index)) if index in self._reads else {}
        self.start(index + 1)
        return window, read

    def close(self, *, wait: bool) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


def _by_window(times: list[datetime], windows: list[list[datetime]]) -> list[list[datetime]]:
    """The sorted ``times`` by the window whose steps first reach each one (the last window's
    steps end the replay: later times are in none)."""
    found: list[list[datetime]] = []
    low = 0
    for window in windows:
        high = bisect_right(times, window[-1], lo=low)
        found.append(times[low:high])
        low = high
    return found


def _ms(moment: datetime) -> int:
    """``moment`` in unix milliseconds, as matrices key their samples."""
    return round(moment.timestamp() * 1000)


class _Steps:
    """A window's matrices read at its steps: each matrix's values gathered step by step in
    C, once per window; a step whose values are all finite, with no service ambiguous (the
    common case), is a vector made in C. Read service by service at every step, a week of
    100 services was most of a backtest's stepping."""

    def __init__(self, window: list[datetime]) -> None:
        self._ms = [_ms(moment) for moment in window]
        self._columns: dict[int, tuple[Matrix, tuple[str, ...], dict[int, tuple[Any, ...]]]] = {}

    def at(self, matrix: Matrix, ms: int) -> Vector:
        """The matrix's values at ``ms``, as :func:`_vector_at` reads them."""
        if matrix.error is not None or matrix.ambiguous:
            return _vector_at(matrix, ms)
        seen = self._columns.get(id(matrix))
        if seen is None:  # the matrix is kept with its columns: its id is not reused
            rows = [list(map(points.get, self._ms)) for points in matrix.series.values()]
            columns = dict(zip(self._ms, zip(*rows, strict=True), strict=True)) if rows else {}
            seen = self._columns[id(matrix)] = (matrix, tuple(matrix.series), columns)
        _, names, columns = seen
        column = columns.get(ms)
        if column is None:
            return _vector_at(matrix, ms)
        if None in column:
            found = {
                name: value for name, value in zip(names, column, strict=True) if value is not None
            }
        else:
            found = dict(zip(names, column, strict=True))
        total = sum(found.values())
        if total - total == 0.0:  # NaN or ±Inf anywhere (or an overflowing sum): carefully
            return Vector(found)
        return _vector_at(matrix, ms)


def _vector_at(matrix: Matrix, ms: int) -> Vector:
    """A range query's values at one instant, as the instant query would have answered."""
    if matrix.error is not None:
        return Vector(error=matrix.error)
    found = {s: v for s, points in matrix.series.items() if (v := points.get(ms)) is not None}
    numbers = {s: v for s, v in found.items() if v - v == 0.0}  # finite: NaN, ±Inf give NaN
    problems: dict[str, str] = {}
    if len(numbers) != len(found):
        problems = {s: Measurement.of(v).reason for s, v in found.items() if s not in numbers}
    if matrix.ambiguous:
        for service, why in matrix.ambiguous.items():
            numbers.pop(service, None)
            problems[service] = why
    return Vector(numbers, problems)


def _impacts_at(
    impacts: dict[str, Matrix], ms: int, at: Callable[[Matrix, int], Vector]
) -> dict[Key, Measurement]:
    out: dict[Key, Measurement] = {}
    for name, matrix in impacts.items():
        for service, number in at(matrix, ms).numbers.items():
            out[(name, service)] = Measurement(number)
    return out
