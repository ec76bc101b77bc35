"""The one lifecycle of a running daemon: start-up, main loop, shutdown, signals.

:class:`Runtime` is the one place that wires a daemon together: its
:class:`~rollbackd.state.State` (config, engine, readers, checklist, notifier),
the :class:`~rollbackd.loop.Loop`, :class:`~rollbackd.incidents.Incidents`,
:class:`~rollbackd.intake.Intake` and :class:`~rollbackd.views.Views` over it,
and what runs them — the HTTP server (uvicorn, guarded by
:mod:`rollbackd.httpserver`), the scheduler that runs a cycle every
``poll_interval`` at its planned instant, systemd notifications (READY, STATUS,
WATCHDOG, RELOADING, STOPPING) and the signals (SIGHUP reloads, SIGTERM and
SIGINT stop after the step in progress). ``rollbackd run``, ``rollbackd demo``,
the benchmarks and the tests all build a daemon through it, so what they run is
what production runs.

Start-up order: the daemon restores and warms up (bounded), the heap is
settled, the cycles start, then the server listens; READY is sent once it
does. Shutdown is the reverse: the server stops accepting, the cycles stop,
the rollback in progress finishes its step, the journal closes.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from rollbackd.assembly import now_utc
from rollbackd.config import Config
from rollbackd.core.durations import format_duration
from rollbackd.errors import RollbackdError
from rollbackd.events import CycleDone, Event, Events
from rollbackd.incidents import Incidents
from rollbackd.intake import Intake
from rollbackd.journal import Journal
from rollbackd.loader import Loaded
from rollbackd.logs import get_logger
from rollbackd.loop import Loop
from rollbackd.notify import Notifier
from rollbackd.sdnotify import SystemdNotifier
from rollbackd.sources import MetricSource
from rollbackd.sources.probes import Prober
from rollbackd.state import State
from rollbackd.views import Views

if TYPE_CHECKING:
    import uvicorn
    from apscheduler.schedulers.background import BackgroundScheduler

log = get_logger("rollbackd.runtime")

CYCLE_JOB = "evaluate"
"""The scheduler's job that runs one cycle every poll interval."""

YOUNG_OBJECTS = 50_000
"""Allocations between two young garbage collections (Python's default is 700)."""

START_TIMEOUT = 30.0
"""Seconds a runtime started in the background waits for its server to listen."""


def settle_heap() -> tuple[int, int, int]:
    """Tune the garbage collector for a loop that allocates in bursts, once start-up is done.

    What is loaded by now lives as long as the process: frozen, it stays out of
    the collector's full passes, which took 30-50 ms each under webhook load
    (bench/ingest). A cycle at 10,000 services allocates some 300,000 objects
    that live until the next one; with the default threshold they set off a
    full pass several times per cycle, most of that cycle's own CPU
    (bench/cycle). Reference counting frees nearly all of them anyway.
    """
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, before[1], before[2])
    return before


def unsettle_heap(threshold: tuple[int, int, int]) -> None:
    """Undo :func:`settle_heap` when a runtime stops: a process that goes on (tests, the
    benchmarks) collects what the runtime froze once it becomes garbage."""
    gc.unfreeze()
    gc.set_threshold(*threshold)


