"""Delivering notifications: retries in one wrapper, fan-out, and a background queue.

The parts, from the wire up (each a :class:`~rollbackd.notify.Notifier` except
the senders)::

    WebhookSender / SlackSender / PagerDutySender   one attempt, raise DeliveryError
      └─ Retrying      the ONLY retry loop: 1 + retries attempts, exponential backoff
          └─ Fanout    every notifier for the message's role, concurrently
              └─ Background   a worker thread; notify() returns at once

As in Alertmanager, a format knows how to send and whether a failure is worth
another try; the retry loop, the backoff and the counting live in one place.
Retried: timeouts, connection errors, 429 and 5xx (with ``Retry-After`` when
the receiver sends a number of seconds, capped). Not retried: any other 4xx,
a redirect, a bad URL — trying again would fail the same way.

Which to use:

* **Background** in the daemon, for every notification on the way to or from
  an action — above all the checklist's *notify* step before a critical
  rollback: "a failing notifier never blocks a critical rollback". Its result
  only says the message was queued (and for how many notifiers); the real
  outcome arrives later through ``on_result(message, result)``, which should
  journal it. Call :meth:`Background.drain` at shutdown. In a cluster its ``fence``
  (the replica's :class:`~rollbackd.cluster.Leader`) keeps a former leader quiet: a
  message queued while acting as the leader of an epoch is sent only if this replica
  still leads in it when its turn comes, and its outcome is journaled fenced by it.
* **Fanout** (what :func:`build_notifier` returns) where a person waits for the
  answer and nothing else is held up: a CLI command, a test of the config.
  It returns after every notifier delivered or gave up, at most
  ``(1 + retries) * timeout`` plus the backoff for the slowest notifier.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol, runtime_checkable

import httpx

from rollbackd import __version__
from rollbackd.actions import StepResult
from rollbackd.config import NotifierConfig
from rollbackd.httpconfig import TLSConfig, ssl_context
from rollbackd.logs import get_logger
from rollbackd.notify import Message, Notifier
from rollbackd.notify.pagerduty import PagerDutySender
from rollbackd.notify.slack import SlackSender
from rollbackd.notify.webhook import DeliveryError, JsonSender, Sender, WebhookSender

log = get_logger("rollbackd.notify")

BACKOFF_BASE = 0.5
"""Seconds before the first retry; each further retry waits twice as long."""
BACKOFF_CAP = 10.0
"""No wait between attempts is longer, whatever the attempt or ``Retry-After``."""
QUEUE_SIZE = 100
"""Messages a :class:`Background` holds before it refuses new ones."""
SENDERS: dict[str, type[JsonSender]] = {
    "webhook": WebhookSender,
    "slack": SlackSender,
    "pagerduty": PagerDutySender,
}
"""``[[notifiers]] kind`` → the sender for that format."""

Sleep = Callable[[float], None]
ResultHook = Callable[[Message, StepResult], None]


class Retrying:
    """A :class:`~rollbackd.notify.Notifier` that calls ``sender.send`` up to
    ``attempts`` times, waiting ``backoff_base * 2**(n-1)`` seconds (at most
    ``backoff_cap``) after the n-th retryable failure.

    The timeout of each attempt is the sender's (``[[notifiers]] timeout``).
    The result names the notifier and the attempts; ``output`` has one line per
    attempt. Never raises: a sender's bug is a failed, unretried notification.
    """

    def __init__(
        self,
        sender: Sender,
        attempts: int,
        backoff_base: float = BACKOFF_BASE,
        sleep: Sleep = time.sleep,
        *,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        if backoff_base < 0 or backoff_cap < 0:
            raise ValueError("backoff_base and backoff_cap must not be negative")
        self.sender = sender
        self.attempts = attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep

    def delay(self, failed_attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        wait: float = self.backoff_base * 2.0 ** (failed_attempt - 1)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.backoff_cap)

    def notify(self, message: Message) -> StepResult:
        name = self.sender.name
        lines: list[str] = []
        for attempt in range(1, self.attempts + 1):
            try:
                self.sender.send(message)
            except DeliveryError as exc:
                lines.append(f"attempt {attempt}: {exc.reason}")
                if not exc.retryable:
                    return self._failed(
                        f"{name}: not delivered, not retried ({_count(attempt)}): {exc.reason}",
                        lines,
                        attempt,
                    )
                if attempt < self.attempts:
                    wait = self.delay(attempt, exc.retry_after)
                    lines[-1] += f"; next attempt in {wait:g}s"
                    self._sleep(wait)
            except Exception as exc:  # noqa: BLE001 -- a sender's bug must not reach the rollback
                reason = f"the sender failed with {type(exc).__name__} (a bug in rollbackd)"
                lines.append(f"attempt {attempt}: {reason}")
                return self._failed(f"{name}: not delivered: {reason}", lines, attempt)
            else:
                lines.append(f"attempt {attempt}: delivered")
                return StepResult(
                    True,
                    f"{name}: delivered after {_count(attempt)}",
                    "\n".join(lines),
                    {"notifier": name, "attempts": str(attempt), "delivered": "true"},
                )
        last = lines[-1].split(": ", 1)[1] if lines else "no attempt was made"
        return self._failed(
            f"{name}: not delivered after {_count(self.attempts)}: {last}", lines, self.attempts
        )

    def _failed(self, summary: str, lines: list[str], attempts: int) -> StepResult:
        return StepResult(
            False,
            summary,
            "\n".join(lines),
            {"notifier": self.sender.name, "attempts": str(attempts), "delivered": "false"},
        )


def _count(attempts: int) -> str:
    return f"{attempts} attempt" if attempts == 1 else f"{attempts} attempts"


@runtime_checkable
class Addressed(Protocol):
    """A notifier that can say, without sending, who would receive a message."""

    def recipients(self, message: Message) -> list[str]: ...


class Fanout:
    """Sends a message to every notifier for its role, all at once, and says who got it.

    A notifier with no ``roles`` takes every message; a message with no role
    goes to every notifier. Each notifier runs in its own thread, so one that is
    slow or down delays nobody else's delivery. ``ok`` when at least one
    notifier delivered.
    """

    def __init__(
        self,
        notifiers: Sequence[tuple[NotifierConfig, Notifier]],
        *,
        client: httpx.Client | None = None,
        clients: Sequence[httpx.Client] = (),
    ) -> None:
        self._notifiers = list(notifiers)
        self._clients = [*([client] if client is not None else []), *clients]

    def close(self) -> None:
        """Close the HTTP clients of the notifiers, if this fan-out owns them."""
        for client in self._clients:
            client.close()

    def _targets(self, message: Message) -> list[tuple[NotifierConfig, Notifier]]:
        return [
            (config, notifier)
            for config, notifier in self._notifiers
            if message.role is None or not config.roles or message.role in config.roles
        ]

    def recipients(self, message: Message) -> list[str]:
        """Names of the notifiers ``message`` would go to."""
        return [config.name for config, _ in self._targets(message)]

    def notify(self, message: Message) -> StepResult:
        if not self._notifiers:
            return StepResult(False, "no notifier is configured: nobody was told", message.text)
        targets = self._targets(message)
        if not targets:
            configured = ", ".join(
                f"{c.name} ({'/'.join(c.roles) or 'all'})" for c, _ in self._notifiers
            )
            return StepResult(
                False,
                f"no notifier is configured for role {message.role!r}: nobody was told "
                f"(configured: {configured})",
                message.text,
            )
        if len(targets) == 1:
            results = [_safely(targets[0][1], message)]
        else:
            with ThreadPoolExecutor(
                max_workers=len(targets), thread_name_prefix="rollbackd-notify"
            ) as pool:
                futures = [pool.submit(_safely, notifier, message) for _, notifier in targets]
                results = [future.result() for future in futures]
        delivered = [c.name for (c, _), r in zip(targets, results, strict=True) if r.ok]
        failed = [c.name for (c, _), r in zip(targets, results, strict=True) if not r.ok]
        summary = f"delivered to {len(delivered)} of {len(targets)} notifiers: " + "; ".join(
            r.summary for r in results
        )
        output = "\n".join(
            f"[{config.name}] {result.summary}"
            + "".join(f"\n  {line}" for line in result.output.splitlines())
            for (config, _), result in zip(targets, results, strict=True)
        )
        data = {"delivered": ",".join(delivered), "failed": ",".join(failed)}
        return StepResult(bool(delivered), summary, output, data)


def _safely(notifier: Notifier, message: Message) -> StepResult:
    try:
        return notifier.notify(message)
    except Exception as exc:  # noqa: BLE001 -- Notifier promises not to raise; hold it to that
        return StepResult(False, f"the notifier failed with {type(exc).__name__}")


class Fence(Protocol):
    """What :class:`Background` asks of the replica's leadership (a :class:`Leader
    <rollbackd.cluster.Leader>`)."""

    def thread_term(self) -> int | None:
        """The epoch the calling thread acts in as the leader (None: it does not)."""

    def leads_in(self, epoch: int) -> bool:
        """Whether this replica leads in ``epoch`` now."""

    def term(self, epoch: int) -> AbstractContextManager[None]:
        """Act (journal) as the leader of ``epoch`` in this thread."""


class Background:
    """Hands each message to one worker thread and returns at once.

    ``notify`` answers ``ok`` with "queued for N notifiers" (or, at once, why
    nothing will be sent: no notifier for the role, the queue is full, or
    shutdown has begun). The worker delivers messages one at a time, in the
    order they came — "rolling back" is never told after "rolled back" — and
    calls ``on_result(message, result)`` with each real outcome, from the
    worker thread; an exception in the hook is swallowed so later messages are
    still sent. The queue holds at most ``maxsize`` messages.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        on_result: ResultHook | None = None,
        maxsize: int = QUEUE_SIZE,
    ) -> None:
        self._notifier = notifier
        self._on_result = on_result
        self._maxsize = maxsize
        self._queue: queue.Queue[tuple[Message, int | None] | None] = queue.Queue(maxsize)
        self._done = threading.Condition()
        self._pending = 0
        self._closed = False
        self._stopped = False
        self.fence: Fence | None = None
        """The replica's leadership, in a cluster: see the module's docstring."""
        self._worker = threading.Thread(target=self._run, name="rollbackd-notify", daemon=True)
        self._worker.start()

    @property
    def pending(self) -> int:
        """Messages queued or being delivered."""
        with self._done:
            return self._pending

    def notify(self, message: Message) -> StepResult:
        recipients = (
            self._notifier.recipients(message) if isinstance(self._notifier, Addressed) else None
        )
        if recipients == []:
            return _safely(self._notifier, message)  # says at once that nobody would be told
        with self._done:
            if self._closed:
                return StepResult(
                    False, "not sent: rollbackd is shutting down its notifications", message.text
                )
            epoch = self.fence.thread_term() if self.fence is not None else None
            try:
                self._queue.put_nowait((message, epoch))
            except queue.Full:
                return StepResult(
                    False,
                    f"not sent: {self._maxsize} notifications are already waiting "
                    "(a receiver is slow or down)",
                    message.text,
                )
            self._pending += 1
        if recipients is None:
            return StepResult(True, "queued for delivery", data={"queued": "true"})
        count = f"{len(recipients)} notifier" + ("" if len(recipients) == 1 else "s")
        return StepResult(
            True,
            f"queued for {count}: {', '.join(recipients)}",
            data={"queued": "true", "recipients": ",".join(recipients)},
        )

    def drain(self, timeout: float) -> int:
        """Stop taking messages and wait up to ``timeout`` seconds for the queued ones;
        return how many were not delivered in time (0: all done, worker stopped)."""
        with self._done:
            self._closed = True
            self._done.wait_for(lambda: self._pending == 0, timeout)
            left = self._pending
            if left == 0 and not self._stopped:
                self._stopped = True
                self._queue.put_nowait(None)
        return left

    def _run(self) -> None:
        while True:
            queued = self._queue.get()
            if queued is None:
                return
            message, epoch = queued
            fence = self.fence if epoch is not None else None
            try:
                if fence is not None and epoch is not None and not fence.leads_in(epoch):
                    log.warning(
                        "notification not sent: queued by this replica as a former leader",
                        incident=message.incident,
                        title=message.title,
                        epoch=epoch,
                    )
                    continue  # what is still true, the leader tells
                result = _safely(self._notifier, message)
                if self._on_result is not None:
                    with fence.term(epoch) if fence is not None and epoch else nullcontext():
                        self._on_result(message, result)
            except Exception:  # noqa: BLE001, S110 -- a failing hook must not stop later messages
                pass
            finally:
                with self._done:
                    self._pending -= 1
                    self._done.notify_all()


def build_notifier(configs: Sequence[NotifierConfig], *, sleep: Sleep = time.sleep) -> Fanout:
    """Every ``[[notifiers]]`` entry in its format, wrapped in :class:`Retrying`
    (``1 + retries`` attempts), behind one :class:`Fanout` and one shared HTTP
    client, or one of its own for a notifier with ``tls`` (closed by :meth:`Fanout.close`)."""
    if not configs:
        return Fanout([])

    def new_client(tls: TLSConfig | None) -> httpx.Client:
        # No idle connections: every attempt connects anew, so its deadline watches the socket.
        return httpx.Client(
            follow_redirects=False,
            headers={"User-Agent": f"rollbackd/{__version__}"},
            limits=httpx.Limits(max_keepalive_connections=0),
            verify=True if tls is None else ssl_context(tls),
        )

    clients = {None: new_client(None)} | {c.tls: new_client(c.tls) for c in configs if c.tls}
    routes: list[tuple[NotifierConfig, Notifier]] = [
        (
            config,
            Retrying(
                SENDERS[config.kind](config, clients[config.tls]),
                1 + config.retries,
                BACKOFF_BASE,
                sleep,
            ),
        )
        for config in configs
    ]
    return Fanout(routes, clients=list(clients.values()))
