"""The ``rollbackd`` command line (design §2).

Exit codes: 0 success, 1 runtime failure, 2 bad config or usage, with one
line per problem on stderr naming the file and the rule or key at fault.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from rollbackd import __version__
from rollbackd.actions.checklist import RollbackRequest
from rollbackd.assembly import (
    build_checklist,
    journal_password,
    notifier_for,
    now_utc,
    open_journal,
)
from rollbackd.client import DaemonClient
from rollbackd.config import DEFAULT_CONFIG_PATH, Config
from rollbackd.core.deploys import DeployHistory
from rollbackd.core.durations import format_duration, format_instant, parse_duration, parse_instant
from rollbackd.core.engine import CycleReport, Explanation
from rollbackd.core.matrix import TRIGGER_SEVERITY
from rollbackd.core.model import Finding, FindingState, Severity, Trigger
from rollbackd.core.rules import rule_trigger_severity
from rollbackd.errors import (
    AlreadyThere,
    DaemonRefused,
    DaemonUnavailable,
    InvalidInput,
    NoDaemon,
    NoTarget,
    RollbackdError,
    RollbackRefused,
    StateDirBusy,
)
from rollbackd.evaluation import Evaluation, evaluate_now
from rollbackd.httpconfig import describe, without_password
from rollbackd.journal import IncidentState, Journal, JournalError, journal_path
from rollbackd.journal.pgurl import check_url
from rollbackd.loader import Loaded, load, shown
from rollbackd.manual import manual_request
from rollbackd.notify import Notifier
from rollbackd.notify.retry import Background
from rollbackd.output import (
    Coverage,
    ExplainWriter,
    decision_line,
    decision_record,
    event_line,
    event_record,
    explanation_record,
    finding_line,
    finding_record,
    incident_record,
    json_line,
    source_error_lines,
    unmeasured_note,
)
from rollbackd.replay import Replay, step_times
from rollbackd.report import render_report
from rollbackd.sources.deploys import valid_ref
from rollbackd.sources.prometheus import PrometheusSource
from rollbackd.statelock import StateLock

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


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"rollbackd {__version__}")
        raise typer.Exit(0)
    from rollbackd.logs import configure  # noqa: PLC0415 -- keeps --version light

    configure("auto")  # logs go to stderr: stdout is the command's output (JSON lines too)


journal_app = typer.Typer(
    help="The journal: copy a SQLite journal into PostgreSQL.", no_args_is_help=True
)
app.add_typer(journal_app, name="journal")


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate config and every rule file, and reach the journal's PostgreSQL if one is
    configured: a summary (exit 0) or each problem (exit 2)."""
    loaded = _load(config)
    reached = _check_journal(loaded)
    console = Console(highlight=False)
    _print_summary(loaded, console)
    if reached is not None:
        console.print(reached)


def _check_journal(loaded: Loaded) -> str | None:
    """With ``[journal] url``: a line saying PostgreSQL is reachable; exit 2 saying why not."""
    settings = loaded.config.journal
    if settings.url is None:
        return None
    source = shown(loaded.config_path)
    try:
        password = journal_password(settings.password_file)
    except JournalError as exc:
        _fail([f"{source}: {exc}"], EXIT_INVALID)
    from rollbackd.journal.postgresql.check import check_journal  # noqa: PLC0415 -- psycopg

    from_env = any(name.upper() == "ROLLBACKD_JOURNAL__URL" for name in os.environ)
    where = "environment ROLLBACKD_JOURNAL__URL" if from_env else f"{source}: journal.url"
    try:
        return check_journal(settings.url, password, settings.timeout.total_seconds())
    except ValueError as exc:
        _fail([f"{where}: {exc}"], EXIT_INVALID)


