"""Assembling the real parts from a config: executors, journal, recovery watch.

The checklist takes its parts through its constructor; this module is the one
place that builds the production ones, so ``rollback`` (and later ``run``)
use the same wiring and tests can swap any part.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from rollbackd.actions import Executor, StepResult
from rollbackd.actions.checklist import Checklist, Observer, Parts
from rollbackd.actions.command import CommandExecutor
from rollbackd.actions.git import GitExecutor
from rollbackd.actions.migrations import check as migration_gate
from rollbackd.actions.recovery import LiveObserver, RecoveryWatcher, probe_runners
from rollbackd.actions.script import ScriptExecutor
from rollbackd.config import Config, ServiceConfig
from rollbackd.core.deploys import Deploy
from rollbackd.core.recovery import Criteria, FiringAlerts
from rollbackd.core.rules import Rule, applies_to
from rollbackd.errors import JournalError
from rollbackd.journal import EvidenceKind, Journal, SqliteJournal, journal_path
from rollbackd.notify import JournalOnly, Message, Notifier
from rollbackd.notify.retry import Background, build_notifier
from rollbackd.sources import MetricSource
from rollbackd.sources.alertmanager import (
    AlertmanagerError,
    AlertmanagerSource,
    merge,
    resolved_delivery,
)
from rollbackd.sources.alerts import alert_findings
from rollbackd.sources.probes import Prober
from rollbackd.sources.prometheus import PrometheusSource


def now_utc() -> datetime:
    """The wall clock, in UTC: the boundary where rollbackd reads the time."""
    return datetime.now(UTC)


def executor_for(service: ServiceConfig) -> Executor:
    """The executor a service's config names."""
    if service.executor == "script":
        assert service.script is not None  # noqa: S101 -- ServiceConfig validates this
        return ScriptExecutor(service.script, service.repo, service.command_timeout)
    if service.executor == "command":
        assert service.command is not None  # noqa: S101 -- ServiceConfig validates this
        return CommandExecutor(service.command, service.repo, service.command_timeout)
    assert service.repo is not None  # noqa: S101 -- ServiceConfig validates this
    return GitExecutor(
        service.repo,
        remote=service.remote,
        branch=service.branch,
        strategy=service.strategy,
        timeout=service.command_timeout,
    )


def notifier_for(
    config: Config, journal: Journal | None = None, clock: Callable[[], datetime] = now_utc
) -> Notifier:
    """The configured notifiers, delivering in the background so no rollback waits on them.

    Each delivery's real outcome (after retries) is journaled with its incident, dated
    by ``clock`` (the daemon's).
    """
    if not config.notifiers:
        return JournalOnly()

    def journaled(message: Message, result: StepResult) -> None:
        if journal is not None and message.incident:
            journal.add_evidence(
                message.incident,
                clock(),
                EvidenceKind.NOTIFICATION,
                {
                    "title": message.title,
                    "role": message.role,
                    "delivered": result.ok,
                    "outcome": result.summary,
                },
            )

    return Background(build_notifier(config.notifiers), on_result=journaled)


def criteria(config: Config) -> Criteria:
    recovery = config.recovery
    return Criteria(
        window=recovery.window,
        timeout=recovery.timeout,
        max_error_rate=recovery.max_error_rate,
        latency_tolerance=recovery.latency_tolerance,
    )


def open_journal(config: Config) -> Journal:
    """The journal the config names, for every command that opens one: in PostgreSQL at
    ``[journal] url``, else in SQLite in the state directory. JournalError if it cannot be
    opened (the message never holds the password)."""
    settings = config.journal
    if settings.url is None:
        return SqliteJournal(journal_path(config.daemon.state_dir))
    from rollbackd.journal.postgresql import PostgresJournal  # noqa: PLC0415 -- psycopg at need

    return PostgresJournal(
        settings.url,
        password=journal_password(settings.password_file),
        timeout=settings.timeout.total_seconds(),
    )


def journal_password(path: Path | None) -> str | None:
    """The first line of ``[journal] password_file``; None without one."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise JournalError(f"journal.password_file: cannot read {path}: {reason}") from None
    return text.splitlines()[0] if text else ""


def build_checklist(
    config: Config,
    rules: tuple[Rule, ...],
    journal: Journal,
    *,
    metrics: MetricSource | None = None,
    prober: Prober | None = None,
    notifier: Notifier | None = None,
    clock: Callable[[], datetime] = now_utc,
    sleep: Callable[[float], object] = time.sleep,
    on_step: Callable[[str, str], None] = lambda *_: None,
    on_deploy: Callable[[Deploy], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
    may_act: Callable[[], bool] = lambda: True,
) -> Checklist:
    """A checklist wired with the real executors, gate and recovery watch."""
    source = metrics or PrometheusSource.from_config(config)
    probes = prober or Prober()
    alertmanager = AlertmanagerSource.from_config(config)

    def observer_for(
        service: ServiceConfig, baselines: Mapping[str, float], alerts: Sequence[str]
    ) -> Observer:
        own_rules = [r for r in rules if applies_to(r, service.probe_names)]

        def firing(now: datetime) -> FiringAlerts:
            """The service's alerts firing at ``now``, as the evaluation loop sees them;
            muted ones too (a silenced alert has not resolved)."""
            services = [service.name]
            journaled = journal.firing_alerts(
                now, services, received_after=now - config.alerts.expire_after
            )
            unseen = None
            if alertmanager is not None:
                try:
                    answer = alertmanager.active()
                except AlertmanagerError as exc:
                    unseen = str(exc)
                else:
                    fresh = journal.firing_alerts(now, services, received_after=now)
                    merged = merge(journaled, answer, services, {a.fingerprint for a in fresh})
                    journaled = [*merged.firing, *merged.muted]
                    if merged.resolved:
                        delivery, body = resolved_delivery(merged.resolved, now, alertmanager.url)
                        journal.submit_delivery(now, delivery, body)
            found, _ = alert_findings(journaled, services, config.alerts.trigger_label, now)
            return FiringAlerts({f.rule: f.since or now for f in found}, unseen)

        return LiveObserver(
            service.name,
            own_rules,
            probe_runners(probes, service),
            source,
            baselines,
            criteria(config),
            alerts,
            firing,
        )

    def history(
        service: ServiceConfig, start: datetime, end: datetime
    ) -> dict[str, list[tuple[datetime, float]]]:
        series: dict[str, list[tuple[datetime, float]]] = {}
        for rule in rules:
            if rule.query is None:
                continue
            matrix = source.range(rule.query, start, end, config.daemon.poll_interval)
            if matrix.error is not None:
                break  # evidence must not hold up a rollback: one failure ends the collection
            points = [
                (datetime.fromtimestamp(ms / 1000, UTC), v)
                for ms, v in sorted(matrix.series.get(service.name, {}).items())
                if math.isfinite(v)
            ]
            if points:
                series[rule.name] = points
        return series

    parts = Parts(
        journal=journal,
        executor_for=executor_for,
        notifier=notifier or JournalOnly(),
        watcher=RecoveryWatcher(
            criteria(config), config.daemon.poll_interval, clock, sleep, should_stop
        ),
        observer_for=observer_for,
        gate=migration_gate,
        history=history,
        clock=clock,
        on_step=on_step,
        on_deploy=on_deploy,
        should_stop=should_stop,
        may_act=may_act,
        pause=sleep,
    )
    return Checklist(config, parts)
