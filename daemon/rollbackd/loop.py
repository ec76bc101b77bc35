"""The evaluation loop: gather the measurements, decide, act. One cycle at a time.

:meth:`Loop.cycle` is one evaluation (the runtime's scheduler runs it every
``poll_interval`` at its planned instant): Prometheus, probes and git are read
on reading threads without the state lock, within a budget; then, under the
lock, the engine decides and :class:`~rollbackd.incidents.Incidents` acts. A
cycle never raises: a failure is logged, shown on the status page and /readyz,
and the next cycle tries again. :meth:`Loop.warm_up` replays recent history at
start-up so rule states and known good versions survive a restart.

In a cluster only the leader evaluates and acts, in its term (:meth:`Leader.term
<rollbackd.cluster.Leader.term>`: every write fenced by its epoch). A follower's cycle
only reads the deploys other replicas journaled. A replica that becomes the leader does
what a restarted daemon does (:meth:`Loop.take_over`) at its next cycle, which the runtime
runs as soon as it takes the lease.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

from rollbackd.core.durations import format_duration
from rollbackd.core.engine import CycleReport, Inputs
from rollbackd.core.model import FindingState
from rollbackd.core.rules import rule_trigger_severity
from rollbackd.errors import NotLeader
from rollbackd.events import CycleDone, Events
from rollbackd.incidents import Incidents
from rollbackd.journal import AlertRecord, IncidentState, JournalUnavailable
from rollbackd.logs import get_logger
from rollbackd.sources import guarded_instant
from rollbackd.sources.alertmanager import ActiveAlerts, merge, resolved_delivery
from rollbackd.state import State

log = get_logger("rollbackd")

WARM_UP_BUDGET = timedelta(seconds=30)
"""Start-up replays recent history for at most this long: READY comes well within
systemd's start timeout (90 s by default) even when Prometheus hangs."""
STUCK_AFTER_POLLS = 3
"""/readyz fails when no cycle completed for this many polls past the cycle's read budget."""


