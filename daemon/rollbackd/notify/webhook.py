"""The generic JSON webhook, and the one HTTP delivery every format shares.

A *sender* turns a :class:`~rollbackd.notify.Message` into its format and makes
exactly one attempt to deliver it: :meth:`send` returns when the receiver
answered 2xx and raises :class:`DeliveryError` otherwise, saying in one line
why and whether trying again could help (a timeout, a refused connection, 429
or 5xx could; any other 4xx, a redirect or a bad URL could not). Senders never
retry and never sleep: :class:`rollbackd.notify.retry.Retrying` is the one
place that does, the way Alertmanager's integrations report "retryable or not"
and leave the loop to a single retry stage.

Secrets stay out of every reason: a Slack or webhook URL often *is* the
credential, a PagerDuty routing key is one, and a header may carry one (an API
key). Reasons are built from the status, the reason phrase and a short head of
the body, all redacted (:func:`~rollbackd.httpconfig.redacted_line`) — never from
the URL — and the ``httpx`` logger, which logs each request's URL at INFO, gets a
filter that replaces every registered secret with ``[redacted]``
(:func:`~rollbackd.httpconfig.hide_in_logs`).

The generic format (``kind = "webhook"``)::

    {"version": "1", "incident": 42, "service": "web", "severity": "critical",
     "title": "…", "text": "…", "role": "admin"}
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

import httpx

from rollbackd.bounded import watch_httpx, within
from rollbackd.config import NotifierConfig
from rollbackd.core.durations import format_duration
from rollbackd.httpconfig import hidden, hide_in_logs, redacted_line, secrets_sent
from rollbackd.notify import Message

FORMAT_VERSION = "1"
"""``version`` of the generic webhook's JSON; a change that breaks receivers bumps it."""
BODY_HEAD = 300
"""Bytes of a refusing receiver's body kept in the reason (Slack says e.g. ``invalid_payload``)."""


class DeliveryError(Exception):
    """One attempt failed; ``reason`` is one line without secrets.

    ``retryable`` says whether another attempt could succeed; ``retry_after``
    is the receiver's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class Sender(Protocol):
    """One format for one configured receiver: a single delivery attempt per call."""

    @property
    def name(self) -> str:
        """``kind 'name'`` from the config, for summaries (never the URL)."""
        ...

    def send(self, message: Message) -> None:
        """Deliver once; raise :class:`DeliveryError` if the receiver did not take it."""
        ...


class JsonSender:
    """A sender that POSTs one JSON document per message; subclasses choose the document."""

    kind: ClassVar[str] = "webhook"

    def __init__(self, config: NotifierConfig, client: httpx.Client) -> None:
        self.config = config
        self._client = client
        self._secrets = secrets_of(config)
        hide_in_logs(self._secrets)

    @property
    def name(self) -> str:
        return f"{self.kind} {self.config.name!r}"

    def payload(self, message: Message) -> dict[str, Any]:
        """The JSON document for ``message`` (the generic format by default)."""
        return {
            "version": FORMAT_VERSION,
            "incident": message.incident,
            "service": message.service,
            "severity": message.severity,
            "title": message.title,
            "text": message.text,
            "role": message.role,
        }

    def send(self, message: Message) -> None:
        post_json(self._client, self.config, self.payload(message), self._secrets)


class WebhookSender(JsonSender):
    """The generic JSON webhook (``kind = "webhook"``)."""

    kind = "webhook"


def post_json(
    client: httpx.Client,
    config: NotifierConfig,
    payload: dict[str, Any],
    secrets: list[str],
) -> None:
    """POST ``payload`` to ``config.url`` once, all of it (connect, send, answer) within
    ``config.timeout``; raise :class:`DeliveryError` unless the answer is 2xx.

    A receiver that trickles its answer byte by byte is cut off at the timeout
    (see :mod:`rollbackd.bounded`); of a refusal, only :data:`BODY_HEAD` bytes are read.
    """
    timeout = config.timeout.total_seconds()
    with within(timeout) as deadline:
        try:
            with client.stream(
                "POST",
                config.url,
                json=payload,
                headers=config.headers,
                timeout=timeout,
                follow_redirects=False,
                extensions={"trace": watch_httpx},
            ) as response:
                status = response.status_code
                if 200 <= status < 300:
                    return
                body, cut = _head(response)
                head = redacted_line(body, secrets, BODY_HEAD, cut=cut)
                phrase = redacted_line(response.reason_phrase, secrets, BODY_HEAD)
                answer = f"HTTP {status} {phrase}".rstrip()
                if head:
                    answer = f"{answer}: {head}"
                if status == 429 or status >= 500:
                    raise DeliveryError(
                        answer,
                        retryable=True,
                        retry_after=_retry_after(response.headers.get("retry-after")),
                    )
                if 300 <= status < 400:
                    answer += " (redirects are not followed: configure the final URL)"
                raise DeliveryError(answer, retryable=False)
        except httpx.TimeoutException as exc:
            raise DeliveryError(_timed_out(exc, config), retryable=True) from None
        except httpx.UnsupportedProtocol:
            raise DeliveryError("the URL's scheme is not supported", retryable=False) from None
        except (httpx.TransportError, OSError) as exc:
            if deadline.expired or not deadline.left():  # cut off at the deadline
                limit = format_duration(config.timeout)
                raise DeliveryError(f"no answer within {limit}", retryable=True) from None
            detail = redacted_line(str(exc), secrets, 200) or type(exc).__name__
            raise DeliveryError(f"cannot reach the receiver: {detail}", retryable=True) from None
        except httpx.HTTPError as exc:
            detail = redacted_line(str(exc), secrets, 200) or type(exc).__name__
            raise DeliveryError(f"{type(exc).__name__}: {detail}", retryable=False) from None
        except httpx.InvalidURL:
            raise DeliveryError("the configured URL is not valid", retryable=False) from None


def _timed_out(exc: httpx.TimeoutException, config: NotifierConfig) -> str:
    limit = format_duration(config.timeout)
    if isinstance(exc, httpx.ConnectTimeout):
        return f"timed out connecting after {limit}"
    if isinstance(exc, httpx.WriteTimeout):
        return f"timed out sending after {limit}"
    if isinstance(exc, httpx.PoolTimeout):
        return f"no free connection within {limit}"
    return f"no answer within {limit}"


def _head(response: httpx.Response) -> tuple[str, bool]:
    """The first :data:`BODY_HEAD` bytes of the body, and whether it may go on beyond them."""
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= BODY_HEAD:
            break
    return data[:BODY_HEAD].decode("utf-8", "replace"), len(data) >= BODY_HEAD


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds when given as a number (an HTTP date is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def secrets_of(config: NotifierConfig) -> list[str]:
    """What must never be shown of a notifier's config: its URL (whole, its path, query and
    password), its routing key and its headers' values (see
    :func:`~rollbackd.httpconfig.secrets_sent`) — longest first, so that redaction removes
    whole secrets."""
    parts = urlsplit(config.url)
    found = {config.url, parts.path, parts.query, config.routing_key}
    if parts.query:
        found.add(f"{parts.path}?{parts.query}")
    listed = set(hidden(found)) | set(secrets_sent(config.headers, [config.url]))
    return sorted(listed, key=len, reverse=True)
