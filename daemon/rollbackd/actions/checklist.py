"""The playbook's rollback checklist, run and journaled step by step.

For every rollback, automatic or manual::

    document → notify → verify_target → migration_gate → backup → snapshot
             → execute → after_rollback[0..n] → recovery

Each step is journaled *before* it runs and its outcome after. :meth:`run`
resumes an incident where it stopped: finished steps are not run again, and
an interrupted step is never repeated blindly — reads (document, verify,
gate) are redone, an interrupted ``execute`` is judged from the real state
by its executor (done → recorded; provably not started → run once; anything
else → "outcome unknown", escalated), and an interrupted command escalates.
A rollback that fails, is blocked, or does not recover escalates to a person
and is never retried automatically.

In a cluster, only the leader runs rollbacks, and every record is journaled under its
epoch: a write refused because another replica leads now (:class:`NotLeader`) ends the
pass at once, without concluding anything: the new leader resumes the incident.

Once ``execute`` has succeeded, the target runs: that is a deploy of it,
journaled once (whichever process ran the checklist, and however often it
was resumed) and told to ``Parts.on_deploy``, so that the daemon, at once or
at its next start, shows the target as current.

A journal that cannot be written (disk full, its file removed) never ends a
rollback, nor lets it run on unjournaled: the write waits, with a bounded
backoff, until the journal takes it; a person is told the rollback is stuck,
and told again when it goes on. A step's outcome is kept meanwhile, so a
step that ran is never run again for want of its record.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from rollbackd.actions import (
    OUTPUT_LIMIT,
    Executor,
    IncidentFacts,
    Interrupted,
    Progress,
    StepResult,
)
from rollbackd.actions.command import incident_env, run_argv
from rollbackd.actions.recovery import RecoveryWatcher
from rollbackd.config import Config, ServiceConfig
from rollbackd.core.deploys import Deploy, MigrationFact
from rollbackd.core.migrations import DEFAULT_MIGRATION_GLOBS
from rollbackd.core.model import ALERT_RULE_PREFIX, Action, Decision, Severity
from rollbackd.core.recovery import Check, Verdict
from rollbackd.errors import NotLeader, RollbackRefused
from rollbackd.journal import (
    EvidenceKind,
    IncidentRecord,
    IncidentState,
    Journal,
    JournalUnavailable,
    NewIncident,
    Outcome,
    RollbackFacts,
    StepRecord,
)
from rollbackd.logs import get_logger
from rollbackd.notify import Notifier
from rollbackd.notify.message import notice
from rollbackd.sources.deploys import valid_ref
from rollbackd.text import head_and_tail, quoted

DOCUMENT = "document"
NOTIFY = "notify"
VERIFY = "verify_target"
GATE = "migration_gate"
BACKUP = "backup"
SNAPSHOT = "snapshot"
EXECUTE = "execute"
RECOVERY = "recovery"
HISTORY_BEFORE = timedelta(minutes=15)
"""How far before the deploy the document step keeps the rules' values, for the report."""
JOURNAL_RETRY_FIRST = 1.0
"""Seconds before a write the journal refused is tried again; each wait doubles..."""
JOURNAL_RETRY_CAP = 30.0
"""...up to this: a journal that comes back is found within half a minute."""
FAILPOINT_ENV = "ROLLBACKD_FAILPOINT"
"""Crash testing: ``before:STEP``, ``started:STEP`` (journaled, not yet run), ``worked:STEP``
(run, outcome not yet journaled), ``finished:STEP`` (outcome journaled, not yet acted on) or
``after:STEP`` makes the process SIGKILL itself there."""
FAILPOINT_SIGNAL_ENV = "ROLLBACKD_FAILPOINT_SIGNAL"
"""Crash testing: ``STOP`` makes the failpoint pause the process (SIGSTOP) rather than kill
it, as a VM frozen or a process swapped out would be; SIGCONT lets it go on."""

log = get_logger("rollbackd.checklist")
_T = TypeVar("_T")