@journal_app.command("migrate")
def journal_migrate(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="URL",
            help="The PostgreSQL journal: postgresql://USER@HOST:PORT/DB (the password from "
            "--password-file or PGPASSFILE rather than the command line).",
        ),
    ],
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            metavar="PATH",
            help="The SQLite journal (default: journal.sqlite3 in the config's state_dir).",
        ),
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option("--password-file", help="A file whose first line is the password."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Copy a SQLite journal into an empty PostgreSQL one, numbers and times kept, at once."""
    from rollbackd.journal.postgresql import PostgresJournal  # noqa: PLC0415 -- one command's
    from rollbackd.journal.postgresql.copy import TargetNotEmpty, copy_sqlite  # noqa: PLC0415

    try:
        check_url(to)
    except ValueError as exc:
        _fail([f"--to: {exc}"], EXIT_INVALID)
    held: StateLock | None = None
    if source is None:
        loaded = _load(config)
        source = journal_path(loaded.config.daemon.state_dir)
        held = _lock_state_dir(loaded, "rollbackd journal migrate")
    try:
        try:
            password = journal_password(password_file)
        except JournalError as exc:
            _fail([f"--password-file: {str(exc).partition(': ')[2]}"], EXIT_INVALID)
        try:
            target = PostgresJournal(to, password=password)
        except JournalError as exc:
            _fail([f"rollbackd: {exc}"], EXIT_RUNTIME)
        try:
            copied = copy_sqlite(source, target)
        except TargetNotEmpty as exc:
            _fail([f"--to: {exc}"], EXIT_INVALID)
        except JournalError as exc:
            _fail([f"rollbackd: {exc}"], EXIT_RUNTIME)
        finally:
            target.close()
    finally:
        if held is not None:
            held.release()
    typer.echo(
        f"copied {source} to {target.location}: "
        f"{_count(copied['incidents'], 'incident')} ({_count(copied['decisions'], 'decision')}, "
        f"{_count(copied['steps'], 'step')}, {copied['evidence']} evidence, "
        f"{_count(copied['samples'], 'sample')}), {_count(copied['alerts'], 'alert')}, "
        f"{copied['deliveries']} deliver{'y' if copied['deliveries'] == 1 else 'ies'}, "
        f"{_count(copied['deploys'], 'deploy')}"
    )


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the daemon: scheduler, webhook/API server, executors (systemd Type=notify)."""
    from rollbackd.logs import configure  # noqa: PLC0415 -- only the daemon configures logging
    from rollbackd.runtime import Runtime  # noqa: PLC0415 -- keeps other commands light

    loaded = _load(config)
    configure(loaded.config.daemon.log_format)
    lock = _lock_state_dir(loaded, "rollbackd run")
    try:
        journal = open_journal(loaded.config)
    except JournalError as exc:
        _fail([f"rollbackd: {exc}"], EXIT_RUNTIME)
    runtime = Runtime(
        loaded,
        journal,
        loaded.config_path,
        notifiers=lambda config: notifier_for(config, journal),
    )
    with lock:
        runtime.run()


def _lock_state_dir(loaded: Loaded, holder: str) -> StateLock:
    """The state directory, locked for this process; exit 1 naming the holder if taken."""
    try:
        return StateLock(loaded.config.daemon.state_dir).acquire(holder)
    except StateDirBusy as exc:
        _fail([f"rollbackd: {exc}"], EXIT_RUNTIME)


ExplainOption = Annotated[
    str | None,
    typer.Option(
        "--explain",
        metavar="SERVICE",
        help="Print, step by step, each rule's value, threshold, baseline and state for "
        "SERVICE, and why a decision was or was not taken.",
    ),
]


def _explained(loaded: Loaded, service: str | None) -> tuple[str, ...]:
    if service is None:
        return ()
    if loaded.config.service(service) is None:
        known = ", ".join(s.name for s in loaded.config.services) or "none"
        _fail(
            [f"--explain: no service named {service!r} is configured (known: {known})"],
            EXIT_INVALID,
        )
    return (service,)


@app.command()
def evaluate(
    config: ConfigOption = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    explain: ExplainOption = None,
) -> None:
    """One evaluation now against live sources; print findings and the actions it would take."""
    loaded = _load(config)
    explained = _explained(loaded, explain)
    # The whole second, as its lines print it: durations counted from the replay's looks
    # (every poll_interval before it) then read 2h32m18s, not 2h32m18s17ms.
    now = datetime.now(UTC).replace(microsecond=0)
    result = evaluate_now(loaded.config, loaded.rules, now, explain=explained)
    if explained:
        _print_explained(result.explained, json)
    _print_evaluation(result, json)


def _print_explained(steps: Iterable[Explanation], as_json: bool) -> None:
    writer = ExplainWriter()
    for step in steps:
        for line in [json_line(explanation_record(step))] if as_json else writer.write(step):
            typer.echo(line)
    for line in [] if as_json else writer.close():
        typer.echo(line)


@app.command()
def backtest(
    start: Annotated[str, typer.Option("--start", help="RFC 3339 time, or -6h, now.")],
    end: Annotated[str, typer.Option("--end", help="RFC 3339 time, or -6h, now.")],
    config: ConfigOption = None,
    step: Annotated[str, typer.Option("--step", help="Evaluation step.")] = "30s",
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    explain: ExplainOption = None,
) -> None:
    """Replay the rules over Prometheus history; print the actions the daemon would have taken.

    Under a dry-run config it shows what the armed daemon would do, marked as dry-run.
    """
    start_at, end_at, step_every = _replay_range(start, end, step)
    loaded = _load(config)
    explained = _explained(loaded, explain)
    cfg = loaded.config
    prometheus = PrometheusSource.from_config(cfg)
    dry_run = cfg.daemon.dry_run
    replay = Replay(cfg, loaded.rules, prometheus, step_every, explain=explained, armed=dry_run)
    err = Console(stderr=True, highlight=False)
    total = len(step_times(start_at, end_at, step_every))
    actions = 0
    writer = ExplainWriter()
    coverage = Coverage({rule.name for rule in loaded.rules if rule.query is not None})
    quiet = bool(explained) or not err.is_terminal or total < 200
    with Progress(console=err, transient=True, disable=quiet) as bar:
        task = bar.add_task("replaying", total=total)
        for report in replay.run(
            start_at, end_at, lambda done, _: bar.update(task, completed=done)
        ):
            for line in _replay_lines(report, json, bool(explained), dry_run, writer):
                typer.echo(line)
            actions += len(report.decisions)
            coverage.add(report)
    for line in writer.close():
        typer.echo(line)
    if json:  # one action per line stays so: what had no data is said on stderr
        for line in coverage.error_lines():
            typer.echo(f"note: {line}", err=True)
        if (note := coverage.note()) is not None:
            typer.echo(f"note: {note}", err=True)
    else:
        for line in coverage.error_lines():
            typer.echo(line)
    if dry_run:
        err.print(
            "note: this config has dry_run = true: the actions above are what the daemon would "
            "do armed; running as configured it records them only"
        )
    if replay.deploy_error is not None:
        err.print(f"note: {replay.deploy_error}; relative rules and attribution need deploys")
    if not json:
        found = sum(len(replay.history.deploys(s)) for s in replay.history.services())
        typer.echo(
            f"{_count(actions, 'action')} from {format_instant(start_at)} to "
            f"{format_instant(end_at)} every {format_duration(step_every)} "
            f"({_count(total, 'evaluation')}, {_count(found, 'deploy')} found)"
            + ("" if (note := coverage.note()) is None else f"; {note}")
        )


def _replay_range(start: str, end: str, step: str) -> tuple[datetime, datetime, timedelta]:
    """``--start``, ``--end`` and ``--step``, checked; exit 2 naming each one that is wrong."""
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
    return start_at, end_at, step_every


def _replay_lines(
    report: CycleReport, as_json: bool, explained: bool, dry_run: bool, writer: ExplainWriter
) -> list[str]:
    """One replayed step: its explanations, what happened to incidents, its decisions.

    ``--json`` without ``--explain`` stays one action per line, as design §2 has it.
    """
    lines: list[str] = []
    for explanation in report.explanations.values():
        if as_json:
            lines.append(json_line(explanation_record(explanation)))
        else:
            lines.extend(writer.write(explanation))
    for event in report.events:
        if not as_json:
            lines.append(event_line(event))
        elif explained:
            lines.append(json_line(event_record(event)))
    for decision in report.decisions:
        lines.append(
            json_line(decision_record(decision, dry_run))
            if as_json
            else decision_line(decision, dry_run)
        )
    return lines


@app.command()
def rollback(
    service: Annotated[str, typer.Argument(help="The service to roll back.")],
    config: ConfigOption = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Target version or ref (default: the last known good)."),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the journal.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Roll back a service by hand, through the same checklist, executor and recovery watch.

    With the daemon running, the daemon does it (token from $ROLLBACKD_TOKEN, role admin
    or senior_admin) and this follows it; with none running, it is done here.
    """
    loaded = _load(config)
    cfg = loaded.config
    if cfg.service(service) is None:
        known = ", ".join(s.name for s in cfg.services) or "none"
        _fail([f"SERVICE: no service named {service!r} is configured (known: {known})"], 2)
    if to is not None and not valid_ref(to):
        _fail([f"--to: {to!r} is not a git ref or version rollbackd will pass to git"], 2)
    daemon = _running_daemon(loaded)
    if daemon is not None:
        _rollback_through(daemon, service, to, reason, yes)
    else:
        _rollback_here(loaded, service, to, reason, yes)


def _running_daemon(loaded: Loaded) -> DaemonClient | None:
    """The running daemon: at ``[daemon] listen``, else at ``public_url``; None if neither.

    A rollback beside a running daemon would be two processes on one journal
    and one working copy: when something answers at ``listen``, or may (it
    does not answer in time), the rollback goes through it or not at all. At
    ``public_url`` (another host, a proxy) only a daemon that answers counts.
    """
    token = os.environ.get("ROLLBACKD_TOKEN")
    client = DaemonClient(loaded.config, token)
    try:
        client.text("/healthz")
    except NoDaemon:
        public = loaded.config.daemon.public_url
        if public is None:
            return None
        client = DaemonClient(loaded.config, token, url=public)
        try:
            client.text("/healthz")
        except (DaemonUnavailable, DaemonRefused):
            return None
    except (DaemonUnavailable, DaemonRefused) as exc:
        _fail(
            [
                f"rollbackd: {exc}",
                f"rollbackd: not rolling back beside whatever listens at {client.url} "
                "([daemon] listen); a rollback never runs twice",
            ],
            EXIT_RUNTIME,
        )
    if not token:
        _fail(
            [
                f"rollbackd: a daemon is running at {client.url}: the rollback goes through it, "
                "never beside it; set ROLLBACKD_TOKEN to a token with the role admin or "
                "senior_admin"
            ],
            EXIT_INVALID,
        )
    return client


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        _fail(["not on a terminal: pass --yes to confirm the rollback"], EXIT_INVALID)
    if not typer.confirm(question):
        _fail(["rollbackd: not confirmed; nothing was done"], EXIT_RUNTIME)


FOLLOW_EVERY = 0.5
"""Seconds between two looks at an incident the daemon runs."""
DAEMON_GONE = 60.0
"""Seconds the daemon may not answer while a rollback is followed before the CLI gives up."""
NOTIFY_DRAIN = 30.0
"""Seconds a local rollback waits at exit for its notifications to be delivered."""


def _rollback_through(
    client: DaemonClient, service: str, to: str | None, reason: str | None, yes: bool
) -> None:
    """Hand the rollback to the running daemon, then follow it step by step until it ends."""
    try:
        services = client.get("/api/v1/services")
        watched = next((s for s in services if s["name"] == service), None)
        if watched is None:
            _fail([f"SERVICE: the daemon at {client.url} watches no service named {service!r}"], 2)
        version = to or watched["last_good_version"]
        if version is None:
            _fail(
                [
                    f"rollbackd: no last known good version of {service}: "
                    f"{watched['last_good_reason']}; name one with --to"
                ],
                EXIT_RUNTIME,
            )
        question = (
            f"Roll back {service} from {watched['current_version'] or 'the current version'} "
            f"to {version}?"
        )
        _confirm(question, yes)
        asked = {k: v for k, v in (("to", to), ("reason", reason)) if v is not None}
        record = client.post(f"/api/v1/services/{service}/rollback", asked)
    except DaemonRefused as exc:
        usage = exc.status in (401, 403, 404, 422)
        _fail([f"rollbackd: the daemon at {client.url} refused: {exc}"], 2 if usage else 1)
    except DaemonUnavailable as exc:
        _fail([f"rollbackd: {exc}"], EXIT_RUNTIME)
    incident = record["id"]
    typer.echo(
        f"incident {incident}: roll back {service} from "
        f"{record['current_version'] or 'the current version'} to {record['target']} "
        f"(run by the daemon at {client.url})"
    )
    final = _follow(client, incident)
    typer.echo(f"incident {incident}: {final['state']} — {final['summary']}")
    if final["state"] != IncidentState.RECOVERED.value:
        raise typer.Exit(EXIT_RUNTIME)


def _follow(client: DaemonClient, incident: int) -> dict[str, Any]:
    """Print each step of ``incident`` as it finishes; the incident once it has ended."""
    shown_steps = 0
    gone_since: float | None = None
    under_way = (IncidentState.ROLLING_BACK.value, IncidentState.RECOVERING.value)
    try:
        while True:
            try:
                detail: dict[str, Any] = client.get(f"/api/v1/incidents/{incident}")
            except DaemonUnavailable as exc:
                now = time.monotonic()
                gone_since = gone_since or now
                if now - gone_since > DAEMON_GONE:
                    _fail(
                        [
                            f"rollbackd: {exc}",
                            f"rollbackd: incident {incident} goes on when the daemon runs "
                            "again; see `rollbackd incidents`",
                        ],
                        EXIT_RUNTIME,
                    )
                time.sleep(FOLLOW_EVERY)
                continue
            gone_since = None
            steps = detail["steps"]
            ended = detail["state"] not in under_way
            while shown_steps < len(steps) and (ended or steps[shown_steps]["finished"]):
                step = steps[shown_steps]
                if step["finished"]:
                    typer.echo(f"  {step['name']}: {step['outcome']}: {step['summary']}")
                shown_steps += 1
            if ended:
                return detail
            time.sleep(FOLLOW_EVERY)
    except DaemonRefused as exc:
        _fail([f"rollbackd: following incident {incident}: {exc}"], EXIT_RUNTIME)
    except KeyboardInterrupt:
        _fail(
            [f"rollbackd: stopped following; incident {incident} goes on in the daemon"],
            EXIT_RUNTIME,
        )


def _rollback_here(
    loaded: Loaded, service: str, to: str | None, reason: str | None, yes: bool
) -> None:
    """No daemon runs: the rollback runs in this process, telling the configured notifiers.

    It holds the state directory's lock throughout: a daemon that runs but could not
    be reached at ``[daemon] listen`` refuses it, so the two never act side by side.
    """
    cfg = loaded.config
    try:
        held = StateLock(cfg.daemon.state_dir).acquire(f"rollbackd rollback {service}")
    except StateDirBusy as exc:
        _fail(
            [
                f"rollbackd: {exc}",
                "rollbackd: a daemon holds it: roll back through its API "
                "(`rollbackd rollback` finds it at [daemon] listen or public_url)",
            ],
            EXIT_RUNTIME,
        )
    journal = open_journal(cfg)
    notifier = notifier_for(cfg, journal)
    try:
        checklist = build_checklist(
            cfg,
            loaded.rules,
            journal,
            notifier=notifier,
            on_step=lambda name, text: typer.echo(f"  {name}: {text}"),
        )
        resumable = [
            i
            for i in journal.incidents(service=service, active_only=True)
            if i.state in (IncidentState.ROLLING_BACK, IncidentState.RECOVERING)
        ]
        if resumable:
            incident = resumable[0].id
            typer.echo(
                f"resuming incident {incident}, interrupted while {resumable[0].state.value}"
            )
        else:
            request = _manual_request(loaded, journal, service, to, reason)
            question = (
                f"Roll back {service} from {request.current_version or 'the current version'} "
                f"to {request.target}?"
            )
            _confirm(question, yes)
            try:
                incident = checklist.open(request)
            except RollbackRefused as exc:
                _fail([f"rollbackd: {exc}"], EXIT_RUNTIME)
            typer.echo(f"incident {incident}: {question.rstrip('?').lower()}")
        record = checklist.run(incident)
        typer.echo(f"incident {record.id}: {record.state.value} — {record.summary}")
    finally:
        _deliver(notifier)
        held.release()
    if record.state is not IncidentState.RECOVERED:
        raise typer.Exit(EXIT_RUNTIME)


def _deliver(notifier: Notifier) -> None:
    """Before exiting: let the queued notifications go out, for at most NOTIFY_DRAIN seconds."""
    if isinstance(notifier, Background):
        left = notifier.drain(NOTIFY_DRAIN)
        if left:
            typer.echo(
                f"rollbackd: {_count(left, 'notification')} not delivered within "
                f"{NOTIFY_DRAIN:g}s (a receiver is slow or down)",
                err=True,
            )


def _manual_request(
    loaded: Loaded, journal: Journal, service: str, to: str | None, reason: str | None
) -> RollbackRequest:
    """The request as the daemon would build it: deploy events from the journal, the rest
    from monitoring (see :func:`rollbackd.manual.manual_request`)."""
    cfg = loaded.config
    history = DeployHistory(cfg.deploys.known_good_after, cfg.daemon.poll_interval)
    for deploy in journal.deploys():
        history.record(deploy)
    evaluation = evaluate_now(cfg, loaded.rules, now_utc(), history=history)
    try:
        return manual_request(
            service,
            to,
            reason or "manual rollback",
            evaluation.history,
            evaluation.report.notable,
            evaluation.baselines.get(service, {}),
        )
    except NoTarget as exc:
        _fail([f"rollbackd: {exc}; name one with --to"], EXIT_RUNTIME)
    except AlreadyThere as exc:
        _fail([f"rollbackd: {exc}"], EXIT_INVALID)


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
    active = [r for r in records if r["closed"] is None]  # open: not over yet
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
        where = journal.location
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
        except DaemonRefused as exc:
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


def _readable_journal(loaded: Loaded) -> tuple[Journal | None, str]:
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


def _print_side_by_side(loaded: Loaded, console: Console) -> None:
    """Which rules are judged side by side while two versions serve, and why not the others."""
    from rollbackd.sources.gather import side_by_side_forms  # noqa: PLC0415 -- keeps it light

    if loaded.config.deploys.version_metric is None:
        console.print("Side by side: off (no [deploys] version_metric)")
        return
    forms, unsplittable = side_by_side_forms(loaded.config, tuple(loaded.rules))
    console.print(f"Side by side while two versions serve: {', '.join(forms) or 'no rule'}")
    for name, why in unsplittable.items():
        console.print(f"  {name}: judged on the whole service only: {why}")


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

    _print_side_by_side(loaded, console)
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
    for line in _http_lines(cfg):
        console.print(line, markup=False)
    for warning in loaded.warnings:
        console.print(f"warning: {warning}")


def _http_lines(cfg: Config) -> list[str]:
    """How Prometheus, and each probe or notifier that needs more than a URL, is reached:
    what is set and where each secret comes from, never the secret."""
    prometheus = cfg.prometheus
    phrases = describe(
        headers=prometheus.headers,
        tls=prometheus.tls,
        basic_auth=prometheus.basic_auth,
        authorization=prometheus.authorization,
        proxy_url=prometheus.proxy_url,
    )
    lines = [f"prometheus: {without_password(prometheus.url)}" + "".join(f", {p}" for p in phrases)]
    alertmanager = cfg.alertmanager
    if alertmanager.url is not None:
        phrases = describe(
            headers=alertmanager.headers,
            tls=alertmanager.tls,
            basic_auth=alertmanager.basic_auth,
            authorization=alertmanager.authorization,
            proxy_url=alertmanager.proxy_url,
        )
        lines.append(
            f"alertmanager: {without_password(alertmanager.url)}, active alerts read every cycle "
            f"(timeout {format_duration(alertmanager.timeout)})"
            + "".join(f", {p}" for p in phrases)
        )
    for service in cfg.services:
        for probe in service.probes:
            phrases = describe(headers=probe.headers, tls=probe.tls)
            if phrases:
                lines.append(f"probe {service.name}/{probe.name}: " + ", ".join(phrases))
    for notifier in cfg.notifiers:
        phrases = describe(headers=notifier.headers, tls=notifier.tls)
        if phrases:
            lines.append(f"notifier {notifier.name}: " + ", ".join(phrases))
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _deadline(action: str, deadline: timedelta | None) -> str:
    if deadline:
        return format_duration(deadline)
    return "immediate" if action == "rollback" else "—"


def _print_evaluation(result: Evaluation, as_json: bool) -> None:
    shown_states = {FindingState.FIRING, FindingState.PENDING, FindingState.INCONCLUSIVE}
    findings = [f for f in result.report.notable if f.state in shown_states]
    if not as_json:  # a rule never measured is one quiet line per service, below
        findings = [f for f in findings if not f.unmeasured]
    if as_json:
        for finding in findings:
            typer.echo(json_line(finding_record(finding)))
        for decision in result.decisions:
            typer.echo(json_line(decision_record(decision)))
        return
    by_error: dict[str, list[str]] = {}
    for rule, error in sorted(result.report.source_errors.items()):
        by_error.setdefault(error, []).append(rule)
    for line in source_error_lines(by_error):
        typer.echo(line)
    if result.deploy_error is not None:
        typer.echo(f"deploys: {result.deploy_error}")
    ok = sum(result.report.quiet.values()) + sum(
        f.state is FindingState.OK for f in result.report.notable
    )
    total = len(result.report.notable) + sum(result.report.quiet.values())
    typer.echo(f"{format_instant(result.report.time)}: {_count(total, 'finding')} ({ok} ok)")
    for finding in sorted(findings, key=lambda f: (f.state.value, f.service, f.rule)):
        typer.echo(finding_line(finding))
    by_service: dict[str, list[Finding]] = {}
    for finding in result.report.notable:
        by_service.setdefault(finding.service, []).append(finding)
    for service, own in sorted(by_service.items()):
        note = unmeasured_note(own)
        if note is not None:
            typer.echo(f"{service}: {note}")
    if not result.decisions:
        typer.echo(
            "no action: nothing is firing, but what could not be read is unknown"
            if result.report.source_errors
            else "no action: nothing is firing"
        )
    for decision in result.decisions:
        typer.echo(decision_line(decision))


def main() -> None:
    """Console-script entry point: never a traceback for an expected failure."""
    try:
        app()
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
