"""Side-by-side judgement while two versions of a service serve at once (a canary, a rollout).

When the version metric shows a service's new version serving next to the one
before it, the two see the same time of day and the same load: comparing them
at the same moment cancels both. rollbackd reads each rule's per-version form
(:mod:`rollbackd.core.promql_split`) and, for a *split* service:

- a **relative** rule (``> +50%``) takes the old version's value at the same
  moment as its baseline, in place of the pre-deploy (or seasonal) one
  (:func:`override_relative`): the morning rush raises both, and is nobody's fault;
- an **evidence** rule (``events``/``volume``) gets a second finding,
  ``canary:RULE`` (:func:`judge_evidence`): the new version's events and volume
  since it appeared, judged on the same confidence sequence as the whole
  service's, fire only when the new version is past the threshold *and* worse
  than the old version over the same moments (its bound beyond the old version's
  opposite bound, each at half the rule's alpha, so together at the rule's
  confidence). When the old version is past the threshold too, it is not the new
  version's doing: no side-by-side finding (the whole-service rule still sees it).

A side-by-side finding rolls back the new version only (:func:`canary_decision`):
the target is the old version serving alongside, and the reason says the share.

Per-version answers come keyed ``service/version`` (:data:`SEPARATOR`; the
service's name never holds it). Pure: values and times in, values out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from rollbackd.core.deploys import DeployHistory
from rollbackd.core.durations import format_instant
from rollbackd.core.evidence import Evidence, accumulate, bounds, spent
from rollbackd.core.matrix import assess_severity
from rollbackd.core.model import Decision, Finding, FindingState, Measurement, Vector
from rollbackd.core.promql_split import Labels, NotRewritable, per_version
from rollbackd.core.rules import Key, Rule

SEPARATOR = "/"
"""Joins service and version in the keys of per-version answers (not in a service name)."""

PREFIX = "canary:"
"""A side-by-side finding is named ``canary:RULE``, as an alert's is ``alert:NAME``."""

SCOPE_CANARY = "canary"
SCOPE_ALL = "all"


@dataclass(frozen=True)
class Forms:
    """A rule's per-version queries (keyed ``service/version``)."""

    query: str
    events: str | None = None
    volume: str | None = None


def keyed(query: str, labels: Labels) -> str:
    """``query`` (grouped by service and version) keyed ``service/version`` in its service label."""
    return (
        f'label_join({query}, "{labels.service}", "{SEPARATOR}", '
        f'"{labels.service}", "{labels.version}")'
    )


def instances_query(labels: Labels) -> str:
    """How many instances serve each version of each service, keyed ``service/version``."""
    return keyed(f"count by ({labels.service}, {labels.version}) ({labels.version_metric})", labels)


def judged_side_by_side(rule: Rule) -> bool:
    """Whether the rule's kind is judged side by side at all: evidence and relative rules."""
    return rule.query is not None and (rule.weighs_evidence or rule.relative)


def forms_of(rules: Iterable[Rule], labels: Labels) -> tuple[dict[str, Forms], dict[str, str]]:
    """Each side-by-side rule's per-version forms, and why the others that would be cannot."""
    forms: dict[str, Forms] = {}
    unsplittable: dict[str, str] = {}
    for rule in rules:
        if not judged_side_by_side(rule):
            continue
        assert rule.query is not None  # noqa: S101 -- judged_side_by_side checked it
        try:
            query = keyed(per_version(rule.query, labels), labels)
            events = volume = None
            if rule.events is not None and rule.volume is not None:
                events = keyed(per_version(rule.events, labels), labels)
                volume = keyed(per_version(rule.volume, labels), labels)
        except NotRewritable as exc:
            unsplittable[rule.name] = f"cannot be judged side by side: {exc}"
            continue
        forms[rule.name] = Forms(query, events, volume)
    return forms, unsplittable


@dataclass(frozen=True)
class Split:
    """A service with two versions serving: ``new`` (the current deploy, since ``since``)
    and ``old`` (the one that ran before it, still serving)."""

    service: str
    new: str
    old: str
    since: datetime


