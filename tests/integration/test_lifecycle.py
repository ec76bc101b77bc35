"""The incident lifecycle against a real Prometheus scraping real apps instrumented like apps are.

The demo apps use the official prometheus_client: a labelled series (a 5xx
code) appears on first use, and a restart resets every counter. A real
a daemon (:class:`~rollbackd.runtime.Runtime`) reads that Prometheus; the tests step its
cycles themselves, one a second, on the wall clock. Rollbacks run a command
that touches a file, so what is rolled back is seen without git.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import structlog

from rollbackd.core.engine import CycleReport
from rollbackd.core.model import Action, Decision
from rollbackd.incidents import Caller
from rollbackd.journal import IncidentState, SqliteJournal, journal_path
from rollbackd.loader import load
from rollbackd.logs import configure
from rollbackd.runtime import Runtime
from tests.support.fixtures import DemoAppFactory, PrometheusFactory
from tests.support.processes import DemoApp, Prometheus

pytestmark = pytest.mark.integration

WINDOW = "5s"
ERROR_RATIO = (
    f'sum by (service) (rate(http_requests_total{{code=~"5.."}}[{WINDOW}]))'
    f" / sum by (service) (rate(http_requests_total[{WINDOW}]))"
    f" or (sum by (service) (rate(http_requests_total[{WINDOW}])) > 0) * 0"
)
RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERROR_RATIO}'
condition = "> 0.05"
for = "2s"

[[rules]]
name = "widget-failures"
trigger = "major_feature_broken"
query = 'sum by (service) (rate(app_widget_failures_total[{WINDOW}])) > 0'
condition = "> 0"
description = "A metric these apps never export: inconclusive the whole time."
"""
KNOWN_GOOD_AFTER = 5
SERVICES = ("web", "api", "db")
PERSON = Caller("alice", "admin")


def config_text(root: Path, prometheus: Prometheus) -> str:
    services = "".join(
        f'[[services]]\nname = "{name}"\nexecutor = "command"\n'
        f'command = ["touch", "{root / f"rolled-back-{name}"}"]\ncommand_timeout = "10s"\n'
        for name in SERVICES
    )
    return f"""
[daemon]
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
[prometheus]
url = "{prometheus.url}"
timeout = "10s"
{services}
[deploys]
version_metric = "app_build_info"
known_good_after = "{KNOWN_GOOD_AFTER}s"
attribution_window = "10m"
[recovery]
window = "2s"
timeout = "20s"
[[tokens]]
name = "admin"
sha256 = "{hashlib.sha256(b"t").hexdigest()}"
role = "admin"
"""


class World:
    """Three real apps, a real Prometheus, and a daemon over them whose cycles a test steps."""

    def __init__(self, root: Path, apps: dict[str, DemoApp], prometheus: Prometheus) -> None:
        self.root = root
        self.apps = apps
        (root / "rules").mkdir(parents=True, exist_ok=True)
        (root / "rules" / "rules.toml").write_text(RULES, encoding="utf-8")
        self.config = root / "config.toml"
        self.config.write_text(config_text(root, prometheus), encoding="utf-8")
        self.journals: list[SqliteJournal] = []
        self.daemon = self.start()

    def start(self) -> Runtime:
        """A daemon on the journal (a new one on the same file, as after a restart)."""
        loaded = load(self.config, env={})
        journal = SqliteJournal(journal_path(loaded.config.daemon.state_dir))
        self.journals.append(journal)
        daemon = Runtime(loaded, journal)
        daemon.restore()
        self.daemon = daemon
        return daemon

    def stop(self) -> None:
        self.daemon.shutdown(timeout=5)
        self.daemon.journal.close()

    def cycle(self) -> CycleReport:
        report = self.daemon.loop.cycle()
        assert report is not None, self.daemon.loop.last_cycle_error
        return report

    def cycles_until(
        self, done: Callable[[list[Decision]], bool], timeout: float = 40.0
    ) -> list[Decision]:
        """Cycle once a second until ``done(decisions so far)``; every decision, in order."""
        decisions: list[Decision] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            decisions.extend(self.cycle().decisions)
            if done(decisions):
                return decisions
            time.sleep(1.0)
        raise AssertionError(f"not done within {timeout}s; decided: {decisions}")

    def state(self, incident: int) -> IncidentState:
        record = self.daemon.journal.incident(incident)
        assert record is not None
        return record.state

    def incident_of(self, service: str, state: IncidentState) -> int:
        [record] = [r for r in self.daemon.journal.incidents(service=service) if r.state is state]
        return record.id


@pytest.fixture
def world(
    tmp_path: Path, demoapp_factory: DemoAppFactory, prometheus_factory: PrometheusFactory
) -> Iterator[World]:
    """v1 of web, api and db, scraped once a second; db's v1 has no data for its first
    seconds, so it is never known good (its incidents escalate: nothing to roll back to)."""
    configure("json", stream=io.StringIO())
    apps = {name: demoapp_factory(service=name, app_toml='version = "v1"\n') for name in SERVICES}
    prometheus = prometheus_factory([app.scrape_target() for app in apps.values()])
    prometheus.wait_for(
        "sum by (service) (rate(http_requests_total[5s]))",
        lambda result: len(result) == len(SERVICES),
        timeout=30,
    )
    built = World(tmp_path, apps, prometheus)
    try:
        yield built
    finally:
        built.stop()
        for journal in built.journals:
            journal.close()
        structlog.reset_defaults()


def deploy(world: World, service: str, version: str, **fault: object) -> None:
    """Deploy ``version`` of ``service`` (its version metric changes), with a fault or none."""
    world.apps[service].set_fault(version=version, **fault)


