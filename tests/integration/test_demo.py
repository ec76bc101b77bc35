"""`rollbackd demo`, each scenario end to end, as a newcomer runs it."""

from __future__ import annotations

import re

import pytest

from tests.conftest import RunCli

pytestmark = pytest.mark.integration

STAMP = re.compile(r"^\d\d:\d\d:\d\d  ")
DEMO_TIMEOUT = 240.0
"""A demo takes about a minute on an idle machine (it waits for real scrapes and cycles);
on a busy one, more: the test judges what it shows, not how fast."""


def story(output: str) -> list[str]:
    return [line for line in output.splitlines() if STAMP.match(line)]


def test_the_default_demo_rolls_back_and_proves_recovery(run_cli: RunCli) -> None:
    """Deploy, detection, decision, every checklist step, recovery and the report, exit 0."""
    result = run_cli("demo", timeout=DEMO_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = story(result.stdout)
    text = "\n".join(lines)
    for event in (
        "v1 deployed from git",
        "Prometheus scrapes the app",
        "status page: http://127.0.0.1:",
        "deploy: v2 is out",
        "first pending finding:",
        "firing:",
        "severity high",
        "policy: rollback; decision: rollback",
        "checklist: verify_target: ok",
        "checklist: backup: ok",
        "checklist: execute: ok",
        "checklist: recovery: ok",
        "verdict: recovered",
    ):
        assert event in text, event
    assert "# Incident 1: web — recovered" in result.stdout
    assert "Follow-up" in result.stdout


def test_the_approval_demo_asks_and_is_approved_through_the_api(run_cli: RunCli) -> None:
    """High severity waits for senior_admin; the approval through the API starts the rollback."""
    result = run_cli("demo", "--scenario", "approval", timeout=DEMO_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    text = "\n".join(story(result.stdout))
    assert "decision: request approval" in text
    assert "incident 1 opened: awaiting approval" in text
    assert "approved: HTTP 200" in text
    assert "verdict: recovered" in text


def test_the_migration_demo_blocks_the_rollback_and_escalates(run_cli: RunCli) -> None:
    """An undeclared migration in v2 stops the rollback and asks the database role."""
    result = run_cli("demo", "--scenario", "migration", "--keep", timeout=DEMO_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    text = "\n".join(story(result.stdout))
    assert "checklist: migration_gate: failed" in text
    assert "migrations/0002_drop_nickname.sql" in text
    assert "checklist: execute" not in text
    assert "consult the database role" in text
    assert "kept everything in /" in result.stdout
