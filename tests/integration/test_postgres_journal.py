"""`rollbackd` on a journal in a real PostgreSQL: moving over from SQLite, a daemon that
outlives PostgreSQL going away, and check-config saying what is wrong.

A SQLite journal with a finished and an unfinished incident is copied with ``rollbackd
journal migrate``; a daemon on PostgreSQL then answers the API as the daemon on SQLite
did. While PostgreSQL is down, webhooks get 503 (Alertmanager retries) and /readyz says
why; once it is back the next webhook is journaled, and after a restart the daemon still
knows it. The password is in no output and no log line.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollbackd.core.deploys import Deploy
from rollbackd.core.model import Action, Severity
from rollbackd.journal import (
    EvidenceKind,
    IncidentState,
    NewIncident,
    Outcome,
    SqliteJournal,
    journal_path,
)
from tests.conftest import RunCli
from tests.integration.test_daemon_restart import (
    DaemonFactory,
    daemons,
    delivery,
    simple_config,
    wait_until,
)
from tests.support.postgres import PostgresServer
from tests.support.processes import RollbackdProcess, free_port

pytestmark = pytest.mark.integration

__all__ = ["daemons"]  # the fixture, shared with the restart tests


def write_sqlite_journal(state_dir: Path) -> None:
    """A finished incident (rolled back, recovered) and an unfinished one (escalated), with a
    deploy and a webhook delivery: what a single machine's journal holds before moving over."""
    opened = datetime.now(UTC) - timedelta(minutes=30)
    journal = SqliteJournal(journal_path(state_dir))
    for outcome, end in ((Outcome.OK, IncidentState.RECOVERED), (Outcome.FAILED, None)):
        number = journal.open_incident(
            NewIncident(
                service="web",
                opened_at=opened,
                severity=Severity.CRITICAL,
                action=Action.ROLLBACK,
                origin="manual",
                reason="rolled back by hand",
                target="v1",
                current_version="v2",
                state=IncidentState.ROLLING_BACK,
                evidence={EvidenceKind.SNAPSHOT: {"why": "by hand", "values": [0.5, 0.2]}},
            )
        )
        step = journal.step_started(number, "execute", opened, {"head": "abc"})
        journal.step_finished(step, opened + timedelta(seconds=3), outcome, outcome.value)
        journal.add_samples(number, [(opened, "error-rate", 0.5), (opened, "latency", 0.2)])
        if end is IncidentState.RECOVERED:
            journal.set_state(number, IncidentState.RECOVERING, "watching", opened)
            journal.set_state(number, end, "recovered", opened + timedelta(minutes=5))
        else:
            journal.set_state(number, IncidentState.ESCALATED, "the rollback failed", opened)
    journal.record_deploy(Deploy("web", "v2", opened, source="webhook", ref="abc"), opened)
    journal.close()


def answers(daemon: RollbackdProcess) -> dict[str, Any]:
    """What the API says of the journal's incidents (as a viewer)."""
    found: dict[str, Any] = {"incidents": daemon.incidents()}
    for number in (1, 2):
        for path in (f"/api/v1/incidents/{number}", f"/api/v1/incidents/{number}/report"):
            response = daemon.request("GET", path, "viewer")
            assert response.status_code == 200, response.text
            found[path] = response.text
    return found


