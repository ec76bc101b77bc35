"""Evidence strength: how much traffic stands behind a ratio, judged over repeated looks.

A ratio rule that names the events and the volume behind its ratio (``events``,
``volume``) is not judged on the ratio alone: rollbackd counts events and volume
since the service's deploy and asks whether the *true* proportion is past the
threshold, with a confidence sequence for a binomial proportion (a conjugate
Beta mixture of likelihood ratios, as in Lindon et al., "Rapid Regression
Detection in Software Deployments through Sequential Testing", KDD 2022, and
Howard et al., "Time-uniform, nonparametric, nonasymptotic confidence
sequences", 2021).

For every proportion ``p`` the mixture likelihood ratio

    M_n(p) = B(a + k, b + n - k) / B(a, b) / (p^k (1 - p)^(n - k))

(``k`` events in ``n`` trials, prior Beta(a, b)) is a nonnegative martingale
when ``p`` is the true proportion, so by Ville's inequality the set
``{p : M_n(p) < 1 / alpha}`` holds the true proportion at *every* look at once
with probability at least ``1 - alpha``. The daemon looks every poll interval;
alarming when the whole set lies past the threshold is a false alarm with
probability at most ``alpha`` over all those looks together, not per look.

Counts since the deploy come from rate windows (``increase(x[1m])``): the count
in the last window is seen exactly, what came before it is remembered from
earlier looks (:func:`accumulate`), so the evidence has no window's lag and a
gross regression is decided within seconds. What came before is one running
total, the *settled* count, that adds each look's window at the share of the
window since the look before: every request counted once, by one chain of
looks. (Adding each window to the count a window earlier instead would make
four independent chains at a 1m window and a 15s poll, each adding up its own
share of Prometheus' extrapolation noise; the difference between two chains
grows without bound, and after a restart of the test it reads as a burst of
errors that never happened.) Counter resets are handled by ``increase()``; a
part of the time no look saw (a gap longer than the window) is no evidence
either way, and is left out.

The test restarts when its evidence says the proportion is on the healthy side
of the threshold (a repeated sequential test, like Page's CUSUM): a version that
served well for hours is still judged promptly if it starts failing later. Each
restart is a new chance of a false alarm, so restarts are rationed and pay for
themselves: a test restarts only once it has judged at least as much traffic as
all the tests before it (the volume doubles from one restart to the next, so a
day of traffic makes a few dozen restarts, not thousands), and test ``k`` (from
0) is held to ``alpha / 2**(k + 1)`` (:func:`spent`): over every test since the
deploy the false alarms add up to ``alpha`` at most, as for one test.

Pure: values and times in, values out; no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

PRIOR_STRENGTH = 10.0
"""The Beta prior's pseudo-count, centred on the threshold: Beta(m·p0, m·(1 - p0)).

