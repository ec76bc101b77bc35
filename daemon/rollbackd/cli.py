"""The ``rollbackd`` command line (design §2).

Exit codes: 0 success, 1 runtime failure, 2 bad config or usage, with one
line per problem on stderr naming the file and the rule or key at fault.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from rollbackd import __version__
from rollbackd.actions.checklist import Refused, RollbackRequest
from rollbackd.assembly import build_checklist, notifier_for, now_utc, open_journal
from rollbackd.client import DaemonClient, DaemonUnavailable
from rollbackd.client import Refused as ClientRefused
from rollbackd.config import DEFAULT_CONFIG_PATH
from rollbackd.durations import format_duration, format_instant, parse_duration, parse_instant
from rollbackd.errors import InvalidInput, NotBuilt, RollbackdError
from rollbackd.evaluation import Evaluation, evaluate_now
from rollbackd.journal import IncidentState, JournalError, SqliteJournal
from rollbackd.loader import Loaded, load, shown
from rollbackd.matrix import TRIGGER_SEVERITY
from rollbackd.model import FindingState, Severity, Trigger
from rollbackd.output import (
    decision_line,
    decision_record,
    finding_line,
    finding_record,
    incident_record,
    json_line,
    resolution_line,
)
from rollbackd.replay import Replay, step_times
from rollbackd.report import render_report
from rollbackd.rules import rule_trigger_severity
from rollbackd.sources.deploys import valid_ref
from rollbackd.sources.prometheus import PrometheusSource

EXIT_RUNTIME = 1
EXIT_INVALID = 2


class ReportFormat(StrEnum):
    """Formats of ``report``."""

    MARKDOWN = "markdown"
    HTML = "html"


class DemoScenario(StrEnum):
    """The demo's scenarios."""

    ROLLBACK = "rollback"
    APPROVAL = "approval"
    MIGRATION = "migration"


_T = TypeVar("_T")

app = typer.Typer(
    name="rollbackd",
    help="Watch a deployed application and roll back a bad deploy, the way the playbook says.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=f"Config file (default: $ROLLBACKD_CONFIG, then {DEFAULT_CONFIG_PATH}).",
        show_default=False,
    ),
]


def _config_path(option: Path | None) -> Path:
    if option is not None:
        return option
    from_env = os.environ.get("ROLLBACKD_CONFIG")
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def _fail(lines: list[str], code: int) -> NoReturn:
    for line in lines:
        typer.echo(line, err=True)
    sys.exit(code)


def _load(option: Path | None) -> Loaded:
    try:
        return load(_config_path(option))
    except InvalidInput as exc:
        _fail([str(p) for p in exc.problems], EXIT_INVALID)


def _not_built(command: str, issue: str) -> NoReturn:
    raise NotBuilt(f"rollbackd {command}: not built yet ({issue})")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"rollbackd {__version__}")
        raise typer.Exit(0)


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate config and every rule file: a summary (exit 0) or each problem (exit 2)."""
    loaded = _load(config)
    _print_summary(loaded, Console(highlight=False))


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the daemon: scheduler, webhook/API server, executors (systemd Type=notify)."""
    from rollbackd.logs import configure  # noqa: PLC0415 -- only the daemon configures logging
    from rollbackd.service import Daemon, serve  # noqa: PLC0415 -- keeps other commands light

    loaded = _load(config)
    configure(loaded.config.daemon.log_format)
    try:
        journal = open_journal(loaded.config)
    except JournalError as exc:
        _fail([f"rollbackd: {exc}"], EXIT_RUNTIME)
    daemon = Daemon(loaded, journal, notifier=notifier_for(loaded.config, journal))
    serve(daemon, loaded.config_path)


