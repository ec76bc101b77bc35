"""The Prometheus source against a loopback server that misbehaves on purpose.

Real Prometheus is exercised in tests/integration; here a small HTTP server
answers the API's shapes, garbage, slowness and errors, so every way a query
can go wrong is shown to end as missing data with a reason.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from rollbackd.sources.prometheus import MAX_POINTS, PrometheusSource, chunks

AT = datetime(2026, 5, 1, 12, tzinfo=UTC)


def vector(*samples: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [AT.timestamp(), v]} for m, v in samples],
        },
    }


class _Handler(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, Any]] = {}
    seen: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        params = parse_qs(parts.query)
        type(self).seen.append(params)
        query = params.get("query", [""])[0]
        answer = type(self).answers.get(query)
        if query == "slow":
            time.sleep(1.5)
        if isinstance(answer, tuple):
            status, body = answer
        else:
            status, body = 200, answer
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.answers.update(
        {
            "ok": vector(({"service": "web"}, "0.2"), ({"service": "api"}, "0.01")),
            "nan": vector(({"service": "web"}, "NaN"), ({"service": "api"}, "+Inf")),
            "dupes": vector(({"service": "web", "pod": "a"}, "1"), ({"service": "web"}, "2")),
            "unlabelled": vector(({"job": "web"}, "1")),
            "scalar": {
                "status": "success",
                "data": {"resultType": "scalar", "result": [AT.timestamp(), "1"]},
            },
            "garbage": "<html>this is a proxy login page</html>",
            "wrongshape": {"status": "success", "data": {}},
            "bad": (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
            "slow": vector(({"service": "web"}, "1")),
            "versions": {
                "status": "success",
                "data": {
                    "resultType": "matrix",
                    "result": [
                        {
                            "metric": {"service": "web", "version": "v2"},
                            "values": [[AT.timestamp(), "1"], "junk", [AT.timestamp() + 30, "1"]],
                        },
                        {
                            "metric": {"service": "api", "version": "a7"},
                            "values": [[AT.timestamp(), "1"]],
                        },
                    ],
                },
            },
        }
    )
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def source(url: str, timeout: float = 1.0) -> PrometheusSource:
    return PrometheusSource(url, timedelta(seconds=timeout))


def test_an_instant_vector_is_keyed_by_service(url: str) -> None:
    """One query, one value per service, at the time asked for."""
    result = source(url).instant("ok", AT)
    assert result.get("web").value == 0.2
    assert result.get("api").value == 0.01
    assert result.get("db").is_missing
    assert result.get("db").reason == "no series for this service"
    assert _Handler.seen[-1]["time"] == [str(AT.timestamp())]


def test_nan_and_inf_are_missing_not_values(url: str) -> None:
    """A ratio over no traffic is NaN: no data, never zero and never healthy."""
    result = source(url).instant("nan", AT)
    assert result.get("web").is_missing
    assert "NaN" in result.get("web").reason
    assert result.get("api").reason == "the value is +Inf"


def test_two_series_for_one_service_are_ambiguous(url: str) -> None:
    """A query not aggregated by service cannot say which value counts."""
    reason = source(url).instant("dupes", AT).get("web").reason
    assert reason == "2 series for this service: aggregate the query by service"


def test_a_malformed_sample_of_a_version_metric_is_skipped_not_fatal(url: str) -> None:
    """Deploys are still placed from the samples that are well formed."""
    seen = source(url).labels_over_time(
        "versions", "version", AT, AT + timedelta(seconds=30), timedelta(seconds=30)
    )
    assert seen == {
        "web": {"v2": [AT, AT + timedelta(seconds=30)]},
        "api": {"a7": [AT]},
    }


def test_a_result_without_service_labels_says_so(url: str) -> None:
    """Every service is missing, with the reason naming the label."""
    result = source(url).instant("unlabelled", AT)
    assert result.error == "no series in the result has a 'service' label"
    assert result.get("web").reason == result.error


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("scalar", "the query does not return an instant vector"),
        ("garbage", "answered something that is not its API"),
        ("wrongshape", "answered something that is not its API"),
        ("bad", "refused the query: HTTP Status Code 400"),
        ("slow", "did not answer within 1s"),
    ],
)
def test_every_failure_is_a_missing_measurement_with_its_reason(
    url: str, query: str, expected: str
) -> None:
    """Garbage, errors and slowness never crash and never look healthy."""
    result = source(url).instant(query, AT)
    assert result.error is not None and expected in result.error
    assert result.get("web").is_missing


def test_an_unreachable_prometheus_is_reported_as_such() -> None:
    """A closed port is 'unreachable', for every rule."""
    result = source("http://127.0.0.1:9").instant("ok", AT)
    assert result.error == "Prometheus at http://127.0.0.1:9 is unreachable"


def test_range_queries_are_split_below_the_points_limit() -> None:
    """A week at 30s is 20,161 points: split so no request exceeds 11,000."""
    start = AT
    end = AT + timedelta(days=7)
    step = timedelta(seconds=30)
    pieces = list(chunks(start, end, step))
    assert pieces[0][0] == start
    assert pieces[-1][1] == end
    for (_, a_end), (b_start, _) in itertools.pairwise(pieces):
        assert b_start == a_end + step
    for piece_start, piece_end in pieces:
        assert (piece_end - piece_start) / step + 1 <= MAX_POINTS