def split_of(service: str, present: Iterable[str], history: DeployHistory) -> Split | None:
    """The service's split if two or more versions serve: the current deploy's version
    against the newest earlier deploy's version still serving (None: one version)."""
    serving = set(present)
    if len(serving) < 2:
        return None
    current = history.current(service)
    if current is None or current.version not in serving:
        return None
    for deploy in reversed(history.deploys(service)):
        if deploy.version != current.version and deploy.version in serving:
            return Split(service, current.version, deploy.version, current.time)
    return None


@dataclass(frozen=True)
class SideBySide:
    """One look's per-version answers: by rule name, the query's and the (events, volume)
    answers, keyed ``service/version``; how many instances serve each version."""

    splits: Mapping[str, Split]
    vectors: Mapping[str, Vector] = field(default_factory=dict)
    counts: Mapping[str, tuple[Vector, Vector]] = field(default_factory=dict)
    instances: Vector | None = None


def _get(vector: Vector | None, service: str, version: str) -> Measurement:
    if vector is None:
        return Measurement.missing("not read")
    return vector.get(f"{service}{SEPARATOR}{version}")


def alongside(split: Split) -> str:
    """How a baseline from the old version is named."""
    return f"{split.old} serving alongside at the same moment"


def override_relative(
    rules: Iterable[Rule],
    looked: SideBySide,
    vectors: Mapping[str, Vector],
    baselines: Mapping[Key, Measurement],
) -> tuple[dict[str, Vector], dict[Key, Measurement], set[Key]]:
    """Relative rules of split services judged on the new version, against the old version's
    value at the same moment. Where either value is missing (or the per-version query
    failed: an instance showing two versions) the whole service is judged as before.

    Returns the rules' vectors and the baselines to use, and the keys judged side by side.
    """
    new_vectors = dict(vectors)
    new_baselines = dict(baselines)
    judged: set[Key] = set()
    for rule in rules:
        split_vector = looked.vectors.get(rule.name)
        if not rule.relative or split_vector is None or split_vector.error is not None:
            continue
        whole = vectors.get(rule.name)
        if whole is not None and whole.error is not None:
            continue  # the whole-service query failed: inconclusive, as it says
        numbers = dict(whole.numbers) if whole is not None else {}
        problems = dict(whole.problems) if whole is not None else {}
        changed = False
        for service, split in looked.splits.items():
            new = _get(split_vector, service, split.new)
            old = _get(split_vector, service, split.old)
            if new.value is None or new.is_missing or old.value is None or old.is_missing:
                continue
            numbers[service] = new.value
            problems.pop(service, None)
            new_baselines[(rule.name, service)] = Measurement(old.value, alongside(split))
            judged.add((rule.name, service))
            changed = True
        if changed:
            new_vectors[rule.name] = Vector(numbers, problems)
    return new_vectors, new_baselines, judged


@dataclass(frozen=True)
class CanaryState:
    """What one side-by-side evidence judgement remembers: the split it counts from, the
    new and the old version's evidence, and since when it held or fired."""

    split: Split
    new: Evidence | None = None
    old: Evidence | None = None
    pending_since: datetime | None = None
    firing_since: datetime | None = None


def _count(
    previous: Evidence | None,
    counts: tuple[Vector, Vector] | None,
    service: str,
    version: str,
    window: timedelta,
    start: datetime,
    now: datetime,
) -> Evidence | None:
    """The version's evidence after this look (kept as it was without counts)."""
    if counts is None:
        return previous
    events, volume = (_get(counts[0], service, version), _get(counts[1], service, version))
    if volume.value is None or volume.is_missing:
        return previous
    if events.value is not None and not events.is_missing:
        bad = events.value
    elif counts[0].error is None:
        bad = 0.0  # no series of events yet while there is volume: none happened
    else:
        return previous
    return accumulate(previous, bad, volume.value, window, start, now)


