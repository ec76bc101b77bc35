"""What the templates show: plain (cleaned, not yet escaped) text fields, computed once for
both formats, and the chart geometry in viewBox coordinates."""

from __future__ import annotations

from dataclasses import dataclass

from rollbackd.report.playbook import FollowUpGroup


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
