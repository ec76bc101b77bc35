"""Sources: where measurements come from (Prometheus, probes, deploys).

:class:`MetricSource` is the one swappable interface the engine reads
PromQL through; :class:`~rollbackd.sources.prometheus.PrometheusSource` is the
real one and :mod:`rollbackd.testing` ships an in-memory one.

Callers read through :func:`guarded_instant` and :func:`guarded_range`, so
that whatever one query raises (a parser's RecursionError, a source's bug) is
that query's error, inconclusive for its rule only, never the end of a cycle.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from rollbackd.sources.prometheus import Matrix, Vector

ERROR_DETAIL = 200
"""Characters of an unexpected exception's message kept in a query's error."""


class MetricSource(Protocol):
    """PromQL by service: an instant vector, a range, and label values over time."""

    def instant(self, query: str, at: datetime) -> Vector: ...

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> Matrix: ...

    def labels_over_time(
        self, query: str, label: str, start: datetime, end: datetime, step: timedelta
    ) -> dict[str, dict[str, list[datetime]]]: ...


def guarded_instant(source: MetricSource, query: str, at: datetime) -> Vector:
    """``source.instant``, with whatever it raises as the query's error."""
    try:
        return source.instant(query, at)
    except Exception as exc:  # noqa: BLE001 -- reported as the rule's source error
        return Vector(error=f"the query failed: {type(exc).__name__}: {str(exc)[:ERROR_DETAIL]}")


def guarded_range(
    source: MetricSource, query: str, start: datetime, end: datetime, step: timedelta
) -> Matrix:
    """``source.range``, with whatever it raises as the query's error."""
    try:
        return source.range(query, start, end, step)
    except Exception as exc:  # noqa: BLE001 -- reported as the rule's source error
        return Matrix(error=f"the query failed: {type(exc).__name__}: {str(exc)[:ERROR_DETAIL]}")
