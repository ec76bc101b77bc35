"""What a running daemon holds now, shared by its loop, its incidents, intake and views.

The config and rules, the deploy history, the engine, the live readers
(Prometheus, probes, git), the checklist and the notifier, under one lock:
deciding and acting hold it, reading the sources never does. :meth:`State.reload`
(SIGHUP) replaces what a new config changes and keeps what it cannot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from rollbackd.actions.checklist import Checklist
from rollbackd.assembly import build_checklist, now_utc
from rollbackd.cluster import Leader, default_replica_name
from rollbackd.config import Config
from rollbackd.core.deploys import Deploy, DeployHistory
from rollbackd.core.engine import CycleReport, Engine
from rollbackd.errors import InvalidInput
from rollbackd.events import Events, StepDone
from rollbackd.journal import Journal
from rollbackd.journal.codec import kept_time
from rollbackd.loader import Loaded, load
from rollbackd.logs import get_logger
from rollbackd.metrics import DaemonMetrics
from rollbackd.notify import JournalOnly, Notifier
from rollbackd.notify.retry import Background
from rollbackd.sources import MetricSource
from rollbackd.sources.alertmanager import AlertmanagerSource
from rollbackd.sources.gather import LiveCycle
from rollbackd.sources.probes import Prober
from rollbackd.sources.prometheus import PrometheusSource

log = get_logger("rollbackd")

RESTART_KEYS = ("listen", "state_dir", "log_format")
"""``[daemon]`` keys a running daemon cannot change (its socket, its journal, its logging):
a reload keeps their running values and says which changed."""
DEPLOYS_REREAD = 64
"""Deploys re-read before the last one known when following the journal: a deploy another
replica was still committing may be numbered before one already read."""


class State:
    """The live state: built from a loaded config, rebuilt by a reload.

    ``notifiers`` builds the notifier from a config, so that a reload that
    changes ``[[notifiers]]`` applies; ``notifier`` is one fixed notifier
    (tests, the demo). ``metrics_source`` replaces Prometheus (tests).
    """

    def __init__(
        self,
        loaded: Loaded,
        journal: Journal,
        events: Events,
        *,
        metrics_source: MetricSource | None = None,
        prober: Prober | None = None,
        notifier: Notifier | None = None,
        notifiers: Callable[[Config], Notifier] | None = None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.journal = journal
        self.events = events
        self.clock = clock
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.metrics = DaemonMetrics()
        self._notifiers = notifiers
        self.notifier = notifier or (notifiers(loaded.config) if notifiers else JournalOnly())
        self._retired_notifiers: list[Notifier] = []
        self._metrics_source = metrics_source
        self.prober = prober or Prober()
        self.last_report: CycleReport | None = None
        """The latest cycle's report: what the views show and a rollback by hand keeps."""
        cluster = loaded.config.cluster
        self.leader = Leader(
            journal,
            cluster.name,
            cluster.replica_name or default_replica_name(),
            cluster.lease,
            self.metrics,
        )
        """Whether this replica leads its cluster (always, on a journal of its own)."""
        self._fence_notifier()
        self._deploys_read = 0
        self._build(loaded)

    def _build(self, loaded: Loaded, history: DeployHistory | None = None) -> None:
        config = loaded.config
        if history is None:
            history = DeployHistory(config.deploys.known_good_after, config.daemon.poll_interval)
            journaled = self.journal.deploys()
            for deploy in journaled:
                history.record(deploy)
            self._deploys_read = len(journaled)
        self.loaded = loaded
        self.config = config
        self.history = history
        self.engine = Engine(config.engine_settings(), loaded.rules, history)
        self.source = self._metrics_source or PrometheusSource.from_config(config)
        self.prober.forget_tls()  # certificate files may have been replaced: read them again
        previous: LiveCycle | None = getattr(self, "live", None)
        if previous is not None:
            previous.close()
        self.live = LiveCycle(
            self.engine, config, self.source, self.prober, AlertmanagerSource.from_config(config)
        )
        self.checklist: Checklist = build_checklist(
            config,
            loaded.rules,
            self.journal,
            metrics=self.source,
            prober=self.prober,
            notifier=self.notifier,
            clock=self.clock,
            sleep=self.stopping.wait,
            should_stop=self._should_stop,
            may_act=self.leader.acting,
            on_step=self._step_done,
            on_deploy=self._rolled_back_to,
        )

    def _fence_notifier(self) -> None:
        """A former leader's queued notifications are not sent (:class:`Background`)."""
        if isinstance(self.notifier, Background):
            self.notifier.fence = self.leader

    @property
    def clustered(self) -> bool:
        """Whether other replicas may share the journal (it is in PostgreSQL)."""
        return self.config.journal.url is not None

    def _should_stop(self) -> bool:
        """A rollback stops between steps when the daemon stops or this replica stops leading."""
        return self.stopping.is_set() or not self.leader.acting()

    def rebuild(self) -> None:
        """Start again from the journal, as a restarted daemon does: the deploy history read
        anew (other replicas journaled deploys and rollbacks), a fresh engine, readers and
        checklist. For a replica that becomes the leader."""
        with self.lock:
            self._build(self.loaded)

    def follow_deploys(self) -> int:
        """Add the deploys other replicas journaled since the last read; how many were new."""
        skip = max(self._deploys_read - DEPLOYS_REREAD, 0)
        journaled = self.journal.deploys(skip)
        added = 0
        with self.lock:
            for deploy in journaled:
                added += self.history.record(deploy)
            self._deploys_read = skip + len(journaled)
        return added

    def record_deploy(self, deploy: Deploy) -> None:
        """A deploy journaled here: into the history as the journal keeps it (to the
        millisecond), so that reading it back from the journal finds it known."""
        with self.lock:
            self.history.record(replace(deploy, time=kept_time(deploy.time)))

    def _step_done(self, step: str, text: str) -> None:
        log.info("step", step=step, outcome=text)
        self.events.emit(StepDone(step, text))

    def _rolled_back_to(self, deploy: Deploy) -> None:
        """A rollback's execute step put its target in place (the checklist journaled it)."""
        with self.lock:
            self.history.record(deploy)
            self.engine.record_rollback(deploy.service, deploy.time, deploy)
        log.info("deploy", service=deploy.service, version=deploy.version, ref=deploy.ref)

    def reload(self, path: Path) -> str:
        """SIGHUP: load config and rules again and apply them; keep the old ones if invalid.

        Every key takes effect from the next cycle, request or rollback on (a
        rollback under way finishes as it started), except :data:`RESTART_KEYS`:
        those keep their running values, and the status line and the log name
        each one that changed. The runtime applies ``poll_interval`` to its
        scheduler itself.
        """
        try:
            loaded = load(path)
        except InvalidInput as exc:
            lines = [str(p) for p in exc.problems]
            log.error("reload refused: the running config is kept", problems=lines)
            return "kept the running config: " + "; ".join(lines)
        loaded, restart = keep_running(self.config, loaded)
        with self.lock:
            before = self.engine
            if self._notifiers is not None and loaded.config.notifiers != self.config.notifiers:
                self._retired_notifiers.append(self.notifier)  # drained at shutdown
                self.notifier = self._notifiers(loaded.config)
                self._fence_notifier()
            self.history.known_good_after = loaded.config.deploys.known_good_after
            self._build(loaded, self.history)
            self.engine.adopt(before)
        line = f"reloaded: {len(loaded.rules)} rules, {len(loaded.config.services)} services"
        if restart:
            line += "; needs a restart, running values kept: " + ", ".join(restart)
            log.warning("reload: keys that need a restart keep their running values", keys=restart)
        log.info(
            "reloaded",
            rules=len(loaded.rules),
            services=len(loaded.config.services),
            restart_needed=restart,
        )
        return line

    def drain_notifiers(self, timeout: float) -> None:
        """Send what the notifiers still queue, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for notifier in (self.notifier, *self._retired_notifiers):
            drain = getattr(notifier, "drain", None)
            if callable(drain):
                drain(max(deadline - time.monotonic(), 0.0))  # queued messages still go out


def keep_running(running: Config, loaded: Loaded) -> tuple[Loaded, list[str]]:
    """``loaded`` with the running values of :data:`RESTART_KEYS`, of ``[journal]`` (the
    journal open is the one written to) and of ``[cluster]`` (the lease claimed), and each
    one that changed."""
    changed = {
        key: (getattr(running.daemon, key), getattr(loaded.config.daemon, key))
        for key in RESTART_KEYS
        if getattr(running.daemon, key) != getattr(loaded.config.daemon, key)
    }
    journal_changed = running.journal != loaded.config.journal
    cluster_changed = running.cluster != loaded.config.cluster
    if not changed and not journal_changed and not cluster_changed:
        return loaded, []
    daemon = loaded.config.daemon.model_copy(update={k: old for k, (old, _) in changed.items()})
    config = loaded.config.model_copy(
        update={"daemon": daemon, "journal": running.journal, "cluster": running.cluster}
    )
    described = [f"daemon.{key} ({old} → {new})" for key, (old, new) in changed.items()]
    if journal_changed:
        described.append("journal (its URL is not shown: it may hold a password)")
    if cluster_changed:
        described.append("cluster")
    return replace(loaded, config=config), described
