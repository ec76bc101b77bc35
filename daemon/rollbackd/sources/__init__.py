"""Sources: where measurements come from (Prometheus, probes, deploys).

:class:`MetricSource` is the one swappable interface the engine reads
PromQL through; :class:`~rollbackd.sources.prometheus.PrometheusSource` is the
real one and :mod:`rollbackd.testing` ships an in-memory one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from rollbackd.sources.prometheus import Matrix, Vector


class MetricSource(Protocol):
    """PromQL by service: an instant vector, a range, and label values over time."""

    def instant(self, query: str, at: datetime) -> Vector: ...

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> Matrix: ...

    def labels_over_time(
        self, query: str, label: str, start: datetime, end: datetime, step: timedelta
    ) -> dict[str, dict[str, list[datetime]]]: ...
