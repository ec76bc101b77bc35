"""What the API and the status page show: each service's state, and the daemon's readiness."""

from __future__ import annotations

from typing import Any

from rollbackd.core.durations import format_duration, format_instant
from rollbackd.core.model import Finding, FindingState
from rollbackd.loop import Loop
from rollbackd.output import finding_record
from rollbackd.state import State


class Views:
    """Read-only views over the daemon's state and its loop."""

    def __init__(self, state: State, loop: Loop) -> None:
        self.state = state
        self.loop = loop

    def services(self) -> list[dict[str, Any]]:
        report = self.state.last_report
        by_service: dict[str, list[Finding]] = {}
        for finding in report.notable if report else ():
            by_service.setdefault(finding.service, []).append(finding)
        out = []
        for service in self.state.config.services:
            current = self.state.history.current(service.name)
            good, why = self.state.history.last_good(service.name)
            measured = by_service.get(service.name, [])
            own = [f for f in measured if not f.unmeasured]
            states = {f.state for f in own}
            # The rules without a notable finding were quiet and OK: measured. A service whose
            # every rule is unmeasured (no series) has had nothing measured: unknown, not ok.
            quiet_ok = self.state.engine.rule_count(service.name) > len(measured) - len(own)
            state = (
                "firing"
                if FindingState.FIRING in states
                else "pending"
                if FindingState.PENDING in states
                else "inconclusive"
                if FindingState.INCONCLUSIVE in states
                else "ok"
                if own or (report is not None and quiet_ok)
                else "unknown"
            )
            out.append(
                {
                    "name": service.name,
                    "state": state,
                    "current_version": current.version if current else None,
                    "deployed_at": format_instant(current.time) if current else None,
                    "last_good_version": good,
                    "last_good_reason": why,
                    "findings": [finding_record(f) for f in own if f.state is not FindingState.OK],
                    "unmeasured": sorted(f.rule for f in measured if f.unmeasured),
                    "incident": self._open_incident(service.name),
                }
            )
        return out

    def _open_incident(self, service: str) -> dict[str, Any] | None:
        """The incident the engine follows for ``service``, if one is open."""
        judgement = self.state.engine.judgement(service)
        if judgement is None:
            return None
        return {
            "id": judgement.incident,
            "opened": format_instant(judgement.opened),
            "version": judgement.version,
            "severity": judgement.decision.severity.value,
            "action": judgement.decision.action.value,
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: not stopping, the journal can be written, and the evaluation loop
        completes cycles. An unwritable journal acknowledges nothing and holds rollbacks
        (``journal_error`` says why); a stuck loop is not ready (``loop`` says why): a slow
        source must never look like a working daemon. A follower is ready: it serves the
        API (``role``, ``leader``, ``epoch`` and ``lease_expires`` say who acts)."""
        report = self.state.last_report
        sources: dict[str, str] = {}
        if report is not None:
            for name, error in report.source_errors.items():
                sources[name] = error
        stuck = self.loop.stuck()
        journal_error = self.state.journal.problem()
        ready = not self.state.stopping.is_set() and stuck is None and journal_error is None
        return ready, {
            "ready": ready,
            "loop": stuck or "cycles complete",
            "config": str(self.state.loaded.config_path),
            "journal": self.state.journal.location,
            "journal_error": journal_error,
            "last_cycle": format_instant(report.time) if report else None,
            "cycle_error": self.loop.last_cycle_error,
            "degraded": sources,
            "poll_interval": format_duration(self.state.config.daemon.poll_interval),
            **self.state.leader.view(),
        }
