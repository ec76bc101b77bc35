"""The running daemon: the evaluation loop, rollbacks, approvals, webhooks, deploys.

:class:`Daemon` owns the live state and is what the HTTP API calls. Its
:meth:`Daemon.cycle` is one evaluation (run by the scheduler every
``poll_interval``, never two at once): sources → engine → decisions → actions.
Rollbacks run on a worker thread through the checklist, so the loop and the
API stay responsive. Everything that must survive a crash is in the journal
before it is acknowledged or acted on: webhook deliveries, deploy events,
incidents, approvals and their deadlines. :func:`serve` wires the scheduler,
the uvicorn server, signals and systemd notifications around it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rollbackd.actions.checklist import Checklist, RollbackRequest, failpoint
from rollbackd.assembly import build_checklist, now_utc
from rollbackd.config import Config
from rollbackd.core.deploys import Deploy, DeployHistory
from rollbackd.core.durations import format_duration, format_instant
from rollbackd.core.engine import CycleReport, Engine, IncidentEvent, Judgement
from rollbackd.core.engine import Outcome as Ended
from rollbackd.core.model import Action, Decision, Finding, FindingState
from rollbackd.core.rules import rule_trigger_severity
from rollbackd.errors import (
    AlreadyThere,
    Conflict,
    InvalidInput,
    NoTarget,
    NotFound,
    NotPermitted,
    Problem,
    RollbackRefused,
)
from rollbackd.journal import (
    AlertRecord,
    EvidenceKind,
    IncidentRecord,
    IncidentState,
    Journal,
    JournalError,
    JournalUnavailable,
    NewIncident,
    Outcome,
)
from rollbackd.loader import Loaded, load
from rollbackd.logs import get_logger
from rollbackd.manual import manual_request
from rollbackd.metrics import DaemonMetrics
from rollbackd.notify import JournalOnly, Notifier
from rollbackd.notify.message import compose, notice
from rollbackd.output import finding_record
from rollbackd.sources import MetricSource, guarded_instant
from rollbackd.sources.alerts import alert_findings, parse_webhook
from rollbackd.sources.deploys import parse_event, valid_ref
from rollbackd.sources.gather import LiveCycle
from rollbackd.sources.probes import Prober
from rollbackd.sources.prometheus import PrometheusSource
from rollbackd.text import quoted

log = get_logger("rollbackd")

WARM_UP_BUDGET = timedelta(seconds=30)
"""Start-up replays recent history for at most this long: READY comes well within
systemd's start timeout (90 s by default) even when Prometheus hangs."""
STUCK_AFTER_POLLS = 3
"""/readyz fails when no cycle completed for this many polls past the cycle's read budget."""
WAITING = (
    IncidentState.ESCALATED,
    IncidentState.VETOED,
    IncidentState.RECORDED,
    IncidentState.NOT_RECOVERED,
)
"""Incidents that wait on people: open until what fired is OK again, or until they expire."""
ENDS_QUIETLY = (*WAITING, IncidentState.AWAITING_APPROVAL, IncidentState.OPEN)
"""What an incident's end (resolved, expired, superseded) may close: never a rollback under way."""
_ENDED_STATE = {
    Ended.RESOLVED: IncidentState.RESOLVED,
    Ended.EXPIRED: IncidentState.EXPIRED,
    Ended.SUPERSEDED: IncidentState.SUPERSEDED,
}

RESTART_KEYS = ("listen", "state_dir", "log_format")
"""``[daemon]`` keys a running daemon cannot change (its socket, its journal, its logging):
a reload keeps their running values and says which changed."""


@dataclass(frozen=True)
class Caller:
    """Who is calling the API: the token's name and role (never the token)."""

    name: str
    role: str