def judge_evidence(
    rules: Iterable[Rule],
    looked: SideBySide,
    states: Mapping[Key, CanaryState],
    now: datetime,
) -> tuple[dict[Key, CanaryState], list[Finding]]:
    """Every evidence rule's side-by-side finding for every split service, and the states."""
    kept: dict[Key, CanaryState] = {}
    findings: list[Finding] = []
    for rule in rules:
        if not rule.weighs_evidence:
            continue
        split_vector = looked.vectors.get(rule.name)
        counts = looked.counts.get(rule.name)
        if split_vector is None:
            continue
        for service, split in looked.splits.items():
            key = (rule.name, service)
            previous = states.get(key)
            if previous is None or previous.split != split:
                previous = CanaryState(split)
            state, finding = _judge_one(rule, split, split_vector, counts, previous, looked, now)
            kept[key] = state
            findings.append(finding)
    return kept, findings


def _judge_one(
    rule: Rule,
    split: Split,
    split_vector: Vector,
    counts: tuple[Vector, Vector] | None,
    previous: CanaryState,
    looked: SideBySide,
    now: datetime,
) -> tuple[CanaryState, Finding]:
    service = split.service
    window = rule.evidence_window
    # Nothing of the new version ran before it appeared: its count starts a window earlier,
    # so the first window is counted whole; the old version's over the same moments.
    start = split.since - window
    new_ev = _count(previous.new, counts, service, split.new, window, start, now)
    old_ev = _count(previous.old, counts, service, split.old, window, start, now)
    state = replace(previous, new=new_ev, old=old_ev)
    new_value = _get(split_vector, service, split.new)
    old_value = _get(split_vector, service, split.old)
    condition = rule.condition
    threshold = condition.amount
    above = condition.op in (">", ">=")
    share = _share(looked, counts, split)
    severity, severity_reason = assess_severity(rule.trigger, rule.severity, share)

    def finding(
        finding_state: FindingState,
        reason: str,
        bound: float | None = None,
        trials: tuple[float, float] | None = None,
    ) -> Finding:
        return Finding(
            rule=PREFIX + rule.name,
            service=service,
            trigger=rule.trigger,
            state=finding_state,
            time=now,
            value=new_value.value,
            threshold=threshold,
            baseline=old_value.value,
            baseline_basis=alongside(split) if old_value.value is not None else "",
            condition=condition.text,
            severity=severity,
            reason=reason,
            since=state.firing_since or state.pending_since,
            started=state.pending_since,
            impact=share,
            severity_reason=severity_reason,
            labels=dict(rule.labels),
            last_seen=now,
            events=None if trials is None else trials[0],
            volume=None if trials is None else trials[1],
            bound=bound,
            confidence=rule.confidence if trials is not None else None,
        )

    who = f"{split.new} side by side with {split.old}"
    if new_value.value is None or new_value.is_missing:
        state = replace(state, pending_since=None, firing_since=None)
        return state, finding(
            FindingState.INCONCLUSIVE,
            f"{who}: inconclusive: no value for {split.new}: {new_value.reason or 'no value'}",
        )
    value = new_value.value
    if not condition.holds(value, threshold):
        state = replace(state, pending_since=None, firing_since=None)
        return state, finding(
            FindingState.OK, f"{who}: {value:.6g} {condition.op} {threshold:g} does not hold"
        )
    old_holds = (
        old_value.value is not None
        and not old_value.is_missing
        and condition.holds(old_value.value, threshold)
    )
    if old_holds:
        state = replace(state, pending_since=None, firing_since=None)
        return state, finding(
            FindingState.OK,
            f"{who}: {split.old} is past the threshold too ({old_value.value:.6g} "
            f"{condition.op} {threshold:g}): not {split.new}'s doing (the whole service is judged "
            "on its own)",
        )
    pending_since = state.pending_since or now
    if new_ev is None:
        state = replace(state, pending_since=pending_since)
        return state, finding(
            FindingState.PENDING, f"{who}: {value:.6g} {condition.op} {threshold:g}, no counts yet"
        )
    each = 1.0 - (1.0 - rule.confidence) / 2.0  # both bounds together at the rule's confidence
    level = spent(each, 0)
    new_trials = new_ev.trials
    new_low, new_high = bounds(*new_trials, threshold, level)
    old_trials = old_ev.trials if old_ev is not None else (0.0, 0.0)
    old_low, old_high = bounds(*old_trials, threshold, level)
    new_bound = new_low if above else new_high
    past = new_low > threshold if above else new_high < threshold
    worse = new_low > old_high if above else new_high < old_low
    enough = past and worse and new_ev.volume >= rule.min_volume
    counted = (
        f"{new_trials[0]:.6g} events in a volume of {new_trials[1]:.6g} since {split.new} "
        f"appeared at {format_instant(split.since)} ({'lower' if above else 'upper'} bound "
        f"{new_bound:.4g}); {split.old} alongside: {old_trials[0]:.6g} in {old_trials[1]:.6g} "
        f"({'upper' if above else 'lower'} bound {old_high if above else old_low:.4g}), "
        f"at confidence {rule.confidence:g}"
    )
    if new_ev.volume < rule.min_volume:
        counted += f" (volume {new_ev.volume:.6g} is below min_volume {rule.min_volume:g})"
    firing_since = state.firing_since or (now if enough else None)
    state = replace(state, pending_since=pending_since, firing_since=firing_since)
    head = f"{who}: {value:.6g} {condition.op} {threshold:g}"
    if firing_since is not None:
        return state, finding(
            FindingState.FIRING,
            f"{head} and {split.new} is worse than {split.old} at the same moments: {counted}; "
            f"firing since {format_instant(firing_since)}",
            new_bound,
            new_trials,
        )
    return state, finding(
        FindingState.PENDING,
        f"{head}, but the evidence is not enough yet: {counted}",
        new_bound,
        new_trials,
    )


