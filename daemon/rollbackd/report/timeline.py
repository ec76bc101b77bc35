"""The timeline: every journaled moment of an incident in order, and the few key moments
(deploy, first decision, rollback, recovery verdict) that the charts mark."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from rollbackd.core.durations import format_instant
from rollbackd.journal import IncidentRecord, Outcome
from rollbackd.report.cells import json_text, offset, or_missing
from rollbackd.report.evidence import (
    COLUMNS,
    RECOVERY_CHECK,
    Deploy,
    Item,
    check_held,
    parse_time,
    rows_of,
    the_deploy,
)
from rollbackd.report.playbook import EXECUTE_STEP, RECOVERY_STEP
from rollbackd.report.view import Event
from rollbackd.text import one_line, visible


def moments(incident: IncidentRecord) -> Iterator[tuple[datetime, str]]:
    """Every journaled moment of the incident with what happened then."""
    for decision in incident.decisions:
        yield decision.time, "decision"
    for step in incident.steps:
        yield step.started_at, "step"
        if step.finished_at is not None:
            yield step.finished_at, "step"
    for record in incident.evidence:
        yield record.time, "evidence"


def timeline(
    incident: IncidentRecord, items: Sequence[Item], deploys: Sequence[Deploy]
) -> tuple[Event, ...]:
    """Every event of the incident, oldest first; at one instant, in the order things happen."""
    entries: list[tuple[datetime, int, str, str]] = []

    def add(at: datetime, priority: int, kind: str, text: str) -> None:
        entries.append((at, priority, kind, text))

    for deploy in deploys:
        source = f" (from {visible(deploy.source)})" if deploy.source else ""
        add(
            deploy.time,
            0,
            "deploy",
            f"deploy of {or_missing(deploy.version, 'a new version')}{source}",
        )
    add(
        incident.opened_at,
        2,
        "incident",
        f"incident opened: {visible(incident.origin)}, severity {visible(incident.severity)}, "
        f"action {visible(incident.action)} — {or_missing(incident.reason)}",
    )
    seen_findings: set[tuple[str, str, str]] = set()
    checks = [i for i in items if i.kind == RECOVERY_CHECK]
    for item in items:
        if item.kind == RECOVERY_CHECK:
            continue
        if item.kind == "findings":
            for row in rows_of(item.body)[0]:
                since = parse_time(row.get("since"))
                state = str(row.get("state", ""))
                key = (str(row.get("rule")), state, str(since))
                if since is None or state in ("", "ok") or key in seen_findings:
                    continue
                seen_findings.add(key)
                add(
                    since,
                    1,
                    "finding",
                    f"{or_missing(row.get('rule'), 'a rule')} {visible(state)} since here: "
                    f"{or_missing(row.get('reason'))}",
                )
        add(item.time, 3, "evidence", f"evidence journaled: {describe(item)}")
    for number, check in enumerate(checks, 1):
        held = check_held(check.body)
        previous = check_held(checks[number - 2].body) if number > 1 else None
        if number in (1, len(checks)) or held != previous:
            add(
                check.time,
                3,
                "recovery",
                f"recovery check {number} of {len(checks)}: " + check_text(check.body),
            )
    for decision in incident.decisions:
        approval = ""
        if decision.approver:
            deadline = f" by {format_instant(decision.deadline)}" if decision.deadline else ""
            approval = f"; approver {visible(decision.approver)}{deadline}"
        add(
            decision.time,
            4,
            "decision",
            f"{visible(decision.actor)} decided {visible(decision.action)} (proposed "
            f"{visible(decision.proposed)}, severity {visible(decision.severity)}{approval}) — "
            f"{or_missing(decision.reason)}",
        )
    for step in incident.steps:
        if step.finished_at is None:
            add(step.started_at, 5, "step", f"step {visible(step.name)} started; never finished")
            continue
        add(step.started_at, 5, "step", f"step {visible(step.name)} started")
        outcome = step.outcome.value if step.outcome else "unknown"
        add(
            step.finished_at,
            5,
            "step",
            f"step {visible(step.name)} finished: {outcome} — {or_missing(step.summary)}",
        )
    if incident.closed_at is not None:
        add(
            incident.closed_at,
            7,
            "state",
            f"incident {incident.state.value}: {or_missing(incident.summary)}",
        )
    ordered = sorted(enumerate(entries), key=lambda e: (e[1][0], e[1][1], e[0]))
    return tuple(
        Event(format_instant(at), offset(at, incident.opened_at), kind, text)
        for _, (at, _p, kind, text) in ordered
    )


def describe(item: Item) -> str:
    """A piece of evidence in a few words: how many rows of what."""
    if item.kind in COLUMNS:
        dicts, others = rows_of(item.body)
        count = len(dicts) + len(others)
        return f"{count} {item.kind if count != 1 else item.kind.rstrip('s')}"
    return visible(item.kind)


def check_text(body: Any) -> str:
    """A recovery check's verdict in words, naming the first failure or the missing data."""
    if not isinstance(body, dict):
        return f"unreadable ({json_text(body)})"
    if body.get("held"):
        return "the criteria hold"
    failures = [visible(str(f)) for f in body.get("failures") or []]
    if not failures:
        missing = [visible(str(m)) for m in body.get("missing") or []]
        return "the criteria do not hold" + (f": {missing[-1]}" if missing else "")
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return f"the criteria do not hold: {failures[0]}{more}"


def markers(incident: IncidentRecord, deploys: Sequence[Deploy]) -> list[tuple[datetime, str, str]]:
    """The key moments as (time, label, kind): deploy, first decision, rollback, verdict."""
    marks: list[tuple[datetime, str, str]] = []
    deploy = the_deploy(incident, deploys)
    if deploy is not None:
        marks.append((deploy.time, _short(f"deploy {deploy.version or ''}".strip()), "deploy"))
    if incident.decisions:
        first = min(incident.decisions, key=lambda d: d.time)
        marks.append((first.time, _short(f"decision: {visible(first.action)}"), "decision"))
    execute = incident.step(EXECUTE_STEP)
    if execute is not None:
        failed = execute.outcome not in (None, Outcome.OK)
        label = f"rollback ({execute.outcome.value})" if failed and execute.outcome else "rollback"
        marks.append((execute.started_at, label, "rollback"))
    recovery = incident.step(RECOVERY_STEP)
    if recovery is not None and recovery.finished_at is not None:
        outcome = recovery.outcome or Outcome.UNKNOWN  # unproven is not "not recovered"
        word = {Outcome.OK: "recovered", Outcome.FAILED: "not recovered"}.get(
            outcome, f"recovery {outcome.value}"
        )
        marks.append((recovery.finished_at, word, "recovery"))
    return sorted(marks, key=lambda m: m[0])


def _short(text: str, limit: int = 28) -> str:
    """A label on the chart: one line, its controls shown as escapes, clipped."""
    return one_line(visible(text), limit)
