"""The Prometheus source against a loopback server that misbehaves on purpose.

Real Prometheus is exercised in tests/integration; here a small HTTP server
answers the API's shapes, garbage, slowness and errors, so every way a query
can go wrong is shown to end as missing data with a reason.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.sources.prometheus import MAX_POINTS, PrometheusSource, QueryError, chunks
from tests.reliability.support import Reply, StubServer

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


# -- a Prometheus (or a proxy in front of it) that misbehaves on the wire ------------------------

VECTOR_HEAD = b'{"status":"success","data":{"resultType":"vector","result":['
SERIES = b'{"metric":{"service":"web"},"value":[1700000000,"1"]},'


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """A stub Prometheus whose answer each test sets in ``stub.reply``."""
    replies: list[Reply] = []
    server = StubServer(lambda _request: replies[-1]).start()
    server.replies = replies  # type: ignore[attr-defined]
    yield server
    server.stop()


def answering(stub: StubServer, reply: Reply) -> str:
    stub.replies.append(reply)  # type: ignore[attr-defined]
    return stub.url


def test_headers_trickled_a_byte_at_a_time_are_cut_off_at_the_timeout(stub: StubServer) -> None:
    """Each byte arrives well within the read timeout; the whole call still ends at 300ms."""
    url = answering(stub, Reply(200, json.dumps(vector()).encode(), trickle_headers=0.1))
    started = time.monotonic()
    result = source(url, timeout=0.3).instant("up", AT)
    assert result.error == f"Prometheus at {url} did not answer within 300ms"
    assert time.monotonic() - started < 5  # the trickle alone takes 9s


def test_an_endless_answer_is_refused_at_the_size_cap(stub: StubServer) -> None:
    """Read as it arrives and dropped at the cap: an answer without end costs the cap, no more."""
    url = answering(stub, Reply(200, VECTOR_HEAD, endless=SERIES * 100))
    result = PrometheusSource(url, timedelta(seconds=10), max_bytes=1 << 20).instant("up", AT)
    assert result.error == (
        f"Prometheus at {url} answered more than 1 MiB "
        "(the limit is [prometheus] max_response_bytes)"
    )


def test_an_announced_oversize_answer_is_refused(stub: StubServer) -> None:
    """A Content-Length over the cap is refused; the same answer under the default cap counts."""
    series = (b'{"metric":{"service":"svc-%d"},"value":[1,"1"]}' % i for i in range(30_000))
    url = answering(stub, Reply(200, VECTOR_HEAD + b",".join(series) + b"]}}"))
    result = PrometheusSource(url, timedelta(seconds=10), max_bytes=1 << 20).instant("up", AT)
    assert result.error is not None and "answered more than 1 MiB" in result.error
    whole = PrometheusSource(url, timedelta(seconds=10)).instant("up", AT)
    assert len(whole.numbers) == 30_000


def test_deeply_nested_json_is_a_reason_for_every_kind_of_query(stub: StubServer) -> None:
    """50,000 nested arrays, which raised RecursionError out of the cycle, is a reason."""
    url = answering(stub, Reply(200, VECTOR_HEAD + b"[" * 50_000 + b"]" * 50_000 + b"]}}"))
    why = (
        f"Prometheus at {url} answered something that is not its API: "
        "JSON nested more than 64 levels deep"
    )
    prometheus = source(url)
    assert prometheus.instant("up", AT).error == why
    assert prometheus.range("up", AT, AT + timedelta(minutes=1), timedelta(seconds=30)).error == why
    with pytest.raises(QueryError, match="nested more than 64 levels deep"):
        prometheus.labels_over_time("up", "version", AT, AT, timedelta(seconds=30))


def test_a_value_nested_hundreds_of_levels_deep_is_that_service_s_reason(
    stub: StubServer,
) -> None:
    """orjson reads 900 levels (its limit is 1,024): the odd value is named, never printed."""
    deep = b"[" * 900 + b"1" + b"]" * 900
    body = VECTOR_HEAD + b'{"metric":{"service":"api"},"value":[1,' + deep + b"]}," + SERIES[:-1]
    url = answering(stub, Reply(200, body + b"]}}"))
    result = source(url).instant("up", AT)
    assert result.numbers == {"web": 1.0}
    assert result.get("api").reason == "the value is a JSON list"


def test_a_giant_number_is_a_reason(stub: StubServer) -> None:
    """5,000 digits (Python refuses to make an int of them) is named, not a crash."""
    body = VECTOR_HEAD + b'{"metric":{"service":"web"},"value":[' + b"9" * 5000 + b',"1"]}]}}'
    url = answering(stub, Reply(200, body))
    assert source(url).instant("up", AT).error == (
        f"Prometheus at {url} answered something that is not its API: "
        "a number longer than 100 characters"
    )


def test_a_label_that_is_not_valid_unicode_is_no_service(stub: StubServer) -> None:
    """A lone surrogate (valid JSON, invalid text) names no service; the others still count."""
    body = VECTOR_HEAD + b'{"metric":{"service":"\\ud800"},"value":[1,"5"]},' + SERIES[:-1] + b"]}}"
    url = answering(stub, Reply(200, body))
    result = source(url).instant("up", AT)
    assert result.numbers == {"web": 1.0}


def test_one_look_at_the_versions_skips_only_the_odd_series(stub: StubServer) -> None:
    """A cycle's look at the version metric keeps every well-formed series, and skips each
    one without a usable service or version wherever it stands among them."""
    series = [
        b'{"metric":{"service":"web","version":"v2"},"value":[1700000000,"1"]}',
        b'"junk"',
        b'{"metric":{"service":"api","version":""},"value":[1700000000,"1"]}',
        b'{"metric":{"service":"db"},"value":[1700000000,"1"]}',
        b'{"metric":{"service":"q\\ud800","version":"v1"},"value":[1700000000,"1"]}',
        b'{"metric":{"service":"w\xc3\xa9b","version":"v1"},"value":[1700000000,"1"]}',
        b'{"metric":{"service":7,"version":"v1"},"value":[1700000000,"1"]}',
        b'{"metric":{"service":"api","version":"a7"},"value":[1700000000,"1"]}',
        b'{"metric":["service","api"],"value":[1700000000,"1"]}',
        b'{"metric":{"service":"api","version":"a8"},"value":[1700000000,"1"]}',
    ]
    url = answering(stub, Reply(200, VECTOR_HEAD + b",".join(series) + b"]}}"))
    seen = source(url).labels_over_time("v", "version", AT, AT, timedelta(seconds=15))
    assert seen == {"web": {"v2": [AT]}, "wéb": {"v1": [AT]}, "api": {"a7": [AT], "a8": [AT]}}


def test_one_look_at_many_services_gives_each_the_version_it_runs(stub: StubServer) -> None:
    """Services sharing a version and services on another each get their own version."""
    runs = {f"s{index}": ("v2" if index % 3 else "v1") for index in range(30)}
    series = [
        f'{{"metric":{{"service":"{name}","version":"{version}"}},"value":[1700000000,"1"]}}'
        for name, version in runs.items()
    ]
    url = answering(stub, Reply(200, VECTOR_HEAD + ",".join(series).encode() + b"]}}"))
    seen = source(url).labels_over_time("v", "version", AT, AT, timedelta(seconds=15))
    assert seen == {name: {version: [AT]} for name, version in runs.items()}


def test_one_look_at_the_versions_of_a_rollout_keeps_both(stub: StubServer) -> None:
    """A well-formed answer where one service runs two versions (a rollout half done)."""
    series = [
        b'{"metric":{"service":"web","version":"v1","pod":"a"},"value":[1700000000,"1"]}',
        b'{"metric":{"service":"api","version":"a1"},"value":[1700000000,"1"]}',
        b'{"metric":{"service":"web","version":"v2"},"value":[1700000000,"1"]}',
    ]
    url = answering(stub, Reply(200, VECTOR_HEAD + b",".join(series) + b"]}}"))
    seen = source(url).labels_over_time("v", "version", AT, AT, timedelta(seconds=15))
    assert seen == {"web": {"v1": [AT], "v2": [AT]}, "api": {"a1": [AT]}}


_LABELS = st.one_of(
    st.none(), st.sampled_from(["web", "api", "", "w\u00e9b", "q\ud800", 7]), st.text(max_size=3)
)
_VALUES = st.one_of(
    st.sampled_from(["0.5", "1e+06", "-0", "NaN", "+Inf", "-Inf", "x", "", "1_0"]),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=150, deadline=None)
@given(
    series=st.lists(
        st.tuples(
            _LABELS, st.dictionaries(st.sampled_from(["pod", "le", "job"]), st.text()), _VALUES
        ),
        max_size=8,
    )
)
def test_any_vector_answer_reads_as_each_series_says(
    url: str, series: list[tuple[object, dict[str, object], object]]
) -> None:
    """Whatever the labels and values, a service with one series and a finite number has it,
    and each other service the answer names has a reason; nothing else has a value."""
    body = vector()
    for label, extra, value in series:
        metric: dict[str, object] = dict(extra)
        if label is not None:
            metric["service"] = label
        body["data"]["result"].append({"metric": metric, "value": [1.5, value]})
    query = f"property-{next(_PROPERTY)}"
    _Handler.answers[query] = json.dumps(body)
    result = source(url).instant(query, AT)
    named = [s for s, _, _ in series if _usable(s)]
    expected: dict[str, float] = {}
    for service, _, value in series:
        number = _finite(value)
        if named.count(service) == 1 and number is not None:
            expected[str(service)] = number
    assert result.numbers == expected
    assert set(result.problems) == set(named) - set(expected)
    assert (result.error is not None) == (bool(series) and not named)


_PROPERTY = itertools.count()


def _usable(label: object) -> bool:
    """A service label: a non-empty string that is valid Unicode."""
    if not isinstance(label, str) or not label:
        return False
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def test_a_range_sample_at_an_impossible_time_is_skipped_not_the_answer(stub: StubServer) -> None:
    """One sample stamped past what any clock reads (1.7e308 s): the rest of it still counts."""
    body = (
        b'{"status":"success","data":{"resultType":"matrix","result":['
        b'{"metric":{"service":"web"},"values":[[1700000000,"1"],[1.7e308,"2"]]},'
        b'{"metric":{"service":"api"},"values":[[1700000000,"3"]]}]}}'
    )
    url = answering(stub, Reply(200, body))
    start = datetime.fromtimestamp(1700000000, UTC)
    matrix = source(url).range("up", start, start, timedelta(seconds=30))
    assert matrix.error is None
    assert matrix.series == {"web": {1700000000000: 1.0}, "api": {1700000000000: 3.0}}


PARTIAL_ANSWERS = [
    pytest.param(
        {"warnings": ["No StoreAPIs matched for this query", "store 10.0.0.7:10901 timed out"]},
        "answered with warnings, so its values are not trusted: "
        "No StoreAPIs matched for this query; store 10.0.0.7:10901 timed out",
        id="thanos-partial-response",
    ),
    pytest.param(
        {"isPartial": True},
        "answered only in part (isPartial: some of its storage did not answer)",
        id="victoriametrics-cluster",
    ),
    pytest.param(
        {"warnings": "one\nstring\x1b[31m"},
        "answered with warnings, so its values are not trusted: one string [31m",
        id="odd-warnings",
    ),
]


@pytest.mark.parametrize(("extra", "said"), PARTIAL_ANSWERS)
def test_an_answer_that_says_it_is_partial_is_no_data_for_every_kind_of_query(
    stub: StubServer, extra: dict[str, Any], said: str
) -> None:
    """A store or storage node that did not answer (Thanos, VictoriaMetrics cluster): the
    values that did come are a part read as if whole, so every kind of query has no data."""
    answer = vector(({"service": "web", "version": "v1"}, "0.01")) | extra
    url = answering(stub, Reply(200, json.dumps(answer).encode()))
    why = f"Prometheus at {url} {said}"
    prometheus = source(url)
    assert prometheus.instant("up", AT).error == why
    ranged = {"status": "success", "data": {"resultType": "matrix", "result": []}} | extra
    url = answering(stub, Reply(200, json.dumps(ranged).encode()))
    assert prometheus.range("up", AT, AT + timedelta(minutes=1), timedelta(seconds=30)).error == why
    url = answering(stub, Reply(200, json.dumps(answer).encode()))
    with pytest.raises(QueryError, match=re.escape(why)):
        prometheus.labels_over_time("up", "version", AT, AT, timedelta(seconds=30))
    with pytest.raises(QueryError, match=re.escape(why)):
        prometheus.labels_over_time("up", "version", AT, AT + timedelta(minutes=1), timedelta(30))


def test_a_partial_answer_with_a_value_read_the_careful_way_is_no_data(stub: StubServer) -> None:
    """NaN sends an answer to the careful reading: its warnings are read there too."""
    answer = vector(({"service": "web"}, "NaN")) | {"warnings": ["store down"]}
    url = answering(stub, Reply(200, json.dumps(answer).encode()))
    assert source(url).instant("up", AT).error == (
        f"Prometheus at {url} answered with warnings, so its values are not trusted: store down"
    )


def test_a_whole_answer_and_promql_infos_leave_the_values_counted(stub: StubServer) -> None:
    """Thanos sends an empty list with complete answers; Prometheus 2.46-2.53 sent PromQL's
    infos (a counter not named _total, deliberately) among its warnings: the values count."""
    info = (
        "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/"
        '_bucket: "requests" (1:6)'
    )
    for extra in ({"warnings": [], "isPartial": False}, {"warnings": [info]}):
        answer = vector(({"service": "web"}, "0.5")) | extra
        url = answering(stub, Reply(200, json.dumps(answer).encode()))
        assert source(url).instant("up", AT).numbers == {"web": 0.5}, extra


_TIMES = st.one_of(
    st.integers(1_600_000_000, 1_900_000_000),
    st.floats(1.6e9, 1.9e9),
    st.sampled_from([1.7e308, -1e20, "1700000000", "x", None]),
)


@settings(max_examples=150, deadline=None)
@given(
    series=st.lists(
        st.tuples(_LABELS, _LABELS, st.lists(_TIMES, max_size=4)),
        max_size=6,
    )
)
def test_any_version_history_reads_as_each_series_says(
    url: str, series: list[tuple[object, object, list[object]]]
) -> None:
    """Whatever the labels and sample times, a week of the version metric gives each series
    with a usable service and version the times it was present at, and nothing else."""
    result = [
        {
            "metric": {
                **({"service": service} if service is not None else {}),
                **({"version": version} if version is not None else {}),
            },
            "values": [[time_, "1"] for time_ in times],
        }
        for service, version, times in series
    ]
    query = f"property-{next(_PROPERTY)}"
    _Handler.answers[query] = json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": result}}
    )
    seen = source(url).labels_over_time(query, "version", AT, AT + timedelta(hours=1), _MINUTE)
    expected: dict[str, dict[str, list[datetime]]] = {}
    for service, version, times in series:
        if not (_usable(service) and _usable(version)):
            continue
        present = expected.setdefault(str(service), {}).setdefault(str(version), [])
        present.extend(moment for moment in map(_moment, times) if moment is not None)
    assert seen == expected


_MINUTE = timedelta(minutes=1)


def _moment(raw: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(raw), UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return None


@pytest.mark.parametrize("configured", [None, "Bearer configured-token"])
def test_a_netrc_entry_for_the_host_is_never_sent(
    stub: StubServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, configured: str | None
) -> None:
    """A ~/.netrc (or $NETRC) naming Prometheus' host adds no credentials the config does
    not name, and does not replace the Authorization the config sets."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    url = answering(stub, Reply(200, json.dumps(vector()).encode()))
    headers = {"Authorization": configured} if configured else None
    PrometheusSource(url, timedelta(seconds=5), headers=headers).instant("up", AT)
    [received] = stub.received
    assert received.headers.get("Authorization") == configured