@dataclass(frozen=True)
class RollbackRequest:
    """Everything a rollback needs to know, journaled with its incident."""

    service: str
    target: str
    reason: str
    origin: str
    severity: Severity
    current_version: str | None = None
    decision: Decision | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    baselines: Mapping[str, float] = field(default_factory=dict)
    migrations: Sequence[MigrationFact] = ()
    deployed_at: datetime | None = None
    target_version: str | None = None
    scope: str = "all"
    """``canary``: take out only ``canary_version`` (core.canary); ``all``: the service."""
    canary_version: str | None = None
    decided_by: str = "rollbackd"
    """Who made ``decision``: rollbackd, or the person who asked for the rollback."""


Observer = Callable[[datetime], Check]


@dataclass
class Parts:
    """What the checklist is built from; each part is swappable for tests."""

    journal: Journal
    executor_for: Callable[[ServiceConfig], Executor]
    notifier: Notifier
    watcher: RecoveryWatcher
    observer_for: Callable[[ServiceConfig, Mapping[str, float], Sequence[str]], Observer]
    """The recovery watch's observer for a service, given the incident's pre-deploy
    baselines (by rule) and the alerts that triggered it (``alert:NAME``)."""
    clock: Callable[[], datetime]
    """The time every step is journaled at (production: UTC wall clock, ``assembly.now_utc``)."""
    gate: Callable[[Path, str, str, Sequence[str], Sequence[MigrationFact]], Any] | None = None
    history: (
        Callable[
            [ServiceConfig, datetime, datetime], Mapping[str, Sequence[tuple[datetime, float]]]
        ]
        | None
    ) = None
    on_step: Callable[[str, str], None] = field(default=lambda *_: None)
    on_deploy: Callable[[Deploy], None] = field(default=lambda _: None)
    """Told the deploy of the target once execute succeeded (it is journaled already)."""
    should_stop: Callable[[], bool] = field(default=lambda: False)
    may_act: Callable[[], bool] = field(default=lambda: True)
    """Checked once a step is journaled as started, right before its work: False (this
    replica stopped leading) leaves the step unrun, as interrupted, for the leader."""
    pause: Callable[[float], object] = time.sleep
    """Waits that many seconds, or less once the daemon is stopping (``should_stop``)."""


def failpoint(where: str) -> None:
    """Kill (or pause) this process here if crash testing asks for it (``ROLLBACKD_FAILPOINT``)."""
    if os.environ.get(FAILPOINT_ENV) == where:
        pause = os.environ.get(FAILPOINT_SIGNAL_ENV) == "STOP"
        os.kill(os.getpid(), signal.SIGSTOP if pause else signal.SIGKILL)
        if pause:  # the stop reaches this thread a moment later: not one step further
            time.sleep(0.5)


