"""The incident report: what happened, what rollbackd did, and what people still must do.

:func:`render_report` turns one journaled incident into Markdown or a
self-contained HTML page, following the rollback playbook: a summary, a
timeline, the evidence, the decisions, the checklist steps with their output,
the recovery watch, and the playbook's follow-up checklists left unchecked
for people. It is pure: no clock, no I/O besides loading its templates.

Everything read from the journal is untrusted text (alert labels, reasons
typed by people, command output). It is first *cleaned* (line breaks
normalised, control and bidi characters shown as ``\\xNN``), then escaped for
the format at the very last moment, by the template engine itself:

* HTML: Jinja2 autoescaping, values are never placed in ``href``, ``src``,
  ``style`` or script, and a Content-Security-Policy forbids scripts anyway.
* Markdown: the environment's ``finalize`` hook escapes *every* ``{{ … }}``
  value, so a forgotten filter cannot leak markup: Markdown punctuation
  (``\\ ` * _ [ ] < > | & ~ # @``) is backslash-escaped, ``://`` and ``www.``
  are broken so no autolink forms, and line breaks become `` ↵ `` so a value
  never starts a line or leaves its table cell. The only values that bypass it
  are fenced blocks built by :func:`markdown_fence`, whose fence is longer
  than any backtick run in the text, so the text cannot close it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from rollbackd.durations import format_duration, format_instant
from rollbackd.journal import EvidenceRecord, IncidentRecord, Outcome, StepRecord

ReportFormat = Literal["markdown", "html"]

OUTPUT_LIMIT = 4096
"""Bytes of one step's output (or one evidence body) shown in the report; the journal keeps all."""

CHECK_ROWS = 40
"""Recovery checks listed one per row; beyond this, only the changes and the last are listed."""

NO_SAMPLES = "no samples were journaled for this incident"

RECOVERY_STEP = "recovery"
EXECUTE_STEP = "execute"

PLAYBOOK_STEPS = {
    "document": "Document the Issue",
    "notify": "Notify Stakeholders",
    "verify_target": "Verify Rollback Target",
    "migration_gate": "Database Rollback Considerations",
    "backup": "Backup Current State",
    "snapshot": "Backup Current State (database snapshot)",
    "execute": "Rollback Procedures (execute)",
    "recovery": "Verify Rollback Success, Monitor Key Metrics",
}
"""The playbook item each checklist step carries out."""

CRITERIA_CHECKED = (
    "Error rate below 1 %",
    "Response times within the pre-deploy baseline",
    "Health and smoke probes pass",
    "No critical rule holding",
    "Every Alertmanager alert that triggered the rollback resolved, for the whole recovery window",
)
"""The playbook's success criteria that the recovery watch measures."""

CRITERIA_BY_HAND = (
    "Application is fully functional",
    "No critical errors in logs (last 15 min)",
    "Users can complete core workflows",
    "Database integrity maintained",
    "No security vulnerabilities introduced",
)
"""The playbook's success criteria that only people can confirm."""


@dataclass(frozen=True)
class FollowUpGroup:
    """One of the playbook's post-rollback checklists, left for people."""

    horizon: str
    title: str
    items: tuple[str, ...]


FOLLOW_UP = (
    FollowUpGroup(
        "Short-term (1-24 hours)",
        "Root Cause Analysis",
        (
            "Document what went wrong",
            "Identify why it wasn't caught in testing",
            "Determine preventive measures",
        ),
    ),
    FollowUpGroup(
        "Short-term (1-24 hours)",
        "Plan Forward",
        (
            "Create fix for the original issue",
            "Enhanced testing procedures",
            "Schedule fix deployment",
        ),
    ),
    FollowUpGroup(
        "Short-term (1-24 hours)",
        "Update Documentation",
        (
            "Add issue to known issues log",
            "Update rollback playbook if needed",
            "Document lessons learned",
        ),
    ),
    FollowUpGroup(
        "Long-term (1-7 days)",
        "Conduct Retrospective",
        ("What went well?", "What could be improved?", "What will we do differently?"),
    ),
    FollowUpGroup(
        "Long-term (1-7 days)",
        "Implement Improvements",
        (
            "Add automated tests for the issue",
            "Improve monitoring/alerting",
            "Update deployment checklist",
        ),
    ),
    FollowUpGroup(
        "Long-term (1-7 days)",
        "Close Out",
        ("Archive incident report", "Share learnings with team", "Update metrics/KPIs"),
    ),
)
"""The playbook's "Post-Rollback Procedures", short-term and long-term, item for item."""


