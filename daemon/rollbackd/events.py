"""What a running daemon tells those who listen: typed events, one per thing that happened.

The loop, the incidents and the checklist emit them; the runtime (systemd's
status line), the demo's story and the benchmarks listen. A listener reads
fields, never a dict by key, so a renamed field is a type error, not a silent
``KeyError`` in a callback thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from rollbackd.core.engine import IncidentEvent
from rollbackd.core.incident import IncidentState
from rollbackd.core.model import Decision
from rollbackd.logs import get_logger

log = get_logger("rollbackd.events")


@dataclass(frozen=True)
class Decided:
    """The engine decided something about a service (before it is acted on)."""

    decision: Decision


@dataclass(frozen=True)
class Opened:
    """An incident was journaled, in the state it starts in."""

    incident: int
    state: IncidentState


@dataclass(frozen=True)
class Followed:
    """An open incident took in more rules (folded), or ended (resolved, expired, superseded)."""

    event: IncidentEvent


@dataclass(frozen=True)
class StepDone:
    """A checklist step ended; ``outcome`` is its journaled outcome and summary."""

    step: str
    outcome: str


@dataclass(frozen=True)
class Finished:
    """A rollback's worker is done with an incident: the state it left it in."""

    incident: int
    state: IncidentState
    summary: str


@dataclass(frozen=True)
class CycleDone:
    """An evaluation cycle completed; ``status`` is the one-line summary of where things stand."""

    status: str


Event = Decided | Opened | Followed | StepDone | Finished | CycleDone
Listener = Callable[[Event], object]


class Events:
    """Hands each event to every listener, in the order they subscribed.

    A listener that raises is logged and skipped: what it failed to see is its
    own loss, never the loop's or a rollback's.
    """

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener never breaks the one who emits
                log.exception("event listener failed", event=type(event).__name__)
