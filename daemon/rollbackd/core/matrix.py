"""The playbook's rollback decision matrix, as pure functions.

Each trigger class of "When to Rollback" carries a base severity; a rule's
``severity`` overrides it; measured user impact can only raise it:

==========  ===============  ==========================
severity    user impact      triggers
==========  ===============  ==========================
critical    > 50 % of users  data loss, auth failures, outage, security breach,
                             critical business function
high        10 - 50 %        > 5 % errors, > 50 % slower, major feature, data integrity
medium      < 10 %           minor feature, UI issue, noticeable slowdown
low         minimal (< 1 %)  (only through a rule's ``severity``)
==========  ===============  ==========================
"""

from __future__ import annotations

import math

from rollbackd.core.model import Severity, Trigger

TRIGGER_SEVERITY: dict[Trigger, Severity] = {
    Trigger.DATA_LOSS: Severity.CRITICAL,
    Trigger.AUTH_FAILURE: Severity.CRITICAL,
    Trigger.OUTAGE: Severity.CRITICAL,
    Trigger.SECURITY_BREACH: Severity.CRITICAL,
    Trigger.CRITICAL_BUSINESS_FUNCTION: Severity.CRITICAL,
    Trigger.HIGH_ERROR_RATE: Severity.HIGH,
    Trigger.PERFORMANCE_DEGRADATION: Severity.HIGH,
    Trigger.MAJOR_FEATURE_BROKEN: Severity.HIGH,
    Trigger.DATA_INTEGRITY: Severity.HIGH,
    Trigger.MINOR_FEATURE_BROKEN: Severity.MEDIUM,
    Trigger.UI_ISSUE: Severity.MEDIUM,
    Trigger.NOTICEABLE_SLOWDOWN: Severity.MEDIUM,
}

IMPACT_CRITICAL = 0.5
"""More than this fraction of users affected is critical."""
IMPACT_HIGH = 0.10
"""From this fraction up to IMPACT_CRITICAL is high."""
IMPACT_MINIMAL = 0.01
"""Below this fraction the impact is minimal (low); from it up to IMPACT_HIGH is medium."""


def impact_severity(fraction: float) -> Severity:
    """The matrix's "User Impact" column: the severity a fraction of users implies."""
    if fraction > IMPACT_CRITICAL:
        return Severity.CRITICAL
    if fraction >= IMPACT_HIGH:
        return Severity.HIGH
    if fraction >= IMPACT_MINIMAL:
        return Severity.MEDIUM
    return Severity.LOW


def assess_severity(
    trigger: Trigger, override: Severity | None, impact: float | None
) -> tuple[Severity, str]:
    """Severity of a finding and the sentence that explains it.

    The base is the rule's ``severity`` if set, else its trigger's. A known
    impact (fraction of users, 0..1) raises it to the impact's row; it never
    lowers it. An impact outside 0..1 or not a number is ignored, and said so.
    """
    if override is not None:
        base, why = override, f"rule severity {override.value}"
    else:
        base = TRIGGER_SEVERITY[trigger]
        why = f"trigger {trigger.value} is {base.value}"
    if impact is None:
        return base, why
    if not math.isfinite(impact) or not 0.0 <= impact <= 1.0:
        return base, f"{why}; impact {impact!r} is not a fraction of users (0..1) and is ignored"
    by_impact = impact_severity(impact)
    share = f"{impact * 100:.3g}% of users"
    if by_impact.rank > base.rank:
        return by_impact, f"{why}, raised to {by_impact.value} by impact ({share})"
    return base, f"{why}; impact {share} does not raise it"