def render_report(incident: IncidentRecord, fmt: ReportFormat) -> str:
    """The incident report of a wholly loaded incident, as Markdown or as an HTML page."""
    view = build_view(incident)
    if fmt == "markdown":
        return _markdown_env().get_template("report.md.j2").render(r=view)
    if fmt == "html":
        return _html_env().get_template("report.html.j2").render(r=view)
    raise ValueError(f"unknown report format {fmt!r}: expected 'markdown' or 'html'")


# --- escaping -------------------------------------------------------------------------------

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_MD_SPECIAL = re.compile(r"[\\`*_\[\]<>|&~#@]")
_LINE_BREAK = re.compile(r"[ \t]*\n[ \t]*")
_WWW = re.compile(r"(?i)(www)\.")
_BACKTICKS = re.compile(r"`+")


def clean(text: str) -> str:
    """Untrusted text with line breaks normalised and invisible controls made visible."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
    text = text.replace("\u2029", "\n")
    return _CONTROL.sub(_visible, text)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class MarkdownBlock(str):
    """Markdown the report built itself (a fenced block): emitted without escaping."""

    __slots__ = ()


def markdown_text(value: object) -> str:
    """One line of Markdown that reads as ``value`` and renders as nothing but text."""
    text = _LINE_BREAK.sub(" ↵ ", clean(str(value)).strip("\n"))
    text = _MD_SPECIAL.sub(lambda m: "\\" + m.group(), text)
    text = text.replace("://", "\\://")
    return _WWW.sub(r"\1\\.", text)


def markdown_fence(text: str) -> MarkdownBlock:
    """A fenced code block holding ``text``, with a fence the text cannot close."""
    body = clean(text)
    longest = max((len(run) for run in _BACKTICKS.findall(body)), default=0)
    fence = "`" * max(3, longest + 1)
    if body and not body.endswith("\n"):
        body += "\n"
    return MarkdownBlock(f"{fence}text\n{body}{fence}")


def _markdown_finalize(value: object) -> str:
    if isinstance(value, MarkdownBlock):
        return value
    return markdown_text(value)


def _environment(**options: Any) -> Environment:
    return Environment(  # noqa: S701 -- each caller sets autoescape: HTML on, Markdown finalize
        loader=PackageLoader("rollbackd", "templates"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        **options,
    )


@cache
def _markdown_env() -> Environment:
    env = _environment(autoescape=False, finalize=_markdown_finalize)
    env.filters["fence"] = markdown_fence
    return env


@cache
def _html_env() -> Environment:
    return _environment(
        autoescape=select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=True, default=True
        )
    )


# --- the view: plain text fields, computed once for both formats ------------------------------


@dataclass(frozen=True)
class Field:
    """A labelled value."""

    label: str
    value: str


@dataclass(frozen=True)
class Table:
    """Rows of text under column names."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Event:
    """One line of the timeline."""

    time: str
    offset: str
    kind: str
    text: str


@dataclass(frozen=True)
class EvidenceGroup:
    """The evidence of one kind: a table when understood, compact JSON when not."""

    kind: str
    title: str
    count: int
    table: Table | None
    raw: tuple[Field, ...]
    note: str


@dataclass(frozen=True)
class DecisionView:
    """One decision with every field that explains it."""

    number: int
    time: str
    offset: str
    actor: str
    action: str
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class StepView:
    """One checklist step, its outcome and its (bounded) output."""

    number: int
    name: str
    playbook: str
    outcome: str
    started: str
    finished: str
    duration: str
    summary: str
    data: tuple[Field, ...]
    output: str
    output_note: str
    has_output: bool


@dataclass(frozen=True)
class RecoveryView:
    """The recovery watch: its verdict and the checks that led to it."""

    verdict: str
    fields: tuple[Field, ...]
    checks: Table | None
    checks_note: str


@dataclass(frozen=True)
class Marker:
    """A labelled vertical line on a chart."""

    kind: str
    label: str
    time: str
    x: float
    label_x: float
    label_y: float
    anchor: str


