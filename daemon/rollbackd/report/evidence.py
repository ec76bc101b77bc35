"""Evidence parsing: what the journal holds (snapshots, rows, deploys, recovery checks), read
into typed values. Nothing here formats text for the reader; the journal's bodies are
untrusted JSON, so every reader here accepts any shape and yields what it understands."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rollbackd.journal import EvidenceKind, EvidenceRecord, IncidentRecord

TABLE_KINDS = {
    "findings": "findings",
    "finding": "findings",
    "deploys": "deploys",
    "deploy": "deploys",
    "alerts": "alerts",
    "alert": "alerts",
    "firing_alerts": "alerts",
}
"""Evidence kinds (and snapshot keys) shown as a table, and the table each belongs to."""
UNMEASURED = "unmeasured"
"""Rules the service never had data for: one quiet line, not a row of warnings each."""
COLUMNS = {
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
"""The tabular kinds, each with the columns it is shown with, in order."""
RECOVERY_CHECK = EvidenceKind.RECOVERY_CHECK
"""The kind of evidence the recovery watch journals once per check."""


def parse_time(value: object) -> datetime | None:
    """A journaled ISO 8601 time (naive read as UTC), or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Item:
    """One piece of evidence after expanding snapshots: its group, when recorded, its body."""

    kind: str
    time: datetime
    body: Any
    record: int


def evidence_items(evidence: Sequence[EvidenceRecord]) -> Iterator[Item]:
    """The incident's evidence in journal order, each snapshot expanded into its kinds."""
    ordered = sorted(enumerate(evidence), key=lambda pair: (pair[1].time, pair[0]))
    for number, record in ordered:
        kind = TABLE_KINDS.get(record.kind, record.kind)
        body = record.body
        known = (*TABLE_KINDS, UNMEASURED)
        if kind not in COLUMNS and isinstance(body, dict) and any(k in known for k in body):
            rest = {k: v for k, v in body.items() if k not in known}
            for key, value in body.items():
                if key in known:
                    yield Item(TABLE_KINDS.get(key) or key, record.time, value, number)
            if rest:
                yield Item(kind, record.time, rest, number)
        else:
            yield Item(kind, record.time, body, number)


def rows_of(body: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """The dict rows of a tabular body, and whatever in it is not a dict."""
    values = body if isinstance(body, list) else [body]
    return [v for v in values if isinstance(v, dict)], [
        v for v in values if not isinstance(v, dict)
    ]


def flatten_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """An Alertmanager alert as one row: name, severity and summary lifted out of its maps."""
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


@dataclass(frozen=True)
class Deploy:
    """A deploy of the incident's service the evidence (or its ``deployed_at`` fact) tells of."""

    time: datetime
    version: str | None
    source: str | None


def check_held(body: Any) -> bool | None:
    """Whether a recovery check's body says the criteria held; None when it is unreadable."""
    return bool(body.get("held")) if isinstance(body, dict) else None


def journaled_deploys(incident: IncidentRecord, items: Sequence[Item]) -> list[Deploy]:
    """Each deploy of the incident's service the evidence names, once, oldest first."""
    found: dict[tuple[datetime, str | None], Deploy] = {}
    for item in items:
        if item.kind != "deploys":
            continue
        for row in rows_of(item.body)[0]:
            service = row.get("service")
            if service is not None and service != incident.service:
                continue
            at = parse_time(row.get("time")) or item.time
            version = None if row.get("version") is None else str(row["version"])
            source = None if row.get("source") is None else str(row["source"])
            found.setdefault((at, version), Deploy(at, version, source))
    deployed_at = incident.facts.deployed_at
    if deployed_at is not None and not any(d.time == deployed_at for d in found.values()):
        found[(deployed_at, incident.current_version)] = Deploy(
            deployed_at, incident.current_version, None
        )
    return sorted(found.values(), key=lambda d: d.time)


def the_deploy(incident: IncidentRecord, deploys: Sequence[Deploy]) -> Deploy | None:
    """The deploy the incident is about: ``deployed_at``, else the latest before opening."""
    deployed_at = incident.facts.deployed_at
    if deployed_at is not None:
        return next((d for d in deploys if d.time == deployed_at), None)
    before = [d for d in deploys if d.time <= incident.opened_at] or list(deploys)
    current = [d for d in before if d.version == incident.current_version]
    return max(current or before, key=lambda d: d.time, default=None)
