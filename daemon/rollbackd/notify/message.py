"""What a notification says: found what, how bad and why, what was done, what is asked.

The two functions here are the only builders of a :class:`~rollbackd.notify.Message`
(a test keeps it so): :func:`compose` for a decision that people are told of or
asked about, :func:`notice` for what happens afterwards (a rollback under way,
recovered, stuck, withdrawn).

:func:`compose` builds a message that a person can act on
from a phone: the title names the severity, service, incident and finding; the
text says why it has that severity, what rollbackd did, what it asks, by when
(RFC 3339, UTC), who may decide, and exactly how to approve or veto — with the
CLI (``rollbackd approve ID``) and with the HTTP API (``POST …/approve``).

Every field may carry text from outside (an alert's labels, a person's reason,
an exception's message), so each one is flattened to a single line and bounded
(:func:`rollbackd.text.one_line`): a label cannot add a line of its own that
looks like an instruction from rollbackd, nor a page of text. Format-specific
escaping (Slack's ``&``, ``<``, ``>``) is the job of each format, not of this
module.

The message is routed to the approver's role (``Message.role``): the people who
must decide are the ones told (the playbook's "Emergency Contacts").
"""

from __future__ import annotations

from datetime import datetime

from rollbackd.core.durations import format_instant
from rollbackd.notify import Message
from rollbackd.text import clip, one_line

TITLE_LIMIT = 150
"""Characters in a title: Slack's header block takes at most 150."""
FIELD_LIMIT = 500
"""Characters kept of each field; the rest is evidence for the journal, not a page."""
NOTICE_LIMIT = 2000
"""Characters kept of a notice's text: a summary with its reasons, well within a Slack section."""
SERVICE_LIMIT = 64
"""Characters kept of a service name (configured names are shorter)."""
TOKEN_ENV = "ROLLBACKD_TOKEN"  # noqa: S105 -- the name of a variable, not a token
"""Where ``rollbackd approve``/``veto`` read the bearer token (design §2)."""


def compose(
    *,
    incident: int,
    service: str,
    severity: str,
    what: str,
    why: str,
    action: str,
    asks: str | None,
    approver: str | None,
    deadline: datetime | None,
    public_url: str | None,
    headline: str | None = None,
    how_to_decide: bool = True,
) -> Message:
    """A message that says what was found, how bad and why, what rollbackd did or
    asks, by when, and how to approve or veto (CLI and HTTP).

    ``asks`` is what people are asked to decide (``None``: the message is for
    their information and carries no approve/veto instructions); ``approver``
    is the role that may decide and the role the message is routed to;
    ``deadline`` must carry a time zone. ``headline`` is what the title says
    after the service (default: ``what``). ``how_to_decide`` False: what is
    asked is not answered by approve or veto (an escalation), so no such
    instructions are given.
    """
    if deadline is not None and deadline.tzinfo is None:
        raise ValueError("deadline needs a time zone: it is shown to people in UTC")
    sev = _severity(severity)
    svc = one_line(service, SERVICE_LIMIT)
    found = one_line(what, FIELD_LIMIT)
    subject = one_line(headline, FIELD_LIMIT) if headline else found
    title = clip(f"{sev.upper()} {svc}: {subject} (incident {incident})", TITLE_LIMIT)
    lines = [
        f"What was found: {found}",
        f"Severity: {sev}, because {one_line(why, FIELD_LIMIT) or 'no reason was given'}",
        f"What rollbackd did: {one_line(action, FIELD_LIMIT) or 'nothing yet'}",
    ]
    request = one_line(asks, FIELD_LIMIT) if asks is not None else ""
    role = _role(approver)
    if request:
        lines.append(f"What is asked of you: {request}")
    else:
        lines.append("What is asked of you: nothing; this is for your information")
    if deadline is not None:
        lines.append(f"Deadline: {format_instant(deadline)} (UTC)")
    base = public_url.rstrip("/") if public_url else None
    if request and how_to_decide:
        deciders = "admin" if role in (None, "admin") else f"{role} or admin"
        lines.append(f"Who may decide: anyone with a token of role {deciders}")
        lines.extend(_how_to("approve", incident, base))
        lines.extend(_how_to("veto", incident, base))
        lines.append(f"(both read the bearer token from ${TOKEN_ENV})")
    if base is not None:
        lines.append(f"Incident: {base}/api/v1/incidents/{incident}")
        lines.append(f"Status page: {base}/")
    return Message(
        incident=incident,
        service=svc,
        severity=sev,
        title=title,
        text="\n".join(lines),
        role=role,
    )


def _how_to(verb: str, incident: int, base: str | None) -> list[str]:
    path = f"/api/v1/incidents/{incident}/{verb}"
    if base is None:
        http = (
            f"  HTTP: POST {path} on this rollbackd's API with "
            f'"Authorization: Bearer ${TOKEN_ENV}" ([daemon] public_url is not set, '
            "so its address is not known here)"
        )
    else:
        http = f'  HTTP: curl -fsS -X POST -H "Authorization: Bearer ${TOKEN_ENV}" {base}{path}'
    return [f"To {verb}:", f"  CLI:  rollbackd {verb} {incident}", http]


def notice(
    *,
    incident: int,
    service: str,
    severity: str,
    title: str,
    text: str,
    role: str | None = None,
) -> Message:
    """A message that tells people what happened to an incident, as one bounded line of
    title and one of text (each may quote a reason, an exception or a summary from outside).

    ``role`` routes it as :func:`compose` does (``None``: to every notifier).
    """
    return Message(
        incident=incident,
        service=one_line(service, SERVICE_LIMIT),
        severity=_severity(severity),
        title=one_line(title, TITLE_LIMIT),
        text=one_line(text, NOTICE_LIMIT),
        role=_role(role),
    )


def _severity(severity: str) -> str:
    return one_line(severity, 20).lower() or "unknown"


def _role(role: str | None) -> str | None:
    return one_line(role, 32) or None
