"""`rollbackd backtest` over a day of history backfilled into a real Prometheus.

The day: web deploys v2 at 12:00 and from 12:05 one request in five fails,
until people put v1 back at 12:40; api deploys a2 at 15:00 and fails from
18:30, long after the attribution window; db is healthy all day. Expected:
web asks for approval about two and a half minutes after its fault began
(rate window plus `for`), api escalates, db is quiet.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import RunCli
from tests.support.fixtures import PrometheusFactory
from tests.support.processes import (
    LOOPBACK,
    Point,
    backfill,
    counter_points,
    free_port,
    gauge_points,
    openmetrics_document,
    openmetrics_family,
)

pytestmark = pytest.mark.integration

DAY = datetime(2026, 10, 1, tzinfo=UTC)
STEP = 30.0
RPS = 10.0


def at(hours: float, minutes: float = 0) -> float:
    return (DAY + timedelta(hours=hours, minutes=minutes)).timestamp()


START, END = at(0), at(24)
FAULTS: dict[str, tuple[float, float]] = {
    "web": (at(12, 5), at(12, 40)),
    "api": (at(18, 30), at(19, 0)),
}
VERSIONS: dict[str, list[tuple[float, float, str]]] = {
    "web": [(at(0), at(12), "v1"), (at(12), at(12, 40), "v2"), (at(12, 40), END + 1, "v1")],
    "api": [(at(0), at(15), "a1"), (at(15), END + 1, "a2")],
    "db": [(at(0), END + 1, "d1")],
}


def error_ratio(service: str) -> Callable[[float], float]:
    start, end = FAULTS.get(service, (0.0, 0.0))
    bad = 0.2 if service == "web" else 0.3
    return lambda t: bad if start <= t < end else 0.0


def requests_per_second(ratio: Callable[[float], float], failing: bool) -> Callable[[float], float]:
    return lambda t: RPS * ratio(t) if failing else RPS * (1 - ratio(t))


def history() -> str:
    requests: list[tuple[dict[str, str], list[Point]]] = []
    builds: list[tuple[dict[str, str], list[Point]]] = []
    for service, spans in VERSIONS.items():
        ratio = error_ratio(service)
        requests.append(
            (
                {"service": service, "code": "200"},
                counter_points(START, END, STEP, requests_per_second(ratio, failing=False)),
            )
        )
        requests.append(
            (
                {"service": service, "code": "500"},
                counter_points(START, END, STEP, requests_per_second(ratio, failing=True)),
            )
        )
        for begin, finish, version in spans:
            points = gauge_points(begin, min(finish - STEP, END), STEP, 1.0)
            builds.append(({"service": service, "version": version}, points))
    return openmetrics_document(
        openmetrics_family("http_requests_total", requests, kind="counter"),
        openmetrics_family("app_build_info", builds),
    )


RULES = """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = 'sum by (service) (rate(http_requests_total{code=~"5.."}[2m])) / sum by (service) (rate(http_requests_total[2m]))'
condition = "> 0.05"
for = "2m"
"""  # noqa: E501 -- the rule file as a user writes it, one line per key


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("backfilled")
    backfill(history(), directory)
    return directory


def write_config(directory: Path, prometheus_url: str) -> Path:
    (directory / "rules").mkdir(exist_ok=True)
    (directory / "rules" / "errors.toml").write_text(RULES)
    services = "".join(
        f'[[services]]\nname = "{name}"\nrepo = "/srv/{name}"\n' for name in VERSIONS
    )
    config = directory / "config.toml"
    config.write_text(
        f"""