@dataclass(frozen=True)
class Chart:
    """One series drawn as an SVG polyline; coordinates in the viewBox."""

    number: int
    series: str
    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    points: str
    dots: tuple[tuple[str, str], ...]
    y_min: str
    y_max: str
    x_min: str
    x_max: str
    markers: tuple[Marker, ...]
    note: str


@dataclass(frozen=True)
class ReportView:
    """Everything the templates show."""

    id: int
    title: str
    service: str
    state: str
    summary: tuple[Field, ...]
    facts: tuple[Field, ...]
    timeline: tuple[Event, ...]
    series: Table | None
    markers: tuple[Field, ...]
    charts: tuple[Chart, ...]
    no_samples: str
    evidence: tuple[EvidenceGroup, ...]
    decisions: tuple[DecisionView, ...]
    steps: tuple[StepView, ...]
    recovery: RecoveryView
    criteria_checked: tuple[str, ...]
    criteria_by_hand: tuple[str, ...]
    follow_up: tuple[FollowUpGroup, ...]


def build_view(incident: IncidentRecord) -> ReportView:
    """What the report says, as plain (cleaned, not yet escaped) text."""
    items = list(_evidence_items(incident.evidence))
    deploys = _deploys(incident, items)
    marks = _markers(incident, deploys)
    state = incident.state.value
    return ReportView(
        id=incident.id,
        title=f"Incident {incident.id}: {clean(incident.service)} — {state}",
        service=clean(incident.service),
        state=state,
        summary=_summary(incident),
        facts=tuple(
            Field(clean(str(key)), _compact(value))
            for key, value in sorted(incident.facts.items())
            if key != "deployed_at" and value not in (None, [], {})
        ),
        timeline=_timeline(incident, items, deploys),
        series=_series_table(incident.samples),
        markers=tuple(Field(label, format_instant(at)) for at, label, _ in marks),
        charts=_charts(incident.samples, marks),
        no_samples=NO_SAMPLES,
        evidence=_evidence_groups(incident, items),
        decisions=_decisions(incident),
        steps=tuple(_step_view(incident, n, s) for n, s in enumerate(incident.steps, 1)),
        recovery=_recovery(incident, items),
        criteria_checked=CRITERIA_CHECKED,
        criteria_by_hand=CRITERIA_BY_HAND,
        follow_up=FOLLOW_UP,
    )


# --- small formatters -----------------------------------------------------------------------


def _offset(moment: datetime, origin: datetime) -> str:
    """``T+1m30s``: whole seconds since ``origin``, truncated like :func:`format_instant`."""
    seconds = math.floor(moment.timestamp()) - math.floor(origin.timestamp())
    return f"T{'+' if seconds >= 0 else ''}{format_duration(timedelta(seconds=seconds))}"


def _or(value: object, missing: str = "—") -> str:
    return missing if value is None or value == "" else clean(str(value))


