"""PromQL queries through prometheus-api-client, with a timeout on every call.

One instant query per rule per cycle whatever the number of services: the
result is a vector keyed by its ``service`` label. Anything that is not a
usable number for a service (no series, NaN, ±Inf, a scalar instead of a
vector, two series for one service, Prometheus down, slow or answering
garbage) becomes a *missing* measurement with the reason, never a healthy
value and never a crash. Errors are translated here, at the boundary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from rollbackd.durations import format_duration
from rollbackd.model import Matrix, Measurement, Vector

__all__ = ["Matrix", "PrometheusSource", "QueryError", "Vector", "chunks"]

MAX_POINTS = 11_000
"""Prometheus refuses range queries of more points than this per series."""
_CHUNK_POINTS = 10_000


class _DeadlineSession(requests.Session):
    """A session whose every request ends within ``total`` seconds, body included.

    requests' timeout bounds each socket read, so an answer trickling in byte
    by byte could hold a cycle forever; here the body is read as it arrives
    and the request is abandoned once the deadline passes.
    """

    def __init__(self, total: float) -> None:
        super().__init__()
        self.total = total

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.total
        kwargs["stream"] = True
        response = super().request(method, url, *args, **kwargs)
        body = bytearray()
        try:
            while True:
                if time.monotonic() > deadline:
                    raise requests.Timeout(f"no whole answer within {self.total:g}s")
                chunk = response.raw.read1(65536, decode_content=True)
                if not chunk:
                    break
                body.extend(chunk)
        finally:
            response.close()
        response._content = bytes(body)
        response._content_consumed = True
        return response


class QueryError(Exception):
    """Prometheus did not answer usefully; the message says why in a sentence."""


class PrometheusSource:
    """Queries one Prometheus server; every call bounded by ``timeout``."""

    def __init__(self, url: str, timeout: timedelta, service_label: str = "service") -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.service_label = service_label
        self._client = PrometheusConnect(
            url=self.url,
            retry=Retry(total=0, connect=0, read=False, redirect=0, status=0),
            timeout=timeout.total_seconds(),
            session=_DeadlineSession(timeout.total_seconds()),
        )

    def instant(self, query: str, at: datetime) -> Vector:
        """Evaluate ``query`` at ``at``; one value per service (or why there is none)."""
        try:
            result = self._call(self._client.custom_query, query, params={"time": at.timestamp()})
        except QueryError as exc:
            return Vector(error=str(exc))
        if not isinstance(result, list):
            return Vector(error="the query does not return an instant vector")
        try:
            return self._vector(result)
        except (KeyError, IndexError, TypeError, ValueError):
            return self._vector_carefully(result)

    def _vector(self, result: list[Any]) -> Vector:
        """The answer read as Prometheus writes it; any surprise raises, for the careful reader.

        At ten thousand services this loop is a large part of a cycle's own cost.
        """
        label = self.service_label
        numbers = {item["metric"][label]: float(item["value"][1]) for item in result}
        if len(numbers) != len(result):
            raise ValueError("two series for one service: read carefully")
        for service, value in numbers.items():
            if not isinstance(service, str) or not service or value - value != 0.0:
                raise ValueError("an odd label, or NaN or ±Inf: read carefully")
        return Vector(numbers)

    def _vector_carefully(self, result: list[Any]) -> Vector:
        """The answer checked item by item: each odd one is missing, with the reason."""
        label = self.service_label
        numbers: dict[str, float] = {}
        problems: dict[str, str] = {}
        counts: dict[str, int] = {}
        for item in result:
            if not isinstance(item, dict) or "value" not in item:
                return Vector(error="the query does not return an instant vector")
            service = _label(item, label)
            if service is None:
                continue
            if service in counts:
                counts[service] += 1
                numbers.pop(service, None)
                problems[service] = self._ambiguous(counts[service])
                continue
            counts[service] = 1
            measurement = _sample(item["value"])
            if measurement.value is not None:
                numbers[service] = measurement.value
            else:
                problems[service] = measurement.reason
        if result and not counts:
            return Vector(error=f"no series in the result has a {label!r} label")
        return Vector(numbers, problems)

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> Matrix:
        """Evaluate ``query`` over [start, end] every ``step``, in chunks Prometheus accepts.

        Sample times are unix milliseconds: a week of samples is millions of
        points, too many for a datetime each.
        """
        series: dict[str, dict[int, float]] = {}
        ambiguous: dict[str, str] = {}
        for chunk_start, chunk_end in chunks(start, end, step):
            try:
                result = self._call(
                    self._client.custom_query_range,
                    query,
                    start_time=chunk_start,
                    end_time=chunk_end,
                    step=f"{step.total_seconds():g}s",
                )
            except QueryError as exc:
                return Matrix(error=str(exc))
            if not isinstance(result, list) or any(
                not isinstance(item, dict) or "values" not in item for item in result
            ):
                return Matrix(error="the query does not return a range vector")
            counts: dict[str, int] = {}
            for item in result:
                service = _label(item, self.service_label)
                if service is None:
                    continue
                counts[service] = counts.get(service, 0) + 1
                points = series.setdefault(service, {})
                try:
                    points.update((round(t * 1000), float(v)) for t, v in item["values"])
                except (TypeError, ValueError, OverflowError):
                    points.update(p for p in map(_point, item["values"] or ()) if p is not None)
            for service, count in counts.items():
                if count > 1:
                    ambiguous[service] = self._ambiguous(count)
        return Matrix(series, ambiguous=ambiguous)

    def labels_over_time(
        self, query: str, label: str, start: datetime, end: datetime, step: timedelta
    ) -> dict[str, dict[str, list[datetime]]]:
        """For each service, each value of ``label``: the times its series was present.

        Raises QueryError: without this history no deploy can be placed in time.
        """
        seen: dict[str, dict[str, list[datetime]]] = {}
        instants: dict[Any, datetime] = {}  # every series has the same sample times

        def remember(raw: Any) -> datetime:
            instants[raw] = _instant(raw)
            return instants[raw]

        for chunk_start, chunk_end in chunks(start, end, step):
            result = self._call(
                self._client.custom_query_range,
                query,
                start_time=chunk_start,
                end_time=chunk_end,
                step=f"{step.total_seconds():g}s",
            )
            for item in result if isinstance(result, list) else []:
                if not isinstance(item, dict):
                    continue
                service = _label(item, self.service_label)
                value = _label(item, label)
                if service is None or value is None:
                    continue
                times = seen.setdefault(service, {}).setdefault(value, [])
                samples = item.get("values") or []
                try:  # a week of a version metric is millions of samples: the quick way first
                    times.extend(
                        [
                            instants[raw[0]] if raw[0] in instants else remember(raw[0])
                            for raw in samples
                        ]
                    )
                except (TypeError, IndexError, KeyError, ValueError, OverflowError, OSError):
                    times.extend(_instants_carefully(samples))
        return seen

    def _ambiguous(self, count: int) -> str:
        return f"{count} series for this service: aggregate the query by {self.service_label}"

    def _call(self, method: Any, query: str, **kwargs: Any) -> Any:
        try:
            return method(query, **kwargs)
        except requests.Timeout:
            raise QueryError(
                f"Prometheus at {self.url} did not answer within {format_duration(self.timeout)}"
            ) from None
        except requests.ConnectionError:
            raise QueryError(f"Prometheus at {self.url} is unreachable") from None
        except PrometheusApiClientException as exc:
            raise QueryError(f"Prometheus at {self.url} refused the query: {_short(exc)}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise QueryError(
                f"Prometheus at {self.url} answered something that is not its API: {_short(exc)}"
            ) from None
        except requests.RequestException as exc:
            raise QueryError(f"Prometheus at {self.url}: {_short(exc)}") from None


def chunks(start: datetime, end: datetime, step: timedelta) -> Iterator[tuple[datetime, datetime]]:
    """Split [start, end] so that no range query asks for more than MAX_POINTS per series."""
    if step <= timedelta(0):
        raise ValueError("step must be positive")
    span = step * (_CHUNK_POINTS - 1)
    cursor = start
    while cursor <= end:
        chunk_end = min(cursor + span, end)
        yield cursor, chunk_end
        cursor = chunk_end + step


def _label(item: dict[str, Any], name: str) -> str | None:
    metric = item.get("metric")
    if not isinstance(metric, dict):
        return None
    value = metric.get(name)
    return value if isinstance(value, str) and value else None


def _sample(raw: Any) -> Measurement:
    """An instant sample's value, or why it is not a usable number."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return Measurement.missing("the sample is malformed")
    try:
        value = float(raw[1])
    except (TypeError, ValueError):
        return Measurement.missing(f"the value {raw[1]!r} is not a number")
    return Measurement.of(value)  # NaN and ±Inf are missing, with the reason


def _point(raw: Any) -> tuple[int, float] | None:
    """A range sample as (unix ms, value); NaN and ±Inf are kept for Measurement.of to explain."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return None
    try:
        return round(float(raw[0]) * 1000), float(raw[1])
    except (TypeError, ValueError, OverflowError):
        return None


def _instants_carefully(samples: Any) -> list[datetime]:
    """The times of the samples that have one; malformed samples are skipped."""
    times = []
    for raw in samples if isinstance(samples, list) else ():
        try:
            times.append(_instant(raw[0]))
        except (TypeError, IndexError, KeyError, ValueError, OverflowError, OSError):
            continue
    return times


def _instant(raw: Any) -> datetime:
    return datetime.fromtimestamp(float(raw), tz=UTC)


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."