class Checklist:
    """Runs rollbacks through the playbook's steps for one config."""

    def __init__(self, config: Config, parts: Parts) -> None:
        self.config = config
        self.parts = parts
        self.journal = parts.journal

    def open(
        self, request: RollbackRequest, state: IncidentState = IncidentState.ROLLING_BACK
    ) -> int:
        """Journal a new rollback incident; refuse if one is already under way.

        ``state`` is ROLLING_BACK to start now, or AWAITING_APPROVAL for a
        rollback that waits for a person (then :meth:`approve` starts it). The
        incident, its decision (approver and deadline) and its evidence are one
        transaction: all of it is journaled, or none.
        """
        if not valid_ref(request.target):
            raise RollbackRefused(
                f"{request.service}: target {quoted(request.target, 80)} is not a valid ref"
            )
        if self.config.service(request.service) is None:
            raise RollbackRefused(f"no service named {request.service!r} is configured")
        self.refuse_if_busy(request.service)
        now = self.parts.clock()
        facts = RollbackFacts(
            baselines=dict(request.baselines),
            migrations=tuple(request.migrations),
            deployed_at=request.deployed_at,
            target_version=request.target_version,
            scope=request.scope,
            canary_version=request.canary_version,
        )
        incident = self.journal.open_incident(
            NewIncident(
                service=request.service,
                opened_at=now,
                severity=request.severity,
                action=Action.ROLLBACK,
                origin=request.origin,
                reason=request.reason,
                target=request.target,
                current_version=request.current_version,
                state=state,
                facts=facts,
                decision=request.decision,
                decided_by=request.decided_by,
                evidence={EvidenceKind.SNAPSHOT: dict(request.evidence)}
                if request.evidence
                else {},
            )
        )
        return incident

    def refuse_if_busy(self, service: str, but: int | None = None) -> None:
        """RollbackRefused, naming it, while a rollback of ``service`` is under way."""
        for other in self.journal.incidents(service=service, active_only=True):
            if other.id != but and other.state in (
                IncidentState.ROLLING_BACK,
                IncidentState.RECOVERING,
            ):
                raise RollbackRefused(
                    f"{service}: incident {other.id} is already rolling back "
                    f"({other.state.value}); a rollback never runs twice"
                )

    def approve(self, incident_id: int, at: datetime) -> IncidentRecord:
        """Move an incident awaiting approval to rolling back (then :meth:`run` it)."""
        record = self._load(incident_id)
        if record.state is not IncidentState.AWAITING_APPROVAL:
            raise RollbackRefused(
                f"incident {incident_id} is {record.state.value}, not awaiting approval"
            )
        self.refuse_if_busy(record.service, but=incident_id)
        if not self.journal.set_state(
            incident_id,
            IncidentState.ROLLING_BACK,
            "approved",
            at,
            expect=(IncidentState.AWAITING_APPROVAL,),
        ):
            now = self._load(incident_id).state.value
            raise RollbackRefused(f"incident {incident_id} is {now}, no longer awaiting approval")
        return self._load(incident_id)

    def run(self, incident_id: int) -> IncidentRecord:
        """Run or resume every remaining step; return the incident as journaled.

        While the journal cannot be written, the rollback waits for it (see
        :class:`_JournalWait`) and then resumes from what the journal holds, as
        after a restart; it returns early, unfinished, only when told to stop.
        """
        record = self._load(incident_id)
        waiting = _JournalWait(self.parts, record)
        while True:
            try:
                done = self._run(record.id, waiting)
            except NotLeader as exc:
                log.warning("rollback left to the leader", incident=incident_id, reason=str(exc))
                return self._load(incident_id)
            except JournalUnavailable as exc:
                if not waiting.wait(f"journaling the rollback's progress failed: {exc}"):
                    return self._load(incident_id)
                continue
            waiting.resumed()
            return done

    def _run(self, incident_id: int, waiting: _JournalWait) -> IncidentRecord:
        record = self._load(incident_id)
        if record.state not in (IncidentState.ROLLING_BACK, IncidentState.RECOVERING):
            return record
        service = self.config.service(record.service)
        if service is None:
            self._conclude(
                record,
                IncidentState.ESCALATED,
                f"service {record.service!r} is no longer configured; nothing was done",
            )
            return self._load(incident_id)
        if not record.state.active:
            return record
        runner = _Run(self, record, service, waiting)
        runner.go()
        return self._load(incident_id)

    def _load(self, incident_id: int) -> IncidentRecord:
        record = self.journal.incident(incident_id)
        if record is None:
            raise RollbackRefused(f"no incident {incident_id}")
        return record

    def _conclude(
        self,
        record: IncidentRecord,
        state: IncidentState,
        summary: str,
        approver: str = "admin",
    ) -> None:
        now = self.parts.clock()
        self.journal.set_state(record.id, state, summary, now)
        if state in (IncidentState.ESCALATED, IncidentState.NOT_RECOVERED):
            self.journal.add_decision(
                record.id,
                Decision(
                    service=record.service,
                    time=now,
                    severity=record.severity,
                    action=Action.ESCALATE,
                    proposed=Action.ROLLBACK,
                    rules=(),
                    reason=summary,
                    approver=approver,
                    guards=(),
                    target=record.target,
                ),
                "rollbackd",
            )


class _Escalate(Exception):  # noqa: N818 -- control flow inside one run
    def __init__(
        self,
        summary: str,
        state: IncidentState = IncidentState.ESCALATED,
        approver: str = "admin",
        title: str = "rollback stopped, a person must act",
    ) -> None:
        super().__init__(summary)
        self.summary = summary
        self.state = state
        self.approver = approver
        self.title = title


