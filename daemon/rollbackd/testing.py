"""Fakes shipped with rollbackd, for its tests and for yours.

:class:`ScriptedMetrics` is an in-memory :class:`~rollbackd.sources.MetricSource`:
each query is answered by a Python function of (service, time), so a test
can describe "error rate 0.2 after 12:00 for web" and run the real engine,
replay and evaluation on it. :class:`FixedClock` hands out a time a test moves.
:class:`MemoryJournal` is the whole journal in memory, held by the same test
suite as the SQLite one (``tests/journal/``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rollbackd.core.model import Measurement
from rollbackd.journal.memory import MemoryJournal
from rollbackd.replay import step_times
from rollbackd.sources.prometheus import Matrix, QueryError, Vector

__all__ = ["FixedClock", "MemoryJournal", "ScriptedMetrics", "ValueAt", "constant", "switch"]

ValueAt = Callable[[str, datetime], float | None]
"""(service, time) → the value, or None when the series is absent."""


@dataclass
class FixedClock:
    """A clock a test sets and advances; the daemon's parts take it instead of datetime.now."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> datetime:
        self.now += by
        return self.now


@dataclass
class ScriptedMetrics:
    """Answers PromQL by lookup: exact query text → function of (service, time)."""

    services: list[str]
    queries: dict[str, ValueAt] = field(default_factory=dict)
    versions: dict[str, list[tuple[datetime, datetime | None, str]]] = field(default_factory=dict)
    down: str | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)

    def set(self, query: str, value_at: ValueAt) -> None:
        self.queries[query] = value_at

    def deploy(self, service: str, version: str, at: datetime) -> None:
        """From ``at`` on, ``service`` runs ``version`` (the previous one stops then)."""
        spans = self.versions.setdefault(service, [])
        if spans and spans[-1][1] is None:
            start, _, old = spans[-1]
            spans[-1] = (start, at, old)
        spans.append((at, None, version))

    def instant(self, query: str, at: datetime) -> Vector:
        self.calls.append(("instant", query))
        if self.down is not None:
            return Vector(error=self.down)
        value_at = self._lookup(query)
        if value_at is None:
            return Vector()
        values = {}
        for service in self.services:
            value = value_at(service, at)
            if value is not None:
                values[service] = Measurement.of(value)
        return Vector.of(values)

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> Matrix:
        self.calls.append(("range", query))
        if self.down is not None:
            return Matrix(error=self.down)
        value_at = self._lookup(query)
        if value_at is None:
            return Matrix()
        series: dict[str, dict[int, float]] = {}
        for moment in step_times(start, end, step):
            for service in self.services:
                value = value_at(service, moment)
                if value is not None:
                    series.setdefault(service, {})[round(moment.timestamp() * 1000)] = value
        return Matrix(series)

    def labels_over_time(
        self, query: str, label: str, start: datetime, end: datetime, step: timedelta
    ) -> dict[str, dict[str, list[datetime]]]:
        self.calls.append(("labels", query))
        if self.down is not None:
            raise QueryError(self.down)
        seen: dict[str, dict[str, list[datetime]]] = {}
        for moment in step_times(start, end, step):
            for service, spans in self.versions.items():
                for begin, finish, version in spans:
                    if begin <= moment and (finish is None or moment < finish):
                        seen.setdefault(service, {}).setdefault(version, []).append(moment)
        return seen

    def _lookup(self, query: str) -> ValueAt | None:
        if query in self.queries:
            return self.queries[query]
        for known, value_at in self.queries.items():
            if f"(({known})[" in query:
                return _averaged(value_at, query)
        return None


def _averaged(value_at: ValueAt, query: str) -> ValueAt:
    """A subquery ``avg_over_time((Q)[Ns:Rs])`` (a baseline) answered from Q's function;
    ``max_over_time`` and ``min_over_time`` (a seasonal rule's earlier days) likewise."""
    combine: Callable[[list[float]], float] = statistics.fmean
    if query.startswith("max_over_time("):
        combine = max
    elif query.startswith("min_over_time("):
        combine = min
    window_text = query.rsplit("[", 1)[1].split(":", 1)[0].rstrip("s")
    resolution_text = query.rsplit(":", 1)[1].rstrip("])s")
    window = timedelta(seconds=int(window_text))
    resolution = timedelta(seconds=int(resolution_text))

    def average(service: str, at: datetime) -> float | None:
        values = [
            v
            for moment in step_times(at - window, at, resolution)
            if moment > at - window and (v := value_at(service, moment)) is not None
        ]
        return combine(values) if values else None

    return average


def constant(value: float | None) -> ValueAt:
    """The same value for every service at every time."""
    return lambda _service, _at: value


def switch(
    default: float | None, changes: Iterable[tuple[str, datetime, datetime | None, float | None]]
) -> ValueAt:
    """``default``, except (service, from, until, value) spans that override it."""
    spans = list(changes)

    def value_at(service: str, at: datetime) -> float | None:
        for who, start, end, value in spans:
            if who == service and start <= at and (end is None or at < end):
                return value
        return default

    return value_at
