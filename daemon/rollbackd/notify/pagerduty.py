"""PagerDuty Events API v2 (``kind = "pagerduty"``): paging whoever is on call.

Every message of one incident triggers with the same ``dedup_key``
(``rollbackd-<incident>``), so PagerDuty keeps one alert per incident and adds
later messages (rolled back, recovered, escalated) to it instead of paging
again. rollbackd's severities map to PagerDuty's: critical → critical,
high → error, medium → warning, low → info (anything else → error).

The routing key travels only in the request body; it never appears in a
reason, and a receiver that echoes it back in an error has it redacted.
PagerDuty answers 202 when it took the event, 429 when rate limited (retried)
and 400 for an invalid event (not retried).
"""

from __future__ import annotations

from typing import Any

from rollbackd.notify import Message
from rollbackd.notify.webhook import JsonSender
from rollbackd.text import clip

SUMMARY_LIMIT = 1024
"""Characters in ``payload.summary`` (PagerDuty's limit)."""
SOURCE = "rollbackd"
SEVERITIES = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
"""rollbackd's severity → PagerDuty's ``payload.severity``."""
UNKNOWN_SEVERITY = "error"


def dedup_key(incident: int) -> str:
    """The PagerDuty alert key of one rollbackd incident."""
    return f"{SOURCE}-{incident}"


class PagerDutySender(JsonSender):
    """Triggers PagerDuty Events v2 alerts, one alert per rollbackd incident."""

    kind = "pagerduty"

    def payload(self, message: Message) -> dict[str, Any]:
        return {
            "routing_key": self.config.routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key(message.incident),
            "payload": {
                "summary": clip(message.title, SUMMARY_LIMIT),
                "source": SOURCE,
                "severity": SEVERITIES.get(message.severity.lower(), UNKNOWN_SEVERITY),
                "component": message.service,
                "custom_details": {
                    "incident": message.incident,
                    "service": message.service,
                    "severity": message.severity,
                    "role": message.role,
                    "text": message.text,
                },
            },
        }
