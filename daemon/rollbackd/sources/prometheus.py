"""PromQL queries over Prometheus' HTTP API, each bounded in time, size and shape.

One instant query per rule per cycle whatever the number of services: the
result is a vector keyed by its ``service`` label. Anything that is not a
usable number for a service (no series, NaN, ±Inf, a scalar instead of a
vector, two series for one service, Prometheus down, slow or answering
garbage, an answer that says it is partial or warns) becomes a *missing*
measurement with the reason, never a healthy value and never a crash. Errors
are translated here, at the boundary.

Every call (instant, range, label history) ends within ``[prometheus] timeout``
whatever the server does — never answering, trickling its headers or its body,
sending without end — and reads at most ``max_response_bytes`` of answer (see
:mod:`rollbackd.bounded`).

The three calls go to ``/api/v1/query`` and ``/api/v1/query_range`` directly,
on requests with the deadline session below. Each answer is first read the
quick way, by msgspec into what rollbackd reads of it and nothing else (see
:func:`_quick_decoder`); any surprise, and it is decoded whole by orjson and read
the careful way. prometheus-api-client did this before: all it added was the URL and
``response.json()``, the standard library's decoder, with no way to hand it
another, and at 10,000 services that decoding was most of a cycle's own CPU
(~285 of 357 ms). These three calls are all rollbackd asks of Prometheus, so
the client had no part left and is no longer used.

msgspec skips what it is not asked for, and raises RecursionError on deep
nesting: that answer goes to orjson, which parses no JSON deeper than 1,024
levels (in Rust: no Python recursion), reads every number as a float (no giant
Python integers) and refuses invalid UTF-8, bare NaN and Infinity. Only then
:func:`~rollbackd.bounded.json_problem` (nesting beyond
:data:`~rollbackd.bounded.MAX_JSON_DEPTH` levels, numbers longer than
:data:`~rollbackd.bounded.MAX_NUMBER_LENGTH` characters) says why an answer
orjson refused is refused, so that the common answer is read once. Valid JSON
that orjson refuses is a label with a lone surrogate (``"\\ud800"``), which no
Prometheus writes; the standard library reads it, after
:func:`~rollbackd.bounded.json_problem`, and that series names no service.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import msgspec
import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import HTTPResponse
from urllib3.util.retry import Retry

from rollbackd.bounded import TooLargeError, json_problem, read_capped, watch, within
from rollbackd.config import Config
from rollbackd.core.durations import format_duration
from rollbackd.core.model import Matrix, Measurement, Vector
from rollbackd.httpconfig import (
    TLSConfig,
    client_options,
    hide_in_logs,
    live_authorization,
    redact,
    redacted_line,
    secrets_sent,
    ssl_context,
    without_password,
)
from rollbackd.logs import get_logger
from rollbackd.text import one_line

log = get_logger("rollbackd")

__all__ = ["MAX_RESPONSE_BYTES", "Matrix", "PrometheusSource", "QueryError", "Vector", "chunks"]

MAX_POINTS = 11_000
"""Prometheus refuses range queries of more points than this per series."""
_CHUNK_POINTS = 10_000
MAX_RESPONSE_BYTES = 64 << 20
"""The default cap on one answer (``[prometheus] max_response_bytes``)."""
ERROR_LIMIT = 200
"""Characters kept of a failed call's error (a proxy's error page can be long)."""
_SHOWN_BYTES = 4 * ERROR_LIMIT
"""Of a refusal's body, the bytes its error is made from (redacted, then clipped to
:data:`ERROR_LIMIT` characters)."""


class _WatchedHTTPConnection(HTTPConnection):
    """A connection whose socket the running call's deadline cuts (see :mod:`rollbackd.bounded`)."""

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        if self.sock is not None:
            watch(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    """The TLS twin of :class:`_WatchedHTTPConnection`."""

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        if self.sock is not None:
            watch(self.sock)
        return super().getresponse()


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter on connections that the call's total deadline can cut; no retries.

    With ``tls`` set, HTTPS connections use the context it describes (its CA alone,
    its client certificate, its ``server_name`` for SNI and verification) instead
    of requests' own, which knows no server name and adds the system's CAs.
    """

    def __init__(self, tls: TLSConfig | None = None) -> None:
        self._tls = tls
        self._context = None if tls is None else ssl_context(tls)
        super().__init__(max_retries=Retry(total=0, connect=0, read=False, redirect=0, status=0))

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host, pool = super().build_connection_pool_key_attributes(request, verify, cert)
        if self._tls is None or self._context is None or host.get("scheme") != "https":
            return host, pool
        for key in ("ca_certs", "ca_cert_dir", "cert_file", "key_file"):
            pool.pop(key, None)
        pool["ssl_context"] = self._context
        pool["cert_reqs"] = "CERT_NONE" if self._tls.insecure_skip_verify else "CERT_REQUIRED"
        if self._tls.server_name:
            pool["server_hostname"] = self._tls.server_name
        return host, pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """requests would add its own CA bundle to the context: with ``tls`` it adds nothing."""
        if self._tls is None or not url.lower().startswith("https"):
            super().cert_verify(conn, url, verify, cert)
            return
        conn.cert_reqs = "CERT_NONE" if self._tls.insecure_skip_verify else "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


class LiveAuth(requests.auth.AuthBase):
    """Sets each request's ``Authorization`` to what ``current`` gives at that moment;
    ``sent`` is the last one set (see :meth:`_DeadlineSession.secrets`)."""

    def __init__(self, current: Callable[[], str]) -> None:
        self.current = current
        self.sent: str | None = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self.sent = request.headers["Authorization"] = self.current()
        return request


class _NoNetrc(requests.auth.AuthBase):
    """The auth of a session without credentials of its own: it adds nothing, and being set
    keeps requests from taking ``~/.netrc``'s (or ``$NETRC``'s) for the host, which would be
    sent without the config naming them, and in place of the ``Authorization`` it sets."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class _RefusedError(requests.RequestException):
    """A call that ends without an answer to parse (refused credentials, an answer over the
    size cap or beyond the JSON parse limits, a proxy that did not carry it); the message
    reads on from the server's name."""