def _number(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return _or(value)


def _json(value: object) -> str:
    """Compact JSON, keys sorted: how evidence the report does not understand is shown."""
    return clean(
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    )


def _compact(value: object) -> str:
    """A table cell: a string as itself, anything else as compact JSON."""
    return clean(value) if isinstance(value, str) else _json(value)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KB"
    return f"{count / (1024 * 1024):.1f} MB"


def _clip(text: str, where: str) -> tuple[str, str]:
    """At most about :data:`OUTPUT_LIMIT` bytes of ``text`` (its head and tail), and a note."""
    raw = text.encode()
    if len(raw) <= OUTPUT_LIMIT:
        return text, ""
    head_bytes = OUTPUT_LIMIT // 4
    head = raw[:head_bytes].decode(errors="ignore")
    tail = raw[len(raw) - (OUTPUT_LIMIT - head_bytes) :].decode(errors="ignore")
    omitted = len(raw) - len(head.encode()) - len(tail.encode())
    shown = f"{head}\n[… {_size(omitted)} omitted …]\n{tail}"
    note = (
        f"{_size(len(raw))} in all; the report shows the first {_size(len(head.encode()))} "
        f"and the last {_size(len(tail.encode()))}. The journal holds all of it ({where})."
    )
    return shown, note


# --- summary --------------------------------------------------------------------------------


def _summary(incident: IncidentRecord) -> tuple[Field, ...]:
    opened = incident.opened_at
    if incident.closed_at is not None:
        closed = format_instant(incident.closed_at)
        duration = format_duration(incident.closed_at - opened)
    else:  # a rollback under way, or waiting on people until what fired is OK again
        closed = f"not closed: still {incident.state.value}"
        last = max((t for t, *_ in _moments(incident)), default=opened)
        duration = f"ongoing; last journaled event {format_duration(last - opened)} after opening"
    deployed = _parse_time(incident.facts.get("deployed_at"))
    fields = [
        Field("Service", clean(incident.service)),
        Field("Severity", clean(incident.severity)),
        Field("Origin", _origin(incident.origin)),
        Field("Action", clean(incident.action)),
        Field("Opened", format_instant(opened)),
        Field("Closed", closed),
        Field("Duration", duration),
        Field(
            "Version",
            f"{_or(incident.current_version, 'unknown')} → {_or(incident.target, 'none chosen')}",
        ),
    ]
    if deployed is not None:
        fields.append(Field("Deployed at", format_instant(deployed)))
    fields += [
        Field("Reason", _or(incident.reason)),
        Field("Final state", incident.state.value),
        Field("Summary", _or(incident.summary, "(none journaled)")),
    ]
    return tuple(fields)


def _origin(origin: str) -> str:
    known = {"automatic": "automatic (rollbackd decided)", "manual": "manual (a person asked)"}
    return known.get(origin, clean(origin))


def _moments(incident: IncidentRecord) -> Iterator[tuple[datetime, str]]:
    for decision in incident.decisions:
        yield decision.time, "decision"
    for step in incident.steps:
        yield step.started_at, "step"
        if step.finished_at is not None:
            yield step.finished_at, "step"
    for record in incident.evidence:
        yield record.time, "evidence"


# --- evidence -------------------------------------------------------------------------------

_TABLE_KINDS = {
    "findings": "findings",
    "finding": "findings",
    "deploys": "deploys",
    "deploy": "deploys",
    "alerts": "alerts",
    "alert": "alerts",
    "firing_alerts": "alerts",
}
_TITLES = {"findings": "Findings", "deploys": "Deploys", "alerts": "Firing alerts"}
UNMEASURED = "unmeasured"
"""Rules the service never had data for: one quiet line, not a row of warnings each."""
_COLUMNS = {
    "findings": (
        "rule",
        "state",
        "severity",
        "value",
        "condition",
        "threshold",
        "baseline",
        "time",
        "since",
        "reason",
    ),
    "deploys": ("service", "version", "ref", "time", "source", "migrations"),
    "alerts": ("alertname", "status", "severity", "startsAt", "labels", "summary"),
}
_HIDDEN = {"type"}
_TIME_KEYS = {"time", "since", "started", "startsAt", "endsAt", "deployed_at"}
RECOVERY_CHECK = "recovery_check"


@dataclass(frozen=True)
class _Item:
    """One piece of evidence after expanding snapshots: its group, when recorded, its body."""

    kind: str
    time: datetime
    body: Any
    record: int


def _evidence_items(evidence: Sequence[EvidenceRecord]) -> Iterator[_Item]:
    ordered = sorted(enumerate(evidence), key=lambda pair: (pair[1].time, pair[0]))
    for number, record in ordered:
        kind = _TABLE_KINDS.get(record.kind, record.kind)
        body = record.body
        known = (*_TABLE_KINDS, UNMEASURED)
        if kind not in _COLUMNS and isinstance(body, dict) and any(k in known for k in body):
            rest = {k: v for k, v in body.items() if k not in known}
            for key, value in body.items():
                if key in known:
                    yield _Item(_TABLE_KINDS.get(key) or key, record.time, value, number)
            if rest:
                yield _Item(kind, record.time, rest, number)
        else:
            yield _Item(kind, record.time, body, number)


def _rows_of(body: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """The dict rows of a tabular body, and whatever in it is not a dict."""
    values = body if isinstance(body, list) else [body]
    return [v for v in values if isinstance(v, dict)], [
        v for v in values if not isinstance(v, dict)
    ]


def _flatten_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(alert)
    labels = row.pop("labels", None)
    annotations = row.pop("annotations", None)
    if isinstance(labels, dict):
        labels = dict(labels)
        row.setdefault("alertname", labels.pop("alertname", None))
        row.setdefault("severity", labels.pop("severity", None))
        row["labels"] = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or None
    elif labels is not None:
        row["labels"] = labels
    if isinstance(annotations, dict):
        annotations = dict(annotations)
        summary = annotations.pop("summary", None) or annotations.pop("description", None)
        row.setdefault("summary", summary)
        if annotations:
            row["annotations"] = annotations
    elif annotations is not None:
        row["annotations"] = annotations
    return row


def _cell(key: str, value: Any) -> str:
    if key in _TIME_KEYS:
        moment = _parse_time(value)
        if moment is not None:
            return format_instant(moment)
    if key == "migrations" and isinstance(value, list):
        return "; ".join(_migration(m) for m in value) or "none"
    if isinstance(value, dict | list):
        return _compact(value)
    return _number(value)


def _migration(fact: Any) -> str:
    if not isinstance(fact, dict):
        return _compact(fact)
    flags = []
    for key, label in (("backwards_compatible", "backwards compatible"), ("changes_data", "data")):
        if fact.get(key) is not None:
            flags.append(f"{label}: {'yes' if fact[key] else 'no'}")
    return f"{_or(fact.get('file'), '?')}" + (f" ({', '.join(flags)})" if flags else "")


def _row(kind: str, body: Mapping[str, Any], service: str) -> dict[str, Any]:
    if kind == "alerts":
        return _flatten_alert(body)
    # the incident's own service is said once, in the summary
    return {k: v for k, v in body.items() if not (k == "service" and v == service)}


def _table_group(kind: str, items: Sequence[_Item], service: str) -> EvidenceGroup:
    rows: list[tuple[datetime, dict[str, Any]]] = []
    raw: list[Field] = []
    for item in items:
        dicts, others = _rows_of(item.body)
        rows.extend((item.time, _row(kind, body, service)) for body in dicts)
        raw.extend(Field(format_instant(item.time), _json(o)) for o in others)
    preferred = _COLUMNS[kind]
    present = [c for c in preferred if any(r.get(c) not in (None, "") for _, r in rows)]
    extra = any(k not in preferred and k not in _HIDDEN for _, r in rows for k in r)
    columns = ("recorded", *present, *(("other fields",) if extra else ()))
    table_rows = []
    for at, row in rows:
        cells = [format_instant(at), *(_cell(c, row.get(c)) for c in present)]
        if extra:
            rest = {k: v for k, v in row.items() if k not in preferred and k not in _HIDDEN}
            cells.append(_compact(rest) if rest else "—")
        table_rows.append(tuple(cells))
    return EvidenceGroup(
        kind=kind,
        title=_TITLES[kind],
        count=len(rows) + len(raw),
        table=Table(columns, tuple(table_rows)) if table_rows else None,
        raw=tuple(raw),
        note="" if rows or raw else "Journaled, but empty",
    )


def _evidence_groups(incident: IncidentRecord, items: Sequence[_Item]) -> tuple[EvidenceGroup, ...]:
    kinds: dict[str, list[_Item]] = {}
    for item in items:
        kinds.setdefault(item.kind, []).append(item)
    groups = []
    order = [*(k for k in _COLUMNS if k in kinds), *(k for k in kinds if k not in _COLUMNS)]
    for kind in sorted(order, key=lambda k: k == RECOVERY_CHECK):
        members = kinds[kind]
        if kind in _COLUMNS:
            groups.append(_table_group(kind, members, incident.service))
        elif kind == UNMEASURED:
            names = sorted({clean(str(n)) for item in members for n in _rows_of(item.body)[1] if n})
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
                text, note = _clip(
                    _json(item.body), f"incident {incident.id}, evidence record {item.record + 1}"
                )
                raw.append(Field(format_instant(item.time), text + (f"\n[{note}]" if note else "")))
            groups.append(EvidenceGroup(kind, clean(kind), len(members), None, tuple(raw), ""))
    return tuple(groups)


# --- deploys and the timeline ---------------------------------------------------------------


@dataclass(frozen=True)
class _Deploy:
    time: datetime
    version: str | None
    source: str | None


def _deploys(incident: IncidentRecord, items: Sequence[_Item]) -> list[_Deploy]:
    found: dict[tuple[datetime, str | None], _Deploy] = {}
    for item in items:
        if item.kind != "deploys":
            continue
        for row in _rows_of(item.body)[0]:
            service = row.get("service")
            if service is not None and service != incident.service:
                continue
            at = _parse_time(row.get("time")) or item.time
            version = None if row.get("version") is None else str(row["version"])
            source = None if row.get("source") is None else str(row["source"])
            found.setdefault((at, version), _Deploy(at, version, source))
    deployed_at = _parse_time(incident.facts.get("deployed_at"))
    if deployed_at is not None and not any(d.time == deployed_at for d in found.values()):
        found[(deployed_at, incident.current_version)] = _Deploy(
            deployed_at, incident.current_version, None
        )
    return sorted(found.values(), key=lambda d: d.time)


def _the_deploy(incident: IncidentRecord, deploys: Sequence[_Deploy]) -> _Deploy | None:
    """The deploy the incident is about: ``deployed_at``, else the latest before opening."""
    deployed_at = _parse_time(incident.facts.get("deployed_at"))
    if deployed_at is not None:
        return next((d for d in deploys if d.time == deployed_at), None)
    before = [d for d in deploys if d.time <= incident.opened_at] or list(deploys)
    current = [d for d in before if d.version == incident.current_version]
    return max(current or before, key=lambda d: d.time, default=None)


def _timeline(
    incident: IncidentRecord, items: Sequence[_Item], deploys: Sequence[_Deploy]
) -> tuple[Event, ...]:
    entries: list[tuple[datetime, int, str, str]] = []

    def add(at: datetime, priority: int, kind: str, text: str) -> None:
        entries.append((at, priority, kind, text))

    for deploy in deploys:
        source = f" (from {clean(deploy.source)})" if deploy.source else ""
        add(deploy.time, 0, "deploy", f"deploy of {_or(deploy.version, 'a new version')}{source}")
    add(
        incident.opened_at,
        2,
        "incident",
        f"incident opened: {clean(incident.origin)}, severity {clean(incident.severity)}, "
        f"action {clean(incident.action)} — {_or(incident.reason)}",
    )
    seen_findings: set[tuple[str, str, str]] = set()
    checks = [i for i in items if i.kind == RECOVERY_CHECK]
    for item in items:
        if item.kind == RECOVERY_CHECK:
            continue
        if item.kind == "findings":
            for row in _rows_of(item.body)[0]:
                since = _parse_time(row.get("since"))
                state = str(row.get("state", ""))
                key = (str(row.get("rule")), state, str(since))
                if since is None or state in ("", "ok") or key in seen_findings:
                    continue
                seen_findings.add(key)
                add(
                    since,
                    1,
                    "finding",
                    f"{_or(row.get('rule'), 'a rule')} {clean(state)} since here: "
                    f"{_or(row.get('reason'))}",
                )
        add(item.time, 3, "evidence", f"evidence journaled: {_describe(item)}")
    for number, check in enumerate(checks, 1):
        held = _held(check.body)
        previous = _held(checks[number - 2].body) if number > 1 else None
        if number in (1, len(checks)) or held != previous:
            add(
                check.time,
                3,
                "recovery",
                f"recovery check {number} of {len(checks)}: " + _check_text(check.body),
            )
    for decision in incident.decisions:
        approval = ""
        if decision.approver:
            deadline = f" by {format_instant(decision.deadline)}" if decision.deadline else ""
            approval = f"; approver {clean(decision.approver)}{deadline}"
        add(
            decision.time,
            4,
            "decision",
            f"{clean(decision.actor)} decided {clean(decision.action)} (proposed "
            f"{clean(decision.proposed)}, severity {clean(decision.severity)}{approval}) — "
            f"{_or(decision.reason)}",
        )
    for step in incident.steps:
        if step.finished_at is None:
            add(step.started_at, 5, "step", f"step {clean(step.name)} started; never finished")
            continue
        add(step.started_at, 5, "step", f"step {clean(step.name)} started")
        outcome = step.outcome.value if step.outcome else "unknown"
        add(
            step.finished_at,
            5,
            "step",
            f"step {clean(step.name)} finished: {outcome} — {_or(step.summary)}",
        )
    if incident.closed_at is not None:
        add(
            incident.closed_at,
            7,
            "state",
            f"incident {incident.state.value}: {_or(incident.summary)}",
        )
    ordered = sorted(enumerate(entries), key=lambda e: (e[1][0], e[1][1], e[0]))
    return tuple(
        Event(format_instant(at), _offset(at, incident.opened_at), kind, text)
        for _, (at, _p, kind, text) in ordered
    )


def _describe(item: _Item) -> str:
    if item.kind in _COLUMNS:
        dicts, others = _rows_of(item.body)
        count = len(dicts) + len(others)
        return f"{count} {item.kind if count != 1 else item.kind.rstrip('s')}"
    return clean(item.kind)


def _held(body: Any) -> bool | None:
    return bool(body.get("held")) if isinstance(body, dict) else None


def _check_text(body: Any) -> str:
    if not isinstance(body, dict):
        return f"unreadable ({_json(body)})"
    if body.get("held"):
        return "the criteria hold"
    failures = [clean(str(f)) for f in body.get("failures") or []]
    if not failures:
        missing = [clean(str(m)) for m in body.get("missing") or []]
        return "the criteria do not hold" + (f": {missing[-1]}" if missing else "")
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return f"the criteria do not hold: {failures[0]}{more}"


# --- decisions and steps --------------------------------------------------------------------


def _decisions(incident: IncidentRecord) -> tuple[DecisionView, ...]:
    views = []
    for number, d in enumerate(incident.decisions, 1):
        fields = [
            Field("Actor", clean(d.actor)),
            Field("Action", clean(d.action)),
            Field("Proposed", clean(d.proposed)),
            Field("Severity", clean(d.severity)),
            Field("Rules", ", ".join(clean(str(r)) for r in d.rules) or "none"),
            Field("Reason", _or(d.reason)),
        ]
        if d.value is not None:
            fields.append(Field("Value", _number(d.value)))
        if d.target is not None:
            fields.append(Field("Target", clean(d.target)))
        fields += [
            Field("Approver", _or(d.approver, "none needed")),
            Field("Deadline", format_instant(d.deadline) if d.deadline else "none"),
            Field("Guards", ", ".join(clean(str(g)) for g in d.guards) or "none"),
        ]
        views.append(
            DecisionView(
                number,
                format_instant(d.time),
                _offset(d.time, incident.opened_at),
                clean(d.actor),
                clean(d.action),
                tuple(fields),
            )
        )
    return tuple(views)


def _playbook_item(name: str) -> str:
    if name.startswith("after_rollback"):
        return "Reinstall dependencies, rebuild, restart"
    return PLAYBOOK_STEPS.get(name, "—")


def _step_view(incident: IncidentRecord, number: int, step: StepRecord) -> StepView:
    if step.finished_at is None:
        outcome, finished, duration = "interrupted (never finished)", "—", "—"
    else:
        outcome = (step.outcome or Outcome.UNKNOWN).value
        finished = format_instant(step.finished_at)
        duration = format_duration(step.finished_at - step.started_at)
    output, note = _clip(clean(step.output), f"incident {incident.id}, step {step.id}")
    return StepView(
        number=number,
        name=clean(step.name),
        playbook=_playbook_item(step.name),
        outcome=outcome,
        started=format_instant(step.started_at),
        finished=finished,
        duration=duration,
        summary=_or(step.summary),
        data=tuple(Field(clean(str(k)), _cell(str(k), v)) for k, v in sorted(step.data.items())),
        output=output,
        output_note=note,
        has_output=bool(step.output),
    )


# --- recovery -------------------------------------------------------------------------------


def _recovery(incident: IncidentRecord, items: Sequence[_Item]) -> RecoveryView:
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
        summary = _or(step.summary)
        verdict = summary if summary.startswith(word) else f"{word}: {summary}"
        fields += [
            Field("Watch started", format_instant(step.started_at)),
            Field("Watch ended", format_instant(step.finished_at)),
            Field("Watched for", format_duration(step.finished_at - step.started_at)),
        ]
    if checks:
        held = [c for c in checks if _held(c.body)]
        fields += [
            Field("Checks", f"{len(checks)} ({len(held)} held, {len(checks) - len(held)} did not)"),
            Field("First check", format_instant(checks[0].time)),
            Field("Last check", format_instant(checks[-1].time)),
        ]
        since: datetime | None = None
        for check in checks:
            since = (since or check.time) if _held(check.body) else None
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
                    "they did not hold at the last check: " + _check_text(checks[-1].body),
                )
            )
    elif step is not None:
        fields.append(Field("Checks", "no recovery check was journaled"))
    table, note = _check_table(incident, checks)
    return RecoveryView(verdict, tuple(fields), table, note)


