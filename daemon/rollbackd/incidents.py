"""Incidents, from opening to end: decisions acted on, approvals, vetoes, deadlines, rollbacks.

:class:`Incidents` journals what the loop decided and carries it out: a
rollback runs through the checklist on a worker thread (so the loop and the
API stay responsive), a request for approval asks the approver, an escalation
tells a person. People approve, veto, or roll back by hand through it; an
approval deadline passing without a veto rolls back. Each change of state is
one compare-and-set in the journal: of an approval, a veto and a deadline at
the same instant exactly one wins, and what happens follows the winner.

In a cluster, any replica journals what people ask (approvals, vetoes, rollbacks by
hand); only the leader runs rollbacks, each on its worker in the leader's term (its
writes fenced by the epoch). The leader picks up, every cycle, the rollbacks journaled
as under way that no worker of its own runs: approved or asked for on another replica,
or left unfinished by a former leader.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from rollbackd.actions.checklist import RollbackRequest, failpoint
from rollbackd.core.deploys import Deploy
from rollbackd.core.durations import format_instant
from rollbackd.core.engine import CycleReport, IncidentEvent, Judgement
from rollbackd.core.engine import Outcome as Ended
from rollbackd.core.model import Action, Decision, Finding
from rollbackd.errors import (
    AlreadyThere,
    Conflict,
    InvalidInput,
    NoTarget,
    NotFound,
    NotLeader,
    NotPermitted,
    Problem,
    RollbackRefused,
)
from rollbackd.events import Decided, Events, Finished, Followed, Opened
from rollbackd.journal import (
    AlertRecord,
    EvidenceKind,
    IncidentRecord,
    IncidentState,
    JournalError,
    NewIncident,
    Outcome,
)
from rollbackd.logs import get_logger
from rollbackd.manual import manual_request, request_evidence
from rollbackd.notify.message import compose, notice
from rollbackd.output import evidence_fields
from rollbackd.sources.deploys import valid_ref
from rollbackd.state import State
from rollbackd.text import quoted

log = get_logger("rollbackd")

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
WORKERS = 64
"""A rollback holds its worker through the recovery watch (minutes), so workers are
plentiful: one incident must never wait for another's recovery to start."""


@dataclass(frozen=True)
class Caller:
    """Who asks: a person's (or a system's) name and role, as the API authenticated them."""

    name: str
    role: str


