"""What other systems send: Alertmanager's webhooks and deploy events, journaled as received.

A webhook delivery is parsed, then queued for the journal's group commit; its
2xx waits until it is on disk. A deploy event is validated, journaled, and then
starts its attribution window in the deploy history.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from rollbackd.core.deploys import Deploy
from rollbackd.logs import get_logger
from rollbackd.sources.alerts import parse_webhook
from rollbackd.sources.deploys import parse_event
from rollbackd.state import State

log = get_logger("rollbackd")


class Intake:
    """Webhooks and deploy events into the journal and the deploy history."""

    def __init__(self, state: State) -> None:
        self.state = state

    def submit_webhook(self, body: bytes) -> Future[tuple[int, int]]:
        """Parse a delivery and queue it for the journal: done once it is on disk.

        InvalidInput (raised here) names what is wrong with the body; the
        future fails with JournalError if the journal cannot write it.
        """
        delivery = parse_webhook(body, self.state.config.alerts.service_label)
        future = self.state.journal.submit_delivery(
            self.state.clock(), delivery, body.decode("utf-8", errors="replace")
        )
        future.add_done_callback(self._count_webhook)
        return future

    def _count_webhook(self, done: Future[tuple[int, int]]) -> None:
        failed = done.cancelled() or done.exception() is not None
        self.state.metrics.webhooks.labels("failed" if failed else "accepted").inc()

    def accept_deploy(self, body: Mapping[str, Any]) -> Deploy:
        """Validate and journal a deploy event, then let it start its attribution window."""
        now = self.state.clock()
        deploy = parse_event(
            body,
            now,
            {s.name for s in self.state.config.services},
            max_skew=self.state.config.deploys.max_clock_skew,
        )
        self.state.journal.record_deploy(deploy, now)
        self.state.record_deploy(deploy)
        log.info("deploy", service=deploy.service, version=deploy.version, ref=deploy.ref)
        return deploy
