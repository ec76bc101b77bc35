"""Which replica leads: the lease this process claims and renews, and what it may do meanwhile.

Every replica runs a :class:`Leader`. Its thread claims the cluster's lease every third of
the lease (:meth:`~rollbackd.journal.stores.Leadership.claim`: a compare and set timed by
the journal's clock). This replica leads while its last successful claim is its own and
younger than :data:`SAFETY` of the lease, measured on its own monotonic clock from the
moment that claim *started*: the server's expiry was set later than that, so the replica
stops before the server could give the lease to another, even if every renewal since
failed or never came back (PostgreSQL unreachable, a frozen TCP path, a paused process).

What the replica does as a leader runs in a *term*, :meth:`Leader.term`: its journal writes
are fenced by the epoch (refused with :class:`~rollbackd.errors.NotLeader` once another
replica took over), and :meth:`Leader.acting` turns False the moment the lease runs out
here or the epoch changes, which stops a rollback between steps and before a step's work.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from rollbackd.core.durations import format_duration, format_instant
from rollbackd.errors import JournalError
from rollbackd.journal import Leadership, Lease
from rollbackd.logs import get_logger
from rollbackd.metrics import DaemonMetrics

log = get_logger("rollbackd.cluster")

SAFETY = 0.8
"""A lease is taken as held for this share of it after its claim started: the rest is a
margin for the two clocks' rates and for the claim's own round trip."""
RENEWALS = 3
"""Claims per lease: the lease is renewed every third of it."""
AT_EXPIRY = 0.02
"""A follower claims this long (seconds) after another's lease runs out by the journal's
clock, not up to a renewal later: failover takes the lease, not the lease and a third."""


def default_replica_name() -> str:
    """``HOST-PID-RANDOM``: unique among replicas, and recognisable in /readyz and logs."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"{host.strip('-.') or 'host'}-{os.getpid()}-{secrets.token_hex(3)}"


