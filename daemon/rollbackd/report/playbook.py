"""The playbook's words: which item each checklist step carries out, its success criteria and
the follow-up checklists the report leaves unchecked for people."""

from __future__ import annotations

from dataclasses import dataclass

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


def playbook_item(name: str) -> str:
    """The playbook item a checklist step carries out, by the step's name."""
    if name.startswith("after_rollback"):
        return "Reinstall dependencies, rebuild, restart"
    return PLAYBOOK_STEPS.get(name, "—")
