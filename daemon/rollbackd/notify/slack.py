"""Slack incoming webhooks (``kind = "slack"``): the playbook's "admin team chat".

The document::

    {"text": "<title and text, the fallback for notifications>",
     "blocks": [{"type": "header", …title…},
                {"type": "section", "text": {"type": "mrkdwn", …text…}},
                {"type": "context", …incident, service, severity…}]}

Slack reads ``&``, ``<`` and ``>`` as markup (``<!channel>``, ``<@U123>``,
``<https://x|y>``), and a message carries alert labels and people's reasons,
so all three are escaped as ``&amp;``, ``&lt;``, ``&gt;`` in every text field;
``verbatim`` stops Slack from turning plain ``@here`` or ``#channel`` into
mentions. The webhook URL is the credential: it never appears in a reason.
"""

from __future__ import annotations

import re
from typing import Any

from rollbackd.notify import Message
from rollbackd.notify.message import TITLE_LIMIT
from rollbackd.notify.webhook import JsonSender

SECTION_LIMIT = 3000
"""Characters in a section block's text (Slack's limit)."""
FALLBACK_LIMIT = 8000
"""Characters in the top-level ``text`` (Slack truncates long messages anyway)."""
_PARTIAL_ENTITY = re.compile(r"&[a-z]*$")


def escape(text: str) -> str:
    """``text`` with Slack's three control characters escaped (``&`` first)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escaped_within(text: str, limit: int) -> str:
    """``text`` escaped and cut to ``limit`` characters without splitting an entity."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    return _PARTIAL_ENTITY.sub("", escaped[: limit - 1]) + "…"


class SlackSender(JsonSender):
    """Posts Block Kit messages to a Slack incoming webhook."""

    kind = "slack"

    def payload(self, message: Message) -> dict[str, Any]:
        context = f"rollbackd incident {message.incident} · {message.service} · {message.severity}"
        if message.role:
            context += f" · for {message.role}"
        return {
            "text": escaped_within(f"{message.title}\n{message.text}", FALLBACK_LIMIT),
            "blocks": [
                {
                    "type": "header",
                    "text": {
                        "type": "plain_text",
                        "text": escaped_within(message.title, TITLE_LIMIT),
                        "emoji": False,
                    },
                },
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": escaped_within(message.text, SECTION_LIMIT),
                        "verbatim": True,
                    },
                },
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": escape(context), "verbatim": True},
                    ],
                },
            ],
        }
