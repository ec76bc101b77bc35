"""The playbook's decision matrix: trigger severities, overrides, and user impact."""

from __future__ import annotations

import math

import pytest

from rollbackd.core.matrix import TRIGGER_SEVERITY, assess_severity, impact_severity
from rollbackd.core.model import Severity, Trigger

# The playbook's "When to Rollback" section, class by class.
PLAYBOOK = {
    Trigger.DATA_LOSS: Severity.CRITICAL,
    Trigger.AUTH_FAILURE: Severity.CRITICAL,
    Trigger.OUTAGE: Severity.CRITICAL,
    Trigger.SECURITY_BREACH: Severity.CRITICAL,
    Trigger.CRITICAL_BUSINESS_FUNCTION: Severity.CRITICAL,
    Trigger.PERFORMANCE_DEGRADATION: Severity.HIGH,
    Trigger.HIGH_ERROR_RATE: Severity.HIGH,
    Trigger.MAJOR_FEATURE_BROKEN: Severity.HIGH,
    Trigger.DATA_INTEGRITY: Severity.HIGH,
    Trigger.MINOR_FEATURE_BROKEN: Severity.MEDIUM,
    Trigger.UI_ISSUE: Severity.MEDIUM,
    Trigger.NOTICEABLE_SLOWDOWN: Severity.MEDIUM,
}

# One impact inside each band of the "User Impact" column, with the row it implies.
BANDS = [
    (0.75, Severity.CRITICAL),
    (0.30, Severity.HIGH),
    (0.05, Severity.MEDIUM),
    (0.001, Severity.LOW),
]

# A base severity for each matrix row: a trigger of that row, or an override for low.
BASES = [
    (Trigger.OUTAGE, None, Severity.CRITICAL),
    (Trigger.HIGH_ERROR_RATE, None, Severity.HIGH),
    (Trigger.UI_ISSUE, None, Severity.MEDIUM),
    (Trigger.UI_ISSUE, Severity.LOW, Severity.LOW),
]


def test_the_playbook_names_twelve_trigger_classes() -> None:
    """Every trigger the daemon knows is one of the playbook's twelve, and all twelve are known."""
    assert set(Trigger) == set(PLAYBOOK)
    assert len(PLAYBOOK) == 12


@pytest.mark.parametrize(("trigger", "severity"), PLAYBOOK.items(), ids=[t.value for t in PLAYBOOK])
def test_each_trigger_class_carries_its_playbook_severity(
    trigger: Trigger, severity: Severity
) -> None:
    """Without override or impact, a trigger's finding has the playbook's severity, said so."""
    assert TRIGGER_SEVERITY[trigger] is severity
    assessed, why = assess_severity(trigger, None, None)
    assert assessed is severity
    assert why == f"trigger {trigger.value} is {severity.value}"


@pytest.mark.parametrize("override", list(Severity))
@pytest.mark.parametrize("trigger", [Trigger.OUTAGE, Trigger.HIGH_ERROR_RATE, Trigger.UI_ISSUE])
def test_a_rule_severity_overrides_its_trigger(trigger: Trigger, override: Severity) -> None:
    """A rule's severity wins over its trigger's, lower or higher, and the reason says so."""
    assessed, why = assess_severity(trigger, override, None)
    assert assessed is override
    assert why == f"rule severity {override.value}"


@pytest.mark.parametrize(
    ("impact", "severity"),
    [
        (1.0, Severity.CRITICAL),
        (0.51, Severity.CRITICAL),
        (0.5, Severity.HIGH),  # ">50% users" is critical; exactly half is not more than half
        (0.3, Severity.HIGH),
        (0.10, Severity.HIGH),
        (0.0999, Severity.MEDIUM),
        (0.05, Severity.MEDIUM),
        (0.01, Severity.MEDIUM),
        (0.0099, Severity.LOW),
        (0.0, Severity.LOW),
    ],
)
def test_impact_bands_follow_the_user_impact_column(impact: float, severity: Severity) -> None:
    """>50 % critical, 10-50 % high (both edges), 1-10 % medium, under 1 % low."""
    assert impact_severity(impact) is severity


@pytest.mark.parametrize(("impact", "band"), BANDS, ids=[b.value for _, b in BANDS])
@pytest.mark.parametrize(("trigger", "override", "base"), BASES, ids=[b.value for _, _, b in BASES])
def test_impact_raises_and_never_lowers_across_the_matrix(
    trigger: Trigger, override: Severity | None, base: Severity, impact: float, band: Severity
) -> None:
    """Every row x column of the matrix: the result is the higher of base and impact band."""
    assessed, why = assess_severity(trigger, override, impact)
    expected = band if band.rank > base.rank else base
    assert assessed is expected
    if band.rank > base.rank:
        assert f"raised to {band.value} by impact" in why
    else:
        assert "does not raise it" in why


def test_the_reason_gives_the_impact_as_a_share_of_users() -> None:
    """The severity reason shows the impact as a percentage of users."""
    _, why = assess_severity(Trigger.UI_ISSUE, None, 0.6)
    assert why == "trigger ui_issue is medium, raised to critical by impact (60% of users)"


def test_impact_raises_an_overridden_severity_too() -> None:
    """A rule that says low is still raised when most users are affected."""
    assessed, why = assess_severity(Trigger.UI_ISSUE, Severity.LOW, 0.9)
    assert assessed is Severity.CRITICAL
    assert why.startswith("rule severity low, raised to critical")


@pytest.mark.parametrize("impact", [-0.1, 1.5, 100.0, math.nan, math.inf, -math.inf], ids=str)
def test_an_impact_that_is_not_a_fraction_is_ignored_and_said_so(impact: float) -> None:
    """Outside 0..1 or not a number, the impact changes nothing and the reason explains why."""
    assessed, why = assess_severity(Trigger.UI_ISSUE, None, impact)
    assert assessed is Severity.MEDIUM
    assert "is not a fraction of users (0..1) and is ignored" in why
    assert why.startswith("trigger ui_issue is medium; impact ")