Ten pseudo-observations put the mixture's weight on proportions near the
threshold, where the evidence is hard to get, while a gross regression still
stands out after a few dozen requests.
"""

BISECTIONS = 40
"""Halvings that find a bound: to within 1e-12 of the truth, far below what is shown."""

LOOKS_KEPT = 400
"""At most this many recent looks are remembered per (rule, service)."""


class Side(StrEnum):
    """Where the evidence puts the true proportion, relative to the threshold."""

    ABOVE = "above"
    BELOW = "below"
    UNDECIDED = "undecided"


@dataclass(frozen=True, slots=True)
class Evidence:
    """Counts of one (rule, service) since ``start``, and since its test last restarted.

    ``start`` is the deploy the counts run from (or the first look, when no deploy
    is known); ``deploy`` is that deploy's time (None: none known). ``events`` and
    ``volume`` are estimated counts since ``start`` (fractional: rate windows are
    extrapolated by Prometheus); ``looks`` holds recent (time, events, volume)
    settled cumulative points (see :func:`accumulate`), to know the count up to a
    window's start; ``window`` is
    the last look's window counts, ``before`` the last window's counts before the
    start (the previous version's rate). ``tested_events``/``tested_volume`` are the
    counts at the test's last restart, ``tested_from`` its time (None: the test runs
    from the start), ``restarts`` how many there were.
    """

    start: datetime
    deploy: datetime | None
    events: float = 0.0
    volume: float = 0.0
    looks: tuple[tuple[datetime, float, float], ...] = ()
    window: tuple[float, float] | None = None
    before: tuple[float, float] | None = None
    tested_events: float = 0.0
    tested_volume: float = 0.0
    tested_from: datetime | None = None
    restarts: int = 0

    @property
    def trials(self) -> tuple[float, float]:
        """The counts the test judges: (events, volume) since it last restarted, sane."""
        volume = max(self.volume - self.tested_volume, 0.0)
        events = min(max(self.events - self.tested_events, 0.0), volume)
        return events, volume

    @property
    def last_look(self) -> datetime | None:
        return self.looks[-1][0] if self.looks else None

    @property
    def settled(self) -> tuple[float, float]:
        """The settled (events, volume) at the last look: one running total, where
        ``events``/``volume`` add the last window exactly to the settled count a window ago."""
        if not self.looks:
            return self.events, self.volume
        _, events, volume = self.looks[-1]
        return events, volume


def accumulate(
    previous: Evidence | None,
    window_events: float,
    window_volume: float,
    window: timedelta,
    deploy: datetime | None,
    now: datetime,
) -> Evidence:
    """The evidence after one look that saw ``window_events`` of ``window_volume``
    in the ``window`` ending at ``now``.

    The count since the start is the count in this window plus the settled count
    up to the window's start, read from earlier looks (interpolated between the
    looks around it). The settled count adds each window at the share of it that
    is new since the look before (all of it after a gap longer than the window):
    one running total, so two looks' counts differ by what came between them, not
    by the extrapolation noise of separate chains of windows. A window reaching
    back before the start holds some of the previous version's traffic: that part
    is taken out at the rate the last window before the start showed (at this
    window's own rate when none did); until the first window has passed, the
    settled count is the window's own.
    """
    seconds = window.total_seconds()
    if seconds <= 0:
        raise ValueError("an evidence window must be longer than 0s")
    window_events = max(window_events, 0.0)
    window_volume = max(window_volume, 0.0)
    window_events = min(window_events, window_volume)
    if previous is None or previous.deploy != deploy:
        start = deploy if deploy is not None else now
        before = previous.window if previous is not None else None
        previous = Evidence(start=start, deploy=deploy, before=before)
    edge = now - window
    if edge <= previous.start:
        # The window began before the counting did: take out the part before the start.
        share = min((previous.start - edge).total_seconds() / seconds, 1.0)
        rate = previous.before if previous.before is not None else (window_events, window_volume)
        events = window_events - share * rate[0]
        volume = window_volume - share * rate[1]
        events = max(min(events, volume), 0.0) if volume > 0 else 0.0
        volume = max(volume, 0.0)
        settled = (events, volume)
    else:
        upto_events, upto_volume = _at(previous, edge)
        events = upto_events + window_events
        volume = upto_volume + window_volume
        settled = (events, volume)
        if previous.looks:
            last, last_events, last_volume = previous.looks[-1]
            share = min(max((now - last).total_seconds(), 0.0) / seconds, 1.0)
            settled = (last_events + share * window_events, last_volume + share * window_volume)
    looks = (*_kept(previous.looks, edge), (now, *settled))
    if len(looks) > LOOKS_KEPT:
        looks = looks[-LOOKS_KEPT:]
    return Evidence(  # not dataclasses.replace: this runs per service and look
        previous.start,
        previous.deploy,
        events,
        volume,
        looks,
        (window_events, window_volume),
        previous.before,
        previous.tested_events,
        previous.tested_volume,
        previous.tested_from,
        previous.restarts,
    )


def carry(previous: Evidence | None, deploy: datetime | None) -> Evidence | None:
    """The evidence kept through a look without counts: the same, unless the deploy
    changed (then there is none yet for the new one)."""
    if previous is None or previous.deploy != deploy:
        return None
    return previous


def _at(evidence: Evidence, moment: datetime) -> tuple[float, float]:
    """The cumulative counts at ``moment`` (after the start), from the looks around it.

    Between two looks, linear; after the last look (a gap longer than the window),
    the last look's counts: what no look saw is no evidence.
    """
    before = (evidence.start, 0.0, 0.0)
    for look in evidence.looks:
        when, events, volume = look
        if when <= moment:
            before = look
            continue
        span = (when - before[0]).total_seconds()
        if span <= 0:
            return before[1], before[2]
        share = (moment - before[0]).total_seconds() / span
        return (
            before[1] + share * (events - before[1]),
            before[2] + share * (volume - before[2]),
        )
    return before[1], before[2]


def _kept(
    looks: tuple[tuple[datetime, float, float], ...], edge: datetime
) -> tuple[tuple[datetime, float, float], ...]:
    """The looks a later window's start can still fall among: the last at or before
    ``edge`` and all after it."""
    first = 0
    for index, look in enumerate(looks):
        if look[0] <= edge:
            first = index
    return looks[first:]


def log_mixture(
    events: float, volume: float, proportion: float, prior: tuple[float, float]
) -> float:
    """log M_n(p): the Beta(a, b) mixture's likelihood ratio against ``proportion``."""
    return _log_marginal(events, volume, prior) - _log_likelihood(events, volume, proportion)


def _log_marginal(events: float, volume: float, prior: tuple[float, float]) -> float:
    """log of the counts' likelihood averaged over the prior, over B(a, b)'s normaliser."""
    a, b = prior
    return _log_beta(a + events, b + volume - events) - _log_beta(a, b)


def _log_likelihood(events: float, volume: float, proportion: float) -> float:
    return _xlog(events, proportion) + _xlog(volume - events, 1.0 - proportion)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _xlog(count: float, proportion: float) -> float:
    """count · log(proportion), with 0 · log 0 = 0."""
    if count <= 0:
        return 0.0
    if proportion <= 0:
        return -math.inf
    return count * math.log(proportion)


def prior_for(threshold: float) -> tuple[float, float]:
    """The Beta prior centred on the threshold (see :data:`PRIOR_STRENGTH`)."""
    return PRIOR_STRENGTH * threshold, PRIOR_STRENGTH * (1.0 - threshold)


def side(events: float, volume: float, threshold: float, confidence: float) -> Side:
    """Where the confidence sequence puts the true proportion: wholly above the
    threshold, wholly below it, or undecided (the threshold inside it)."""
    if volume <= 0:
        return Side.UNDECIDED
    observed = events / volume
    if observed == threshold:
        return Side.UNDECIDED
    level = math.log(1.0 / (1.0 - confidence))
    if log_mixture(events, volume, threshold, prior_for(threshold)) < level:
        return Side.UNDECIDED
    return Side.ABOVE if observed > threshold else Side.BELOW


def bounds(
    events: float, volume: float, threshold: float, confidence: float
) -> tuple[float, float]:
    """The confidence sequence's interval for the true proportion at this look."""
    if volume <= 0:
        return 0.0, 1.0
    # Outside the sequence where the likelihood falls below the marginal over 1 / alpha.
    floor = _log_marginal(events, volume, prior_for(threshold)) - math.log(1.0 / (1.0 - confidence))
    observed = min(max(events / volume, 0.0), 1.0)

    def outside(proportion: float) -> bool:
        return _log_likelihood(events, volume, proportion) <= floor

    lower = _edge(outside, 0.0, observed) if events > 0 else 0.0
    upper = _edge(outside, 1.0, observed) if events < volume else 1.0
    return lower, upper


def _edge(outside: Callable[[float], bool], end: float, inside: float) -> float:
    """Where the interval ends between ``end`` (outside it, or the end of [0, 1]) and
    ``inside`` (its centre), by bisection."""
    if not outside(end):
        return end
    for _ in range(BISECTIONS):
        middle = (end + inside) / 2
        if outside(middle):
            end = middle
        else:
            inside = middle
    return inside


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the evidence says against a threshold at one look.

    ``past``: the whole confidence sequence is on the condition's side (the rule may
    fire); ``bound``: its end nearest the threshold (the lower bound for ``>``,
    the upper for ``<``); ``events``/``volume``: the counts judged.
    """

    past: bool
    bound: float
    events: float
    volume: float
    side: Side


def spent(confidence: float, restarts: int) -> float:
    """The confidence test number ``restarts`` is held to: its share ``alpha / 2**(k + 1)``
    of the false-alarm probability ``alpha = 1 - confidence`` (the shares add up to alpha)."""
    return 1.0 - (1.0 - confidence) / 2.0 ** (restarts + 1)


def judge(evidence: Evidence, threshold: float, above: bool, confidence: float) -> Verdict:
    """Whether ``evidence`` shows the true proportion above (``above``) or below the threshold."""
    confidence = spent(confidence, evidence.restarts)
    events, volume = evidence.trials
    where = side(events, volume, threshold, confidence)
    lower, upper = bounds(events, volume, threshold, confidence)
    wanted = Side.ABOVE if above else Side.BELOW
    return Verdict(where is wanted, lower if above else upper, events, volume, where)


def restart_if_healthy(evidence: Evidence, where: Side, above: bool) -> Evidence:
    """A new test from here when the evidence shows the healthy side of the threshold.

    Counts since the deploy go on; the test judges only what comes after the
    restart, so a long healthy run does not hide a later regression.
    """
    healthy = Side.BELOW if above else Side.ABOVE
    if where is not healthy:
        return evidence
    if evidence.trials[1] < evidence.tested_volume:  # rationed: the volume doubles each time
        return evidence
    # From the settled count: the last window's own noise is not carried into the next test.
    events, volume = evidence.settled
    return replace(
        evidence,
        tested_events=events,
        tested_volume=volume,
        tested_from=evidence.last_look,
        restarts=evidence.restarts + 1,
    )