class _JournalWait:
    """How one rollback waits out a journal that cannot be written.

    Each refused write waits, twice as long as the one before (from
    :data:`JOURNAL_RETRY_FIRST` up to :data:`JOURNAL_RETRY_CAP`), then is tried
    again. The first refusal tells a person that the rollback is stuck and why;
    the first write that succeeds after it says that it goes on.
    """

    def __init__(self, parts: Parts, record: IncidentRecord) -> None:
        self.parts = parts
        self.record = record
        self.delay = JOURNAL_RETRY_FIRST
        self.stuck_since: float | None = None

    def wait(self, why: str) -> bool:
        """After a refused write: say so (once), wait; False if the daemon is stopping."""
        record = self.record
        if self.stuck_since is None:
            self.stuck_since = time.monotonic()
            log.error("rollback stuck on the journal", incident=record.id, reason=why)
            self._tell(
                f"{record.service}: rollback stuck, the journal cannot be written",
                f"incident {record.id} ({record.state.value}, to {record.target}) cannot go "
                f"on: {why}. rollbackd tries again every {JOURNAL_RETRY_CAP:g}s at most and "
                "goes on once the journal takes the write; nothing runs unjournaled "
                "(GET /readyz says why it cannot write).",
            )
        if self.parts.should_stop():
            return False
        self.parts.pause(self.delay)
        self.delay = min(self.delay * 2, JOURNAL_RETRY_CAP)
        return not self.parts.should_stop()

    def resumed(self) -> None:
        """A write went through: a rollback that was stuck goes on (and a person is told)."""
        if self.stuck_since is None:
            return
        stuck = time.monotonic() - self.stuck_since
        self.stuck_since, self.delay = None, JOURNAL_RETRY_FIRST
        log.info("rollback goes on: the journal can be written", incident=self.record.id)
        self._tell(
            f"{self.record.service}: rollback goes on, the journal can be written again",
            f"incident {self.record.id} was stuck on the journal for {stuck:.0f}s; "
            "it goes on from where it stopped.",
        )

    def written(self, write: Callable[[], _T], what: str) -> _T:
        """``write()`` once the journal takes it; Interrupted if the daemon stops first."""
        while True:
            try:
                done = write()
            except NotLeader:
                raise
            except JournalUnavailable as exc:
                if not self.wait(f"{what}: {exc}"):
                    raise Interrupted from exc
                continue
            self.resumed()
            return done

    def _tell(self, title: str, text: str) -> None:
        self.parts.notifier.notify(
            notice(
                incident=self.record.id,
                service=self.record.service,
                severity=self.record.severity,
                title=title,
                text=text,
            )
        )