[daemon]
rules = ["rules/*.toml"]
[prometheus]
url = "{prometheus_url}"
timeout = "10s"
{services}
[deploys]
version_metric = "app_build_info"
known_good_after = "30m"
attribution_window = "2h"
"""
    )
    return config


def test_backtest_prints_the_actions_of_the_day_in_time_order(
    tmp_path: Path, run_cli: RunCli, prometheus_factory: PrometheusFactory, storage: Path
) -> None:
    """Exactly two actions, at the right times (within one step), for the right reasons."""
    prometheus = prometheus_factory(storage_dir=storage)
    config = write_config(tmp_path, prometheus.url)
    result = run_cli(
        "backtest",
        "--config",
        str(config),
        "--start",
        "2026-10-01T00:00:00Z",
        "--end",
        "2026-10-02T00:00:00Z",
        "--step",
        "30s",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    actions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(a["service"], a["action"]) for a in actions] == [
        ("web", "request_approval"),
        ("api", "escalate"),
    ]
    web, api = actions
    expected_web = DAY + timedelta(hours=12, minutes=7, seconds=30)
    expected_api = DAY + timedelta(hours=18, minutes=32, seconds=30)
    for action, expected in ((web, expected_web), (api, expected_api)):
        moment = datetime.fromisoformat(action["time"])
        assert abs(moment - expected) <= timedelta(seconds=30), (action["time"], expected)
        assert action["rule"] == "error-rate"
        assert action["severity"] == "high"
        assert set(action) >= {"time", "service", "rule", "severity", "action", "value", "reason"}
    assert web["target"] == "v1"
    assert web["approver"] == "senior_admin"
    assert "roll back v2 to v1" in web["reason"]
    assert web["value"] == pytest.approx(0.2, abs=0.01)
    assert "attribution" in api["guards"]
    assert "outside the attribution window" in api["reason"]


def test_backtest_human_output_tells_the_story_and_counts(
    tmp_path: Path, run_cli: RunCli, prometheus_factory: PrometheusFactory, storage: Path
) -> None:
    """Piped, the output is plain lines: each action, each resolution, and a summary."""
    prometheus = prometheus_factory(storage_dir=storage)
    config = write_config(tmp_path, prometheus.url)
    result = run_cli(
        "backtest",
        "--config",
        str(config),
        "--start",
        "2026-10-01T11:00:00Z",
        "--end",
        "2026-10-01T13:00:00Z",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("ACTION REQUEST_APPROVAL" in line and " web " in line for line in lines)
    assert any(line.startswith("2026-10-01T12:4") and "RESOLVED web" in line for line in lines)
    assert lines[-1].startswith("1 action from 2026-10-01T11:00:00Z to 2026-10-01T13:00:00Z")
    assert "\x1b[" not in result.stdout


def test_backtest_explains_a_service_step_by_step(
    tmp_path: Path, run_cli: RunCli, prometheus_factory: PrometheusFactory, storage: Path
) -> None:
    """--explain web: each rule's value, threshold and state per step, and why it acted or not."""
    prometheus = prometheus_factory(storage_dir=storage)
    config = write_config(tmp_path, prometheus.url)
    window = ["--start", "2026-10-01T11:00:00Z", "--end", "2026-10-01T12:20:00Z"]
    result = run_cli("backtest", "--config", str(config), *window, "--explain", "web")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        "2026-10-01T12:00:00Z  web: v2 (deployed 2026-10-01T12:00:00Z, from metric); "
        "last known good v1"
    ) in lines
    assert any("error-rate  ok" in line and "> 0.05 does not hold" in line for line in lines)
    pending = [line for line in lines if "error-rate  pending" in line]
    assert pending and pending[0].endswith("> 0.05 for 0s of 2m")
    assert any(line.startswith("  -> no decision: nothing fires") for line in lines)
    [decided] = [line for line in lines if line.startswith("  -> decision: request_approval")]
    assert "roll back v2 to v1" in decided
    suppressed = "  -> suppressed: the incident of 2026-10-01T12:07"
    assert any(line.startswith(suppressed) for line in lines)
    assert any("more steps alike" in line for line in lines)  # quiet stretches are one line
    assert not any("api:" in line for line in lines)  # only the service asked about

    unknown = run_cli("backtest", "--config", str(config), *window, "--explain", "nope")
    assert unknown.returncode == 2
    assert "--explain: no service named 'nope' is configured" in unknown.stderr


def test_backtest_of_a_dry_run_config_shows_what_the_armed_daemon_would_do(
    tmp_path: Path, run_cli: RunCli, prometheus_factory: PrometheusFactory, storage: Path
) -> None:
    """Under dry_run = true the action is the real one, marked as dry-run, never 'record'."""
    prometheus = prometheus_factory(storage_dir=storage)
    config = write_config(tmp_path, prometheus.url)
    text = config.read_text().replace("[daemon]\n", "[daemon]\ndry_run = true\n")
    config.write_text(text)
    window = ["--start", "2026-10-01T11:00:00Z", "--end", "2026-10-01T13:00:00Z"]
    result = run_cli("backtest", "--config", str(config), *window, "--json")
    assert result.returncode == 0, result.stderr
    [action] = [json.loads(line) for line in result.stdout.splitlines()]
    assert (action["action"], action["dry_run"], action["guards"]) == (
        "request_approval",
        True,
        [],
    )
    assert "dry_run = true" in result.stderr
    human = run_cli("backtest", "--config", str(config), *window)
    assert "ACTION REQUEST_APPROVAL (dry run: the daemon would record this only)" in human.stdout


def test_backtest_over_a_range_partly_before_the_data_counts_what_had_none(
    tmp_path: Path, run_cli: RunCli, prometheus_factory: PrometheusFactory, storage: Path
) -> None:
    """An hour before the stored history and an hour of it: no action, but the summary says
    how many evaluations had no data, so the empty hour never reads as a healthy one."""
    prometheus = prometheus_factory(storage_dir=storage)
    config = write_config(tmp_path, prometheus.url)
    window = ["--start", "2026-09-30T23:00:00Z", "--end", "2026-10-01T01:00:00Z"]
    result = run_cli("backtest", "--config", str(config), *window)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith(
        "(241 evaluations, 3 deploys found); no data for 121 of the 241 evaluations: "
        "inconclusive there, not healthy"
    ), result.stdout
    as_json = run_cli("backtest", "--config", str(config), *window, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout == ""
    assert "note: no data for 121 of the 241 evaluations" in as_json.stderr


def test_backtest_with_prometheus_unreachable_says_nothing_was_read(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """Prometheus down for the whole backtest: the error is shown and every evaluation is
    counted as without data, never a quiet "0 actions" over a range that looks healthy."""
    config = write_config(tmp_path, f"http://{LOOPBACK}:{free_port()}")
    window = ["--start", "2026-10-01T11:00:00Z", "--end", "2026-10-01T11:10:00Z"]
    result = run_cli("backtest", "--config", str(config), *window)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("source error: Prometheus at") and "unreachable (rules: error-rate)" in line
        for line in lines
    ), result.stdout
    assert lines[-1].endswith(
        "; no data for 21 of the 21 evaluations: inconclusive there, not healthy"
    )