def _share(looked: SideBySide, counts: tuple[Vector, Vector] | None, split: Split) -> float | None:
    """The new version's share of the service's requests in the last window (None: unknown)."""
    if counts is None:
        return None
    new = _get(counts[1], split.service, split.new).value
    old = _get(counts[1], split.service, split.old).value
    if new is None or old is None or new + old <= 0:
        return None
    return new / (new + old)


def is_side_by_side(finding: Finding, judged: Iterable[Key], firing: Iterable[Finding]) -> bool:
    """Whether a firing finding is the new version's doing only: a ``canary:`` finding, a
    relative rule whose baseline was the old version's, or a whole-service rule whose
    ``canary:`` form fires too (the new version is worse than the old one at the same
    moments, and the old one is not past the threshold: the service's rate is up by it)."""
    if finding.rule.startswith(PREFIX) or (finding.rule, finding.service) in set(judged):
        return True
    return any(f.firing and f.rule == PREFIX + finding.rule for f in firing)


def share_text(looked: SideBySide, split: Split, findings: Iterable[Finding]) -> str:
    """ "v2 serves 1 of 4 instances, 26 % of requests; v1 alongside: 0.3 % (error-rate)"."""
    parts = []
    instances = looked.instances
    new_count = _get(instances, split.service, split.new).value
    old_count = _get(instances, split.service, split.old).value
    serves = f"{split.new} serves"
    if new_count is not None and old_count is not None:
        serves += f" {new_count:.0f} of {new_count + old_count:.0f} instances"
    shares = [f.impact for f in findings if f.impact is not None]
    if shares:
        comma = "," if serves.endswith("instances") else ""
        serves += f"{comma} {shares[0] * 100:.3g} % of requests"
    parts.append(serves)
    old_values = [
        f"{f.baseline:.4g} ({f.rule.removeprefix(PREFIX)})"
        for f in findings
        if f.baseline is not None
    ]
    if old_values:
        parts.append(f"{split.old} alongside: {', '.join(old_values)}")
    return "side by side: " + "; ".join(parts)


def canary_decision(decision: Decision, split: Split, text: str) -> Decision:
    """A decision that rolls back the new version's share only: the reason says so."""
    return replace(
        decision,
        reason=f"{decision.reason}; {text}; rolls back {split.new}'s share only",
        scope=SCOPE_CANARY,
        canary_version=split.new,
    )