def planned(first: datetime, interval: timedelta, now: datetime) -> datetime:
    """The latest instant of the schedule ``first + k * interval`` that is not after ``now``."""
    if now <= first:
        return first
    return first + interval * ((now - first) // interval)


def scheduler(
    state: State, loop: Loop, after_cycle: Callable[[], object] | None = None
) -> BackgroundScheduler:
    """A cycle every poll interval, at its planned instant, one at a time (not started)."""
    from apscheduler.schedulers.background import (  # noqa: PLC0415 -- only a runtime schedules
        BackgroundScheduler,
    )
    from apscheduler.triggers.interval import IntervalTrigger  # noqa: PLC0415

    first, interval = state.clock(), state.config.daemon.poll_interval

    def tick() -> None:
        # The planned time, not the moment the thread woke: cycles exactly one interval
        # apart, so a rule's `for` is reached at the cycle it should be, not one late.
        # The trigger's, which a reload may have replaced (reschedule).
        trigger = jobs.get_job(CYCLE_JOB).trigger
        loop.cycle(planned(trigger.start_date, trigger.interval, state.clock()))
        if after_cycle is not None:
            after_cycle()

    jobs = BackgroundScheduler(timezone="UTC")
    jobs.add_job(
        tick,
        IntervalTrigger(seconds=interval.total_seconds(), start_date=first),
        id=CYCLE_JOB,
        max_instances=1,
        coalesce=True,
        next_run_time=first,
        misfire_grace_time=None,
    )
    return jobs


def reschedule(jobs: BackgroundScheduler, state: State) -> bool:
    """After a reload: cycles every (new) ``poll_interval`` from now on; False if unchanged."""
    from apscheduler.triggers.interval import IntervalTrigger  # noqa: PLC0415

    interval = state.config.daemon.poll_interval
    if jobs.get_job(CYCLE_JOB).trigger.interval == interval:
        return False
    trigger = IntervalTrigger(seconds=interval.total_seconds(), start_date=state.clock())
    jobs.reschedule_job(CYCLE_JOB, trigger=trigger)
    log.info("poll interval changed", poll_interval=format_duration(interval))
    return True


class Runtime:
    """A daemon — its state, loop, incidents, intake and views — with its HTTP server, its
    cycles and systemd, built, started and stopped as one.

    ``run()`` serves in the calling (main) thread until SIGTERM or SIGINT, as
    ``rollbackd run`` does; ``start()`` and ``stop()`` run the same thing in
    the background, for the demo, benchmarks and tests; ``restore()`` and
    ``shutdown()`` alone give a daemon with no server and no scheduler (tests
    that call ``loop.cycle()`` with a fake clock). ``cycles=False`` leaves the
    cycles to the caller; ``config_path`` is what SIGHUP reloads; ``port``
    replaces the configured port (0: any free one). The parts that read the
    world (``metrics_source``, ``prober``, ``notifier``/``notifiers``, ``clock``)
    default to production's and are passed in by tests.
    """

    def __init__(
        self,
        loaded: Loaded,
        journal: Journal,
        config_path: Path | None = None,
        *,
        cycles: bool = True,
        systemd: SystemdNotifier | None = None,
        log_level: str = "warning",
        port: int | None = None,
        metrics_source: MetricSource | None = None,
        prober: Prober | None = None,
        notifier: Notifier | None = None,
        notifiers: Callable[[Config], Notifier] | None = None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.events = Events()
        self.state = State(
            loaded,
            journal,
            self.events,
            metrics_source=metrics_source,
            prober=prober,
            notifier=notifier,
            notifiers=notifiers,
            clock=clock,
        )
        self.incidents = Incidents(self.state, self.events)
        self.loop = Loop(self.state, self.incidents, self.events)
        self.intake = Intake(self.state)
        self.views = Views(self.state, self.loop)
        self.config_path = config_path
        self.systemd = systemd if systemd is not None else SystemdNotifier()
        self.log_level = log_level
        self.port = port
        self._wants_cycles = cycles
        self.jobs: BackgroundScheduler | None = None
        self.server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._restored = False
        self._down = False
        self._stopped = False
        self._threshold: tuple[int, int, int] | None = None
        self.events.subscribe(self._on_event)

    @property
    def journal(self) -> Journal:
        return self.state.journal

    @property
    def config(self) -> Config:
        """The running config (a reload replaces it)."""
        return self.state.config

    @property
    def url(self) -> str:
        """Where the server listens (the port it was given, once it listens on port 0)."""
        host, port = self.config.daemon.host, self.config.daemon.port
        if self.server is not None and self.server.started and self.server.servers:
            port = self.server.servers[0].sockets[0].getsockname()[1]
        elif self.port is not None:
            port = self.port
        return f"http://{host}:{port}"

    def restore(self) -> None:
        """Claim the lease; as the leader (always, on a journal of its own), restore what the
        journal knows: warm up from history (bounded), follow every unfinished incident again
        and resume the rollbacks a crash interrupted. A follower does that once it leads."""
        if self._restored:
            return
        self._restored = True
        self.loop.start(self.state.clock())
        if self.loop.epoch is not None:
            self.loop.status_line = "started"

    def shutdown(self, timeout: float = 900.0) -> None:
        """Stop after the step in progress (incidents left mid-checklist resume on restart);
        queued notifications still go out within ``min(timeout, 30 s)``. The journal stays
        open: :meth:`stop` closes it."""
        if self._down:
            return
        self._down = True
        self.state.stopping.set()
        self.state.live.close()
        self.incidents.shutdown()
        self.state.leader.stop()  # after the last step: another replica takes over at once
        self.state.drain_notifiers(min(timeout, 30.0))

    def _cycle_now(self, epoch: int) -> None:
        """This replica took the lease: its next cycle (which takes over) runs now, not up to
        a poll interval later. Later cycles keep their planned instants."""
        jobs = self.jobs
        if jobs is not None and jobs.running and not self._down:
            log.info("took the lease: cycling now", epoch=epoch)
            jobs.modify_job(CYCLE_JOB, next_run_time=now_utc())

    def _on_event(self, event: Event) -> None:
        if isinstance(event, CycleDone):
            self.systemd.status(event.status)

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve in this thread until SIGTERM/SIGINT; SIGHUP reloads. The main loop of `run`."""
        self._install_signals()
        server = self._startup()
        try:
            try:
                server.run()
            except SystemExit:
                if server.started:
                    raise
                raise RollbackdError(self._cannot_listen()) from None
        finally:
            self._shutdown()

    def start(self, timeout: float = START_TIMEOUT) -> Runtime:
        """Start everything in the background; return once the server listens."""
        server = self._startup()
        self._thread = threading.Thread(target=server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._shutdown()
                raise RollbackdError(self._cannot_listen())
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop what :meth:`start` started, after the step in progress."""
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._shutdown()

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the steps ----------------------------------------------------------------------------

    def _startup(self) -> uvicorn.Server:
        import uvicorn  # noqa: PLC0415 -- only a runtime serves

        from rollbackd.api import create_app  # noqa: PLC0415
        from rollbackd.httpserver import server_options  # noqa: PLC0415

        config = self.config.daemon
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(self),
                host=config.host,
                port=config.port if self.port is None else self.port,
                access_log=False,
                log_level=self.log_level,
                lifespan="off",
                **server_options(self.state),
            )
        )
        self.server = server
        self.restore()
        self._threshold = settle_heap()
        if self._wants_cycles:
            # Only a loop that completes a cycle keeps the watchdog fed.
            self.jobs = scheduler(self.state, self.loop, after_cycle=self.systemd.watchdog)
            self.jobs.start()
            self.state.leader.on_lead(self._cycle_now)
        threading.Thread(target=self._announce_ready, name="ready", daemon=True).start()
        return server

    def _announce_ready(self) -> None:
        server = self.server
        assert server is not None  # noqa: S101 -- set by _startup before this thread starts
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            self.systemd.ready()
            log.info(
                "ready", listen=self.url.removeprefix("http://"), services=len(self.config.services)
            )

    def _shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.systemd.stopping()
        log.info("stopping: finishing the step in progress")
        if self.jobs is not None:
            self.jobs.shutdown(wait=True)
        self.shutdown()
        self.journal.close()
        if self._threshold is not None:
            unsettle_heap(self._threshold)
        log.info("stopped")

    def reload(self) -> None:
        """Read config and rules again (SIGHUP), and follow a changed poll interval."""
        if self.config_path is None:
            return
        self.systemd.reloading()
        self.systemd.status(self.state.reload(self.config_path))
        if self.jobs is not None:
            reschedule(self.jobs, self.state)
        self.systemd.ready()

    def _install_signals(self) -> None:
        def on_hup(_signum: int, _frame: object) -> None:
            threading.Thread(target=self.reload, name="reload", daemon=True).start()

        def on_stop(_signum: int, _frame: object) -> None:
            if self.server is not None:  # uvicorn re-raises the signal it caught: end cleanly
                self.server.should_exit = True

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)

    def _cannot_listen(self) -> str:
        listen = self.url.removeprefix("http://")
        return (
            f"cannot listen on {listen}: the address is taken or not this host's "
            "(another rollbackd running?)"
        )
