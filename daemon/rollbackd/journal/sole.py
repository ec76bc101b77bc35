"""Leadership for a journal one process owns (memory, SQLite): it always leads, at epoch 1.

A SQLite file is locked by the one daemon that writes it (its state directory's lock), so
there is no other replica to share the lease with; the daemon's code is the same as in a
cluster (:class:`~rollbackd.cluster.Leader`), with a lease that never runs out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from rollbackd.errors import NotLeader
from rollbackd.journal.stores import Lease

SOLE_EPOCH = 1


class SoleLeadership:
    """:class:`~rollbackd.journal.stores.Leadership` where the claimant always leads (a mixin:
    no constructor of its own; one dict assignment per claim, atomic as it is)."""

    def _sole_leases(self) -> dict[str, Lease]:
        leases: dict[str, Lease] = self.__dict__.setdefault("_sole_lease_by_cluster", {})
        return leases

    def claim(self, cluster: str, replica: str, lease: timedelta) -> Lease:
        held = Lease(holder=replica, epoch=SOLE_EPOCH, expires_at=None)
        self._sole_leases()[cluster] = held
        return held

    def lease(self, cluster: str) -> Lease | None:
        return self._sole_leases().get(cluster)

    def release(self, cluster: str, replica: str) -> None:
        """Nothing to give up: nobody else could take it."""

    @contextmanager
    def fenced(self, cluster: str, epoch: int) -> Iterator[None]:
        if epoch != SOLE_EPOCH:
            raise NotLeader(f"cluster {cluster}: epoch {epoch} is not this journal's")
        yield