def test_a_sqlite_journal_moved_to_postgresql_serves_the_same_daemon_through_an_outage(
    tmp_path: Path, postgres_server: PostgresServer, run_cli: RunCli, daemons: DaemonFactory
) -> None:
    """SQLite journal → journal migrate → a daemon on PostgreSQL answers the same; PostgreSQL
    stopped: webhooks 503 and /readyz says why; back: the next webhook is journaled; after a
    restart the daemon knows it; never the password anywhere."""
    config, port = simple_config(tmp_path)
    write_sqlite_journal(tmp_path / "state")
    daemon = daemons(config, port)
    on_sqlite = answers(daemon)
    assert [i["state"] for i in on_sqlite["incidents"]] == ["escalated", "recovered"]
    assert daemon.stop() == 0

    url = postgres_server.create_database().replace(f":{postgres_server.password}@", "@")
    password_file = tmp_path / "pg-password"
    password_file.write_text(postgres_server.password + "\n", encoding="utf-8")
    migrate = ("journal", "migrate", "--to", url, "--password-file", str(password_file))
    copied = run_cli(*migrate, "--config", str(config))
    assert copied.returncode == 0, copied.stderr
    assert "2 incidents (0 decisions, 2 steps, 2 evidence, 4 samples)" in copied.stdout
    assert "0 alerts, 0 deliveries, 1 deploy" in copied.stdout

    with config.open("a", encoding="utf-8") as text:
        text.write(f'\n[journal]\nurl = "{url}"\npassword_file = "{password_file}"\n')
    checked = run_cli("check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert f"journal: PostgreSQL at 127.0.0.1:{postgres_server.port}/" in checked.stdout
    assert "reachable, schema version 2" in checked.stdout

    daemon = daemons(config, port)
    assert answers(daemon) == on_sqlite

    again = run_cli(*migrate, "--from", str(journal_path(tmp_path / "state")))
    assert again.returncode == 2
    assert "already holds 2 incidents" in again.stderr

    def post(index: int) -> Any:
        return daemon.request(
            "POST", "/webhooks/alertmanager", "alertmanager", json=delivery(index)
        )

    assert post(1).json() == {"accepted": 1, "duplicates": 0}
    postgres_server.stop()
    try:
        refused = post(2)
        assert refused.status_code == 503, refused.text
        assert "nothing was accepted" in refused.json()["error"]
        unready = wait_until(
            "/readyz to say the journal cannot be reached",
            lambda: daemon.request("GET", "/readyz", "viewer").json()["journal_error"],
        )
        assert "cannot be reached" in unready
    finally:
        postgres_server.start()
    assert post(2).json() == {"accepted": 1, "duplicates": 0}
    wait_until(
        "/readyz to be ready again",
        lambda: daemon.request("GET", "/readyz", "viewer").status_code == 200,
    )

    assert daemon.stop() == 0
    daemon.start()
    assert post(1).json() == {"accepted": 0, "duplicates": 1}
    assert post(2).json() == {"accepted": 0, "duplicates": 1}
    assert answers(daemon) == on_sqlite
    shown = copied.stdout + copied.stderr + checked.stdout + again.stderr + daemon.log_text()
    assert postgres_server.password not in shown
    assert postgres_server.password not in (tmp_path / "logs" / "rollbackd.stdout.log").read_text()


def test_check_config_says_what_is_wrong_with_postgresql_without_the_password(
    tmp_path: Path, postgres_server: PostgresServer, run_cli: RunCli
) -> None:
    """Refused, authentication failed, no such database, not a PostgreSQL URL: exit 2, one
    line naming the key (or the variable) at fault, never the password."""
    config, _ = simple_config(tmp_path)
    secret = postgres_server.password
    nowhere = f"postgresql://rollbackd:{secret}@127.0.0.1:{free_port()}/rollbackd"
    from_env = {
        nowhere: "connection refused",
        postgres_server.url("postgres", password="not-" + secret): (
            "authentication failed for user rollbackd"
        ),
        postgres_server.url("nope"): "database nope does not exist",
    }
    for url, said in from_env.items():
        result = run_cli(
            "check-config", "--config", str(config), env={"ROLLBACKD_JOURNAL__URL": url}
        )
        assert result.returncode == 2, (url, result.stdout, result.stderr)
        assert result.stderr.startswith("environment ROLLBACKD_JOURNAL__URL: cannot reach")
        assert said in result.stderr, result.stderr
        assert secret not in result.stdout + result.stderr
    base = config.read_text(encoding="utf-8")
    in_file = {
        nowhere: "journal.url: cannot reach the journal postgresql://rollbackd@127.0.0.1:",
        f"mysql://rollbackd:{secret}@127.0.0.1/db": "journal.url: expected a postgresql://",
    }
    for url, said in in_file.items():
        config.write_text(base + f'\n[journal]\nurl = "{url}"\n', encoding="utf-8")
        result = run_cli("check-config", "--config", str(config))
        assert result.returncode == 2, (url, result.stdout, result.stderr)
        assert f"config.toml: {said}" in result.stderr, result.stderr
        assert secret not in result.stdout + result.stderr