class Incidents:
    """Every incident's course; shares the daemon's :class:`~rollbackd.state.State`."""

    def __init__(self, state: State, events: Events) -> None:
        self.state = state
        self.events = events
        self.worker = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rollback")
        self.running: dict[int, Future[Any]] = {}

    def pick_up(self) -> None:
        """Run every rollback journaled as under way that no worker here runs or ran (the
        leader, each cycle): approved or asked for on another replica, or interrupted when
        this replica last stopped leading. And settle what a person decided on another
        replica (a veto): the engine follows it as waiting on people, so it ends in time."""
        for service, judgement in self.state.engine.judgements().items():
            if judgement.incident is None or judgement.rolling_back or judgement.idle_since:
                continue
            record = self.state.journal.incident(judgement.incident)
            if record is not None and record.state in WAITING:
                log.info("decided on another replica", incident=record.id, state=record.state)
                with self.state.lock:
                    self.state.engine.settle(
                        service,
                        record.id,
                        record.updated_at or self.state.clock(),
                        recovered=False,
                    )
        for listed in self.state.journal.incidents(limit=None, active_only=True):
            if listed.id in self.running or listed.state not in (
                IncidentState.ROLLING_BACK,
                IncidentState.RECOVERING,
            ):
                continue
            log.info("picking up a rollback", incident=listed.id, service=listed.service)
            with self.state.lock:
                self.state.engine.rolling_back(listed.service, listed.id)
            self.submit(listed.id)

    def forget_finished(self) -> None:
        """Forget the workers that ended (a new term of leadership resumes their incidents)."""
        self.running = {k: f for k, f in list(self.running.items()) if not f.done()}

    def shutdown(self) -> None:
        """Let the rollback in progress reach the end of its step; queued ones resume at start."""
        self.worker.shutdown(wait=True, cancel_futures=True)

    def resume(self, now: datetime) -> None:
        """Restore what the journal knows, and resume rollbacks a crash interrupted.

        Every unfinished incident comes back, however long the daemon was down: a
        rollback under way resumes, and the newest one of each service is followed by
        the engine again (not decided again). Finished ones stay finished.
        """
        journal = self.state.journal
        followed: dict[str, int] = {}
        for listed in journal.incidents(limit=None, unfinished_only=True):  # newest first
            record = journal.incident(listed.id) or listed
            if record.state in (IncidentState.ROLLING_BACK, IncidentState.RECOVERING):
                log.info("resuming", incident=record.id, service=record.service)
                self.submit(record.id)
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
                self.state.engine.restore(record.service, judgement)
                followed[record.service] = record.id

    def _judgement_of(self, record: IncidentRecord) -> Judgement | None:
        """What the engine followed for an incident before a restart (None: not a judgement)."""
        decision = last_decision(record)
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

    def act_on(self, report: CycleReport, firing: list[AlertRecord]) -> None:
        """Act on each decision; one the journal refuses is decided again next cycle."""
        refused: JournalError | None = None
        for decision in report.decisions:
            try:
                self._act(decision, report, firing)
            except JournalError as exc:
                self.state.engine.unjournaled(decision.service, decision)
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
            evidence={f.rule: e for f in findings if f.firing and (e := evidence_fields(f))},
            policy=self.state.config.policy.table()[decision.severity].action.value,
            guards=list(decision.guards),
            reason=decision.reason,
        )
        self.events.emit(Decided(decision))
        for f in findings:
            if f.firing and f.since is not None:
                self.state.metrics.firing_to_action.observe(
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
                incident = self.state.checklist.open(request, state)
            except RollbackRefused as exc:
                refused = self._open_plain(
                    decision, IncidentState.ESCALATED, f"not rolled back: {exc}"
                )
                self.state.metrics.actions.labels(decision.action.value, "refused").inc()
                self._tell(refused, decision, asks=False, why=f"not rolled back: {exc}")
                return
            failpoint(f"opened:{state.value}")
            self.state.engine.attach(decision.service, incident)
            self.state.metrics.actions.labels(decision.action.value, "started").inc()
            self.events.emit(Opened(incident, state))
            if state is IncidentState.ROLLING_BACK:
                self.submit(incident)
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
        self.events.emit(Opened(incident, state))
        self.state.metrics.actions.labels(decision.action.value, "recorded").inc()
        if state is IncidentState.ESCALATED:
            self._tell(incident, decision, asks=False)

    def _open_plain(self, decision: Decision, state: IncidentState, summary: str) -> int:
        """An incident that tells people and waits on them: the engine follows it as such."""
        current = self.state.history.current(decision.service)
        incident = self.state.journal.open_incident(
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
        self.state.engine.attach(decision.service, incident)
        self.state.engine.settle(decision.service, incident, decision.time)
        return incident

    def follow(self, event: IncidentEvent) -> None:
        """Journal and log what happened to an open incident: folded, resolved, superseded,
        expired. A rollback under way is never ended here: its checklist ends it."""
        log.info(
            f"incident {event.kind.value}",
            service=event.service,
            incident=event.incident,
            rules=list(event.rules),
            reason=event.reason,
        )
        self.events.emit(Followed(event))
        if event.incident is None:
            return
        if event.kind is Ended.FOLDED:
            self.state.journal.add_evidence(
                event.incident,
                event.time,
                EvidenceKind.FOLDED,
                {"rules": list(event.rules), "reason": event.reason},
            )
            return
        record = self.state.journal.incident(event.incident)
        if record is not None:
            self._end(record, _ENDED_STATE[event.kind], event.reason, event.time)

    def _end(self, record: IncidentRecord, state: IncidentState, why: str, at: datetime) -> bool:
        """End an incident that waits (on people or on an approval); False if it no longer does.

        An approver who was asked is told that the request is withdrawn.
        """
        if not self.state.journal.set_state(
            record.id, state, f"{why} (was {record.state.value})", at, expect=ENDS_QUIETLY
        ):
            return False
        log.info("incident ended", incident=record.id, state=state.value, reason=why)
        if record.state is IncidentState.AWAITING_APPROVAL:
            self.state.notifier.notify(
                notice(
                    incident=record.id,
                    service=record.service,
                    severity=record.severity,
                    title=f"{record.service}: rollback request {record.id} withdrawn",
                    text=f"Nothing was rolled back: {why}.",
                    role=approver_of(record),
                )
            )
        return True

    def _request(
        self, decision: Decision, findings: list[Finding], firing: list[AlertRecord]
    ) -> RollbackRequest | None:
        if decision.target is None:
            return None
        current = self.state.history.current(decision.service)
        target = self.state.history.target_ref(decision.service, decision.target)
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
                **request_evidence(findings, self.state.history.deploys(decision.service)),
                "alerts": alerts,
            },
            baselines=self.state.live.baselines_of(decision.service),
            migrations=current.migrations if current else (),
            deployed_at=current.time if current else None,
            target_version=decision.target,
            scope=decision.scope,
            canary_version=decision.canary_version,
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
        self.state.notifier.notify(
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
                public_url=self.state.config.daemon.public_url,
                headline=headline,
                how_to_decide=asks,
            )
        )

    def deadlines(self, now: datetime) -> None:
        """Roll back incidents whose approval deadline passed without a veto.

        One the engine does not follow, because it follows a newer incident of the same
        service, is superseded instead: it was journaled by a write whose answer was lost
        (PostgreSQL committed, the connection broke), the same decision was journaled again
        next cycle, and the request people see and may veto is the newer one.
        """
        for record in self.state.journal.incidents(limit=200, active_only=True):
            if record.state is not IncidentState.AWAITING_APPROVAL:
                continue
            followed = self.state.engine.judgement(record.service)
            if followed is not None and (followed.incident or 0) > record.id:
                self._end(
                    record,
                    IncidentState.SUPERSEDED,
                    f"incident {followed.incident} of {record.service} is newer",
                    now,
                )
                continue
            deadline = deadline_of(self.state.journal.incident(record.id) or record)
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

    def submit(self, incident: int) -> None:
        """Run the incident's rollback on a worker, in this replica's term; on a follower,
        nothing: it is journaled, and the leader picks it up (:meth:`pick_up`)."""
        if incident in self.running and not self.running[incident].done():
            return
        if self.state.stopping.is_set():
            return
        epoch = self.state.leader.leads()
        if epoch is None:
            log.info("rollback left to the leader", incident=incident)
            return
        self.running[incident] = self.worker.submit(self._run, incident, epoch)

    def _run(self, incident: int, epoch: int) -> None:
        try:
            with self.state.leader.term(epoch):
                record = self.state.checklist.run(incident)
        except NotLeader as exc:
            self._left(incident, str(exc))
            return
        except Exception as exc:  # a worker must report, not die silently
            log.exception("rollback failed", incident=incident, error=str(exc))
            self._tell_stopped(incident, f"{type(exc).__name__}: {exc}")
            return
        if record.state.active and self.state.leader.leads() != epoch:
            self._left(incident, f"this replica no longer leads (epoch {epoch})")
            return
        with self.state.lock:
            if record.state is IncidentState.RECOVERED or record.state in WAITING:
                self.state.engine.settle(
                    record.service,
                    incident,
                    self.state.clock(),
                    recovered=record.state is IncidentState.RECOVERED,
                )
        outcome = record.state.value
        self.state.metrics.rollbacks.labels(record.service, outcome).inc()
        if record.state in (IncidentState.RECOVERED, IncidentState.NOT_RECOVERED):
            self.state.metrics.recoveries.labels(record.service, outcome).inc()
        log.info("rollback finished", incident=incident, state=outcome, summary=record.summary)
        self.events.emit(Finished(incident, record.state, record.summary))

    def _left(self, incident: int, why: str) -> None:
        """The rollback stopped because this replica no longer leads: the leader resumes it
        (and so does this replica, should it lead again: the worker is forgotten)."""
        log.warning("rollback left to the leader", incident=incident, reason=why)
        self.running.pop(incident, None)

    def _tell_stopped(self, incident: int, why: str) -> None:
        """A rollback's worker ended on an error: whatever its journaled state, a person
        must look (it resumes at the next start)."""
        try:
            record = self.state.journal.incident(incident)
        except JournalError:
            record = None
        service = record.service if record else "rollbackd"
        self.state.notifier.notify(
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

    def approve(self, incident: int, caller: Caller) -> IncidentRecord:
        record = self._awaiting(incident)
        self._may_decide(record, caller)
        return self._start_approved(record, caller.name, f"approved by {caller.name}")

    def veto(self, incident: int, caller: Caller) -> IncidentRecord:
        record = self._awaiting(incident)
        self._may_decide(record, caller)
        now = self.state.clock()
        if not self.state.journal.set_state(
            incident,
            IncidentState.VETOED,
            f"vetoed by {caller.name}",
            now,
            expect=(IncidentState.AWAITING_APPROVAL,),
        ):
            self._awaiting(incident)  # raises Conflict with the state that won
        self.state.journal.add_decision(
            incident,
            self._human_decision(record, Action.RECORD, f"vetoed by {caller.name}", now),
            caller.name,
        )
        with self.state.lock:
            self.state.engine.settle(record.service, incident, now)
        log.info("vetoed", incident=incident, by=caller.name)
        self.state.metrics.actions.labels("request_approval", "vetoed").inc()
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
        if self.state.config.service(service) is None:
            raise NotFound(f"no service named {quoted(service, 64)} is configured")
        if to is not None and not valid_ref(to):
            bad = f"{quoted(to, 80)} is not a version or ref rollbackd will pass to git"
            raise InvalidInput([Problem("body", "to", bad)])
        why = reason or f"manual rollback by {caller.name}"
        with self.state.lock:  # the cycle opens its incidents under it too: one rollback at a time
            try:  # first: a rollback under way may already run the target it asked for
                self.state.checklist.refuse_if_busy(service)
            except RollbackRefused as exc:
                raise Conflict(str(exc)) from None
            findings = self.state.last_report.notable if self.state.last_report else ()
            try:
                request = manual_request(
                    service,
                    to,
                    why,
                    self.state.history,
                    findings,
                    self.state.live.baselines_of(service),
                )
            except NoTarget as exc:
                raise Conflict(f'{exc}; name a version or ref in "to"') from None
            except AlreadyThere as exc:
                raise InvalidInput([Problem("body", "to", str(exc))]) from None
            decision = Decision(
                service=service,
                time=self.state.clock(),
                severity=request.severity,
                action=Action.ROLLBACK,
                proposed=Action.ROLLBACK,
                rules=(),
                reason=f"rollback asked for by {caller.name}: {why}",
                target=request.target,
            )
            try:
                incident = self.state.checklist.open(
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
        self.state.metrics.actions.labels(Action.ROLLBACK.value, "manual").inc()
        self.events.emit(Opened(incident, IncidentState.ROLLING_BACK))
        for waiting in self.state.journal.incidents(service=service, active_only=True):
            if waiting.state is IncidentState.AWAITING_APPROVAL:
                self._end(
                    waiting,
                    IncidentState.SUPERSEDED,
                    f"{caller.name} rolled {service} back by hand (incident {incident})",
                    self.state.clock(),
                )
        self.submit(incident)
        return self._load(incident)

    def _start_approved(self, record: IncidentRecord, actor: str, why: str) -> IncidentRecord:
        """Run an approved rollback (a person's approval, or the deadline).

        Never for a version that no longer runs: if another version was deployed or
        rolled back to since the request, the request is withdrawn (superseded), and
        the approval is a conflict.
        """
        now = self.state.clock()
        current = self.state.history.current(record.service)
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
            self.state.checklist.approve(record.id, now)
        except RollbackRefused as exc:
            raise Conflict(str(exc)) from None
        self.state.journal.add_decision(
            record.id, self._human_decision(record, Action.ROLLBACK, why, now), actor
        )
        with self.state.lock:
            self.state.engine.rolling_back(record.service, record.id)
        log.info("approved", incident=record.id, by=actor)
        self.state.metrics.actions.labels("request_approval", "approved").inc()
        self.submit(record.id)
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

    def _may_decide(self, record: IncidentRecord, caller: Caller) -> None:
        approver = approver_of(record)
        if caller.role not in ("admin", approver):
            raise NotPermitted(
                f"incident {record.id} needs the role {approver} (or admin); "
                f"this token has {caller.role}"
            )

    def _load(self, incident: int) -> IncidentRecord:
        record = self.state.journal.incident(incident)
        if record is None:
            raise NotFound(f"no incident {incident}")
        return record


def deadline_of(record: IncidentRecord) -> datetime | None:
    """When an incident awaiting approval rolls back without a veto (None: never by itself)."""
    return record.approval_deadline


def approver_of(record: IncidentRecord) -> str:
    return next((d.approver for d in reversed(record.decisions) if d.approver), "admin")


def last_decision(record: IncidentRecord) -> Decision | None:
    """rollbackd's own latest decision on an incident (None: only people decided, by hand)."""
    for d in reversed(record.decisions):
        if d.actor == "rollbackd":
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
    return None
