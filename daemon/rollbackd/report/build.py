"""The report's sections, built from one wholly loaded incident as a :class:`ReportView`: the
summary, the evidence tables, the decisions, the checklist steps, the recovery watch and the
sampled series. Pure: no clock, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rollbackd.core.durations import format_duration, format_instant
from rollbackd.journal import IncidentRecord, Outcome, StepRecord
from rollbackd.report.cells import clip, compact, json_text, number_text, offset, or_missing
from rollbackd.report.chart import charts, finite
from rollbackd.report.evidence import (
    COLUMNS,
    RECOVERY_CHECK,
    UNMEASURED,
    Item,
    check_held,
    evidence_items,
    flatten_alert,
    journaled_deploys,
    parse_time,
    rows_of,
)
from rollbackd.report.playbook import (
    CRITERIA_BY_HAND,
    CRITERIA_CHECKED,
    FOLLOW_UP,
    RECOVERY_STEP,
    playbook_item,
)
from rollbackd.report.timeline import check_text, markers, moments, timeline
from rollbackd.report.view import (
    DecisionView,
    EvidenceGroup,
    Field,
    RecoveryView,
    ReportView,
    StepView,
    Table,
)
from rollbackd.text import visible

CHECK_ROWS = 40
"""Recovery checks listed one per row; beyond this, only the changes and the last are listed."""

NO_SAMPLES = "no samples were journaled for this incident"

_TITLES = {"findings": "Findings", "deploys": "Deploys", "alerts": "Firing alerts"}
_HIDDEN = {"type"}
_TIME_KEYS = {"time", "since", "started", "startsAt", "endsAt", "deployed_at"}


def build_view(incident: IncidentRecord) -> ReportView:
    """What the report says, as plain (cleaned, not yet escaped) text."""
    items = list(evidence_items(incident.evidence))
    deploys = journaled_deploys(incident, items)
    marks = markers(incident, deploys)
    state = incident.state.value
    return ReportView(
        id=incident.id,
        title=f"Incident {incident.id}: {visible(incident.service)} — {state}",
        service=visible(incident.service),
        state=state,
        summary=_summary(incident),
        facts=tuple(
            Field(visible(str(key)), compact(value))
            for key, value in sorted(incident.facts.to_json().items())
            if key != "deployed_at" and value not in (None, [], {})
        ),
        timeline=timeline(incident, items, deploys),
        series=_series_table(incident.samples),
        markers=tuple(Field(label, format_instant(at)) for at, label, _ in marks),
        charts=charts(incident.samples, marks),
        no_samples=NO_SAMPLES,
        evidence=_evidence_groups(incident, items),
        decisions=_decisions(incident),
        steps=tuple(_step_view(incident, n, s) for n, s in enumerate(incident.steps, 1)),
        recovery=_recovery(incident, items),
        criteria_checked=CRITERIA_CHECKED,
        criteria_by_hand=CRITERIA_BY_HAND,
        follow_up=FOLLOW_UP,
    )


def _summary(incident: IncidentRecord) -> tuple[Field, ...]:
    opened = incident.opened_at
    if incident.closed_at is not None:
        closed = format_instant(incident.closed_at)
        duration = format_duration(incident.closed_at - opened)
    else:  # a rollback under way, or waiting on people until what fired is OK again
        closed = f"not closed: still {incident.state.value}"
        last = max((t for t, *_ in moments(incident)), default=opened)
        duration = f"ongoing; last journaled event {format_duration(last - opened)} after opening"
    deployed = incident.facts.deployed_at
    fields = [
        Field("Service", visible(incident.service)),
        Field("Severity", visible(incident.severity)),
        Field("Origin", _origin(incident.origin)),
        Field("Action", visible(incident.action)),
        Field("Opened", format_instant(opened)),
        Field("Closed", closed),
        Field("Duration", duration),
        Field(
            "Version",
            f"{or_missing(incident.current_version, 'unknown')} → "
            f"{or_missing(incident.target, 'none chosen')}",
        ),
    ]
    if deployed is not None:
        fields.append(Field("Deployed at", format_instant(deployed)))
    fields += [
        Field("Reason", or_missing(incident.reason)),
        Field("Final state", incident.state.value),
        Field("Summary", or_missing(incident.summary, "(none journaled)")),
    ]
    return tuple(fields)


def _origin(origin: str) -> str:
    known = {"automatic": "automatic (rollbackd decided)", "manual": "manual (a person asked)"}
    return known.get(origin, visible(origin))


def _cell(key: str, value: Any) -> str:
    if key in _TIME_KEYS:
        moment = parse_time(value)
        if moment is not None:
            return format_instant(moment)
    if key == "migrations" and isinstance(value, list):
        return "; ".join(_migration(m) for m in value) or "none"
    if isinstance(value, dict | list):
        return compact(value)
    return number_text(value)


def _migration(fact: Any) -> str:
    if not isinstance(fact, dict):
        return compact(fact)
    flags = []
    for key, label in (("backwards_compatible", "backwards compatible"), ("changes_data", "data")):
        if fact.get(key) is not None:
            flags.append(f"{label}: {'yes' if fact[key] else 'no'}")
    return f"{or_missing(fact.get('file'), '?')}" + (f" ({', '.join(flags)})" if flags else "")


def _row(kind: str, body: Mapping[str, Any], service: str) -> dict[str, Any]:
    if kind == "alerts":
        return flatten_alert(body)
    # the incident's own service is said once, in the summary
    return {k: v for k, v in body.items() if not (k == "service" and v == service)}


def _table_group(kind: str, items: Sequence[Item], service: str) -> EvidenceGroup:
    rows: list[tuple[datetime, dict[str, Any]]] = []
    raw: list[Field] = []
    for item in items:
        dicts, others = rows_of(item.body)
        rows.extend((item.time, _row(kind, body, service)) for body in dicts)
        raw.extend(Field(format_instant(item.time), json_text(o)) for o in others)
    preferred = COLUMNS[kind]
    present = [c for c in preferred if any(r.get(c) not in (None, "") for _, r in rows)]
    extra = any(k not in preferred and k not in _HIDDEN for _, r in rows for k in r)
    columns = ("recorded", *present, *(("other fields",) if extra else ()))
    table_rows = []
    for at, row in rows:
        cells = [format_instant(at), *(_cell(c, row.get(c)) for c in present)]
        if extra:
            rest = {k: v for k, v in row.items() if k not in preferred and k not in _HIDDEN}
            cells.append(compact(rest) if rest else "—")
        table_rows.append(tuple(cells))
    return EvidenceGroup(
        kind=kind,
        title=_TITLES[kind],
        count=len(rows) + len(raw),
        table=Table(columns, tuple(table_rows)) if table_rows else None,
        raw=tuple(raw),
        note="" if rows or raw else "Journaled, but empty",
    )


def _evidence_groups(incident: IncidentRecord, items: Sequence[Item]) -> tuple[EvidenceGroup, ...]:
    kinds: dict[str, list[Item]] = {}
    for item in items:
        kinds.setdefault(item.kind, []).append(item)
    groups = []
    order = [*(k for k in COLUMNS if k in kinds), *(k for k in kinds if k not in COLUMNS)]
    for kind in sorted(order, key=lambda k: k == RECOVERY_CHECK):
        members = kinds[kind]
        if kind in COLUMNS:
            groups.append(_table_group(kind, members, incident.service))
        elif kind == UNMEASURED:
            names = sorted(
                {visible(str(n)) for item in members for n in rows_of(item.body)[1] if n}
            )
            groups.append(
                EvidenceGroup(
                    kind,
                    "Not measured",
                    len(names),
                    None,
                    (),
                    "No data at any time since rollbackd began looking, for: "
                    + (", ".join(names) or "none")
                    + " (a metric the service does not export: inconclusive, never a reason "
                    "to act)",
                )
            )
        elif kind == RECOVERY_CHECK:
            groups.append(
                EvidenceGroup(
                    kind, "Recovery checks", len(members), None, (), "Listed under Recovery"
                )
            )
        else:
            raw = []
            for item in members:
                text, note = clip(
                    json_text(item.body),
                    f"incident {incident.id}, evidence record {item.record + 1}",
                )
                raw.append(Field(format_instant(item.time), text + (f"\n[{note}]" if note else "")))
            groups.append(EvidenceGroup(kind, visible(kind), len(members), None, tuple(raw), ""))
    return tuple(groups)


def _decisions(incident: IncidentRecord) -> tuple[DecisionView, ...]:
    views = []
    for number, d in enumerate(incident.decisions, 1):
        fields = [
            Field("Actor", visible(d.actor)),
            Field("Action", visible(d.action)),
            Field("Proposed", visible(d.proposed)),
            Field("Severity", visible(d.severity)),
            Field("Rules", ", ".join(visible(str(r)) for r in d.rules) or "none"),
            Field("Reason", or_missing(d.reason)),
        ]
        if d.value is not None:
            fields.append(Field("Value", number_text(d.value)))
        if d.target is not None:
            fields.append(Field("Target", visible(d.target)))
        fields += [
            Field("Approver", or_missing(d.approver, "none needed")),
            Field("Deadline", format_instant(d.deadline) if d.deadline else "none"),
            Field("Guards", ", ".join(visible(str(g)) for g in d.guards) or "none"),
        ]
        views.append(
            DecisionView(
                number,
                format_instant(d.time),
                offset(d.time, incident.opened_at),
                visible(d.actor),
                visible(d.action),
                tuple(fields),
            )
        )
    return tuple(views)


def _step_view(incident: IncidentRecord, number: int, step: StepRecord) -> StepView:
    if step.finished_at is None:
        outcome, finished, duration = "interrupted (never finished)", "—", "—"
    else:
        outcome = (step.outcome or Outcome.UNKNOWN).value
        finished = format_instant(step.finished_at)
        duration = format_duration(step.finished_at - step.started_at)
    output, note = clip(visible(step.output), f"incident {incident.id}, step {step.id}")
    return StepView(
        number=number,
        name=visible(step.name),
        playbook=playbook_item(step.name),
        outcome=outcome,
        started=format_instant(step.started_at),
        finished=finished,
        duration=duration,
        summary=or_missing(step.summary),
        data=tuple(Field(visible(str(k)), _cell(str(k), v)) for k, v in sorted(step.data.items())),
        output=output,
        output_note=note,
        has_output=bool(step.output),
    )


# --- recovery -------------------------------------------------------------------------------


def _recovery(incident: IncidentRecord, items: Sequence[Item]) -> RecoveryView:
    step = incident.step(RECOVERY_STEP)
    checks = [i for i in items if i.kind == RECOVERY_CHECK]
    fields: list[Field] = []
    if step is None:
        verdict = "no recovery watch was journaled for this incident"
    elif step.finished_at is None:
        verdict = (
            f"the recovery watch started at {format_instant(step.started_at)} and never finished"
        )
    else:
        outcome = step.outcome or Outcome.UNKNOWN
        word = {Outcome.OK: "recovered", Outcome.FAILED: "not recovered"}.get(
            outcome, f"recovery {outcome.value}"
        )
        summary = or_missing(step.summary)
        verdict = summary if summary.startswith(word) else f"{word}: {summary}"
        fields += [
            Field("Watch started", format_instant(step.started_at)),
            Field("Watch ended", format_instant(step.finished_at)),
            Field("Watched for", format_duration(step.finished_at - step.started_at)),
        ]
    if checks:
        held = [c for c in checks if check_held(c.body)]
        fields += [
            Field("Checks", f"{len(checks)} ({len(held)} held, {len(checks) - len(held)} did not)"),
            Field("First check", format_instant(checks[0].time)),
            Field("Last check", format_instant(checks[-1].time)),
        ]
        since: datetime | None = None
        for check in checks:
            since = (since or check.time) if check_held(check.body) else None
        if since is not None:
            fields.append(
                Field(
                    "Criteria held since",
                    f"{format_instant(since)} ({format_duration(checks[-1].time - since)} "
                    "to the last check)",
                )
            )
        else:
            fields.append(
                Field(
                    "Criteria held since",
                    "they did not hold at the last check: " + check_text(checks[-1].body),
                )
            )
    elif step is not None:
        fields.append(Field("Checks", "no recovery check was journaled"))
    table, note = _check_table(incident, checks)
    return RecoveryView(verdict, tuple(fields), table, note)


def _check_table(incident: IncidentRecord, checks: Sequence[Item]) -> tuple[Table | None, str]:
    if not checks:
        return None, ""
    keep = set(range(len(checks)))
    note = ""
    if len(checks) > CHECK_ROWS:
        keep = {0, len(checks) - 1} | {
            n
            for n in range(1, len(checks))
            if check_held(checks[n].body) != check_held(checks[n - 1].body)
        }
        note = (
            f"{len(checks)} checks: the table lists the first, the last and each one where the "
            f"verdict changed; the journal holds all of them (incident {incident.id})."
        )
    rows = []
    for n, check in enumerate(checks):
        if n not in keep:
            continue
        body = check.body if isinstance(check.body, dict) else {}
        held = check_held(check.body)
        rows.append(
            (
                str(n + 1),
                format_instant(check.time),
                "—" if held is None else ("yes" if held else "no"),
                "; ".join(visible(str(f)) for f in body.get("failures") or []) or "—",
                "; ".join(visible(str(p)) for p in body.get("passes") or []) or "—",
                "; ".join(visible(str(m)) for m in body.get("missing") or []) or "—",
            )
        )
    return Table(("#", "time", "held", "failures", "passes", "no data"), tuple(rows)), note


def _series_table(samples: Mapping[str, list[tuple[datetime, float]]]) -> Table | None:
    rows = []
    for name, points in sorted(samples.items()):
        good = finite(points)
        values = [v for _, v in good]
        rows.append(
            (
                visible(name),
                str(len(points)),
                number_text(min(values)) if values else "—",
                number_text(max(values)) if values else "—",
                number_text(values[-1]) if values else "—",
                format_instant(good[0][0]) if good else "—",
                format_instant(good[-1][0]) if good else "—",
            )
        )
    if not rows:
        return None
    return Table(("series", "samples", "min", "max", "last", "from", "to"), tuple(rows))