class Daemon:
    """rollbackd's live state, shared by the scheduler, the API and the rollback worker."""

    def __init__(
        self,
        loaded: Loaded,
        journal: Journal,
        *,
        metrics_source: MetricSource | None = None,
        prober: Prober | None = None,
        notifier: Notifier | None = None,
        notifiers: Callable[[Config], Notifier] | None = None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        """``notifiers`` builds the notifier from a config, so that a reload that changes
        ``[[notifiers]]`` applies; ``notifier`` is one fixed notifier (tests, the demo)."""
        self.loaded = loaded
        self.journal = journal
        self.clock = clock
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.metrics = DaemonMetrics()
        self._notifiers = notifiers
        self.notifier = notifier or (notifiers(loaded.config) if notifiers else JournalOnly())
        self._retired_notifiers: list[Notifier] = []
        # A rollback holds its worker through the recovery watch (minutes), so workers are
        # plentiful: one incident must never wait for another's recovery to start.
        self.worker = ThreadPoolExecutor(max_workers=64, thread_name_prefix="rollback")
        self.running: dict[int, Future[Any]] = {}
        self.last_report: CycleReport | None = None
        self.last_cycle_error: str | None = None
        self.status_line = "starting"
        self.created = time.monotonic()
        self.last_completed: float | None = None
        """time.monotonic() of the last cycle that completed (None: none yet)."""
        self.on_cycle: Callable[[str], object] = lambda _line: None
        self.on_event: Callable[[str, Mapping[str, Any]], object] = lambda _kind, _facts: None
        self._metrics_source = metrics_source
        self._prober = prober or Prober()
        self._build(loaded)

    def _build(self, loaded: Loaded, history: DeployHistory | None = None) -> None:
        config = loaded.config
        if history is None:
            history = DeployHistory(config.deploys.known_good_after)
            for deploy in self.journal.deploys():
                history.record(deploy)
        self.loaded = loaded
        self.config = config
        self.history = history
        self.engine = Engine(config.engine_settings(), loaded.rules, history)
        self.source = self._metrics_source or PrometheusSource.from_config(config)
        previous: LiveCycle | None = getattr(self, "live", None)
        if previous is not None:
            previous.close()
        self.live = LiveCycle(self.engine, config, self.source, self._prober)
        self.checklist: Checklist = build_checklist(
            config,
            loaded.rules,
            self.journal,
            metrics=self.source,
            prober=self._prober,
            notifier=self.notifier,
            clock=self.clock,
            sleep=self.stopping.wait,
            should_stop=self.stopping.is_set,
            on_step=self._step_done,
            on_deploy=self._rolled_back_to,
        )

    def _step_done(self, step: str, text: str) -> None:
        log.info("step", step=step, outcome=text)
        self.on_event("step", {"step": step, "outcome": text})

    def _rolled_back_to(self, deploy: Deploy) -> None:
        """A rollback's execute step put its target in place (the checklist journaled it)."""
        with self.lock:
            self.history.record(deploy)
            self.engine.record_rollback(deploy.service, deploy.time, deploy)
        log.info("deploy", service=deploy.service, version=deploy.version, ref=deploy.ref)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Restore what the journal knows, and resume rollbacks a crash interrupted.

        Every unfinished incident comes back, however long the daemon was down: a
        rollback under way resumes, and the newest one of each service is followed by
        the engine again (not decided again). Finished ones stay finished.
        """
        now = self.clock()
        self._warm_up(now)
        followed: dict[str, int] = {}
        for listed in self.journal.incidents(limit=None, unfinished_only=True):  # newest first
            record = self.journal.incident(listed.id) or listed
            if record.state in (IncidentState.ROLLING_BACK, IncidentState.RECOVERING):
                log.info("resuming", incident=record.id, service=record.service)
                self._submit(record.id)
            if record.service in followed:
                if record.state in ENDS_QUIETLY:
                    self._end(
                        record,
                        IncidentState.SUPERSEDED,
                        f"incident {followed[record.service]} of {record.service} is newer",
                        now,
                    )
                continue
            judgement = self._judgement_of(record)
            if judgement is not None:
                self.engine.restore(record.service, judgement)
                followed[record.service] = record.id
        self.status_line = "started"

    def _judgement_of(self, record: IncidentRecord) -> Judgement | None:
        """What the engine followed for an incident before a restart (None: not a judgement)."""
        decision = self._last_decision(record)
        if decision is None:
            return None  # a rollback by hand: nothing fired that the engine must follow
        rules = set(decision.rules)
        for evidence in record.evidence:
            if evidence.kind == EvidenceKind.FOLDED and isinstance(evidence.body, dict):
                rules.update(str(r) for r in evidence.body.get("rules") or ())
        made = []
        executed = record.step("execute")
        if executed is not None and executed.outcome is Outcome.OK and record.target:
            made.append(
                Deploy(
                    service=record.service,
                    version=record.facts.target_version or record.target,
                    time=executed.finished_at or record.opened_at,
                    source="event",
                    ref=executed.data.get("after") or record.target,
                )
            )
        return Judgement(
            opened=record.opened_at,
            decision=decision,
            version=record.current_version,
            deployed_at=record.facts.deployed_at,
            rules=rules,
            reported=set(rules),
            rolled_back_to=made,
            idle_since=(record.updated_at or record.opened_at) if record.state in WAITING else None,
            incident=record.id,
            rolling_back=record.state in (IncidentState.ROLLING_BACK, IncidentState.RECOVERING),
        )

    def _firing_alerts(self, now: datetime, services: Collection[str]) -> list[AlertRecord]:
        """The watched services' alerts firing now, less those not re-sent for expire_after."""
        expired = now - self.config.alerts.expire_after
        return self.journal.firing_alerts(now, services, received_after=expired)

    def _warm_up(self, now: datetime) -> None:
        """Replay recent history so rule states and known-good versions survive a restart.

        The replay decides nothing that is acted on; it only rebuilds what the
        engine would know had it been running (pending rules, which versions
        ran clean). Without Prometheus history this does nothing.
        """
        from rollbackd.evaluation import lookback  # noqa: PLC0415 -- start-up only
        from rollbackd.replay import Replay  # noqa: PLC0415

        if not any(rule.query is not None for rule in self.loaded.rules):
            return
        label = self.config.alerts.service_label  # a label name: checked by the config
        trivial = f'label_replace(vector(1), "{label}", "rollbackd", "", "")'
        answer = guarded_instant(self.source, trivial, now)
        if answer.error is not None:  # one bounded read, rather than a budget spent waiting
            log.warning(
                "warm-up skipped: rule states start fresh",
                error=f"Prometheus did not answer a trivial query: {answer.error}",
            )
            return
        step = self.config.daemon.poll_interval
        budget = WARM_UP_BUDGET.total_seconds()
        replay = Replay(
            self.config, self.loaded.rules, self.source, step, self.history,
            simulate_rollbacks=False, deadline=time.monotonic() + budget,
        )  # fmt: skip
        try:
            for _ in replay.run(now - lookback(self.config, self.loaded.rules), now - step):
                pass
        except Exception as exc:  # noqa: BLE001 -- a warm-up must never keep the daemon from starting
            log.warning(
                "warm-up skipped: rule states start fresh",
                error=f"{type(exc).__name__}: {exc}",
                budget=format_duration(WARM_UP_BUDGET),
            )
            return
        self.engine.adopt(replay.engine, judgements=False)
        log.info("warmed up from history", rules=len(self.loaded.rules))

    def shutdown(self, timeout: float = 900.0) -> None:
        """Stop after the step in progress: incidents left mid-checklist resume on restart."""
        self.stopping.set()
        self.live.close()
        self.worker.shutdown(wait=True, cancel_futures=True)
        deadline = time.monotonic() + min(timeout, 30.0)
        for notifier in (self.notifier, *self._retired_notifiers):
            drain = getattr(notifier, "drain", None)
            if callable(drain):
                drain(max(deadline - time.monotonic(), 0.0))  # queued messages still go out

    def reload(self, path: Path) -> str:
        """SIGHUP: load config and rules again and apply them; keep the old ones if invalid.

        Every key takes effect from the next cycle, request or rollback on (a
        rollback under way finishes as it started), except :data:`RESTART_KEYS`:
        those keep their running values, and the status line and the log name
        each one that changed. The scheduler applies ``poll_interval`` itself
        (:func:`reschedule`).
        """
        try:
            loaded = load(path)
        except InvalidInput as exc:
            lines = [str(p) for p in exc.problems]
            log.error("reload refused: the running config is kept", problems=lines)
            return "kept the running config: " + "; ".join(lines)
        loaded, restart = _keep_running(self.config, loaded)
        with self.lock:
            before = self.engine
            if self._notifiers is not None and loaded.config.notifiers != self.config.notifiers:
                self._retired_notifiers.append(self.notifier)  # drained at shutdown
                self.notifier = self._notifiers(loaded.config)
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

    # -- the evaluation loop -----------------------------------------------------------

    def cycle(self, at: datetime | None = None) -> CycleReport | None:
        """One evaluation at ``at`` (default: now): gather, decide, act. Never raises.

        Prometheus, probes and git are read without the state lock, so webhooks,
        deploy events and approvals are answered while a source hangs; deciding
        and acting hold it. A failure is logged and shown on the status page and
        /readyz.
        """
        started = time.monotonic()
        try:
            with self.lock:  # fix what to read; then read with no lock held
                now = at or self.clock()
                live, plan = self.live, self.live.plan(now)
            measured = live.measure(plan)
            with self.lock:
                if live is not self.live:  # reloaded while reading: read again next cycle
                    return None
                inputs = live.apply(measured)
                moved = self.history.revision != plan.revision
                unread = live.unread_baselines() if moved else []
            if unread:  # a deploy seen just now: its baseline is read before deciding
                live.read_baselines(unread)
            with self.lock:
                if live is not self.live:
                    return None
                if unread:
                    inputs.baselines.update(live.known_baselines())
                for service in self.engine.services:
                    self.engine.rollbacks[service] = self.journal.rollbacks(service)
                firing = self._firing_alerts(now, self.engine.services)
                alerts, ignored = alert_findings(
                    firing, self.engine.services, self.config.alerts.trigger_label, now
                )
                inputs.alerts.extend(alerts)
                for line in ignored:
                    inputs.source_errors.setdefault("alerts", line)
                unwritable = self.journal.problem()
                if unwritable is not None:  # nothing decided can be kept: decide once it can
                    raise JournalUnavailable(f"{unwritable}; decisions wait until it can")
                report = self.engine.step(now, inputs)
                self.last_report = report
                for event in report.events:
                    self._follow(event)
                self._act_on(report, firing)
                self._deadlines(now)
            self.last_cycle_error = None
            self.last_completed = time.monotonic()
        except Exception as exc:  # the loop must survive any one bad cycle
            self.last_cycle_error = f"{type(exc).__name__}: {exc}"
            log.exception("cycle failed", error=self.last_cycle_error)
            return None
        finally:
            self.metrics.cycle_seconds.observe(time.monotonic() - started)
        self._record_cycle(report)
        return report

    def _record_cycle(self, report: CycleReport) -> None:
        self.metrics.evaluations.inc()
        self.metrics.findings.clear()
        counts: dict[tuple[str, str, str], int] = {}
        for f in report.notable:
            key = (f.rule, f.severity.value, f.state.value)
            counts[key] = counts.get(key, 0) + 1
        severities = {r.name: rule_trigger_severity(r).value for r in self.engine.rules}
        for rule, quiet in report.quiet.items():
            key = (rule, severities[rule], FindingState.OK.value)
            counts[key] = counts.get(key, 0) + quiet
        for (rule, severity, state), count in counts.items():
            self.metrics.findings.labels(rule, severity, state).set(count)
        for source in {
            "deploys" if k == "deploys" else "alerts" if k == "alerts" else "prometheus"
            for k in report.source_errors
        }:
            self.metrics.source_errors.labels(source).inc()
        firing = sum(1 for f in report.notable if f.firing)
        unfinished = self.journal.incidents(limit=None, unfinished_only=True)
        pending = len(unfinished)
        self.metrics.pending_approvals.set(
            sum(1 for i in unfinished if i.state is IncidentState.AWAITING_APPROVAL)
        )
        self.status_line = (
            f"{len(self.engine.services)} services, {firing} firing, {pending} open incidents, "
            f"{len(report.source_errors)} source errors"
        )
        self.on_cycle(self.status_line)

    def _act_on(self, report: CycleReport, firing: list[AlertRecord]) -> None:
        """Act on each decision; one the journal refuses is decided again next cycle."""
        refused: JournalError | None = None
        for decision in report.decisions:
            try:
                self._act(decision, report, firing)
            except JournalError as exc:
                self.engine.unjournaled(decision.service, decision)
                log.error("decision not journaled", service=decision.service, error=str(exc))
                refused = exc
        if refused is not None:
            raise refused

    def _act(self, decision: Decision, report: CycleReport, firing: list[AlertRecord]) -> None:
        """Journal a decision and carry it out: roll back, ask, escalate or record."""
        findings = [f for f in report.notable if f.service == decision.service]
        log.info(
            "decision",
            service=decision.service,
            action=decision.action.value,
            proposed=decision.proposed.value,
            severity=decision.severity.value,
            rules=list(decision.rules),
            value=decision.value,
            thresholds={f.rule: f.threshold for f in findings if f.firing},
            policy=self.config.policy.table()[decision.severity].action.value,
            guards=list(decision.guards),
            reason=decision.reason,
        )
        self.on_event("decision", {"decision": decision})
        for f in findings:
            if f.firing and f.since is not None:
                self.metrics.firing_to_action.observe(
                    max((decision.time - f.since).total_seconds(), 0.0)
                )
        request = self._request(decision, findings, firing)
        if decision.action.rolls_back and request is not None:
            state = (
                IncidentState.ROLLING_BACK
                if decision.action is Action.ROLLBACK
                else IncidentState.AWAITING_APPROVAL
            )
            try:
                incident = self.checklist.open(request, state)
            except RollbackRefused as exc:
                refused = self._open_plain(
                    decision, IncidentState.ESCALATED, f"not rolled back: {exc}"
                )
                self.metrics.actions.labels(decision.action.value, "refused").inc()
                self._tell(refused, decision, asks=False, why=f"not rolled back: {exc}")
                return
            failpoint(f"opened:{state.value}")
            self.engine.attach(decision.service, incident)
            self.metrics.actions.labels(decision.action.value, "started").inc()
            self.on_event("incident", {"incident": incident, "state": state.value})
            if state is IncidentState.ROLLING_BACK:
                self._submit(incident)
            else:
                self._tell(incident, decision, asks=True)
            return
        state = {
            Action.ESCALATE: IncidentState.ESCALATED,
            Action.RECORD: IncidentState.RECORDED,
        }.get(decision.action, IncidentState.ESCALATED)
        why = (
            decision.reason
            if request is not None or not decision.action.rolls_back
            else (f"{decision.reason}; no rollback target is known")
        )
        incident = self._open_plain(decision, state, why)
        self.on_event("incident", {"incident": incident, "state": state.value})
        self.metrics.actions.labels(decision.action.value, "recorded").inc()
        if state is IncidentState.ESCALATED:
            self._tell(incident, decision, asks=False)

    def _open_plain(self, decision: Decision, state: IncidentState, summary: str) -> int:
        """An incident that tells people and waits on them: the engine follows it as such."""
        current = self.history.current(decision.service)
        incident = self.journal.open_incident(
            NewIncident(
                service=decision.service,
                opened_at=decision.time,
                severity=decision.severity,
                action=decision.action,
                origin="automatic",
                reason=summary,
                target=decision.target,
                current_version=current.version if current else None,
                state=state,
                decision=decision,
            )
        )
        self.engine.attach(decision.service, incident)
        self.engine.settle(decision.service, incident, decision.time)
        return incident

    def _follow(self, event: IncidentEvent) -> None:
        """Journal and log what happened to an open incident: folded, resolved, superseded,
        expired. A rollback under way is never ended here: its checklist ends it."""
        log.info(
            f"incident {event.kind.value}",
            service=event.service,
            incident=event.incident,
            rules=list(event.rules),
            reason=event.reason,
        )
        self.on_event(event.kind.value, {"event": event})
        if event.incident is None:
            return
        if event.kind is Ended.FOLDED:
            self.journal.add_evidence(
                event.incident,
                event.time,
                EvidenceKind.FOLDED,
                {"rules": list(event.rules), "reason": event.reason},
            )
            return
        record = self.journal.incident(event.incident)
        if record is not None:
            self._end(record, _ENDED_STATE[event.kind], event.reason, event.time)

    def _end(self, record: IncidentRecord, state: IncidentState, why: str, at: datetime) -> bool:
        """End an incident that waits (on people or on an approval); False if it no longer does.

        An approver who was asked is told that the request is withdrawn.
        """
        if not self.journal.set_state(
            record.id, state, f"{why} (was {record.state.value})", at, expect=ENDS_QUIETLY
        ):
            return False
        log.info("incident ended", incident=record.id, state=state.value, reason=why)
        if record.state is IncidentState.AWAITING_APPROVAL:
            self.notifier.notify(
                notice(
                    incident=record.id,
                    service=record.service,
                    severity=record.severity,
                    title=f"{record.service}: rollback request {record.id} withdrawn",
                    text=f"Nothing was rolled back: {why}.",
                    role=self._approver(record),
                )
            )
        return True

    def _request(
        self, decision: Decision, findings: list[Finding], firing: list[AlertRecord]
    ) -> RollbackRequest | None:
        if decision.target is None:
            return None
        current = self.history.current(decision.service)
        target = self.history.target_ref(decision.service, decision.target)
        alerts = [
            {"name": a.name, "labels": dict(a.labels), "since": format_instant(a.starts_at)}
            for a in firing
            if a.service == decision.service
        ]
        return RollbackRequest(
            service=decision.service,
            target=target,
            reason=decision.reason,
            origin="automatic",
            severity=decision.severity,
            current_version=current.version if current else None,
            decision=decision,
            evidence={
                "findings": [
                    finding_record(f)
                    for f in findings
                    if f.state is not FindingState.OK and not f.unmeasured
                ],
                "unmeasured": sorted(f.rule for f in findings if f.unmeasured),
                "deploys": [
                    {"version": d.version, "time": format_instant(d.time), "source": d.source}
                    for d in self.history.deploys(decision.service)[-5:]
                ],
                "alerts": alerts,
            },
            baselines=self.live.baselines_of(decision.service),
            migrations=current.migrations if current else (),
            deployed_at=current.time if current else None,
            target_version=decision.target,
        )

    def _tell(self, incident: int, decision: Decision, asks: bool, why: str = "") -> None:
        """Ask the approver to approve or veto a rollback, or tell them of an escalation."""
        service = decision.service
        if asks:
            target = decision.target or "the last known good version"
            when = "at the deadline unless vetoed" if decision.deadline else "once approved"
            headline = f"rollbackd asks to roll back to {target}"
            action = f"nothing yet: the rollback of {service} to {target} waits for a decision"
            request = f"approve or veto the rollback of {service} to {target}; it runs {when}"
        else:
            headline = "rollbackd escalates, a person must act"
            action = why or f"nothing: it escalates to {decision.approver or 'admin'}"
            request = f"look at {service} and decide what to do; rollbackd does not act on it"
        self.notifier.notify(
            compose(
                incident=incident,
                service=service,
                severity=decision.severity.value,
                what=f"{', '.join(decision.rules) or 'a rule'} firing",
                why=decision.reason,
                action=action,
                asks=request,
                approver=decision.approver,
                deadline=decision.deadline if asks else None,
                public_url=self.config.daemon.public_url,
                headline=headline,
                how_to_decide=asks,
            )
        )

    def _deadlines(self, now: datetime) -> None:
        """Roll back incidents whose approval deadline passed without a veto."""
        for record in self.journal.incidents(limit=200, active_only=True):
            if record.state is not IncidentState.AWAITING_APPROVAL:
                continue
            deadline = self._deadline(self.journal.incident(record.id) or record)
            if deadline is not None and now >= deadline:
                log.info("deadline reached", incident=record.id, service=record.service)
                try:
                    self._start_approved(
                        record,
                        "rollbackd (deadline)",
                        f"deadline {format_instant(deadline)} passed",
                    )
                except Conflict as exc:  # a person decided first: theirs stands
                    log.info("deadline not acted on", incident=record.id, reason=str(exc))

    @staticmethod
    def _deadline(record: IncidentRecord) -> datetime | None:
        """When an incident awaiting approval rolls back without a veto (see the record's)."""
        return record.approval_deadline

    def _submit(self, incident: int) -> None:
        if incident in self.running and not self.running[incident].done():
            return
        if self.stopping.is_set():
            return
        self.running[incident] = self.worker.submit(self._run, incident)

    def _run(self, incident: int) -> None:
        try:
            record = self.checklist.run(incident)
        except Exception as exc:  # a worker must report, not die silently
            log.exception("rollback failed", incident=incident, error=str(exc))
            self._tell_stopped(incident, f"{type(exc).__name__}: {exc}")
            return
        with self.lock:
            if record.state is IncidentState.RECOVERED or record.state in WAITING:
                self.engine.settle(
                    record.service,
                    incident,
                    self.clock(),
                    recovered=record.state is IncidentState.RECOVERED,
                )
        outcome = record.state.value
        self.metrics.rollbacks.labels(record.service, outcome).inc()
        if record.state in (IncidentState.RECOVERED, IncidentState.NOT_RECOVERED):
            self.metrics.recoveries.labels(record.service, outcome).inc()
        log.info("rollback finished", incident=incident, state=outcome, summary=record.summary)
        self.on_event(
            "finished", {"incident": incident, "state": outcome, "summary": record.summary}
        )

    def _tell_stopped(self, incident: int, why: str) -> None:
        """A rollback's worker ended on an error: whatever its journaled state, a person
        must look (it resumes at the next start)."""
        try:
            record = self.journal.incident(incident)
        except JournalError:
            record = None
        service = record.service if record else "rollbackd"
        self.notifier.notify(
            notice(
                incident=incident,
                service=service,
                severity=record.severity if record else "unknown",
                title=f"{service}: rollback stopped on an error, a person must check",
                text=f"The rollback of incident {incident} stopped: {why}. It stays "
                f"{record.state.value if record else 'as journaled'} until rollbackd restarts "
                "and resumes it.",
            )
        )

    # -- what people and other systems do through the API ------------------------------

    def submit_webhook(self, body: bytes) -> Future[tuple[int, int]]:
        """Parse a delivery and queue it for the journal: done once it is on disk.

        InvalidInput (raised here) names what is wrong with the body; the
        future fails with JournalError if the journal cannot write it.
        """
        delivery = parse_webhook(body, self.config.alerts.service_label)
        future = self.journal.submit_delivery(
            self.clock(), delivery, body.decode("utf-8", errors="replace")
        )
        future.add_done_callback(self._count_webhook)
        return future

    def _count_webhook(self, done: Future[tuple[int, int]]) -> None:
        failed = done.cancelled() or done.exception() is not None
        self.metrics.webhooks.labels("failed" if failed else "accepted").inc()

    def accept_deploy(self, body: Mapping[str, Any]) -> Deploy:
        """Validate and journal a deploy event, then let it start its attribution window."""
        now = self.clock()
        deploy = parse_event(
            body,
            now,
            {s.name for s in self.config.services},
            max_skew=self.config.deploys.max_clock_skew,
        )
        self.journal.record_deploy(deploy, now)
        with self.lock:
            self.history.record(deploy)
        log.info("deploy", service=deploy.service, version=deploy.version, ref=deploy.ref)
        return deploy

    def approve(self, incident: int, caller: Caller) -> IncidentRecord:
        record = self._awaiting(incident)
        self._may_decide(record, caller)
        return self._start_approved(record, caller.name, f"approved by {caller.name}")

    def veto(self, incident: int, caller: Caller) -> IncidentRecord:
        record = self._awaiting(incident)
        self._may_decide(record, caller)
        now = self.clock()
        if not self.journal.set_state(
            incident,
            IncidentState.VETOED,
            f"vetoed by {caller.name}",
            now,
            expect=(IncidentState.AWAITING_APPROVAL,),
        ):
            self._awaiting(incident)  # raises Conflict with the state that won
        self.journal.add_decision(
            incident,
            self._human_decision(record, Action.RECORD, f"vetoed by {caller.name}", now),
            caller.name,
        )
        with self.lock:
            self.engine.settle(record.service, incident, now)
        log.info("vetoed", incident=incident, by=caller.name)
        self.metrics.actions.labels("request_approval", "vetoed").inc()
        return self._load(incident)

    def rollback_by_hand(
        self, service: str, to: str | None, reason: str | None, caller: Caller
    ) -> IncidentRecord:
        """A rollback a person asks for: a manual incident, run on the worker like an approved one.

        ``to`` (a version or a ref; default: the last known good version) is
        resolved as for the daemon's own decisions. NotFound for an unknown
        service, InvalidInput for a bad ``to``, Conflict when there is no
        target or a rollback of the service is already under way.
        """
        if self.config.service(service) is None:
            raise NotFound(f"no service named {quoted(service, 64)} is configured")
        if to is not None and not valid_ref(to):
            bad = f"{quoted(to, 80)} is not a version or ref rollbackd will pass to git"
            raise InvalidInput([Problem("body", "to", bad)])
        why = reason or f"manual rollback by {caller.name}"
        with self.lock:  # the cycle opens its incidents under it too: one rollback at a time
            try:  # first: a rollback under way may already run the target it asked for
                self.checklist.refuse_if_busy(service)
            except RollbackRefused as exc:
                raise Conflict(str(exc)) from None
            findings = self.last_report.notable if self.last_report else ()
            try:
                request = manual_request(
                    service, to, why, self.history, findings, self.live.baselines_of(service)
                )
            except NoTarget as exc:
                raise Conflict(f'{exc}; name a version or ref in "to"') from None
            except AlreadyThere as exc:
                raise InvalidInput([Problem("body", "to", str(exc))]) from None
            decision = Decision(
                service=service,
                time=self.clock(),
                severity=request.severity,
                action=Action.ROLLBACK,
                proposed=Action.ROLLBACK,
                rules=(),
                reason=f"rollback asked for by {caller.name}: {why}",
                target=request.target,
            )
            try:
                incident = self.checklist.open(
                    replace(request, decision=decision, decided_by=caller.name)
                )
            except RollbackRefused as exc:
                raise Conflict(str(exc)) from None
        log.info(
            "manual rollback",
            incident=incident,
            service=service,
            target=request.target,
            by=caller.name,
            reason=why,
        )
        self.metrics.actions.labels(Action.ROLLBACK.value, "manual").inc()
        self.on_event("incident", {"incident": incident, "state": IncidentState.ROLLING_BACK.value})
        for waiting in self.journal.incidents(service=service, active_only=True):
            if waiting.state is IncidentState.AWAITING_APPROVAL:
                self._end(
                    waiting,
                    IncidentState.SUPERSEDED,
                    f"{caller.name} rolled {service} back by hand (incident {incident})",
                    self.clock(),
                )
        self._submit(incident)
        return self._load(incident)

    def _start_approved(self, record: IncidentRecord, actor: str, why: str) -> IncidentRecord:
        """Run an approved rollback (a person's approval, or the deadline).

        Never for a version that no longer runs: if another version was deployed or
        rolled back to since the request, the request is withdrawn (superseded), and
        the approval is a conflict.
        """
        now = self.clock()
        current = self.history.current(record.service)
        if (
            current is not None
            and record.current_version is not None
            and current.version != record.current_version
        ):
            moved = (
                f"{record.service} runs {current.version} now, not {record.current_version} "
                "this request was for"
            )
            self._end(record, IncidentState.SUPERSEDED, moved, now)
            raise Conflict(f"incident {record.id}: {moved}; nothing was rolled back")
        try:
            self.checklist.approve(record.id, now)
        except RollbackRefused as exc:
            raise Conflict(str(exc)) from None
        self.journal.add_decision(
            record.id, self._human_decision(record, Action.ROLLBACK, why, now), actor
        )
        with self.lock:
            self.engine.rolling_back(record.service, record.id)
        log.info("approved", incident=record.id, by=actor)
        self.metrics.actions.labels("request_approval", "approved").inc()
        self._submit(record.id)
        return self._load(record.id)

    def _human_decision(
        self, record: IncidentRecord, action: Action, why: str, now: datetime
    ) -> Decision:
        return Decision(
            service=record.service,
            time=now,
            severity=record.severity,
            action=action,
            proposed=Action.REQUEST_APPROVAL,
            rules=(),
            reason=why,
            target=record.target,
        )

    def _awaiting(self, incident: int) -> IncidentRecord:
        record = self._load(incident)
        if record.state is not IncidentState.AWAITING_APPROVAL:
            raise Conflict(
                f"incident {incident} is {record.state.value}: only a rollback awaiting "
                "approval can be approved or vetoed"
            )
        return record

    @staticmethod
    def _approver(record: IncidentRecord) -> str:
        return next((d.approver for d in reversed(record.decisions) if d.approver), "admin")

    def _may_decide(self, record: IncidentRecord, caller: Caller) -> None:
        approver = self._approver(record)
        if caller.role not in ("admin", approver):
            raise NotPermitted(
                f"incident {record.id} needs the role {approver} (or admin); "
                f"this token has {caller.role}"
            )

    def _load(self, incident: int) -> IncidentRecord:
        record = self.journal.incident(incident)
        if record is None:
            raise NotFound(f"no incident {incident}")
        return record

    @staticmethod
    def _last_decision(record: IncidentRecord) -> Decision | None:
        for d in reversed(record.decisions):
            if d.actor != "rollbackd":
                continue
            try:
                return Decision(
                    service=record.service,
                    time=d.time,
                    severity=d.severity,
                    action=d.action,
                    proposed=d.proposed,
                    rules=tuple(d.rules),
                    reason=d.reason,
                    approver=d.approver,
                    deadline=d.deadline,
                    guards=tuple(d.guards),
                    value=d.value,
                    target=d.target,
                )
            except ValueError:
                return None
        return None

    # -- views for the API and the status page -----------------------------------------

    def services_view(self) -> list[dict[str, Any]]:
        report = self.last_report
        by_service: dict[str, list[Finding]] = {}
        for finding in report.notable if report else ():
            by_service.setdefault(finding.service, []).append(finding)
        out = []
        for service in self.config.services:
            current = self.history.current(service.name)
            good, why = self.history.last_good(service.name)
            measured = by_service.get(service.name, [])
            own = [f for f in measured if not f.unmeasured]
            states = {f.state for f in own}
            state = (
                "firing"
                if FindingState.FIRING in states
                else "pending"
                if FindingState.PENDING in states
                else "inconclusive"
                if FindingState.INCONCLUSIVE in states
                else "ok"
                if own or (report is not None and self.engine.rule_count(service.name))
                else "unknown"
            )
            out.append(
                {
                    "name": service.name,
                    "state": state,
                    "current_version": current.version if current else None,
                    "deployed_at": format_instant(current.time) if current else None,
                    "last_good_version": good,
                    "last_good_reason": why,
                    "findings": [finding_record(f) for f in own if f.state is not FindingState.OK],
                    "unmeasured": sorted(f.rule for f in measured if f.unmeasured),
                    "incident": self._open_incident(service.name),
                }
            )
        return out

    def _open_incident(self, service: str) -> dict[str, Any] | None:
        """The incident the engine follows for ``service``, if one is open."""
        judgement = self.engine.judgement(service)
        if judgement is None:
            return None
        return {
            "id": judgement.incident,
            "opened": format_instant(judgement.opened),
            "version": judgement.version,
            "severity": judgement.decision.severity.value,
            "action": judgement.decision.action.value,
        }

    def _stuck(self) -> str | None:
        """Why the evaluation loop looks stuck (no cycle completed for too long), or None."""
        since = self.last_completed if self.last_completed is not None else self.created
        poll = self.config.daemon.poll_interval
        limit = self.live.budget + STUCK_AFTER_POLLS * poll
        waited = timedelta(seconds=time.monotonic() - since)
        if waited <= limit:
            return None
        what = "no cycle completed" if self.last_completed is None else "the last cycle completed"
        error = f": {self.last_cycle_error}" if self.last_cycle_error else ""
        return (
            f"{what} {format_duration(waited)} ago (poll_interval {format_duration(poll)}): "
            f"the evaluation loop is stuck{error}"
        )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: not stopping, the journal can be written, and the evaluation loop
        completes cycles. An unwritable journal acknowledges nothing and holds rollbacks
        (``journal_error`` says why); a stuck loop is not ready (``loop`` says why): a slow
        source must never look like a working daemon."""
        report = self.last_report
        sources: dict[str, str] = {}
        if report is not None:
            for name, error in report.source_errors.items():
                sources[name] = error
        stuck = self._stuck()
        journal_error = self.journal.problem()
        ready = not self.stopping.is_set() and stuck is None and journal_error is None
        return ready, {
            "ready": ready,
            "loop": stuck or "cycles complete",
            "config": str(self.loaded.config_path),
            "journal": self.journal.location,
            "journal_error": journal_error,
            "last_cycle": format_instant(report.time) if report else None,
            "cycle_error": self.last_cycle_error,
            "degraded": sources,
            "poll_interval": format_duration(self.config.daemon.poll_interval),
        }


def _keep_running(running: Config, loaded: Loaded) -> tuple[Loaded, list[str]]:
    """``loaded`` with the running values of :data:`RESTART_KEYS`, and each one that changed."""
    changed = {
        key: (getattr(running.daemon, key), getattr(loaded.config.daemon, key))
        for key in RESTART_KEYS
        if getattr(running.daemon, key) != getattr(loaded.config.daemon, key)
    }
    if not changed:
        return loaded, []
    daemon = loaded.config.daemon.model_copy(update={k: old for k, (old, _) in changed.items()})
    config = loaded.config.model_copy(update={"daemon": daemon})
    described = [f"daemon.{key} ({old} → {new})" for key, (old, new) in changed.items()]
    return replace(loaded, config=config), described