@app.command()
def evaluate(
    config: ConfigOption = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """One evaluation now against live sources; print findings and the actions it would take."""
    loaded = _load(config)
    now = datetime.now(UTC)
    result = evaluate_now(loaded.config, loaded.rules, now)
    _print_evaluation(result, json)


@app.command()
def backtest(
    start: Annotated[str, typer.Option("--start", help="RFC 3339 time, or -6h, now.")],
    end: Annotated[str, typer.Option("--end", help="RFC 3339 time, or -6h, now.")],
    config: ConfigOption = None,
    step: Annotated[str, typer.Option("--step", help="Evaluation step.")] = "30s",
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Replay the rules over Prometheus history; print the actions the daemon would have taken."""
    now = datetime.now(UTC)
    problems = []
    try:
        start_at = parse_instant(start, now)
    except ValueError as exc:
        problems.append(f"--start: {exc}")
    try:
        end_at = parse_instant(end, now)
    except ValueError as exc:
        problems.append(f"--end: {exc}")
    try:
        step_every = parse_duration(step)
        if step_every < timedelta(seconds=1):
            problems.append(f"--step: must be at least 1s, got {step!r}")
    except ValueError as exc:
        problems.append(f"--step: {exc}")
    if not problems and end_at <= start_at:
        problems.append(f"--end: {end!r} is not after --start {start!r}")
    if problems:
        _fail(problems, EXIT_INVALID)
    loaded = _load(config)
    cfg = loaded.config
    prometheus = PrometheusSource(
        cfg.prometheus.url, cfg.prometheus.timeout, cfg.alerts.service_label
    )
    replay = Replay(cfg, loaded.rules, prometheus, step_every)
    err = Console(stderr=True, highlight=False)
    total = len(step_times(start_at, end_at, step_every))
    actions = 0
    with Progress(console=err, transient=True, disable=not err.is_terminal or total < 200) as bar:
        task = bar.add_task("replaying", total=total)
        for report in replay.run(
            start_at, end_at, lambda done, _: bar.update(task, completed=done)
        ):
            for decision in report.decisions:
                actions += 1
                typer.echo(
                    json_line(decision_record(decision)) if json else decision_line(decision)
                )
            if not json:
                for resolution in report.resolutions:
                    typer.echo(resolution_line(resolution))
    if replay.deploy_error is not None:
        err.print(f"note: {replay.deploy_error}; relative rules and attribution need deploys")
    if not json:
        found = sum(len(replay.history.deploys(s)) for s in replay.history.services())
        typer.echo(
            f"{_count(actions, 'action')} from {format_instant(start_at)} to "
            f"{format_instant(end_at)} every {format_duration(step_every)} "
            f"({_count(total, 'evaluation')}, {_count(found, 'deploy')} found)"
        )


@app.command()
def rollback(
    service: Annotated[str, typer.Argument(help="The service to roll back.")],
    config: ConfigOption = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Target ref (default: the last known good).")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the journal.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Roll back a service by hand, through the same checklist, executor and recovery watch."""
    loaded = _load(config)
    cfg = loaded.config
    if cfg.service(service) is None:
        known = ", ".join(s.name for s in cfg.services) or "none"
        _fail([f"SERVICE: no service named {service!r} is configured (known: {known})"], 2)
    if to is not None and not valid_ref(to):
        _fail([f"--to: {to!r} is not a git ref or version rollbackd will pass to git"], 2)
    journal = open_journal(cfg)
    checklist = build_checklist(
        cfg, loaded.rules, journal, on_step=lambda name, text: typer.echo(f"  {name}: {text}")
    )
    resumable = [
        i
        for i in journal.incidents(service=service, active_only=True)
        if i.state in (IncidentState.ROLLING_BACK, IncidentState.RECOVERING)
    ]
    if resumable:
        incident = resumable[0].id
        typer.echo(f"resuming incident {incident}, interrupted while {resumable[0].state.value}")
    else:
        request = _manual_request(loaded, service, to, reason)
        question = (
            f"Roll back {service} from {request.current_version or 'the current version'} "
            f"to {request.target}?"
        )
        if not yes:
            if not sys.stdin.isatty():
                _fail(["not on a terminal: pass --yes to confirm the rollback"], 2)
            if not typer.confirm(question):
                _fail(["rollbackd: not confirmed; nothing was done"], EXIT_RUNTIME)
        try:
            incident = checklist.open(request)
        except Refused as exc:
            _fail([f"rollbackd: {exc}"], EXIT_RUNTIME)
        typer.echo(f"incident {incident}: {question.rstrip('?').lower()}")
    record = checklist.run(incident)
    typer.echo(f"incident {record.id}: {record.state.value} — {record.summary}")
    if record.state is not IncidentState.RECOVERED:
        raise typer.Exit(EXIT_RUNTIME)


def _manual_request(
    loaded: Loaded, service: str, to: str | None, reason: str | None
) -> RollbackRequest:
    cfg = loaded.config
    evaluation = evaluate_now(cfg, loaded.rules, now_utc())
    history = evaluation.history
    current = history.current(service)
    target = to
    if target is None:
        good, why = history.last_good(service)
        if good is None:
            _fail(
                [f"rollbackd: no last known good version of {service}: {why}; name one with --to"],
                EXIT_RUNTIME,
            )
        known = [d for d in history.deploys(service) if d.version == good]
        target = known[-1].target_ref if known else good
    if current is not None and target in (current.version, current.ref):
        _fail([f"rollbackd: {service} already runs {target}; nothing to roll back"], 2)
    own = [f for f in evaluation.report.notable if f.service == service]
    firing = [f for f in own if f.firing]
    severity = Severity.highest([f.severity for f in firing]) if firing else Severity.MEDIUM
    return RollbackRequest(
        service=service,
        target=target,
        reason=reason or "manual rollback",
        origin="manual",
        severity=severity,
        current_version=current.version if current else None,
        evidence={
            "findings": [finding_record(f) for f in own if f.state is not FindingState.OK],
            "deploys": [
                {"version": d.version, "time": format_instant(d.time), "source": d.source}
                for d in history.deploys(service)[-5:]
            ],
        },
        baselines=evaluation.baselines.get(service, {}),
        migrations=current.migrations if current else (),
        deployed_at=current.time if current else None,
    )


@app.command()
def status(config: ConfigOption = None) -> None:
    """Show the running daemon's services, pending approvals and open incidents."""
    client = _client(config)
    services = client.get("/api/v1/services")
    records = client.get("/api/v1/incidents", limit=100)
    console = Console(highlight=False)
    table = Table(title=f"Services ({client.url})", title_justify="left")
    for column in ("service", "state", "version", "last known good"):
        table.add_column(column)
    for svc in services:
        table.add_row(
            svc["name"],
            svc["state"],
            svc["current_version"] or "unknown",
            svc["last_good_version"] or "none",
        )
    console.print(table)
    active = [
        r
        for r in records
        if r["state"] in ("awaiting_approval", "rolling_back", "recovering", "open")
    ]
    if not active:
        console.print("no open incidents")
    for r in active:
        console.print(
            f"incident {r['id']}: {r['service']} {r['state']} ({r['severity']}) "
            f"{r['current_version'] or '?'} → {r['target'] or '?'}: {r['summary'] or r['reason']}"
        )


@app.command()
def incidents(
    config: ConfigOption = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
) -> None:
    """List incidents from the journal, newest first (from the running daemon if unreadable)."""
    loaded = _load(config)
    journal, problem = _readable_journal(loaded)
    if journal is not None:
        records = [incident_record(r) for r in journal.incidents(limit=limit)]
        where = str(journal.path)
    else:
        client = _daemon_instead(loaded, problem)
        records = _ask(client.get, problem, "/api/v1/incidents", limit=limit)
        where = client.url
    if json:
        for r in records:
            typer.echo(json_line(r))
        return
    table = Table(title=f"Incidents ({where})", title_justify="left")
    for column in ("id", "service", "opened", "state", "severity", "action", "target", "summary"):
        table.add_column(column)
    for r in records:
        table.add_row(
            str(r["id"]),
            r["service"],
            r["opened"],
            r["state"],
            r["severity"],
            f"{r['action']} ({r['origin']})",
            r["target"] or "—",
            r["summary"],
        )
    Console(highlight=False).print(table if records else "no incidents")


@app.command()
def report(
    incident: Annotated[int, typer.Argument(metavar="ID", help="Incident id.")],
    config: ConfigOption = None,
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="markdown or html.")
    ] = ReportFormat.MARKDOWN,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Render an incident report that follows the playbook (Markdown, or HTML with charts)."""
    loaded = _load(config)
    journal, problem = _readable_journal(loaded)
    if journal is not None:
        record = journal.incident(incident)
        if record is None:
            _fail([f"ID: no incident {incident} in the journal"], EXIT_RUNTIME)
        text = render_report(record, fmt.value)
    else:
        client = _daemon_instead(loaded, problem)
        path = f"/api/v1/incidents/{incident}/report"
        try:
            text = _ask(client.text, problem, path, format=fmt.value)
        except ClientRefused as exc:
            if exc.status != 404:
                raise
            _fail([f"ID: no incident {incident} (asked the daemon at {client.url})"], EXIT_RUNTIME)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}")


@app.command()
def approve(
    incident: Annotated[int, typer.Argument(metavar="ID", help="Incident id.")],
    config: ConfigOption = None,
) -> None:
    """Approve a pending rollback (token from $ROLLBACKD_TOKEN): it starts now."""
    record = _client(config).post(f"/api/v1/incidents/{incident}/approve")
    typer.echo(f"incident {record['id']}: {record['state']} — {record['summary']}")


@app.command()
def veto(
    incident: Annotated[int, typer.Argument(metavar="ID", help="Incident id.")],
    config: ConfigOption = None,
) -> None:
    """Veto a pending rollback (token from $ROLLBACKD_TOKEN): it will not run."""
    record = _client(config).post(f"/api/v1/incidents/{incident}/veto")
    typer.echo(f"incident {record['id']}: {record['state']} — {record['summary']}")


def _readable_journal(loaded: Loaded) -> tuple[SqliteJournal | None, str]:
    """The journal, read directly (a post-mortem must not need the daemon), or why not."""
    try:
        return open_journal(loaded.config), ""
    except JournalError as exc:
        return None, str(exc)


def _daemon_instead(loaded: Loaded, problem: str) -> DaemonClient:
    """The running daemon's API, for a journal this user cannot read (its token required)."""
    token = os.environ.get("ROLLBACKD_TOKEN")
    if not token:
        _fail(
            [
                f"rollbackd: {problem}",
                "rollbackd: set ROLLBACKD_TOKEN to read it from the running daemon instead",
            ],
            EXIT_RUNTIME,
        )
    return DaemonClient(loaded.config, token)


def _ask(call: Callable[..., _T], problem: str, path: str, **params: Any) -> _T:
    """One API call in place of the journal; if the daemon is down too, both reasons."""
    try:
        return call(path, **params)
    except DaemonUnavailable as exc:
        _fail([f"rollbackd: {problem}", f"rollbackd: and {exc}"], EXIT_RUNTIME)


def _client(option: Path | None) -> DaemonClient:
    loaded = _load(option)
    token = os.environ.get("ROLLBACKD_TOKEN")
    if not token:
        _fail(["ROLLBACKD_TOKEN: not set; the daemon's API needs a token"], EXIT_INVALID)
    return DaemonClient(loaded.config, token)


@app.command()
def demo(
    scenario: Annotated[
        DemoScenario, typer.Option("--scenario", help="rollback, approval or migration.")
    ] = DemoScenario.ROLLBACK,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary directory.")] = False,
) -> None:
    """Run the whole loop on this machine with no setup: deploy, detect, roll back, recover."""
    from rollbackd.demo import run_demo  # noqa: PLC0415 -- the demo pulls in the whole stack

    raise typer.Exit(run_demo(scenario.value, keep, typer.echo))


def _print_summary(loaded: Loaded, console: Console) -> None:
    cfg = loaded.config
    console.print(
        f"{shown(loaded.config_path)}: OK — {_count(len(cfg.services), 'service')}, "
        f"{_count(len(loaded.rules), 'rule')} from {_count(len(loaded.rule_files), 'file')}"
    )

    services = Table(title="Services", title_justify="left")
    for column in ("service", "executor", "repo / script", "probes", "after rollback"):
        services.add_column(column)
    for svc in cfg.services:
        target = svc.repo or svc.script or (" ".join(svc.command) if svc.command else "")
        executor = f"git ({svc.strategy})" if svc.executor == "git" else svc.executor
        services.add_row(
            svc.name,
            executor,
            str(target),
            ", ".join(svc.probe_names) or "—",
            str(len(svc.after_rollback)) + " commands",
        )
    console.print(services)

    by_trigger: dict[Trigger, list[str]] = {t: [] for t in Trigger}
    for rule in loaded.rules:
        by_trigger[rule.trigger].append(rule.name)
    rules = Table(title="Rules by trigger class", title_justify="left")
    for column in ("trigger", "base severity", "rules"):
        rules.add_column(column)
    for trigger, names in by_trigger.items():
        rules.add_row(trigger.value, TRIGGER_SEVERITY[trigger].value, ", ".join(names) or "—")
    console.print(rules)

    counts = Counter(rule_trigger_severity(r) for r in loaded.rules)
    console.print(
        "Rules by severity: "
        + ", ".join(f"{s.value} {counts.get(s, 0)}" for s in reversed(list(Severity)))
    )

    policy = Table(title="Policy", title_justify="left")
    for column in ("severity", "action", "deadline", "approver"):
        policy.add_column(column)
    for severity, entry in reversed(list(cfg.policy.table().items())):
        action = entry.action.value
        if entry.action.value == "rollback" and entry.deadline:
            action = "request_approval (rollback at the deadline unless vetoed)"
        policy.add_row(
            severity.value,
            action,
            _deadline(entry.action.value, entry.deadline),
            entry.approver or "—",
        )
    console.print(policy)
    g = cfg.guards
    console.print(
        f"Guards: dry_run={'on' if cfg.daemon.dry_run else 'off'}, "
        f"cooldown {format_duration(g.cooldown)}, "
        f"at most {g.max_rollbacks} rollbacks per service per {format_duration(g.window)}, "
        f"attribution window {format_duration(cfg.deploys.attribution_window)}, "
        f"{_count(len(cfg.silences), 'maintenance silence')}"
    )
    for warning in loaded.warnings:
        console.print(f"warning: {warning}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _deadline(action: str, deadline: timedelta | None) -> str:
    if deadline:
        return format_duration(deadline)
    return "immediate" if action == "rollback" else "—"


def _print_evaluation(result: Evaluation, as_json: bool) -> None:
    shown_states = {FindingState.FIRING, FindingState.PENDING, FindingState.INCONCLUSIVE}
    findings = [f for f in result.report.notable if f.state in shown_states]
    if as_json:
        for finding in findings:
            typer.echo(json_line(finding_record(finding)))
        for decision in result.decisions:
            typer.echo(json_line(decision_record(decision)))
        return
    by_error: dict[str, list[str]] = {}
    for rule, error in sorted(result.report.source_errors.items()):
        by_error.setdefault(error, []).append(rule)
    for error, rules in by_error.items():
        typer.echo(f"source error: {error} (rules: {', '.join(rules)})")
    if result.deploy_error is not None:
        typer.echo(f"deploys: {result.deploy_error}")
    total = len(result.report.notable) + sum(result.report.quiet.values())
    typer.echo(
        f"{format_instant(result.report.time)}: {_count(total, 'finding')} "
        f"({total - len(findings)} ok)"
    )
    for finding in sorted(findings, key=lambda f: (f.state.value, f.service, f.rule)):
        typer.echo(finding_line(finding))
    if not result.decisions:
        typer.echo("no action: nothing is firing")
    for decision in result.decisions:
        typer.echo(decision_line(decision))


def main() -> None:
    """Console-script entry point: never a traceback for an expected failure."""
    try:
        app()
    except NotBuilt as exc:
        _fail([str(exc)], EXIT_RUNTIME)
    except InvalidInput as exc:
        _fail([str(p) for p in exc.problems], EXIT_INVALID)
    except RollbackdError as exc:
        _fail([f"rollbackd: {exc}"], EXIT_RUNTIME)
    except Exception as exc:
        if os.environ.get("ROLLBACKD_DEBUG"):
            raise
        _fail(
            [
                f"rollbackd: internal error: {type(exc).__name__}: {exc} "
                "(ROLLBACKD_DEBUG=1 shows the traceback)"
            ],
            EXIT_RUNTIME,
        )
