"""The test support itself: the demo app, Prometheus and promtool backfill, run for real."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import fixtures
from tests.support.fixtures import DemoAppFactory, PrometheusFactory, require_prometheus
from tests.support.processes import (
    ProcessError,
    QueryResult,
    backfill,
    counter_points,
    gauge_points,
    openmetrics_document,
    openmetrics_family,
    openmetrics_series,
)

pytestmark = pytest.mark.integration

Labels = frozenset[tuple[str, str]]


def parse_metrics(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of a /metrics text, keyed by sample name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def values(result: QueryResult, label: str) -> dict[str, float]:
    """An instant-query vector as {value of ``label``: sample value}."""
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


RECORDING_RULE = """
groups:
  - name: support
    rules:
      - record: service:http_requests:rate10s
        expr: sum by (service) (rate(http_requests_total[10s]))
"""


def test_metrics_parse_and_5xx_fraction_follows_error_rate(
    demoapp_factory: DemoAppFactory,
) -> None:
    """With error_rate 0.2, 1000 requests get 20% ± 5% 500s, and /metrics counts them exactly."""
    app = demoapp_factory(traffic=0)
    app.set_fault(error_rate=0.2)
    with httpx.Client(base_url=app.url, timeout=5) as client:
        codes = [client.get("/").status_code for _ in range(1000)]
    failed = codes.count(500)
    assert set(codes) == {200, 500}
    assert 0.15 <= failed / 1000 <= 0.25

    samples = parse_metrics(app.metrics())
    assert total(samples, "http_requests_total", service="web", path="/") == 1000
    assert total(samples, "http_requests_total", code="500") == failed
    assert total(samples, "http_request_duration_seconds_count", service="web") == 1000
    assert total(samples, "app_build_info", service="web", version="v1") == 1
    assert ("app_data_loss_events_total", frozenset({("service", "web")})) in samples
    assert total(samples, "app_data_loss_events_total") == 0


def test_synthetic_traffic_moves_counters_at_the_configured_error_rate(
    demoapp_factory: DemoAppFactory,
) -> None:
    """--traffic alone yields 1000 requests, 20% ± 5% of them 5xx, and failed logins."""
    app = demoapp_factory(traffic=1000, app_toml="error_rate = 0.2\n")
    deadline = time.monotonic() + 15
    samples = parse_metrics(app.metrics())
    while total(samples, "http_requests_total") < 1000:
        assert time.monotonic() < deadline, "synthetic traffic did not reach 1000 requests"
        time.sleep(0.1)
        samples = parse_metrics(app.metrics())
    requests = total(samples, "http_requests_total")
    assert 0.15 <= total(samples, "http_requests_total", code="500") / requests <= 0.25
    login_failures = total(samples, "http_requests_total", path="/login", code="500")
    assert login_failures > 0
    assert total(samples, "app_auth_attempts_total", result="failure") == login_failures


def test_fault_switch_rejects_bad_input_with_400_and_keeps_settings(
    demoapp_factory: DemoAppFactory,
) -> None:
    """POST /-/fault answers 400 with a JSON error for each kind of bad input, changing nothing."""
    app = demoapp_factory(traffic=0)
    before = app.fault()
    bad_bodies = [
        '{"error_rate": 1.5}',
        '{"error_rate": "0.2"}',
        '{"error_rate": true}',
        '{"latency": -1}',
        '{"gap": "yes"}',
        '{"health_fail": 1}',
        '{"version": ""}',
        '{"version": 2}',
        '{"colour": "red"}',
        '{"error_rate": 0.1, "latency": "slow"}',
        "[1, 2]",
        "not json",
    ]
    for body in bad_bodies:
        response = httpx.post(f"{app.url}/-/fault", content=body, timeout=5)
        assert response.status_code == 400, body
        assert "error" in response.json(), body
    assert app.fault() == before
    with pytest.raises(ProcessError, match="error_rate"):
        app.set_fault(error_rate=2)


def test_app_toml_sets_the_initial_version_and_a_restart_rereads_it(
    demoapp_factory: DemoAppFactory,
) -> None:
    """app.toml in the app dir sets version, error rate and latency at start; SIGTERM exits 0."""
    app = demoapp_factory(app_toml='version = "v2"\nerror_rate = 0.5\nlatency = 0.01\n')
    assert app.fault()["version"] == "v2"
    assert app.fault()["error_rate"] == 0.5
    assert total(parse_metrics(app.metrics()), "app_build_info", version="v2") == 1

    (app.directory / "app.toml").write_text('version = "v3"\n', encoding="utf-8")
    assert app.stop() == 0
    app.start()
    settings = app.fault()
    assert (settings["version"], settings["error_rate"], settings["latency"]) == ("v3", 0, 0)
    samples = parse_metrics(app.metrics())
    assert total(samples, "app_build_info", version="v3") == 1
    assert total(samples, "app_build_info", version="v2") == 0


def test_state_file_keeps_runtime_faults_across_a_restart(
    demoapp_factory: DemoAppFactory, tmp_path: Path
) -> None:
    """With --state-file, POSTed faults survive a restart, and DELETE /-/fault drops them."""
    app = demoapp_factory(traffic=0, state_file=tmp_path / "fault.json")
    app.set_fault(version="v9", health_fail=True)
    app.restart()
    assert app.fault()["version"] == "v9"
    assert app.get("/health").status_code == 503
    app.restart_in_place()
    assert app.fault()["version"] == "v9"
    assert app.clear_fault()["version"] == "v1"
    app.restart()
    assert app.get("/health").status_code == 200


def test_restart_reexecutes_the_app_on_its_pid_and_port_with_counters_from_nothing(
    demoapp_factory: DemoAppFactory,
) -> None:
    """POST /-/restart: same pid and port, app.toml read again, overrides and series gone."""
    app = demoapp_factory(traffic=0, app_toml='version = "v1"\n')
    app.set_fault(error_rate=1.0)
    assert app.get("/").status_code == 500
    assert app.get("/login").status_code == 500
    samples = parse_metrics(app.metrics())
    assert total(samples, "http_requests_total", code="500") == 2
    assert total(samples, "app_auth_attempts_total", result="failure") == 1
    pid = app.pid
    (app.directory / "app.toml").write_text('version = "v3"\n', encoding="utf-8")

    app.restart_in_place()
    assert app.pid == pid
    assert app.fault() == {
        "version": "v3",
        "error_rate": 0.0,
        "latency": 0.0,
        "gap": False,
        "health_fail": False,
    }
    samples = parse_metrics(app.metrics())
    assert not [key for key in samples if key[0].startswith(("http_requests", "app_auth"))]
    assert total(samples, "app_build_info", version="v3") == 1
    assert total(samples, "app_build_info", version="v1") == 0
    assert app.get("/").status_code == 200
    samples = parse_metrics(app.metrics())
    assert total(samples, "http_requests_total") == 1
    assert total(samples, "http_requests_total", code="500") == 0


def test_gap_hides_http_families_and_health_fail_answers_503(
    demoapp_factory: DemoAppFactory,
) -> None:
    """gap drops http_* and app_build_info from /metrics; health_fail turns /health into 503."""
    app = demoapp_factory(traffic=0)
    app.set_fault(gap=True, health_fail=True)
    names = {family.name for family in text_string_to_metric_families(app.metrics())}
    assert names == {"app_auth_attempts", "app_data_loss_events"}
    assert app.get("/health").status_code == 503
    assert app.get("/").status_code == 200

    app.set_fault(gap=False, health_fail=False)
    names = {family.name for family in text_string_to_metric_families(app.metrics())}
    assert {"http_requests", "http_request_duration_seconds", "app_build_info"} <= names
    assert app.get("/health").text == "ok\n"


def test_latency_slows_requests_and_shows_in_the_histogram(
    demoapp_factory: DemoAppFactory,
) -> None:
    """latency 0.3 makes / take at least 0.3 s and lands in the histogram above 0.3."""
    app = demoapp_factory(traffic=0)
    app.set_fault(latency=0.3)
    started = time.monotonic()
    assert app.get("/clients").status_code == 200
    assert time.monotonic() - started >= 0.3
    samples = parse_metrics(app.metrics())
    assert total(samples, "http_request_duration_seconds_bucket", le="0.3") == 0
    assert total(samples, "http_request_duration_seconds_bucket", le="0.4") == 1


def test_prometheus_scrapes_the_app_and_sees_rate_and_version_change(
    demoapp_factory: DemoAppFactory, prometheus_factory: PrometheusFactory
) -> None:
    """Prometheus sees the request rate, then only the new version, and keeps data over a crash."""
    app = demoapp_factory(traffic=20)
    prometheus = prometheus_factory(
        [("demo", app.target, {"env": "test"})], rule_files=[RECORDING_RULE]
    )

    rate = "sum by (service) (rate(http_requests_total[10s]))"
    result = prometheus.wait_for(rate, lambda r: values(r, "service").get("web", 0) > 0)
    assert set(values(result, "service")) == {"web"}
    prometheus.wait_for("service:http_requests:rate10s", lambda r: "web" in values(r, "service"))

    app.set_fault(version="v2")
    result = prometheus.wait_for(
        "app_build_info == 1", lambda r: values(r, "version") == {"v2": 1.0}
    )
    assert result[0]["metric"]["env"] == "test"

    prometheus.kill()
    prometheus.start()
    history = prometheus.query('count_over_time(app_build_info{version="v1"}[5m])')
    assert values(history, "service")["web"] >= 1


def test_backfilled_history_of_two_services_answers_range_queries(
    prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    """Two hours of promtool-backfilled history for two services come back from query_range."""
    start = float(int(time.time()) // 60 * 60 - 4 * 3600)
    end = start + 2 * 3600
    rates = {"web": 10.0, "api": 4.0}
    requests = openmetrics_family(
        "http_requests_total",
        [
            ({"service": service, "code": "200"}, counter_points(start, end, 60, per_second))
            for service, per_second in rates.items()
        ],
        kind="counter",
        help_text="backfilled requests",
    )
    build = openmetrics_family(
        "app_build_info",
        [
            ({"service": "web", "version": "v1"}, gauge_points(start, end, 60, 1)),
            ({"service": "api", "version": "v7"}, gauge_points(start, end, 60, 1)),
        ],
    )
    storage = tmp_path / "history"
    backfill(openmetrics_document(requests, build), storage)
    prometheus = prometheus_factory(storage_dir=storage)

    query = "sum by (service) (rate(http_requests_total[5m]))"
    matrix = prometheus.query_range(query, start + 600, end, 600)
    by_service = {s["metric"]["service"]: s["values"] for s in matrix}
    assert set(by_service) == {"web", "api"}
    for service, per_second in rates.items():
        points = by_service[service]
        assert [float(t) for t, _ in points] == [start + 600 * i for i in range(1, 13)]
        assert [float(v) for _, v in points] == pytest.approx([per_second] * 12, rel=1e-3)
    versions = prometheus.query("app_build_info", at=start + 3600)
    assert values(versions, "version") == {"v1": 1.0, "v7": 1.0}


def test_openmetrics_helpers_write_what_promtool_needs() -> None:
    """The helpers sort samples, name counter samples *_total, end with # EOF, refuse repeats."""
    series = openmetrics_series("errors", {"service": 'a"b'}, [(20, 2), (10, 1)], kind="counter")
    assert series.splitlines() == [
        'errors_total{service="a\\"b"} 1.0 10.000',
        'errors_total{service="a\\"b"} 2.0 20.000',
    ]
    family = openmetrics_family("errors_total", [({}, [(10, 1)])], kind="counter")
    assert family.splitlines() == ["# TYPE errors counter", "errors_total 1.0 10.000"]
    assert openmetrics_document(family).endswith("\n# EOF\n")
    with pytest.raises(ValueError, match="two samples"):
        openmetrics_series("g", {}, [(10, 1), (10, 2)])
    with pytest.raises(ValueError, match="decreases"):
        openmetrics_series("c", {}, [(10, 2), (20, 1)], kind="counter")


def test_backfill_raises_with_promtool_output_on_bad_text(tmp_path: Path) -> None:
    """Text without the final # EOF makes backfill raise with promtool's own message."""
    require_prometheus()
    with pytest.raises(ProcessError, match="# EOF"):
        backfill("# TYPE g gauge\ng 1 1700000000\n", tmp_path / "storage")


def test_missing_prometheus_fails_the_test_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without /usr/bin/prometheus the fixtures fail (never skip) and say how to install it."""
    monkeypatch.setattr(fixtures, "PROMETHEUS_BIN", tmp_path / "no-prometheus")
    with pytest.raises(pytest.fail.Exception, match=r"install Debian package prometheus \(make"):
        require_prometheus()
