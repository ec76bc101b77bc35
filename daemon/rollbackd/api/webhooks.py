"""Alertmanager's webhook on its hot path: answered in plain ASGI, ahead of the framework.

Alertmanager sends a webhook for every group of alerts, and a cluster's replicas share two
cores with PostgreSQL: routing, dependency injection, middleware and response classes cost
more CPU per delivery than parsing and journaling it. :class:`WebhookFastPath` answers the
ordinary delivery itself — a ``POST`` to the webhook's path, by a caller with the role,
with a small body that parses — and journals it exactly as the route does (through the same
:class:`~rollbackd.intake.Intake`). Anything else (no or a wrong token, a body too large or
that does not parse, a streamed body, another path) goes to the application unchanged, the
body it read replayed, so every error is the application's: the same status, the same JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

import orjson

from rollbackd.api.auth import Auth, permits
from rollbackd.api.errors import mapped_response
from rollbackd.api.limits import Message, Receive, Scope, Send
from rollbackd.errors import JournalError

App = Callable[[Scope, Receive, Send], Awaitable[None]]

PATH = "/webhooks/alertmanager"
ROLES = ("alertmanager",)
"""Who may post it (as the route's ``requires("alertmanager")``)."""


class WebhookFastPath:
    """ASGI middleware: Alertmanager's ordinary webhook answered here, all else passed on.

    ``submit`` parses and queues a body (:meth:`Intake.submit_webhook`); ``largest`` is the
    largest body answered here (a larger one is parsed off the event loop by the route);
    ``limit`` is the configured body limit, asked at each request.
    """

    def __init__(
        self,
        app: App,
        *,
        auth: Auth,
        submit: Callable[[bytes], Future[tuple[int, int]]],
        largest: int,
        limit: Callable[[], int],
    ) -> None:
        self.app = app
        self.auth = auth
        self.submit = submit
        self.largest = largest
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        length = self._length_if_ours(scope)
        if length is None:
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                break  # the client went away: the application says so
            size += len(message.get("body", b""))
            if size > length or not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in read if m["type"] == "http.request")
        queued = None
        if read[-1]["type"] == "http.request" and size == length:
            try:
                queued = self.submit(body)
            except Exception:  # noqa: BLE001 -- the application parses it again and answers
                queued = None
        if queued is None:
            await self.app(scope, _replay(read, receive), send)
            return
        try:
            changed, duplicates = await asyncio.wrap_future(queued)
        except JournalError as exc:
            await mapped_response(exc)(scope, receive, send)
            return
        answer = orjson.dumps({"accepted": changed, "duplicates": duplicates})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    def _length_if_ours(self, scope: Scope) -> int | None:
        """The body's declared length when this request is one to answer here, else None."""
        authorization = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        if length is None or not length.isdigit():
            return None
        declared = int(length)
        if declared > min(self.largest, self.limit()):
            return None
        caller = self.auth.caller_of(authorization or "")
        if caller is None or not permits(caller, ROLES):
            return None
        return declared


def _replay(read: list[Message], receive: Receive) -> Receive:
    """``receive`` as if nothing had been read: what was, then the rest."""
    pending = list(read)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
