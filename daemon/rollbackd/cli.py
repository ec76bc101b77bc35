"""The ``rollbackd`` command line (design §2).

Exit codes: 0 success, 1 runtime failure, 2 bad config or usage, with one
line per problem on stderr naming the file and the rule or key at fault.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from rollbackd import __version__
from rollbackd.config import DEFAULT_CONFIG_PATH
from rollbackd.durations import format_duration
from rollbackd.errors import InvalidInput, NotBuilt, RollbackdError
from rollbackd.loader import Loaded, load, shown
from rollbackd.matrix import TRIGGER_SEVERITY
from rollbackd.model import Severity, Trigger
from rollbackd.rules import rule_trigger_severity

EXIT_RUNTIME = 1
EXIT_INVALID = 2

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
    _not_built("run", "the daemon comes with the HTTP API")


@app.command()
def evaluate(
    config: ConfigOption = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """One evaluation now against live sources; print findings and the actions it would take."""
    _not_built("evaluate", "sources are not connected yet")


@app.command()
def backtest(
    start: Annotated[str, typer.Option("--start", help="RFC 3339 time, or -6h, now.")],
    end: Annotated[str, typer.Option("--end", help="RFC 3339 time, or -6h, now.")],
    config: ConfigOption = None,
    step: Annotated[str, typer.Option("--step", help="Evaluation step.")] = "30s",
    json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Replay the rules over Prometheus history; print the actions the daemon would have taken."""
    _not_built("backtest", "sources are not connected yet")


@app.command()
def rollback(
    service: Annotated[str, typer.Argument(help="The service to roll back.")],
    config: ConfigOption = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Target ref (default: last known good).")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the journal.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Roll back a service by hand, through the same checklist, executor and recovery watch."""
    _not_built("rollback", "executors are not built yet")


@app.command()
def status(config: ConfigOption = None) -> None:
    """Show the running daemon's services, open incidents and pending approvals."""
    _not_built("status", "the daemon's API is not built yet")


@app.command()
def incidents(config: ConfigOption = None) -> None:
    """List incidents from the running daemon."""
    _not_built("incidents", "the incident journal is not built yet")


@app.command()
def report(
    incident: Annotated[str, typer.Argument(metavar="ID", help="Incident id.")],
    config: ConfigOption = None,
) -> None:
    """Render an incident report."""
    _not_built("report", "the incident journal is not built yet")


@app.command()
def approve(
    incident: Annotated[str, typer.Argument(metavar="ID", help="Incident id.")],
    config: ConfigOption = None,
) -> None:
    """Approve a pending rollback (token from $ROLLBACKD_TOKEN)."""
    _not_built("approve", "approvals come with the daemon's API")


@app.command()
def veto(
    incident: Annotated[str, typer.Argument(metavar="ID", help="Incident id.")],
    config: ConfigOption = None,
) -> None:
    """Veto a pending rollback (token from $ROLLBACKD_TOKEN)."""
    _not_built("veto", "approvals come with the daemon's API")


@app.command()
def demo(config: ConfigOption = None) -> None:
    """Run the whole loop on this machine with no setup: deploy, detect, roll back, recover."""
    _not_built("demo", "the demo comes once the loop is complete")


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