class _Run:
    """One pass over the steps of one incident."""

    def __init__(
        self,
        checklist: Checklist,
        record: IncidentRecord,
        service: ServiceConfig,
        waiting: _JournalWait,
    ):
        self.checklist = checklist
        self.waiting = waiting
        self.parts = checklist.parts
        self.journal = checklist.journal
        self.record = record
        self.service = service
        self.executor = self.parts.executor_for(service)
        self.facts = IncidentFacts(
            incident=record.id,
            service=record.service,
            target=record.target or "",
            current_version=record.current_version,
            reason=record.reason,
            severity=record.severity,
            scope=record.facts.scope,
            canary_version=record.facts.canary_version,
        )
        self.verified: Mapping[str, str] = {}

    def go(self) -> None:
        steps: list[tuple[str, Callable[[StepRecord | None], None]]] = [
            (DOCUMENT, self._document),
            (NOTIFY, self._notify),
            (VERIFY, self._verify),
            (GATE, self._gate),
            (BACKUP, self._backup),
        ]
        if self.service.snapshot:
            steps.append((SNAPSHOT, self._snapshot))
        steps.append((EXECUTE, self._execute))
        for index, argv in enumerate(self.service.after_rollback):
            steps.append((f"after_rollback[{index}]", self._after(index, argv)))
        steps.append((RECOVERY, self._recovery))
        try:
            for name, run in steps:
                previous = self.record.step(name)
                if previous is not None and previous.finished_at is not None:
                    if name == VERIFY:
                        self.verified = previous.data
                    if self._blocks(name, previous.outcome):
                        raise _Escalate(f"{name} had failed before a restart: {previous.summary}")
                    if name == EXECUTE:
                        self._deployed()
                    if name == RECOVERY and previous.outcome is Outcome.OK:
                        self._recovered(previous.summary)  # killed before it was concluded
                    continue
                if self.parts.should_stop():
                    return
                failpoint(f"before:{name}")
                run(previous)
                if name == EXECUTE:
                    self._deployed()
                failpoint(f"after:{name}")
        except Interrupted:
            return
        except _Escalate as stop:
            self.checklist._conclude(self.record, stop.state, stop.summary, stop.approver)
            self._tell(f"{self.record.service}: {stop.title}", stop.summary)

    def _step(
        self,
        name: str,
        work: Callable[[], StepResult],
        data: Mapping[str, str] | None = None,
        unknown: Callable[[], bool] = lambda: False,
    ) -> StepResult:
        """Journal a step, run it, journal its outcome (``unknown()``: neither ok nor failed).

        Both records wait for a journal that cannot be written: the step runs only
        once it is journaled as started, and its outcome, kept meanwhile, is
        journaled before anything else happens. A journal that fails *inside* the
        work (its evidence) is not the step's failure: it ends this pass, and the
        step is resumed as interrupted once the journal can be written.
        """
        step = self.waiting.written(
            lambda: self.journal.step_started(self.record.id, name, self.parts.clock(), data),
            f"journaling the start of {name}",
        )
        failpoint(f"started:{name}")
        if not self.parts.may_act():
            log.warning("step left unrun: not the leader any more", step=name)
            raise Interrupted
        try:
            result = work()
        except (Interrupted, JournalUnavailable, NotLeader):
            raise
        except Exception as exc:  # noqa: BLE001 -- a step's bug is journaled, then escalated
            result = StepResult(False, f"{name} raised {type(exc).__name__}: {exc}")
        failpoint(f"worked:{name}")
        outcome = Outcome.OK if result.ok else Outcome.UNKNOWN if unknown() else Outcome.FAILED
        self.waiting.written(
            lambda: self.journal.step_finished(
                step,
                self.parts.clock(),
                outcome,
                result.summary,
                head_and_tail(result.output, OUTPUT_LIMIT),
                {k: str(v) for k, v in result.data.items()},
            ),
            f"journaling the outcome of {name} ({outcome.value}: {result.summary})",
        )
        failpoint(f"finished:{name}")
        self.parts.on_step(name, f"{outcome.value}: {result.summary}")
        return result

    def _blocks(self, name: str, outcome: Outcome | None) -> bool:
        """Whether a step that ended so stops the rollback (a failed notify never does)."""
        if outcome not in (Outcome.FAILED, Outcome.UNKNOWN):
            return False
        if name == NOTIFY:
            return False
        if name == BACKUP:
            return self.service.executor == "git" and self.service.strategy == "reset"
        return True

    def _finish_interrupted(
        self,
        previous: StepRecord,
        outcome: Outcome,
        summary: str,
        data: Mapping[str, str] | None = None,
    ) -> None:
        self.journal.step_finished(previous.id, self.parts.clock(), outcome, summary, data=data)
        self.parts.on_step(previous.name, f"{outcome.value}: {summary}")

    def _tell(self, title: str, text: str) -> StepResult:
        return self.parts.notifier.notify(
            notice(
                incident=self.record.id,
                service=self.record.service,
                severity=self.record.severity,
                title=title,
                text=text,
            )
        )

    def _document(self, previous: StepRecord | None) -> None:
        def history() -> str:
            if self.parts.history is None or previous is not None:
                return ""
            opened = self.record.opened_at
            start = min(self.record.facts.deployed_at or opened, opened) - HISTORY_BEFORE
            series = self.parts.history(self.service, start, opened)
            rows = [(t, name, v) for name, points in series.items() for t, v in points]
            self.journal.add_samples(self.record.id, rows)
            return f"; {len(rows)} samples of {len(series)} series since {start:%H:%M:%S}"

        def work() -> StepResult:
            kept = history()
            evidence = [e for e in self.record.evidence if e.kind == EvidenceKind.SNAPSHOT]
            kinds = sorted({k for e in evidence if isinstance(e.body, dict) for k in e.body})
            facts = self.record.facts
            summary = (
                f"incident {self.record.id}: roll back {self.record.service} from "
                f"{self.record.current_version or 'the current version'} to "
                f"{self.record.target}; reason: {self.record.reason or 'none given'}; "
                f"evidence kept: {', '.join(kinds) or 'none'}; "
                f"{len(facts.baselines)} baselines{kept}"
            )
            return StepResult(True, summary)

        self._step(DOCUMENT, work)

    def _notify(self, previous: StepRecord | None) -> None:
        def work() -> StepResult:
            return self._tell(
                f"{self.record.service}: rolling back to {self.record.target}",
                f"rollbackd is rolling back {self.record.service} from "
                f"{self.record.current_version or 'the current version'} to "
                f"{self.record.target} (incident {self.record.id}, severity "
                f"{self.record.severity}, {self.record.origin}): {self.record.reason}",
            )

        self._step(NOTIFY, work)

    def _verify(self, previous: StepRecord | None) -> None:
        result = self._step(VERIFY, lambda: self.executor.verify_target(self.facts))
        if not result.ok:
            raise _Escalate(f"cannot verify the target {self.record.target}: {result.summary}")
        self.verified = dict(result.data)

    def _gate(self, previous: StepRecord | None) -> None:
        gate = self.parts.gate
        repo = self.service.repo
        head = self.verified.get("head")
        target_sha = self.verified.get("target_sha")
        facts = self.record.facts.migrations

        def work() -> StepResult:
            if gate is None or repo is None or not head or not target_sha:
                return StepResult(True, "no repository to inspect for migrations")
            globs = self.service.migrations or list(DEFAULT_MIGRATION_GLOBS)
            report = gate(repo, head, target_sha, globs, facts)
            ok = report.gate.verdict.value == "proceed"
            return StepResult(ok, report.gate.reason, report.describe())

        result = self._step(GATE, work)
        if not result.ok:
            raise _Escalate(f"migration gate: {result.summary}", approver="database")

    def _backup(self, previous: StepRecord | None) -> None:
        now = self.parts.clock()
        result = self._step(BACKUP, lambda: self.executor.backup(self.facts, now))
        if not result.ok and self.service.executor == "git" and self.service.strategy == "reset":
            raise _Escalate(
                f"backup failed and strategy 'reset' rewrites history: {result.summary}"
            )

    def _snapshot(self, previous: StepRecord | None) -> None:
        argv = self.service.snapshot or []
        result = self._step(SNAPSHOT, lambda: self._command(argv))
        if not result.ok:
            raise _Escalate(
                f"the snapshot command failed, so nothing was rolled back: {result.summary}"
            )

    def _execute(self, previous: StepRecord | None) -> None:
        if previous is not None:
            before = previous.data or self.verified
            state = self.executor.state(self.facts, before)
            if state.progress is Progress.DONE:
                publish = getattr(self.executor, "push", None)
                done: Mapping[str, str] = {}
                if callable(publish):
                    pushed = publish(self.facts, before)
                    done = pushed.data  # the commit now at HEAD: what the deploy names
                    if not pushed.ok:
                        self._finish_interrupted(
                            previous,
                            Outcome.UNKNOWN,
                            f"rolled back locally, not pushed: {pushed.summary}",
                        )
                        raise _Escalate(
                            "the rollback was done locally before a restart but could not be "
                            f"pushed: {pushed.summary}"
                        )
                self._finish_interrupted(
                    previous, Outcome.OK, f"completed before a restart: {state.reason}", done
                )
                return
            if state.progress is Progress.UNKNOWN:
                self._finish_interrupted(previous, Outcome.UNKNOWN, state.reason)
                raise _Escalate(
                    f"outcome unknown: the rollback was interrupted and {state.reason}; "
                    "check the service by hand"
                )
            self._finish_interrupted(
                previous, Outcome.SKIPPED, f"interrupted before it changed anything: {state.reason}"
            )
        result = self._step(EXECUTE, lambda: self.executor.execute(self.facts), self.verified)
        if not result.ok:
            moved = result.data.get("after") not in (None, result.data.get("before"))
            if moved:
                raise _Escalate(
                    f"rolled back locally, but not published: {result.summary}; "
                    "the remote still has the bad version"
                )
            raise _Escalate(f"the rollback failed: {result.summary}")

    def _deployed(self) -> None:
        """The target runs now: journal its deploy (once) and tell ``on_deploy``.

        A deploy of the target's version (else of the version an earlier deploy
        with that ref names, else of the ref), at the time execute finished,
        with the commit execute left at HEAD as its ref (a revert's new commit,
        which is what git sees running), else the ref the executor checked
        against. It keeps the migration facts of that version's earlier deploy:
        the same files are deployed again.
        """
        record = self._reload()
        executed = record.step(EXECUTE)
        if executed is None or executed.outcome is not Outcome.OK or not record.target:
            return
        at = executed.finished_at or executed.started_at
        target = record.target
        wanted = record.facts.target_version
        journaled = [d for d in self.journal.deploys() if d.service == record.service]
        earlier = [
            d
            for d in journaled
            if d.time <= at and (d.version == wanted if wanted else target in (d.version, d.ref))
        ]
        version = wanted if wanted else earlier[-1].version if earlier else target
        deploy = Deploy(
            service=record.service,
            version=version,
            time=at,
            source="event",
            ref=executed.data.get("after") or target,
            migrations=earlier[-1].migrations if earlier else (),
        )
        if deploy not in journaled:
            self.journal.record_deploy(deploy, self.parts.clock())
        self.parts.on_deploy(deploy)

    def _reload(self) -> IncidentRecord:
        record = self.journal.incident(self.record.id)
        if record is None:
            raise RollbackRefused(f"no incident {self.record.id}")
        return record

    def _after(self, index: int, argv: Sequence[str]) -> Callable[[StepRecord | None], None]:
        def run(previous: StepRecord | None) -> None:
            name = f"after_rollback[{index}]"
            if previous is not None:
                self._finish_interrupted(
                    previous, Outcome.UNKNOWN, f"`{argv[0]}` was interrupted by a restart"
                )
                raise _Escalate(
                    f"outcome unknown: after_rollback command `{' '.join(argv)}` was "
                    "interrupted; the code is rolled back, check the service by hand"
                )
            result = self._step(name, lambda: self._command(argv))
            if not result.ok:
                raise _Escalate(
                    f"after_rollback command `{' '.join(argv)}` failed: {result.summary}"
                )

        return run

    def _command(self, argv: Sequence[str]) -> StepResult:
        return run_argv(
            argv,
            env=incident_env(self.facts, os.environ),
            cwd=self.service.repo,
            timeout=self.service.command_timeout,
        )

    def _recovery(self, previous: StepRecord | None) -> None:
        now = self.parts.clock()
        self.journal.set_state(self.record.id, IncidentState.RECOVERING, "watching recovery", now)
        if previous is not None:
            self._finish_interrupted(
                previous, Outcome.SKIPPED, "interrupted by a restart; the watch starts again"
            )
        baselines = self.record.facts.baselines
        alerts = sorted(
            {
                rule
                for decision in self.record.decisions
                for rule in decision.rules
                if rule.startswith(ALERT_RULE_PREFIX)
            }
        )
        observe = self.parts.observer_for(self.service, baselines, alerts)

        def on_check(check: Check) -> None:
            self.journal.add_samples(
                self.record.id, [(check.time, series, v) for series, v in check.values.items()]
            )
            self.journal.add_evidence(
                self.record.id,
                check.time,
                EvidenceKind.RECOVERY_CHECK,
                {
                    "held": check.held,
                    "failures": list(check.failures),
                    "passes": list(check.passes),
                    "missing": list(check.missing),
                },
            )

        verdict: Verdict | None = None

        def work() -> StepResult:
            nonlocal verdict
            verdict = self.parts.watcher.watch(observe, on_check)
            return StepResult(verdict.recovered, verdict.reason)

        def unknown() -> bool:
            return verdict is not None and verdict.unknown

        result = self._step(RECOVERY, work, unknown=unknown)
        if unknown():
            raise _Escalate(
                f"rolled back, but recovery could not be proven; check the service: "
                f"{result.summary}",
                title="rolled back, recovery not proven, a person must check",
            )
        if not result.ok:
            raise _Escalate(
                f"the rollback did not recover: {result.summary}", IncidentState.NOT_RECOVERED
            )
        self._recovered(result.summary)

    def _recovered(self, summary: str) -> None:
        """The watch proved recovery: the incident is over (once, even if killed in between)."""
        if self.journal.set_state(
            self.record.id,
            IncidentState.RECOVERED,
            summary,
            self.parts.clock(),
            expect=(IncidentState.RECOVERING, IncidentState.ROLLING_BACK),
        ):
            self._tell(f"{self.record.service}: recovered", summary)