def _check_table(incident: IncidentRecord, checks: Sequence[_Item]) -> tuple[Table | None, str]:
    if not checks:
        return None, ""
    keep = set(range(len(checks)))
    note = ""
    if len(checks) > CHECK_ROWS:
        keep = {0, len(checks) - 1} | {
            n for n in range(1, len(checks)) if _held(checks[n].body) != _held(checks[n - 1].body)
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
        held = _held(check.body)
        rows.append(
            (
                str(n + 1),
                format_instant(check.time),
                "—" if held is None else ("yes" if held else "no"),
                "; ".join(clean(str(f)) for f in body.get("failures") or []) or "—",
                "; ".join(clean(str(p)) for p in body.get("passes") or []) or "—",
                "; ".join(clean(str(m)) for m in body.get("missing") or []) or "—",
            )
        )
    return Table(("#", "time", "held", "failures", "passes", "no data"), tuple(rows)), note


# --- samples and charts ---------------------------------------------------------------------

_WIDTH = 640.0
_LEFT = 64.0
_RIGHT = _WIDTH - 16.0
_PLOT_HEIGHT = 150.0
_ROW = 14.0
_CHAR = 6.2


def _finite(points: Iterable[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    return [(t, float(v)) for t, v in points if isinstance(v, int | float) and math.isfinite(v)]


def _series_table(samples: Mapping[str, list[tuple[datetime, float]]]) -> Table | None:
    rows = []
    for name, points in sorted(samples.items()):
        good = _finite(points)
        values = [v for _, v in good]
        rows.append(
            (
                clean(name),
                str(len(points)),
                _number(min(values)) if values else "—",
                _number(max(values)) if values else "—",
                _number(values[-1]) if values else "—",
                format_instant(good[0][0]) if good else "—",
                format_instant(good[-1][0]) if good else "—",
            )
        )
    if not rows:
        return None
    return Table(("series", "samples", "min", "max", "last", "from", "to"), tuple(rows))


def _markers(
    incident: IncidentRecord, deploys: Sequence[_Deploy]
) -> list[tuple[datetime, str, str]]:
    marks: list[tuple[datetime, str, str]] = []
    deploy = _the_deploy(incident, deploys)
    if deploy is not None:
        marks.append((deploy.time, _short(f"deploy {deploy.version or ''}".strip()), "deploy"))
    if incident.decisions:
        first = min(incident.decisions, key=lambda d: d.time)
        marks.append((first.time, _short(f"decision: {clean(first.action)}"), "decision"))
    execute = incident.step(EXECUTE_STEP)
    if execute is not None:
        failed = execute.outcome not in (None, Outcome.OK)
        label = f"rollback ({execute.outcome.value})" if failed and execute.outcome else "rollback"
        marks.append((execute.started_at, label, "rollback"))
    recovery = incident.step(RECOVERY_STEP)
    if recovery is not None and recovery.finished_at is not None:
        word = "recovered" if recovery.outcome is Outcome.OK else "not recovered"
        marks.append((recovery.finished_at, word, "recovery"))
    return sorted(marks, key=lambda m: m[0])


def _short(text: str, limit: int = 28) -> str:
    text = clean(text).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _charts(
    samples: Mapping[str, list[tuple[datetime, float]]], marks: Sequence[tuple[datetime, str, str]]
) -> tuple[Chart, ...]:
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
    good = _finite(points)
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
        series=clean(name),
        width=_WIDTH,
        height=bottom + 34.0,
        left=_LEFT,
        right=_RIGHT,
        top=top,
        bottom=bottom,
        points=" ".join(f"{x:.1f},{y:.1f}" for x, y in coords),
        dots=tuple((f"{x:.1f}", f"{y:.1f}") for x, y in coords) if len(coords) <= 2 else (),
        y_min=_number(low) if values else "—",
        y_max=_number(high) if values else "—",
        x_min=format_instant(start) if start else "—",
        x_max=format_instant(end) if end else "—",
        markers=markers,
        note=note,
    )