class _DeadlineSession(requests.Session):
    """A session whose every request ends within ``total`` seconds and ``max_bytes``.

    requests' timeout bounds each socket operation, so a server trickling its
    headers or its body byte by byte could hold a cycle for ever: here the
    whole exchange (connect, headers, body) runs under one
    :func:`~rollbackd.bounded.within` deadline that cuts the connection when it
    passes. The body is read as it arrives, up to ``max_bytes``, and checked
    against the JSON parse limits before it is parsed (unless ``check_json`` is
    False: the caller parses with orjson, see the module's docstring).

    What the server or a proxy says goes into an error only through :meth:`said`,
    which takes out every secret the session sends: a refusal may echo the request.
    ``url``, the server's, is for that alone: a password in it is sent as basic auth.
    """

    def __init__(
        self,
        url: str,
        section: str,
        total: float,
        max_bytes: int,
        *,
        check_json: bool = True,
        headers: Mapping[str, str] | None = None,
        tls: TLSConfig | None = None,
        proxy_url: str | None = None,
        authenticated: bool = False,
        authorization: Callable[[], str] | None = None,
    ) -> None:
        """A session to the server at ``url`` as ``[section]`` describes it: ``headers``
        with every request, ``authorization`` (when given) giving each one's
        ``Authorization``, ``tls`` and ``proxy_url``; ``authenticated`` says whether the
        headers carry credentials, for the hint of a refusal."""
        super().__init__()
        self.total = total
        self.max_bytes = max_bytes
        self.refused_hint = (
            f"it refused rollbackd's credentials ([{section}] basic_auth or authorization)"
            if authenticated
            else f"it wants credentials: set [{section}] basic_auth or authorization"
        )
        self.limit_key = f"[{section}] max_response_bytes"
        self.check_json = check_json
        self.section = section
        self.server_url = url
        self.headers.update(headers or {})
        self.auth = _NoNetrc() if authorization is None else LiveAuth(authorization)
        if proxy_url is not None:
            self.proxies = {"http": proxy_url, "https": proxy_url}
        self.mount(url, _WatchedAdapter(tls))
        hide_in_logs(self.secrets())

    def secrets(self) -> list[str]:
        """What the session's requests carry and no message may show (see
        :func:`~rollbackd.httpconfig.secrets_sent`): the values of the headers set on it
        (not requests' own, such as ``Accept: */*``), the ``Authorization`` of its
        ``auth`` (the last one sent and the current one: its file may have been rotated
        since), and the passwords in the server's and the proxy's URLs."""
        own = requests.utils.default_headers()
        headers = {
            name: value if isinstance(value, str) else value.decode("latin-1")
            for name, value in self.headers.items()
            if value != own.get(name)
        }
        sent = []
        if isinstance(self.auth, LiveAuth):
            sent = [value for value in (self.auth.sent, self.auth.current()) if value]
        urls = [self.server_url, *self.proxies.values()]
        return secrets_sent(headers, urls, authorization=sent)

    def said(self, text: str, limit: int = ERROR_LIMIT) -> str:
        """What the server, a proxy, or the HTTP library quoting them said, fit for an
        error: one line of at most ``limit`` characters, without a secret of :meth:`secrets`."""
        return redacted_line(text, self.secrets(), limit)

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs["stream"] = True
        kwargs["allow_redirects"] = False  # a redirect is an error naming it: see _elsewhere
        with within(self.total) as deadline:
            try:
                return self._exchange(method, url, args, kwargs)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                if isinstance(exc, _RefusedError):
                    raise
                if deadline.expired or not deadline.left():
                    raise requests.Timeout(f"no whole answer within {self.total:g}s") from None
                if isinstance(exc, requests.exceptions.ProxyError):
                    raise _RefusedError(self._through_proxy(url, exc)) from None
                if isinstance(exc, requests.RequestException):
                    raise
                raise requests.ConnectionError(self.said(str(exc))) from None

    def _through_proxy(self, url: str | bytes, exc: requests.exceptions.ProxyError) -> str:
        """What went wrong with the proxy, which the server's own failures must not be
        mistaken for: the server was never asked (its password hidden)."""
        scheme = urlsplit(url.decode() if isinstance(url, bytes) else url).scheme
        proxy = self.proxies.get(scheme)
        where = (
            f"proxy {without_password(proxy)}"
            if proxy
            else "the proxy set in the environment (HTTP_PROXY, HTTPS_PROXY)"
        )
        return f"is unreachable through {where}: {_proxy_failure(exc, self.secrets())}"

    def _tenant_hint(self, response: requests.Response) -> str | None:
        """What to set if a refusal is Mimir's or Cortex's for want of a tenant, whatever
        credentials were sent: their answer is ``no org id``. Only that many bytes of it
        are read, and never shown."""
        try:
            if next(response.iter_content(len(_NO_TENANT)), b"") != _NO_TENANT:
                return None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            return None
        tenant = '{ "X-Scope-OrgID" = "<tenant>" }'
        return (
            f"no org id: it wants a tenant (Mimir, Cortex): set [{self.section}] headers = {tenant}"
        )

    def _exchange(
        self, method: str, url: str | bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> requests.Response:
        response = super().request(method, url, *args, **kwargs)
        if response.status_code in (401, 403):
            hint = self._tenant_hint(response) or self.refused_hint
            response.close()  # the rest is not read: a proxy's error page may echo the request
            answered = f"answered {response.status_code} {self.said(response.reason or '')}"
            raise _RefusedError(f"{answered.rstrip()}: {hint}")
        elsewhere = _elsewhere(response, self.section, self.said)
        if elsewhere is not None:
            response.close()
            raise _RefusedError(elsewhere)
        try:
            body = read_capped(
                response.iter_content(_READ_SIZE),
                self.max_bytes,
                response.headers.get("Content-Length"),
            )
        except TooLargeError as exc:
            raise _RefusedError(f"{exc} (the limit is {self.limit_key})") from None
        finally:
            response.close()
        problem = json_problem(body) if self.check_json and response.status_code == 200 else None
        if problem is not None:
            raise _RefusedError(f"answered something that is not its API: {problem}")
        response._content = body
        response._content_consumed = True
        return response


_READ_SIZE = 1 << 16
_NO_TENANT = b"no org id"


def _elsewhere(
    response: requests.Response, section: str, said: Callable[[str, int], str]
) -> str | None:
    """Why ``response`` comes from something other than the API ``[section] url`` should
    reach, and what to set: a redirect, a 404 (a path prefix missing from ``url``) or an
    HTML page (a login proxy in front); None if it may be the API's answer.

    A redirect is never followed: requests would carry the tenant and other headers to
    whatever host it names (it drops only ``Authorization``), on a connection without the
    section's TLS settings or the call's deadline. The error names the location instead.
    What the peer said (its reason phrase, the location) goes through ``said``, which
    takes out the secrets the request carried.
    """
    asked = urlsplit(response.url).path
    if response.is_redirect:
        told = f"redirected ({response.status_code} {said(response.reason or '', 40)})"
        try:
            target = urlsplit(urljoin(response.url, response.headers["Location"]))
        except ValueError:
            return f"{told} to an invalid location: [{section}] url must reach the API itself"
        api = asked[asked.rfind("/api/") :]
        netloc = target.netloc.rpartition("@")[2]
        where = urlunsplit(target._replace(netloc=netloc, query="", fragment=""))
        told += f" to {said(where, ERROR_LIMIT)}"
        if target.scheme in ("http", "https") and "/api/" in asked and where.endswith(api):
            base = said(where.removesuffix(api), ERROR_LIMIT)
            return (
                f'{told}: set [{section}] url = "{base}" (rollbackd follows no redirect: it '
                "would send the credentials and headers somewhere the config does not name)"
            )
        return (
            f"{told}, not to its API: is a login proxy (SSO) in front of it? rollbackd "
            f"follows no redirect: [{section}] url must reach the API itself"
        )
    if response.status_code == 404:
        return (
            f"answered 404 Not Found for {one_line(asked, ERROR_LIMIT)}: its API is not at "
            f"this URL; if it serves under a path prefix (--web.route-prefix, Mimir's "
            f"/{section}), [{section}] url must end with it"
        )
    kind = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if response.status_code == 200 and kind in ("text/html", "application/xhtml+xml"):
        return (
            f"answered something that is not its API: an HTML page ({kind}): is a login "
            f"proxy (SSO) in front of it? [{section}] url must reach the API itself, with "
            "the credentials it takes (basic_auth, authorization, headers)"
        )
    return None


class QueryError(Exception):
    """Prometheus did not answer usefully; the message says why in a sentence."""


_DECODING = threading.Lock()
"""Held while an answer is decoded and read (:meth:`PrometheusSource._answer`)."""


class PrometheusSource:
    """Queries one Prometheus server; every call bounded by ``timeout`` and ``max_bytes``."""

    def __init__(
        self,
        url: str,
        timeout: timedelta,
        service_label: str = "service",
        max_bytes: int = MAX_RESPONSE_BYTES,
        *,
        headers: Mapping[str, str] | None = None,
        tls: TLSConfig | None = None,
        proxy_url: str | None = None,
        authenticated: bool = False,
        authorization: Callable[[], str] | None = None,
    ) -> None:
        """``headers`` go with every call (the ``Authorization`` one too, see
        :func:`~rollbackd.httpconfig.request_headers`); ``tls`` and ``proxy_url`` as in
        ``[prometheus]``; ``authenticated`` says whether those headers carry credentials;
        ``authorization``, when given, gives the ``Authorization`` of each call instead
        (a secret file read again as it changes)."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.service_label = service_label
        self.client_cert = tls is not None and tls.cert_file is not None
        self._session = _DeadlineSession(
            self.url,
            "prometheus",
            timeout.total_seconds(),
            max_bytes,
            check_json=False,
            headers=headers,
            tls=tls,
            proxy_url=proxy_url,
            authenticated=authenticated,
            authorization=authorization,
        )
        self._quick_vector = _quick_decoder((service_label,), "value", tuple[float, float])
        self._quick_range = _quick_decoder((service_label,), "values", list[tuple[float, float]])
        self._quick_labels: dict[tuple[str, bool], msgspec.json.Decoder[Any]] = {}

    @classmethod
    def from_config(cls, config: Config) -> PrometheusSource:
        """The source ``[prometheus]`` describes, keyed by ``[alerts] service_label``.

        ``config`` must come from :func:`~rollbackd.config.load_config`, which reads the
        secret files.
        """
        prometheus = config.prometheus
        if prometheus.tls is not None and prometheus.tls.insecure_skip_verify:
            log.warning(
                "prometheus: TLS certificates are not verified (insecure_skip_verify)",
                url=prometheus.url,
            )
        return cls(
            prometheus.url,
            prometheus.timeout,
            config.alerts.service_label,
            prometheus.max_response_bytes,
            **client_options(prometheus),
            authorization=live_authorization("prometheus", prometheus),
        )

    def instant(self, query: str, at: datetime) -> Vector:
        """Evaluate ``query`` at ``at``; one value per service (or why there is none)."""
        try:
            with self._body("query", {"query": query, "time": at.timestamp()}) as body:
                answer = self._quickly(self._quick_vector, body)
                if answer is not None:
                    try:
                        return self._vector(answer.data.result)
                    except _NOT_QUICK:
                        pass
                result = self._result(body)
                if not isinstance(result, list):
                    return Vector(error="the query does not return an instant vector")
                return self._vector_carefully(result)
        except QueryError as exc:
            return Vector(error=str(exc))

    def _vector(self, result: list[Any]) -> Vector:
        """The answer read as Prometheus writes it (see :func:`_quick_decoder`); any surprise
        raises, for the careful reader."""
        numbers = {item.metric.l0: item.value[1] for item in result}
        if len(numbers) != len(result):
            raise ValueError("two series for one service: read carefully")
        # Each check once over all of them, in C: NaN or ±Inf anywhere makes the sum NaN or
        # ±Inf (as does an overflowing sum of finite values, read carefully too).
        if "" in numbers:
            raise ValueError("an empty label: read carefully")
        total = sum(numbers.values())
        if total - total != 0.0:
            raise ValueError("NaN or ±Inf: read carefully")
        return Vector(numbers)

    def _vector_carefully(self, result: list[Any]) -> Vector:
        """The answer checked item by item: each odd one is missing, with the reason."""
        label = self.service_label
        numbers: dict[str, float] = {}
        problems: dict[str, str] = {}
        counts: dict[str, int] = {}
        for item in result:
            if not isinstance(item, dict) or "value" not in item:
                return Vector(error="the query does not return an instant vector")
            service = _label(item, label)
            if service is None:
                continue
            if service in counts:
                counts[service] += 1
                numbers.pop(service, None)
                problems[service] = self._ambiguous(counts[service])
                continue
            counts[service] = 1
            measurement = _sample(item["value"])
            if measurement.value is not None:
                numbers[service] = measurement.value
            else:
                problems[service] = measurement.reason
        if result and not counts:
            return Vector(error=f"no series in the result has a {label!r} label")
        return Vector(numbers, problems)

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> Matrix:
        """Evaluate ``query`` over [start, end] every ``step``, in chunks Prometheus accepts.

        Sample times are unix milliseconds: a week of samples is millions of
        points, too many for a datetime each.
        """
        series: dict[str, dict[int, float]] = {}
        ambiguous: dict[str, str] = {}
        for chunk_start, chunk_end in chunks(start, end, step):
            try:
                with self._body("query_range", _range(query, chunk_start, chunk_end, step)) as body:
                    read = self._chunk(body)
            except QueryError as exc:
                return Matrix(error=str(exc))
            if read is None:
                return Matrix(error="the query does not return a range vector")
            counts: dict[str, int] = {}
            for service, points in read:
                counts[service] = counts.get(service, 0) + 1
                series.setdefault(service, {}).update(points)
            for service, count in counts.items():
                if count > 1:
                    ambiguous[service] = self._ambiguous(count)
        return Matrix(series, ambiguous=ambiguous)

    def _chunk(self, body: bytes) -> list[tuple[str, dict[int, float]]] | None:
        """A range answer's series, each as its service and its points (unix ms: value);
        None if it is not a range vector. A series naming no service is left out."""
        answer = self._quickly(self._quick_range, body)
        if answer is not None and all(item.metric.l0 for item in answer.data.result):
            try:
                return [
                    (item.metric.l0, {round(t * 1000): v for t, v in item.values})
                    for item in answer.data.result
                ]
            except (*_NOT_QUICK, OverflowError):  # a time past what milliseconds hold, too
                pass
        result = self._result(body)
        if not isinstance(result, list) or any(
            not isinstance(item, dict) or "values" not in item for item in result
        ):
            return None
        read = []
        for item in result:
            service = _label(item, self.service_label)
            if service is None:
                continue
            try:
                values = item["values"]
                times = [round(t * 1000) for t, _ in values]
                points = dict(zip(times, map(float, [v for _, v in values]), strict=True))
            except (TypeError, ValueError, OverflowError):
                points = dict(p for p in map(_point, item["values"] or ()) if p is not None)
            read.append((service, points))
        return read

    def labels_over_time(
        self, query: str, label: str, start: datetime, end: datetime, step: timedelta
    ) -> dict[str, dict[str, list[datetime]]]:
        """For each service, each value of ``label``: the times its series was present.

        Raises QueryError: without this history no deploy can be placed in time. The answer
        is read, never changed: services seen with the same value at one instant may share
        one inner mapping.
        """
        seen: dict[str, dict[str, list[datetime]]] = {}
        instants: dict[Any, datetime] = {}  # every series has the same sample times
        service_label = self.service_label
        if start == end:
            # One look (a live cycle): an instant query, the same on Prometheus. A range
            # query ending within VictoriaMetrics' -search.latencyOffset (30 s) of its clock
            # drops a point that has no earlier one in its range: it would answer nothing.
            return self._present(query, label, start)
        for chunk_start, chunk_end in chunks(start, end, step):
            with self._body("query_range", _range(query, chunk_start, chunk_end, step)) as body:
                quick = self._history_quickly(body, label, instants)
                result = self._result(body) if quick is None else None
            for service, value, times in quick or ():
                seen.setdefault(service, {}).setdefault(value, []).extend(times)
            for item in result if isinstance(result, list) else []:
                # The quick way first: every cycle reads this for every service, and a
                # week of it is millions of samples. Any surprise: the careful way.
                try:
                    service, value = _plain_labels(item, service_label, label)
                    times = [instants[raw[0]] for raw in item["values"]]
                except (TypeError, KeyError, IndexError, ValueError, AttributeError):
                    _presence_carefully(item, (service_label, label), seen, instants)
                    continue
                seen.setdefault(service, {}).setdefault(value, []).extend(times)
        return seen

    def _history_quickly(
        self, body: bytes, label: str, instants: dict[Any, datetime]
    ) -> list[tuple[str, str, list[datetime]]] | None:
        """A chunk of a label's history read the quick way (see :func:`_quick_decoder`):
        each series' service, value of ``label`` and sample times, the values skipped
        unread. None on any surprise: the chunk is read the careful way, whole.

        A week of the version metric is millions of samples: orjson made a list, an int
        and a string of each, most of the time before a backtest's first step."""
        answer = self._quickly(self._labels_decoder(label, history=True), body)
        if answer is None:
            return None
        read = []
        for item in answer.data.result:
            service, value = item.metric.l0, item.metric.l1
            if not service or not value:
                return None
            stamps = [moment.t for moment in item.values]
            try:
                times = list(map(instants.__getitem__, stamps))
            except KeyError:
                try:
                    instants.update({t: datetime.fromtimestamp(t, UTC) for t in stamps})
                except (ValueError, OverflowError, OSError):
                    return None
                times = list(map(instants.__getitem__, stamps))
            read.append((service, value, times))
        return read

    def _present(
        self, query: str, label: str, at: datetime
    ) -> dict[str, dict[str, list[datetime]]]:
        """:meth:`labels_over_time` at one instant: every cycle reads it for every service,
        so the quick way first, as for a range; a series with any surprise the careful way."""
        seen: dict[str, dict[str, list[datetime]]] = {}
        service_label = self.service_label
        quick = self._labels_decoder(label, history=False)
        with self._body("query", {"query": query, "time": at.timestamp()}) as body:
            answer = self._quickly(quick, body)
            metrics = None if answer is None else [item.metric for item in answer.data.result]
            if metrics is not None:
                services = [metric.l0 for metric in metrics]
                values = [metric.l1 for metric in metrics]
                if "" not in services and "" not in values:
                    # One look per version, shared by every service running it: at 10,000
                    # services a dict and a list each were a fifth of a cycle's reading.
                    looks = {value: {value: [at]} for value in set(values)}
                    seen = dict(zip(services, map(looks.__getitem__, values), strict=True))
                    if len(seen) == len(metrics):  # one version each, nearly always
                        return seen
                    seen = {}
                    for service, value in zip(services, values, strict=True):
                        seen.setdefault(service, {}).setdefault(value, []).append(at)
                    return seen
            result = self._result(body)
            for item in result if isinstance(result, list) else []:
                try:
                    service, value = _plain_labels(item, service_label, label)
                except (TypeError, KeyError, IndexError, ValueError, AttributeError):
                    careful = isinstance(item, dict)
                    found = _label(item, service_label) if careful else None
                    named = _label(item, label) if careful else None
                    if found is None or named is None:
                        continue
                    service, value = found, named
                seen.setdefault(service, {}).setdefault(value, []).append(at)
        return seen

    def _result(self, body: bytes) -> Any:
        """The answer's ``data.result``, parsed once (see the module's docstring)."""
        try:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                document = self._refused(body, exc)
        except (RecursionError, MemoryError) as exc:  # a backstop behind the parse limits
            raise self._unreadable(exc) from None
        if isinstance(document, dict):
            self._whole(document.get("warnings"), document.get("isPartial"))
        try:
            return document["data"]["result"]
        except (KeyError, TypeError, IndexError):
            raise self._not_its_api("no data.result in it") from None

    def _labels_decoder(self, label: str, *, history: bool) -> msgspec.json.Decoder[Any]:
        """The quick decoder of the service label and ``label``: of a history, each sample's
        time too (its value skipped); of one look, nothing else."""
        decoder = self._quick_labels.get((label, history))
        if decoder is None:
            labels = (self.service_label, label)
            decoder = (
                _quick_decoder(labels, "values", list[_Moment])  # type: ignore[valid-type]
                if history
                else _quick_decoder(labels)
            )
            self._quick_labels[(label, history)] = decoder
        return decoder

    def _quickly(self, decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
        """``body`` read by a quick ``decoder`` (see :func:`_quick_decoder`); None on any
        surprise, for the careful reading. QueryError if it says it is not whole."""
        try:
            answer = decoder.decode(body)
        except _NOT_QUICK:
            return None
        self._whole(answer.warnings, answer.isPartial)
        return answer

    def _whole(self, warnings: Any, partial: Any) -> None:
        """QueryError if the answer says it lacks data or may be wrong: a store, storage
        node or remote read that did not answer (Thanos' partial responses and remote
        reads give ``warnings``, VictoriaMetrics cluster ``isPartial``), or a PromQL
        warning (its engine saw data it could not use). Its values would be read as if
        whole, and what it left out as no data or, worse, as healthy. PromQL's infos
        (``PromQL info: …``, sent among the warnings before Prometheus 2.54 gave them
        ``infos``) may be deliberate, and are no reason."""
        if partial is True:
            raise QueryError(
                f"Prometheus at {self.url} answered only in part "
                "(isPartial: some of its storage did not answer)"
            )
        if not warnings:
            return
        said = warnings if isinstance(warnings, list) else [warnings]
        real = [str(w) for w in said if not str(w).startswith("PromQL info:")]
        if real:
            raise QueryError(
                f"Prometheus at {self.url} answered with warnings, so its values are not "
                f"trusted: {self._session.said('; '.join(real))}"
            )

    def _refused(self, body: bytes, exc: orjson.JSONDecodeError) -> Any:
        """Why orjson refused ``body``; or, for a lone surrogate, the standard library's
        reading of it (valid JSON: only the series with it names no service)."""
        problem = json_problem(body)
        if problem is None and "surrogate" in str(exc):
            try:
                return json.loads(body)
            except ValueError:
                pass
        raise self._not_its_api(problem or one_line(str(exc), ERROR_LIMIT)) from None

    def _not_its_api(self, why: str) -> QueryError:
        return QueryError(f"Prometheus at {self.url} answered something that is not its API: {why}")

    def _ambiguous(self, count: int) -> str:
        return f"{count} series for this service: aggregate the query by {self.service_label}"

    def _call(self, endpoint: str, params: Mapping[str, Any]) -> Any:
        """``data.result`` of the answer at ``/api/v1/<endpoint>``, decoded once, or
        QueryError saying why there is none; nothing else escapes."""
        with self._answer(endpoint, params) as result:
            return result

    @contextmanager
    def _answer(self, endpoint: str, params: Mapping[str, Any]) -> Iterator[Any]:
        """:meth:`_call`, its answer read within the block (see :meth:`_body`)."""
        with self._body(endpoint, params) as body:
            yield self._result(body)

    @contextmanager
    def _body(self, endpoint: str, params: Mapping[str, Any]) -> Iterator[bytes]:
        """The answer's body, to be decoded and read within the block while no other thread
        decodes one: at 10,000 services a decoded answer is tens of MiB of Python objects,
        and eight reading threads holding one each made the daemon's peak memory. The waits
        for Prometheus still overlap; decoding is bound by the interpreter's lock anyway."""
        body = self._fetch(endpoint, params)
        with _DECODING:
            yield body

    def _fetch(self, endpoint: str, params: Mapping[str, Any]) -> bytes:
        """The body of Prometheus' answer at ``/api/v1/<endpoint>``, or QueryError."""
        try:
            response = self._session.get(
                f"{self.url}/api/v1/{endpoint}",
                params=params,
                timeout=self.timeout.total_seconds(),
            )
            if response.status_code != 200:
                content = response.content
                body = redact(
                    content[:_SHOWN_BYTES].decode("utf-8", "surrogateescape"),
                    self._session.secrets(),
                    cut=len(content) > _SHOWN_BYTES,
                ).encode("utf-8", "surrogateescape")
                raise QueryError(
                    f"Prometheus at {self.url} refused the query: "
                    + one_line(f"HTTP Status Code {response.status_code} ({body!r})", ERROR_LIMIT)
                )
            return response.content
        except _RefusedError as exc:
            raise QueryError(f"Prometheus at {self.url} {exc}") from None
        except requests.Timeout:
            raise QueryError(
                f"Prometheus at {self.url} did not answer within {format_duration(self.timeout)}"
            ) from None
        except requests.ConnectionError as exc:
            tls = tls_failure(exc, self.client_cert)
            if tls is not None:
                raise QueryError(f"Prometheus at {self.url}: TLS failed: {tls}") from None
            raise QueryError(f"Prometheus at {self.url} is unreachable") from None
        except requests.RequestException as exc:
            raise QueryError(f"Prometheus at {self.url}: {self._session.said(str(exc))}") from None
        except MemoryError as exc:  # a backstop behind the size limit
            raise self._unreadable(exc) from None

    def _unreadable(self, exc: BaseException) -> QueryError:
        return QueryError(
            f"Prometheus at {self.url} answered what cannot be read: {type(exc).__name__}"
        )


def _quick_decoder(
    labels: tuple[str, ...], field: str | None = None, kind: Any = None
) -> msgspec.json.Decoder[Any]:
    """A decoder of an answer's ``data.result`` that keeps only what rollbackd reads: of each
    series, the ``labels`` of its metric (as ``metric.l0``, ``metric.l1``…) and ``field``
    (``value`` or ``values``) as ``kind``, its numbers' strings read as floats.

    At 10,000 services, orjson's whole tree of dicts, lists and strings, and reading one
    number per service out of it, were most of a cycle's own CPU; this builds no dict and
    converts in C. Any surprise (a label missing or not a string, a field of another
    shape, ``+Inf``, invalid UTF-8 or a lone surrogate, nesting beyond the recursion
    limit) raises, and the answer is read the careful way, as are empty labels, found
    after. Unknown fields and labels are skipped; every string read is valid Unicode.
    """
    metric = msgspec.defstruct(
        "Metric",
        [(f"l{index}", str) for index in range(len(labels))],
        rename={f"l{index}": label for index, label in enumerate(labels)},
        gc=False,
    )
    fields: list[tuple[str, Any]] = [("metric", metric)]
    if field is not None:
        fields.append((field, kind))
    series = msgspec.defstruct("Series", fields, gc=False)
    data = msgspec.defstruct("Data", [("result", list[series])], gc=False)  # type: ignore[valid-type]
    answer = msgspec.defstruct(
        "Answer",
        [("data", data), ("warnings", list[str] | None, None), ("isPartial", bool | None, None)],
        gc=False,
    )
    return msgspec.json.Decoder(answer, strict=False)


_Moment = msgspec.defstruct("Moment", [("t", float)], array_like=True, gc=False)
"""A sample read for its time alone: its value, the array's second element, is skipped."""

_NOT_QUICK = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RecursionError,
    MemoryError,
)
"""What sends an answer from the quick reading to the careful one (msgspec's errors are
ValueErrors; a MemoryError there meets the careful reading's backstop)."""


def _plain_labels(item: Any, service_label: str, label: str) -> tuple[str, str]:
    """A series' service and ``label``, read the quick way: any surprise (not a series, a
    label missing, empty, or not plain ASCII) raises, for the careful reader."""
    metric = item["metric"]
    service, value = metric[service_label], metric[label]
    if not (service and value and service.isascii() and value.isascii()):
        raise ValueError("empty, or perhaps not valid Unicode")
    return service, value


def tls_failure(exc: BaseException, client_cert: bool, section: str = "prometheus") -> str | None:
    """Why a TLS handshake failed, in words and with what to set, if that is what ``exc`` is.

    ``client_cert`` says whether rollbackd showed one: a server that wants one and got
    none answers much as one that refused it.

    requests wraps urllib3's error, which wraps the ssl module's: it is looked for
    through arguments, ``reason`` and causes (a bounded search).
    """
    cause = next((c for c in _causes(exc) if isinstance(c, ssl.SSLError)), None)
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = cause.verify_message or cause.reason or "verification failed"
        if "hostname" in detail.lower() or "ip address mismatch" in detail.lower():
            return f"its certificate is not for this host: {detail} ([{section}] tls.server_name)"
        return (
            f"its certificate is not trusted: {detail} "
            f"(set [{section}] tls.ca_file to the CA that signed it)"
        )
    reason = one_line(str(cause.reason or cause), ERROR_LIMIT)
    refused = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN")
    if any(alert in reason.upper() for alert in refused):
        if not client_cert:
            return (
                f"it requires a client certificate ({reason}): set [{section}] tls.cert_file "
                "and tls.key_file"
            )
        return f"it refused rollbackd's client certificate ({reason})"
    if client_cert and isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return f"{reason} (did it refuse rollbackd's client certificate?)"
    return reason


def _proxy_failure(exc: BaseException, secrets: list[str]) -> str:
    """Why a proxy did not carry a request, in words: it would not open a tunnel (its
    answer to ``CONNECT``, without ``secrets``), or it could not be reached (the system's
    reason: refused, TLS)."""
    causes = _causes(exc)
    for cause in causes:
        text = str(cause.args[0]) if cause.args else ""
        if type(cause) is OSError and text.startswith(_TUNNEL_FAILED):
            answer = redacted_line(text.removeprefix(_TUNNEL_FAILED), secrets, ERROR_LIMIT)
            return f"it did not open a tunnel to the server: it answered {answer}"
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return f"cannot connect to the proxy: {one_line(cause.strerror, ERROR_LIMIT)}"
    return "cannot connect to the proxy"


_TUNNEL_FAILED = "Tunnel connection failed: "
"""How urllib3 words a proxy's refusal of ``CONNECT`` (an OSError with its status line)."""


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (arguments, ``reason``, causes), nearest first: a bounded
    search, since a library's errors may wrap each other in a circle."""
    found: list[BaseException] = []
    pending: list[object] = [exc]
    while pending and len(found) < 32:
        item = pending.pop(0)
        if not isinstance(item, BaseException) or any(item is seen for seen in found):
            continue
        found.append(item)
        pending.extend(
            (*item.args, getattr(item, "reason", None), item.__cause__, item.__context__)
        )
    return found


def chunks(start: datetime, end: datetime, step: timedelta) -> Iterator[tuple[datetime, datetime]]:
    """Split [start, end] so that no range query asks for more than MAX_POINTS per series."""
    if step <= timedelta(0):
        raise ValueError("step must be positive")
    span = step * (_CHUNK_POINTS - 1)
    cursor = start
    while cursor <= end:
        chunk_end = min(cursor + span, end)
        yield cursor, chunk_end
        cursor = chunk_end + step


def _range(query: str, start: datetime, end: datetime, step: timedelta) -> dict[str, Any]:
    """A range query's parameters: whole seconds at both ends, the step in seconds."""
    return {
        "query": query,
        "start": round(start.timestamp()),
        "end": round(end.timestamp()),
        "step": f"{step.total_seconds():g}s",
    }


def _presence_carefully(
    item: Any,
    labels: tuple[str, str],
    seen: dict[str, dict[str, list[datetime]]],
    instants: dict[Any, datetime],
) -> None:
    """One series of a label's history checked step by step; malformed samples skipped."""
    if not isinstance(item, dict):
        return
    service, value = _label(item, labels[0]), _label(item, labels[1])
    if service is None or value is None:
        return
    times = seen.setdefault(service, {}).setdefault(value, [])
    samples = item.get("values") or []
    try:
        for raw in samples:
            if raw[0] not in instants:
                instants[raw[0]] = _instant(raw[0])
        times.extend([instants[raw[0]] for raw in samples])
    except (TypeError, IndexError, KeyError, ValueError, OverflowError, OSError):
        times.extend(_instants_carefully(samples))


def _label(item: dict[str, Any], name: str) -> str | None:
    """A label's value; None for none, an empty one, or one that is not valid Unicode
    (JSON can carry a lone surrogate, which no journal, log or page could write)."""
    metric = item.get("metric")
    if not isinstance(metric, dict):
        return None
    value = metric.get(name)
    if not isinstance(value, str) or not value:
        return None
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return value


def _sample(raw: Any) -> Measurement:
    """An instant sample's value, or why it is not a usable number."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return Measurement.missing("the sample is malformed")
    try:
        value = float(raw[1])
    except (TypeError, ValueError):
        if isinstance(raw[1], list | dict):  # orjson reads up to 1,024 levels: never repr'd
            return Measurement.missing(f"the value is a JSON {type(raw[1]).__name__}")
        return Measurement.missing(f"the value {one_line(repr(raw[1]), 80)} is not a number")
    return Measurement.of(value)  # NaN and ±Inf are missing, with the reason


def _point(raw: Any) -> tuple[int, float] | None:
    """A range sample as (unix ms, value); NaN and ±Inf are kept for Measurement.of to explain."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return None
    try:
        return round(float(raw[0]) * 1000), float(raw[1])
    except (TypeError, ValueError, OverflowError):
        return None


def _instants_carefully(samples: Any) -> list[datetime]:
    """The times of the samples that have one; malformed samples are skipped."""
    times = []
    for raw in samples if isinstance(samples, list) else ():
        try:
            times.append(_instant(raw[0]))
        except (TypeError, IndexError, KeyError, ValueError, OverflowError, OSError):
            continue
    return times


def _instant(raw: Any) -> datetime:
    return datetime.fromtimestamp(float(raw), tz=UTC)
