"""How findings and decisions are shown: JSON lines (design §2) or one readable line each."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rollbackd.core.durations import format_duration, format_instant
from rollbackd.core.engine import CycleReport, Explanation, IncidentEvent
from rollbackd.core.model import Decision, Finding, FindingState
from rollbackd.journal import IncidentRecord


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
        "baseline_basis": finding.baseline_basis or None,
        "since": _time(finding.since),
        "missing_for": None
        if finding.missing_for is None
        else format_duration(finding.missing_for),
        "reason": finding.reason,
        "severity_reason": finding.severity_reason,
        "last_seen": _time(finding.last_seen),
        "measured": not finding.unmeasured,
        **evidence_fields(finding),
    }


def evidence_fields(finding: Finding) -> dict[str, float]:
    """What stood behind a weighed finding's value: events, volume, bound, confidence
    (nothing for a rule that does not weigh its traffic)."""
    if finding.volume is None or finding.events is None or finding.bound is None:
        return {}
    return {
        "events": finding.events,
        "volume": finding.volume,
        "bound": finding.bound,
        "confidence": finding.confidence if finding.confidence is not None else 0.0,
    }


def decision_record(decision: Decision, dry_run: bool = False) -> dict[str, Any]:
    """A decision as one JSON object with the fields of design §2 and more.

    ``dry_run``: what the armed daemon would do, shown by a backtest of a dry-run config.
    """
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
        "scope": decision.scope,
    }
    if decision.canary_version is not None:
        record["canary_version"] = decision.canary_version
    if len(decision.rules) == 1:
        record["rule"] = decision.rules[0]
    if dry_run:
        record["dry_run"] = True
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


def unmeasured_note(findings: Iterable[Finding]) -> str | None:
    """The rules a service has never had data for, in one quiet line (None: there are none).

    A rule on a metric the service does not export is inconclusive for ever: said once,
    not as a warning per rule and per cycle.
    """
    never = [f for f in findings if f.unmeasured]
    if not never:
        return None
    names = ", ".join(sorted({f.rule for f in never}))
    looked = max((f.missing_for for f in never if f.missing_for is not None), default=None)
    span = f" in the {format_duration(looked)} looked at" if looked else ""
    return (
        f"not measured{span}: {names} (no data: export the metrics these rules read, "
        "or remove the rules)"
    )


def source_error_lines(errors: Mapping[str, Collection[str]]) -> list[str]:
    """One line per source error, naming the rules (or other reads) it left without data."""
    return [
        f"source error: {error} (rules: {', '.join(sorted(rules))})"
        for error, rules in errors.items()
    ]


@dataclass
class Coverage:
    """How much of a backtest's range the PromQL rules had data for.

    A replayed step where no PromQL rule had data (nothing stored there, or Prometheus
    could not be read) decides nothing, and its "0 actions" is no verdict: the
    summary says how many steps were so, and the errors behind them, never letting a range
    without data read as a healthy one. Probe rules have no history and are not counted.
    """

    rules: Collection[str]
    steps: int = 0
    without: int = 0
    partly: int = 0
    errors: dict[str, set[str]] = field(default_factory=dict)

    def add(self, report: CycleReport) -> None:
        measured = sum(count for rule, count in report.quiet.items() if rule in self.rules)
        missing = 0
        for finding in report.notable:
            if finding.rule not in self.rules:
                continue
            if finding.state is FindingState.INCONCLUSIVE and (
                finding.no_series or finding.rule in report.source_errors
            ):
                missing += 1
            else:  # judged, or inconclusive with data (no baseline yet)
                measured += 1
        if measured or missing:
            self.steps += 1
            self.without += missing > 0 and not measured
            self.partly += missing > 0 and measured > 0
        for rule, error in report.source_errors.items():
            self.errors.setdefault(error, set()).add(rule)

    def error_lines(self) -> list[str]:
        """Each distinct source error once, with the rules it hid."""
        return source_error_lines(self.errors)

    def note(self) -> str | None:
        """How many steps had no data or only part of it (None: every step had it all)."""
        if not self.without and not self.partly:
            return None
        parts = []
        if self.without:
            parts.append(f"no data for {self.without} of the {self.steps} evaluations")
        if self.partly:
            parts.append(
                f"only part of it for {self.partly}"
                if self.without
                else (f"only part of the data for {self.partly} of the {self.steps} evaluations")
            )
        return f"{', '.join(parts)}: inconclusive there, not healthy"


def explanation_record(explanation: Explanation) -> dict[str, Any]:
    """One service's step for ``--explain --json``: every finding and the outcome."""
    deploy = explanation.deploy
    return {
        "type": "explain",
        "time": _time(explanation.time),
        "service": explanation.service,
        "version": deploy.version if deploy else None,
        "deployed_at": _time(deploy.time) if deploy else None,
        "last_good": explanation.last_good,
        "findings": [finding_record(f) for f in explanation.findings],
        "outcome": explanation.outcome,
    }


def explanation_lines(explanation: Explanation) -> list[str]:
    """One service's step for ``--explain``: the deploy, each rule's state and why, the outcome."""
    deploy = explanation.deploy
    running = (
        f"{deploy.version} (deployed {format_instant(deploy.time)}, from {deploy.source})"
        if deploy
        else "no deploy known"
    )
    lines = [
        f"{format_instant(explanation.time)}  {explanation.service}: {running}; "
        f"last known good {explanation.last_good or 'none'}"
    ]
    width = max((len(f.rule) for f in explanation.findings), default=0)
    for finding in explanation.findings:
        if not finding.unmeasured:
            lines.append(f"  {finding.rule:<{width}}  {finding.state.value:<12} {finding.reason}")
    note = unmeasured_note(explanation.findings)
    if note is not None:
        lines.append(f"  {note}")
    lines.append(f"  -> {explanation.outcome}")
    return lines


class ExplainWriter:
    """``--explain`` as text: a block per step, but a run of steps where no rule changed
    state and the outcome stayed the same is one line; the last step is always shown."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[object, ...]] = {}
        self._alike: dict[str, list[Explanation]] = {}

    def write(self, explanation: Explanation) -> list[str]:
        service = explanation.service
        deploy = explanation.deploy
        signature = (
            tuple((f.rule, f.state) for f in explanation.findings),
            explanation.outcome,
            (deploy.version, deploy.time) if deploy else None,
            explanation.last_good,
        )
        if self._last.get(service) == signature:
            self._alike.setdefault(service, []).append(explanation)
            return []
        self._last[service] = signature
        return [*self._flush(service, show_last=False), *explanation_lines(explanation)]

    def close(self) -> list[str]:
        """What is still held back: the steps alike at the end, and the last one in full."""
        lines: list[str] = []
        for service in list(self._alike):
            lines.extend(self._flush(service, show_last=True))
        return lines

    def _flush(self, service: str, show_last: bool) -> list[str]:
        alike = self._alike.pop(service, [])
        if not alike:
            return []
        last = alike[-1]
        if show_last:
            alike = alike[:-1]
        lines = []
        if alike:
            lines.append(
                f"  ... {len(alike)} more {'step' if len(alike) == 1 else 'steps'} alike, "
                f"to {format_instant(alike[-1].time)}"
            )
        if show_last:
            lines.extend(explanation_lines(last))
        return lines


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def finding_line(finding: Finding) -> str:
    return (
        f"{format_instant(finding.time)}  {finding.state.value:<12} {finding.service}/"
        f"{finding.rule} [{finding.severity.value}]: {finding.reason}"
    )


def decision_line(decision: Decision, dry_run: bool = False) -> str:
    extra = " (dry run: the daemon would record this only)" if dry_run else ""
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