class Leader:
    """This replica's view of the cluster's lease: whether it leads, and since which epoch.

    ``start()`` runs the claims in a thread of its own; ``renew()`` is one claim (start-up
    makes one before anything acts). ``metrics`` gets ``rollbackd_leader`` and
    ``rollbackd_leader_changes_total``.
    """

    def __init__(
        self,
        leadership: Leadership,
        cluster: str,
        replica: str,
        lease: timedelta,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self.leadership = leadership
        self.cluster = cluster
        self.replica = replica
        self.lease = lease
        self.metrics = metrics
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._until = -math.inf
        self._seen: Lease | None = None
        self._error: str | None = None
        self._reported: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._term = threading.local()
        self._on_lead: list[Callable[[int], object]] = []

    # -- the lease ------------------------------------------------------------------------

    def renew(self) -> int | None:
        """Claim the lease once (take or renew it); the epoch this replica leads in, or None."""
        started = time.monotonic()
        try:
            lease = self.leadership.claim(self.cluster, self.replica, self.lease)
        except JournalError as exc:
            with self._lock:
                if self._error is None:
                    log.warning("cannot claim the lease", cluster=self.cluster, error=str(exc))
                self._error = str(exc)
            return self._note()
        with self._lock:
            self._error = None
            if self._seen is not None and lease.epoch != self._seen.epoch and self.metrics:
                self.metrics.leader_changes.inc()
            self._seen = lease
            if lease.holder != self.replica:
                self._epoch, self._until = None, -math.inf
            else:
                self._epoch = lease.epoch
                self._until = (
                    math.inf
                    if lease.expires_at is None
                    else started + self.lease.total_seconds() * SAFETY
                )
        return self._note()

    def on_lead(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(epoch)`` (in the claiming thread) each time this replica starts
        leading: the runtime runs a cycle at once, not at the next planned one."""
        self._on_lead.append(callback)

    def leads(self) -> int | None:
        """The epoch this replica leads in now, or None (a follower, or its lease ran out)."""
        with self._lock:
            if self._epoch is not None and time.monotonic() < self._until:
                return self._epoch
            return None

    def _note(self) -> int | None:
        """Log and count a change of this replica's role; the epoch it leads in now."""
        epoch = self.leads()
        with self._lock:
            if epoch == self._reported:
                return epoch
            before, self._reported = self._reported, epoch
            holder = self._seen.holder if self._seen else None
        if epoch is not None:
            log.info("leading", cluster=self.cluster, replica=self.replica, epoch=epoch)
            for callback in self._on_lead:
                try:
                    callback(epoch)
                except Exception:  # a listener's failure never stops the claims
                    log.exception("a listener of the leadership failed", epoch=epoch)
        elif before is not None:
            log.warning(
                "no longer leading: acting stops",
                cluster=self.cluster,
                replica=self.replica,
                epoch=before,
                leader=holder,
                error=self._error,
            )
        if self.metrics is not None:
            self.metrics.leader.set(0 if epoch is None else 1)
        return epoch

    def start(self) -> None:
        """Claim in the background every third of the lease (none needed if it never ends)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._claims, name="lease", daemon=True)
        self._thread.start()

    def _claims(self) -> None:
        every = self.lease.total_seconds() / RENEWALS
        while not self._stop.is_set():
            started = time.monotonic()
            self.renew()
            with self._lock:
                until, seen, failed = self._until, self._seen, self._error is not None
            if until == math.inf:
                return  # a lease that never ends: nothing to renew
            next_claim = started + every
            # Another's lease: claim again as it ends. Not after a failed claim: what was
            # seen is stale, and claiming in a loop would hammer an unreachable server.
            held = seen is not None and seen.holder != self.replica and not failed
            if held and seen is not None and seen.remaining is not None:
                ends = started + seen.remaining.total_seconds() + AT_EXPIRY
                next_claim = min(next_claim, max(ends, time.monotonic() + AT_EXPIRY))
            while not self._stop.is_set() and time.monotonic() < next_claim:
                # wake at the lease's end too: its loss is said (and counted) at once
                wake = min(next_claim, until) if until > time.monotonic() else next_claim
                self._stop.wait(max(wake - time.monotonic(), 0.0) + 0.001)
                self._note()

    def stop(self) -> None:
        """Stop claiming and give the lease up (another replica need not wait for it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease.total_seconds())
        if self.leads() is None:
            return
        with self._lock:
            self._epoch, self._until = None, -math.inf
        try:
            self.leadership.release(self.cluster, self.replica)
        except JournalError as exc:
            log.warning("lease not released: it runs out by itself", error=str(exc))
        self._note()

    # -- acting -------------------------------------------------------------------------

    @contextmanager
    def term(self, epoch: int) -> Iterator[None]:
        """Act as the leader of ``epoch`` in this thread: journal writes fenced by it, and
        :meth:`acting` False once it is not this replica's epoch any more."""
        before = getattr(self._term, "epoch", None)
        self._term.epoch = epoch
        try:
            with self.leadership.fenced(self.cluster, epoch):
                yield
        finally:
            self._term.epoch = before

    def thread_term(self) -> int | None:
        """The epoch this thread acts in (:meth:`term`), or None."""
        epoch: int | None = getattr(self._term, "epoch", None)
        return epoch

    def leads_in(self, epoch: int) -> bool:
        """Whether this replica leads now, in ``epoch``."""
        return self.leads() == epoch

    def acting(self) -> bool:
        """Whether this thread may act: this replica leads, in the term the thread acts in."""
        epoch = self.leads()
        term = getattr(self._term, "epoch", None)
        return epoch is not None and (term is None or term == epoch)

    # -- shown --------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """What /readyz says of the cluster: role, this replica, the leader, epoch, expiry."""
        epoch = self.leads()
        with self._lock:
            seen, error = self._seen, self._error
        leader = None
        if seen is not None and seen.holder == self.replica:
            leader = self.replica if epoch is not None else None
        elif seen is not None:
            leader = seen.holder
        return {
            "role": "leader" if epoch is not None else "follower",
            "cluster": self.cluster,
            "replica": self.replica,
            "leader": leader,
            "epoch": seen.epoch if seen is not None else None,
            "lease_expires": (
                format_instant(seen.expires_at)
                if seen is not None and seen.expires_at is not None
                else None
            ),
            "lease": format_duration(self.lease),
            "lease_error": error,
        }
