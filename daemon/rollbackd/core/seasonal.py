"""Seasonal baselines: the daily and weekly rhythm a relative rule must not blame on a deploy.

A relative rule (``> +50%``) compares a value now with the service's value before
the deploy. Latency rises every morning: a deploy at 08:55 would be blamed for
09:30's rush. A rule with ``baseline = "seasonal"`` looks at the same hours on
earlier days (its ``seasonality``, by default 1 day and 7 days ago), where this
deploy was not running, and asks how much the value moved there from the
pre-deploy window's time of day to now's time of day:

    ratio(d) = value around (now - d) / average over the baseline window before (deploy - d)

    seasonal baseline = pre-deploy baseline x factor
    factor = max(1, largest ratio(d))     for rules that fire on a rise (> >=)
    factor = min(1, smallest ratio(d))    for rules that fire on a fall (< <=)

"Value around (now - d)" is the rule's largest (for a fall: smallest) value within
:data:`SLACK` either side, so a rush that comes ten minutes earlier today than
yesterday is still the usual rush. Conservative on both sides: the largest move
any earlier day showed is allowed for, so the usual rhythm is never the deploy's
fault; the factor never tightens the pre-deploy baseline, so a seasonal rule never
fires where the plain pre-deploy rule would not; and a regression on top of the
rhythm still exceeds ``pre-deploy x factor x (1 + 50%)``.

An earlier day counts only while its hours lie wholly before the deploy (a day
whose "now" is after the deploy would show this deploy's own effect), and only if
it has both values. Without any such day (a new service, short retention, gaps)
the baseline is the pre-deploy one, and it says so. A read that *failed* (an error,
a timeout) leaves the baseline missing, so the rule is inconclusive: a failure
must not silently tighten the comparison back to the pre-deploy value.

Pure: values and times in, a :class:`~rollbackd.core.model.Measurement` out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rollbackd.core.durations import format_duration
from rollbackd.core.model import Measurement

SLACK = timedelta(minutes=10)
"""How far either side of now's time of day an earlier day's value is looked for."""

SLACK_RESOLUTION = timedelta(minutes=1)
"""The step at which the rule's value is sampled within that slack."""

DEFAULT_SEASONALITY = (timedelta(days=1), timedelta(days=7))
"""Yesterday, and the same weekday last week (a Monday's rush is not in Sunday's hours)."""


@dataclass(frozen=True)
class PastDay:
    """The rule's values for one service on one earlier day (``offset`` ago).

    ``before``: its average over the baseline window before the deploy's time of
    day, that day; ``around_now``: its value around now's time of day, that day.
    Each is a measurement (missing: why). ``failed`` says a read failed rather
    than found nothing, which makes the whole baseline inconclusive.
    """

    offset: timedelta
    before: Measurement
    around_now: Measurement
    failed: bool = False


def usable(offset: timedelta, deployed: datetime, now: datetime) -> bool:
    """Whether the day ``offset`` ago shows the rhythm without this deploy: its hours
    around now's time of day end before the deploy."""
    return now - offset + SLACK <= deployed


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _ago(offset: timedelta) -> str:
    return f"{format_duration(offset)} ago"


def seasonal_baseline(
    pre_deploy: Measurement,
    days: Sequence[PastDay],
    rising: bool,
    deployed: datetime,
    now: datetime,
) -> Measurement:
    """The pre-deploy baseline adjusted by the rhythm of earlier days, with the reason.

    ``rising``: the rule fires on a rise (``>``, ``>=``), so the largest usual rise
    is allowed for; otherwise the largest usual fall. A missing pre-deploy
    baseline stays missing (the rule says why).
    """
    if pre_deploy.is_missing or pre_deploy.value is None:
        return pre_deploy
    pre = pre_deploy.value
    ratios: list[tuple[timedelta, float, float, float]] = []
    unused: list[str] = []
    for day in sorted(days, key=lambda d: d.offset):
        if not usable(day.offset, deployed, now):
            unused.append(f"{_ago(day.offset)}: those hours are after the deploy")
            continue
        if day.failed:
            why = day.before.reason if day.before.is_missing else day.around_now.reason
            return Measurement.missing(
                f"the same hours {_ago(day.offset)} could not be read: {why}"
            )
        before, around = day.before.value, day.around_now.value
        if day.before.is_missing or before is None:
            unused.append(f"{_ago(day.offset)}: {day.before.reason or 'no value'} before")
        elif day.around_now.is_missing or around is None:
            unused.append(f"{_ago(day.offset)}: {day.around_now.reason or 'no value'} at now")
        elif before <= 0:
            unused.append(f"{_ago(day.offset)}: {_fmt(before)} before, no ratio")
        else:
            ratio = around / before
            if math.isfinite(ratio):
                ratios.append((day.offset, ratio, before, around))
            else:
                unused.append(f"{_ago(day.offset)}: no finite ratio")
    skipped = f"; not used: {', '.join(unused)}" if unused else ""
    if not ratios:
        detail = f" ({', '.join(unused)})" if unused else ""
        return Measurement(pre, f"pre-deploy {_fmt(pre)}: no seasonal history{detail}")
    chosen = max(r for _, r, _, _ in ratios) if rising else min(r for _, r, _, _ in ratios)
    factor = max(1.0, chosen) if rising else min(1.0, chosen)
    shown = ", ".join(
        f"{_ago(offset)} x{_fmt(ratio)} ({_fmt(before)} -> {_fmt(around)})"
        for offset, ratio, before, around in ratios
    )
    usual = "rise" if rising else "fall"
    if factor == 1.0:
        return Measurement(
            pre,
            f"pre-deploy {_fmt(pre)}: no usual {usual} at these hours "
            f"(same hours {shown}){skipped}",
        )
    return Measurement(
        pre * factor,
        f"pre-deploy {_fmt(pre)} x {_fmt(factor)}, the usual {usual} at these hours "
        f"(same hours {shown}){skipped}",
    )
