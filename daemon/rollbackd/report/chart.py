"""Chart geometry: one sampled series as an SVG polyline in a fixed viewBox, with the key
moments as labelled vertical lines whose labels are stacked so none overlaps another."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from rollbackd.core.durations import format_instant
from rollbackd.report.cells import number_text
from rollbackd.report.view import Chart, Marker
from rollbackd.text import visible

_WIDTH = 640.0
_LEFT = 64.0
_RIGHT = _WIDTH - 16.0
_PLOT_HEIGHT = 150.0
_ROW = 14.0
_CHAR = 6.2


def finite(points: Iterable[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    """The samples that are finite numbers: NaN, infinities and garbage cannot be drawn."""
    return [(t, float(v)) for t, v in points if isinstance(v, int | float) and math.isfinite(v)]


def charts(
    samples: Mapping[str, list[tuple[datetime, float]]], marks: Sequence[tuple[datetime, str, str]]
) -> tuple[Chart, ...]:
    """One chart per sampled series, in name order, each with the key moments marked."""
    return tuple(
        _chart(number, name, points, marks)
        for number, (name, points) in enumerate(sorted(samples.items()), 1)
    )


def _chart(
    number: int,
    name: str,
    points: Sequence[tuple[datetime, float]],
    marks: Sequence[tuple[datetime, str, str]],
) -> Chart:
    good = finite(points)
    times = [t for t, _ in good] + [t for t, _, _ in marks]
    start, end = (min(times), max(times)) if times else (None, None)
    span = (end - start).total_seconds() if start is not None and end is not None else 0.0
    values = [v for _, v in good]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad

    def x_of(moment: datetime) -> float:
        if start is None or span <= 0:
            return (_LEFT + _RIGHT) / 2
        return _LEFT + (moment - start).total_seconds() / span * (_RIGHT - _LEFT)

    rows: list[float] = []
    placed: list[tuple[str, str, float, float, float, str]] = []
    for at, label, kind in marks:
        x = x_of(at)
        width = len(label) * _CHAR + 6
        anchor, label_x, extent = "start", x + 3, (x, x + width)
        if x + width > _WIDTH:
            anchor, label_x, extent = "end", x - 3, (x - width, x)
        row = next((n for n, edge in enumerate(rows) if edge < extent[0]), len(rows))
        if row == len(rows):
            rows.append(extent[1])
        else:
            rows[row] = extent[1]
        placed.append((kind, label, x, label_x, row, anchor))
    top = 8.0 + _ROW * max(len(rows), 1)
    bottom = top + _PLOT_HEIGHT

    def y_of(value: float) -> float:
        return bottom - (value - low) / (high - low) * _PLOT_HEIGHT

    coords = [(x_of(t), y_of(v)) for t, v in good]
    markers = tuple(
        Marker(
            kind=kind,
            label=label,
            time=format_instant(marks[i][0]),
            x=round(x, 1),
            label_x=round(label_x, 1),
            label_y=round(4.0 + _ROW * (row + 1), 1),
            anchor=anchor,
        )
        for i, (kind, label, x, label_x, row, anchor) in enumerate(placed)
    )
    dropped = len(points) - len(good)
    note = f"{dropped} samples that were not finite numbers are left out" if dropped else ""
    return Chart(
        number=number,
        series=visible(name),
        width=_WIDTH,
        height=bottom + 34.0,
        left=_LEFT,
        right=_RIGHT,
        top=top,
        bottom=bottom,
        points=" ".join(f"{x:.1f},{y:.1f}" for x, y in coords),
        dots=tuple((f"{x:.1f}", f"{y:.1f}") for x, y in coords) if len(coords) <= 2 else (),
        y_min=number_text(low) if values else "—",
        y_max=number_text(high) if values else "—",
        x_min=format_instant(start) if start else "—",
        x_max=format_instant(end) if end else "—",
        markers=markers,
        note=note,
    )