def test_a_second_bad_deploy_gets_its_own_decision_whatever_the_first_incident_became(
    world: World,
) -> None:
    """web's incident awaits approval, api's is vetoed, db's is escalated: v3 of each, failing
    on its own, gets a decision of its own, and the v2 incident ends as superseded."""
    world.cycle()  # v1 everywhere; db's v2 follows at once: no version of db is known good
    deploy(world, "db", "v2", error_rate=0.3)
    time.sleep(KNOWN_GOOD_AFTER + 1)
    world.cycle()  # web's and api's v1 ran clean long enough: known good
    for service in ("web", "api"):
        deploy(world, service, "v2", error_rate=0.3)
    first = world.cycles_until(lambda d: {x.service for x in d} == set(SERVICES))
    assert {d.service: d.action for d in first} == {
        "web": Action.REQUEST_APPROVAL,
        "api": Action.REQUEST_APPROVAL,
        "db": Action.ESCALATE,
    }
    v2 = {s: world.daemon.journal.incidents(service=s)[0].id for s in SERVICES}
    world.daemon.incidents.veto(v2["api"], PERSON)
    assert [world.state(v2[s]) for s in SERVICES] == [
        IncidentState.AWAITING_APPROVAL,
        IncidentState.VETOED,
        IncidentState.ESCALATED,
    ]

    for service in SERVICES:  # v3 fixes v2's errors ...
        deploy(world, service, "v3", error_rate=0.0)
    world.cycles_until(
        lambda _d: all(world.state(v2[s]) is IncidentState.SUPERSEDED for s in SERVICES)
    )
    quiet: list[Decision] = []
    for _ in range(6):  # ... and while v2's errors leave the rate window, nothing is decided
        quiet.extend(world.cycle().decisions)
        time.sleep(1.0)
    assert quiet == []
    for service in SERVICES:  # then v3 breaks on its own
        world.apps[service].set_fault(error_rate=0.4)
    second = world.cycles_until(lambda d: {x.service for x in d} == set(SERVICES))
    for decision in second:
        assert decision.rules == ("error-rate",)
        assert decision.guards != ("attribution",), decision.reason
    web = next(d for d in second if d.service == "web")
    assert web.action is Action.REQUEST_APPROVAL
    assert "roll back v3 to v1" in web.reason
    for service in SERVICES:
        record = world.daemon.journal.incident(v2[service])
        assert record is not None and "v3 was deployed" in record.summary


def test_an_incident_whose_extra_rule_never_had_data_resolves_when_the_errors_stop(
    world: World,
) -> None:
    """The widget rule reads a metric the app never exports: it never keeps the incident open."""
    world.cycle()
    time.sleep(KNOWN_GOOD_AFTER + 1)
    world.cycle()
    deploy(world, "web", "v2", error_rate=0.3)
    world.cycles_until(lambda d: any(x.service == "web" for x in d))
    number = world.incident_of("web", IncidentState.AWAITING_APPROVAL)
    world.apps["web"].set_fault(error_rate=0.0)
    world.cycles_until(lambda _d: world.state(number) is IncidentState.RESOLVED, timeout=30)
    record = world.daemon.journal.incident(number)
    assert record is not None and record.closed_at is not None
    assert record.summary.startswith("what fired is OK again: error-rate 0")
    report = world.cycle()
    [widget] = [f for f in report.notable if f.service == "web" and f.rule == "widget-failures"]
    assert widget.unmeasured and widget.reason.startswith("not measured in the ")
    assert not (world.root / "rolled-back-web").exists()


def test_after_hours_of_downtime_unfinished_incidents_come_back(world: World) -> None:
    """Stopped for 3 hours: the request awaiting approval is followed, not decided again, and
    an approval then rolls back once; the app, restarted on v1 with its counters reset,
    recovers."""
    world.cycle()
    time.sleep(KNOWN_GOOD_AFTER + 1)
    world.cycle()
    deploy(world, "web", "v2", error_rate=0.3)
    world.cycles_until(lambda d: any(x.service == "web" for x in d))
    number = world.incident_of("web", IncidentState.AWAITING_APPROVAL)
    path = world.journals[-1].path
    world.stop()
    with sqlite3.connect(path) as db:  # the daemon was down for three hours
        for table, column in (("incidents", "opened_at"), ("incidents", "updated_at")):
            db.execute(
                f"UPDATE {table} SET {column} = strftime('%Y-%m-%dT%H:%M:%f+00:00',"  # noqa: S608 -- fixed names
                f" {column}, '-3 hours')"
            )
    daemon = world.start()
    report = world.cycle()
    assert [d for d in report.decisions if d.service == "web"] == []
    assert world.state(number) is IncidentState.AWAITING_APPROVAL
    judged = daemon.state.engine.judgement("web")
    assert judged is not None and judged.incident == number

    daemon.incidents.approve(number, PERSON)
    deploy(world, "web", "v1", error_rate=0.0)  # what the rollback command stands for
    world.apps["web"].restart_in_place()  # counters reset; the 5xx series is gone
    deadline = time.monotonic() + 40
    while world.state(number) not in (
        IncidentState.RECOVERED,
        IncidentState.NOT_RECOVERED,
        IncidentState.ESCALATED,
    ):
        assert time.monotonic() < deadline, world.state(number)
        world.cycle()
        time.sleep(1.0)
    assert world.state(number) is IncidentState.RECOVERED
    record = world.daemon.journal.incident(number)
    assert record is not None
    assert [s.name for s in record.steps].count("execute") == 1
    assert "error rate (error-rate) 0 < 0.01" in record.summary
    assert timedelta(0) < world.daemon.state.clock() - record.opened_at
