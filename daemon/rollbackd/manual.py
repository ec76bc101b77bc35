"""A rollback a person asks for, built the same way by ``rollbackd rollback`` and the API.

A person names a version or a ref (``--to``, or ``"to"`` in
``POST /api/v1/services/NAME/rollback``), or nothing for the last known good
version. Either way the target is resolved as the daemon resolves its own
decisions (:meth:`DeployHistory.target_ref`): a version a known deploy ran is
rolled back to that deploy's ref, anything else is taken as a ref. Pure: the
history and the findings are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rollbackd.actions.checklist import RollbackRequest
from rollbackd.core.deploys import Deploy, DeployHistory
from rollbackd.core.durations import format_instant
from rollbackd.core.model import Finding, FindingState, Severity
from rollbackd.errors import AlreadyThere, NoTarget
from rollbackd.output import finding_record

MANUAL = "manual"
"""The origin of an incident a person asked for."""


def manual_request(
    service: str,
    to: str | None,
    reason: str,
    history: DeployHistory,
    findings: Iterable[Finding],
    baselines: Mapping[str, float],
) -> RollbackRequest:
    """The rollback of ``service`` to ``to`` (default: the last known good version).

    ``findings`` are the latest evaluation's: the service's firing ones set
    the severity (medium when none fires) and go into the incident's evidence.
    ``baselines``: each relative rule's value before the current deploy, which the
    recovery watch compares with. Raises :class:`NoTarget` or :class:`AlreadyThere`.
    """
    version = to
    if version is None:
        good, why = history.last_good(service)
        if good is None:
            raise NoTarget(f"no last known good version of {service}: {why}")
        version = good
    target = history.target_ref(service, version)
    current = history.current(service)
    if current is not None and {version, target} & {current.version, current.ref}:
        raise AlreadyThere(f"{service} already runs {version}; nothing to roll back")
    own = [f for f in findings if f.service == service]
    firing = [f for f in own if f.firing]
    return RollbackRequest(
        service=service,
        target=target,
        reason=reason,
        origin=MANUAL,
        severity=Severity.highest([f.severity for f in firing]) if firing else Severity.MEDIUM,
        current_version=current.version if current else None,
        evidence=request_evidence(own, history.deploys(service)),
        baselines=dict(baselines),
        migrations=current.migrations if current else (),
        deployed_at=current.time if current else None,
        target_version=version,
    )


def request_evidence(findings: Iterable[Finding], deploys: Sequence[Deploy]) -> dict[str, Any]:
    """What a rollback request keeps from the start, a person's or rollbackd's own: the
    service's ``findings`` that were not OK, the rules it could not measure, and its last
    five ``deploys``."""
    findings = list(findings)
    return {
        "findings": [
            finding_record(f)
            for f in findings
            if f.state is not FindingState.OK and not f.unmeasured
        ],
        "unmeasured": sorted(f.rule for f in findings if f.unmeasured),
        "deploys": [
            {"version": d.version, "time": format_instant(d.time), "source": d.source}
            for d in deploys[-5:]
        ],
    }