class Loop:
    """The evaluation loop over the daemon's :class:`~rollbackd.state.State`."""

    def __init__(self, state: State, incidents: Incidents, events: Events) -> None:
        self.state = state
        self.incidents = incidents
        self.events = events
        self.last_cycle_error: str | None = None
        self.status_line = "starting"
        self.created = time.monotonic()
        self.last_completed: float | None = None
        """time.monotonic() of the last cycle that completed (None: none yet)."""
        self.epoch: int | None = None
        """The epoch this replica acts in (None: it follows, or has not started)."""
        self._terms = 0
        self._followed = False
        self._unreadable: dict[str, str] = {}
        """The last cycle's source errors by read (a rule, deploys, alerts…), as logged."""

    def start(self, now: datetime) -> None:
        """At start-up: claim the lease once, then keep renewing it in the background (while
        the warm-up and all after it run); the leader takes over, a follower follows."""
        epoch = self.state.leader.renew()
        self.state.leader.start()
        if epoch is None:
            self._follow()
        else:
            self.take_over(now, epoch)

    def take_over(self, now: datetime, epoch: int) -> None:
        """Lead in ``epoch``: do what a restarted daemon does. Start again from the journal
        (once this replica followed or led before: others wrote since), warm up from
        history, follow every unfinished incident and resume the rollbacks under way at the
        step where they stopped (a finished step is never run again)."""
        log.info("taking over", epoch=epoch, replica=self.state.leader.replica)
        if self._terms or self._followed:
            self.state.rebuild()
        self.incidents.forget_finished()
        self.warm_up(now)
        with self.state.leader.term(epoch):
            self.incidents.resume(now)
        self.epoch = epoch
        self._terms += 1

    def _follow(self) -> None:
        """A follower's cycle: read the deploys other replicas journaled; decide nothing."""
        if self.epoch is not None:
            log.warning("following: this replica does not act", epoch=self.epoch)
        self.epoch = None
        self._followed = True
        if self.state.clustered:
            self.state.follow_deploys()
        leader = self.state.leader.view()["leader"] or "nobody yet"
        self.status_line = f"following {leader}: the leader evaluates and acts"
        self.last_cycle_error = None
        self.last_completed = time.monotonic()

    def warm_up(self, now: datetime) -> None:
        """Replay recent history so rule states and known-good versions survive a restart.

        The replay decides nothing that is acted on; it only rebuilds what the
        engine would know had it been running (pending rules, which versions
        ran clean). Without Prometheus history this does nothing.
        """
        from rollbackd.evaluation import lookback  # noqa: PLC0415 -- start-up only
        from rollbackd.replay import Replay  # noqa: PLC0415

        if not any(rule.query is not None for rule in self.state.loaded.rules):
            return
        label = self.state.config.alerts.service_label  # a label name: checked by the config
        trivial = f'label_replace(vector(1), "{label}", "rollbackd", "", "")'
        answer = guarded_instant(self.state.source, trivial, now)
        if answer.error is not None:  # one bounded read, rather than a budget spent waiting
            log.warning(
                "warm-up skipped: rule states start fresh",
                error=f"Prometheus did not answer a trivial query: {answer.error}",
            )
            return
        step = self.state.config.daemon.poll_interval
        budget = WARM_UP_BUDGET.total_seconds()
        replay = Replay(
            self.state.config, self.state.loaded.rules, self.state.source, step, self.state.history,
            simulate_rollbacks=False, deadline=time.monotonic() + budget,
        )  # fmt: skip
        try:
            for _ in replay.run(
                now - lookback(self.state.config, self.state.loaded.rules), now - step
            ):
                pass
        except Exception as exc:  # noqa: BLE001 -- a warm-up must never keep the daemon from starting
            log.warning(
                "warm-up skipped: rule states start fresh",
                error=f"{type(exc).__name__}: {exc}",
                budget=format_duration(WARM_UP_BUDGET),
            )
            return
        self.state.engine.adopt(replay.engine, judgements=False)
        log.info("warmed up from history", rules=len(self.state.loaded.rules))

    def cycle(self, at: datetime | None = None) -> CycleReport | None:
        """One evaluation at ``at`` (default: now): gather, decide, act. Never raises.

        Prometheus, probes and git are read without the state lock, so webhooks,
        deploy events and approvals are answered while a source hangs; deciding
        and acting hold it. A failure is logged and shown on the status page and
        /readyz.
        """
        started = time.monotonic()
        try:
            epoch = self.state.leader.leads()
            if epoch is None and not self.state.clustered:
                epoch = self.state.leader.renew()  # its own journal: it leads, started or not
            if epoch is None:
                self._follow()
                return None
            if epoch != self.epoch:
                if self._terms or self._followed:
                    self.take_over(at or self.state.clock(), epoch)
                else:  # never started (tests drive cycles alone): lead as things stand
                    self.epoch = epoch
            if self.state.clustered:
                self.state.follow_deploys()
            with self.state.leader.term(epoch):
                report = self._evaluate(at)
            if report is None:
                return None
            self.last_cycle_error = None
            self.last_completed = time.monotonic()
        except NotLeader as exc:  # lost the lease during the cycle: the new leader decides
            log.warning("cycle stopped: this replica no longer leads", reason=str(exc))
            return None
        except Exception as exc:  # the loop must survive any one bad cycle
            self.last_cycle_error = f"{type(exc).__name__}: {exc}"
            log.exception("cycle failed", error=self.last_cycle_error)
            return None
        finally:
            self.state.metrics.cycle_seconds.observe(time.monotonic() - started)
        self._record_cycle(report)
        return report

    def _evaluate(self, at: datetime | None) -> CycleReport | None:
        """Gather, decide, act (the leader, in its term); None if reloaded meanwhile."""
        with self.state.lock:  # fix what to read; then read with no lock held
            now = at or self.state.clock()
            live, plan = self.state.live, self.state.live.plan(now)
        measured = live.measure(plan)
        with self.state.lock:
            if live is not self.state.live:  # reloaded while reading: read again next cycle
                return None
            inputs = live.apply(measured)
            moved = self.state.history.revision != plan.revision
            unread = live.unread_baselines() if moved else []
        if unread:  # a deploy seen just now: its baseline is read before deciding
            live.read_baselines(unread)
        with self.state.lock:
            if live is not self.state.live:
                return None
            if unread:
                inputs.baselines.update(live.known_baselines())
            for service in self.state.engine.services:
                self.state.engine.rollbacks[service] = self.state.journal.rollbacks(service)
            firing = self._firing_alerts(now, self.state.engine.services)
            if measured.alertmanager is not None:
                firing = self._with_alertmanager(firing, measured.alertmanager, now, inputs)
            live.add_alerts(inputs, firing, now)
            unwritable = self.state.journal.problem()
            if unwritable is not None:  # nothing decided can be kept: decide once it can
                raise JournalUnavailable(f"{unwritable}; decisions wait until it can")
            report = self.state.engine.step(now, inputs)
            self.state.last_report = report
            for event in report.events:
                self.incidents.follow(event)
            self.incidents.act_on(report, firing)
            self.incidents.deadlines(now)
            self.incidents.pick_up()
        return report

    def _firing_alerts(self, now: datetime, services: Collection[str]) -> list[AlertRecord]:
        """The watched services' alerts firing now, less those not re-sent for expire_after."""
        expired = now - self.state.config.alerts.expire_after
        return self.state.journal.firing_alerts(now, services, received_after=expired)

    def _with_alertmanager(
        self, firing: list[AlertRecord], answer: ActiveAlerts, now: datetime, inputs: Inputs
    ) -> list[AlertRecord]:
        """The journaled alerts merged with Alertmanager's answer (sources.alertmanager);
        those it shows resolved are journaled so, and the quiet services noted in ``inputs``."""
        services = self.state.engine.services
        journal = self.state.journal
        fresh = {a.fingerprint for a in journal.firing_alerts(now, services, received_after=now)}
        merged = merge(firing, answer, services, fresh)
        inputs.quiet_alerts.update(merged.quiet)
        if merged.resolved:
            url = self.state.config.alertmanager.url or ""
            delivery, body = resolved_delivery(merged.resolved, now, url)
            journal.submit_delivery(now, delivery, body)
            log.info(
                "alerts resolved: Alertmanager no longer has them (resolved webhook lost)",
                alerts=[a.name or a.fingerprint for a in merged.resolved],
            )
        return merged.firing

    def _record_cycle(self, report: CycleReport) -> None:
        self.state.metrics.evaluations.inc()
        self.state.metrics.findings.clear()
        counts: dict[tuple[str, str, str], int] = {}
        for f in report.notable:
            key = (f.rule, f.severity.value, f.state.value)
            counts[key] = counts.get(key, 0) + 1
        severities = {r.name: rule_trigger_severity(r).value for r in self.state.engine.rules}
        for rule, quiet in report.quiet.items():
            key = (rule, severities[rule], FindingState.OK.value)
            counts[key] = counts.get(key, 0) + quiet
        for (rule, severity, state), count in counts.items():
            self.state.metrics.findings.labels(rule, severity, state).set(count)
        for source in {
            k if k in ("deploys", "alerts", "alertmanager") else "prometheus"
            for k in report.source_errors
        }:
            self.state.metrics.source_errors.labels(source).inc()
        self._log_source_errors(report.source_errors)
        firing = sum(1 for f in report.notable if f.firing)
        unfinished = self.state.journal.incidents(limit=None, unfinished_only=True)
        pending = len(unfinished)
        self.state.metrics.pending_approvals.set(
            sum(1 for i in unfinished if i.state is IncidentState.AWAITING_APPROVAL)
        )
        services = len(self.state.engine.services)
        self.status_line = (
            f"{services} services, {firing} firing, {pending} open incidents, "
            f"{len(report.source_errors)} source errors"
        )
        self.events.emit(CycleDone(self.status_line))

    def _log_source_errors(self, errors: Mapping[str, str]) -> None:
        """Say in the log when a read starts failing, fails otherwise, or works again: once
        per change, not once per cycle, and one line for the reads one error stops (every
        rule, when Prometheus is down). What they decide meanwhile is inconclusive."""
        before = self._unreadable
        failing: dict[str, list[str]] = {}
        for read, error in errors.items():
            if before.get(read) != error:
                failing.setdefault(error, []).append(read)
        for error, reads in failing.items():
            log.warning(
                "a source cannot be read: what needs it is inconclusive",
                reads=sorted(reads),
                error=error,
            )
        readable = sorted(before.keys() - errors.keys())
        if readable:
            log.info("a source can be read again", reads=readable)
        self._unreadable = dict(errors)

    def stuck(self) -> str | None:
        """Why the evaluation loop looks stuck (no cycle completed for too long), or None."""
        since = self.last_completed if self.last_completed is not None else self.created
        poll = self.state.config.daemon.poll_interval
        limit = self.state.live.budget + STUCK_AFTER_POLLS * poll
        waited = timedelta(seconds=time.monotonic() - since)
        if waited <= limit:
            return None
        what = "no cycle completed" if self.last_completed is None else "the last cycle completed"
        error = f": {self.last_cycle_error}" if self.last_cycle_error else ""
        return (
            f"{what} {format_duration(waited)} ago (poll_interval {format_duration(poll)}): "
            f"the evaluation loop is stuck{error}"
        )
