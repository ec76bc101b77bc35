"""How findings and decisions are shown: JSON lines (design §2) or one readable line each."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rollbackd.durations import format_duration, format_instant
from rollbackd.engine import IncidentEvent
from rollbackd.journal import IncidentRecord
from rollbackd.model import Decision, Finding


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else format_instant(moment)


def finding_record(finding: Finding) -> dict[str, Any]:
    """A finding as one JSON object."""
    return {
        "type": "finding",
        "time": _time(finding.time),
        "service": finding.service,
        "rule": finding.rule,
        "trigger": finding.trigger.value,
        "state": finding.state.value,
        "severity": finding.severity.value,
        "value": finding.value,
        "condition": finding.condition,
        "threshold": finding.threshold,
        "baseline": finding.baseline,
        "since": _time(finding.since),
        "missing_for": None
        if finding.missing_for is None
        else format_duration(finding.missing_for),
        "reason": finding.reason,
        "severity_reason": finding.severity_reason,
    }


def decision_record(decision: Decision) -> dict[str, Any]:
    """A decision as one JSON object with the fields of design §2 and more."""
    record: dict[str, Any] = {
        "type": "action",
        "time": _time(decision.time),
        "service": decision.service,
        "rules": list(decision.rules),
        "severity": decision.severity.value,
        "action": decision.action.value,
        "proposed": decision.proposed.value,
        "value": decision.value,
        "reason": decision.reason,
        "approver": decision.approver,
        "deadline": _time(decision.deadline),
        "guards": list(decision.guards),
        "target": decision.target,
    }
    if len(decision.rules) == 1:
        record["rule"] = decision.rules[0]
    return record


def event_record(event: IncidentEvent) -> dict[str, Any]:
    """What happened to an open incident (resolved, folded, superseded, expired), as JSON."""
    return {
        "type": "incident",
        "event": event.kind.value,
        "time": _time(event.time),
        "service": event.service,
        "incident": event.incident,
        "opened": _time(event.opened),
        "rules": list(event.rules),
        "reason": event.reason,
    }


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def finding_line(finding: Finding) -> str:
    return (
        f"{format_instant(finding.time)}  {finding.state.value:<12} {finding.service}/"
        f"{finding.rule} [{finding.severity.value}]: {finding.reason}"
    )


def decision_line(decision: Decision) -> str:
    extra = ""
    if decision.approver:
        extra += f" (approver {decision.approver}"
        extra += f", deadline {format_instant(decision.deadline)})" if decision.deadline else ")"
    return (
        f"{format_instant(decision.time)}  ACTION {decision.action.value.upper()}{extra} "
        f"{decision.service} [{decision.severity.value}]: {decision.reason}"
    )


def event_line(event: IncidentEvent) -> str:
    return (
        f"{format_instant(event.time)}  {event.kind.value.upper()} {event.service}: "
        f"{event.reason} (opened {format_instant(event.opened)})"
    )


def incident_record(incident: IncidentRecord) -> dict[str, Any]:
    """An incident's summary as one JSON object."""
    return {
        "type": "incident",
        "id": incident.id,
        "service": incident.service,
        "opened": _time(incident.opened_at),
        "closed": _time(incident.closed_at),
        "state": incident.state.value,
        "severity": incident.severity,
        "action": incident.action,
        "origin": incident.origin,
        "current_version": incident.current_version,
        "target": incident.target,
        "reason": incident.reason,
        "summary": incident.summary,
    }
