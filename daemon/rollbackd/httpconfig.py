"""How rollbackd's HTTP clients reach a server behind something: Prometheus' own ``http_config``.

``[prometheus]`` takes ``basic_auth``, ``authorization``, ``tls``, ``headers`` and
``proxy_url``; health and smoke probes and notifiers take ``headers`` and ``tls``.
The tables here are the config's; the functions build what the clients use
from them, once for all (requests for Prometheus, httpx for probes and
notifiers): the ``Authorization`` and other headers (:func:`request_headers`),
the TLS context (:func:`ssl_context`) and the sentence ``check-config`` prints
(:func:`describe`).

What a request carries is also what a peer can send back: a gateway or proxy that
echoes the request ("invalid token …", a debugging echo server, or a hostile one on
purpose) would have rollbackd repeat it in its logs, status and notifications. So
every message built from what a peer said (a refusal's body or reason phrase, an
HTTP library's error quoting what it could not parse) goes through :func:`redact`
or :func:`redacted_line` with :func:`secrets_sent`, and the HTTP libraries' own log
records through :func:`hide_in_logs`: each secret, in each form an echo may take
(:func:`echoed_forms`), becomes ``[redacted]``.

Secrets come only from files (``password_file``, ``credentials_file``, read at
load and every reload, and by the sources again whenever the file changes, see
:class:`LiveAuthorization`) or from the environment (``ROLLBACKD_PROMETHEUS__BASIC_AUTH__PASSWORD``,
``ROLLBACKD_PROMETHEUS__AUTHORIZATION__CREDENTIALS``), never from the config
file itself. They are held as :class:`~pydantic.SecretStr`, whose ``repr`` and
``str`` are stars, and no message built here contains one.
"""

from __future__ import annotations

import html
import json
import logging
import re
import ssl
import threading
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypedDict
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from rollbackd.logs import get_logger
from rollbackd.text import clip, one_line

log = get_logger("rollbackd")

MAX_SECRET_BYTES = 64 << 10
"""A secret file longer than this is refused: it is not a password or a token."""
MIN_SECRET = 4
"""Shorter strings are not redacted: replacing them everywhere would garble every reason."""
REDACTED = "[redacted]"

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP token (RFC 9110): a header's name, an authorization scheme."""

_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]{0,4096}$")
"""A header value every client sends as written: printable ASCII (and tabs), one line."""

RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "user-agent",
    }
)
"""Headers ``headers`` may not set (as Prometheus refuses them in ``http_headers``): the
client sets them itself, or ``basic_auth`` and ``authorization`` do."""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(_Table):
    """``tls``: Prometheus' ``tls_config``: whom to trust, and which certificate to show."""

    ca_file: Path | None = None
    """The CA certificates (PEM) the server's certificate must chain to; absent: the system's."""
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", max_length=253
    )
    """The name sent in SNI and that the certificate must carry, instead of the URL's host."""
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: a client certificate needs both")
        return self


def _secret_problem(text: str) -> str | None:
    """What makes ``text`` (white space around it removed) no secret, in a few words: a
    secret file's and an environment secret's one rule (a line break would be a header of
    its own); None if it is one."""
    if not text:
        return "is empty"
    if any(c in text for c in "\r\n\x00"):
        return "holds more than one line"
    return None


def check_secret(value: SecretStr | None) -> SecretStr | None:
    """A secret from the environment, held to a secret file's rules: white space around it
    removed, not empty, one line."""
    if value is None:
        return None
    text = value.get_secret_value().strip()
    problem = _secret_problem(text)
    if problem is not None:
        raise ValueError(f"the secret {problem}")
    return SecretStr(text)


class BasicAuthConfig(_Table):
    """``basic_auth``: a user name, and its password from a file or the environment."""

    username: str = Field(min_length=1, max_length=256, pattern=r"^[^:\x00-\x1f\x7f]+$")
    password_file: Path | None = None
    password: SecretStr | None = None
    """From ``ROLLBACKD_…__BASIC_AUTH__PASSWORD``, or read from ``password_file`` at load."""

    _password = field_validator("password")(check_secret)

    @model_validator(mode="after")
    def _one_source(self) -> BasicAuthConfig:
        if self.password_file is None and self.password is None:
            raise ValueError(
                "basic_auth needs password_file (or the password in the environment, "
                "ROLLBACKD_<SECTION>__BASIC_AUTH__PASSWORD)"
            )
        if self.password_file is not None and self.password is not None:
            raise ValueError(
                "basic_auth has both password_file and a password from the environment: keep one"
            )
        return self


class AuthorizationConfig(_Table):
    """``authorization``: an ``Authorization: <type> <credentials>`` header (a bearer token)."""

    type: str = Field(default="Bearer", pattern=_TOKEN.pattern, max_length=64)
    credentials_file: Path | None = None
    credentials: SecretStr | None = None
    """From ``ROLLBACKD_…__AUTHORIZATION__CREDENTIALS``, or read from ``credentials_file``."""

    _credentials = field_validator("credentials")(check_secret)

    @field_validator("type")
    @classmethod
    def _not_basic(cls, value: str) -> str:
        if value.lower() == "basic":
            raise ValueError("type 'Basic' is what basic_auth is for: use basic_auth instead")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> AuthorizationConfig:
        if self.credentials_file is None and self.credentials is None:
            raise ValueError(
                "authorization needs credentials_file (or the credentials in the environment, "
                "ROLLBACKD_<SECTION>__AUTHORIZATION__CREDENTIALS)"
            )
        if self.credentials_file is not None and self.credentials is not None:
            raise ValueError(
                "authorization has both credentials_file and credentials from the "
                "environment: keep one"
            )
        return self


def check_headers(value: dict[str, str]) -> dict[str, str]:
    """``headers``: names that are HTTP tokens and not reserved, values on one line."""
    seen: set[str] = set()
    for name, header in value.items():
        if not _TOKEN.match(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(
                f"{name!r} cannot be set here: the client sets it, or basic_auth and "
                "authorization do"
            )
        if name.lower() in seen:
            raise ValueError(f"{name!r} is set twice")
        seen.add(name.lower())
        if not _HEADER_VALUE.match(header):
            raise ValueError(
                f"the value of {name!r} must be one line of printable ASCII, at most 4096 "
                "characters: other characters are sent differently by each HTTP client"
            )
    return value


def check_proxy_url(value: str | None) -> str | None:
    """``proxy_url``: an http(s):// URL. Not SOCKS: its client library is not installed,
    and a proxy accepted here but failing every call would be found in the first incident."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme.startswith("socks"):
        raise ValueError("SOCKS proxies are not supported: use an http:// or https:// proxy")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// proxy URL")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    return value


def check_server_url(value: str) -> str:
    """``url`` of ``[prometheus]`` and ``[alertmanager]``: the base the API's paths go after.

    A user name and password in it would be sent, and shown wherever the URL is (messages,
    logs, the journal): ``basic_auth`` takes them, the password from a file. A query or
    fragment would end up before the API's path, and a port that is none (an IPv6
    address without brackets) would fail every call instead of ``check-config``.
    """
    parts = urlsplit(value)
    if "@" in parts.netloc:
        raise ValueError(
            "a user name or password in the URL would be shown in messages and logs: "
            "set basic_auth instead (its password in password_file)"
        )
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if parts.netloc.count(":") > 1 and not parts.netloc.startswith("["):
        raise ValueError("an IPv6 address goes in brackets: http://[::1]:9090")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or not parts.hostname:
        raise ValueError("expected a host, and a port from 1 to 65535 if any")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("a query or fragment cannot be in it: the API's paths go after the URL")
    return value


class SecretFileError(ValueError):
    """A secret file that cannot be used; the message says why, never what it holds."""


def read_secret(path: Path) -> SecretStr:
    """A password or token read from ``path``, surrounding white space removed (as Prometheus)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretFileError(f"{path} is longer than {MAX_SECRET_BYTES} bytes: not a secret")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretFileError(f"{path} is not UTF-8 text") from None
    problem = _secret_problem(text)
    if problem is not None:
        raise SecretFileError(f"{path} {problem}")
    return SecretStr(text)


class TLSFileError(ValueError):
    """A TLS file that cannot be used: ``key`` is the one at fault (``ca_file``, ``cert_file``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


def ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The client TLS context ``tls`` describes; raise TLSFileError naming the file at fault.

    With ``ca_file`` only those CAs are trusted (not the system's too), as in Prometheus.
    """
    try:
        context = ssl.create_default_context(cafile=None if tls.ca_file is None else tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSFileError("ca_file", _tls_file_reason(tls.ca_file, exc)) from None
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, ssl.SSLError):
                raise TLSFileError(
                    "cert_file",
                    f"{tls.cert_file} with key_file {tls.key_file}: "
                    + _pair_problem(tls.cert_file, tls.key_file, exc),
                ) from None
            key = "cert_file" if not tls.cert_file.is_file() else "key_file"
            raise TLSFileError(key, _tls_file_reason(getattr(tls, key), exc)) from None
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _pem_blocks(path: Path) -> set[str]:
    """The kinds of PEM block in ``path`` (``CERTIFICATE``, ``PRIVATE KEY``…), read only
    to say what is wrong with it: none if it cannot be read."""
    try:
        with path.open("rb") as file:
            head = file.read(MAX_SECRET_BYTES)
    except OSError:
        return set()
    return set(_PEM_BEGIN.findall(head.decode("ascii", "replace")))


_PEM_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")


def _pair_problem(cert_file: Path, key_file: Path, exc: ssl.SSLError) -> str:
    """Why a certificate and key cannot be used together, in words."""
    in_cert, in_key = _pem_blocks(cert_file), _pem_blocks(key_file)
    if "CERTIFICATE" not in in_cert and "CERTIFICATE" in in_key:
        return (
            "cert_file and key_file look swapped: cert_file holds no certificate, "
            "key_file holds one"
        )
    if exc.reason == "KEY_VALUES_MISMATCH":
        return "the key is not the certificate's (they do not belong together)"
    return f"not a certificate and its key ({exc.reason or exc})"


def _tls_file_reason(path: Path | None, exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{path}: not usable: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read {path}: {exc.strerror}"
    return f"{path}: not usable: {exc}"


def basic_credentials(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP basic auth (RFC 7617, UTF-8)."""
    return "Basic " + b64encode(f"{username}:{password}".encode()).decode("ascii")


class ServerSection(Protocol):
    """A config section that reaches one server as Prometheus' ``http_config`` does
    (``[prometheus]``, ``[alertmanager]``)."""

    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def basic_auth(self) -> BasicAuthConfig | None: ...
    @property
    def authorization(self) -> AuthorizationConfig | None: ...
    @property
    def tls(self) -> TLSConfig | None: ...
    @property
    def proxy_url(self) -> str | None: ...


class ClientOptions(TypedDict):
    """What a source's client takes from its section (see :func:`client_options`)."""

    headers: dict[str, str]
    tls: TLSConfig | None
    proxy_url: str | None
    authenticated: bool


def client_options(section: ServerSection) -> ClientOptions:
    """The headers (``Authorization`` included), TLS and proxy a section's client uses, and
    whether its headers carry credentials (a refusal is then "wrong credentials")."""
    return ClientOptions(
        headers=request_headers(section.headers, section.basic_auth, section.authorization),
        tls=section.tls,
        proxy_url=section.proxy_url,
        authenticated=section.basic_auth is not None or section.authorization is not None,
    )


def request_headers(
    headers: dict[str, str],
    basic_auth: BasicAuthConfig | None = None,
    authorization: AuthorizationConfig | None = None,
) -> dict[str, str]:
    """Every header one request carries: ``headers`` and the ``Authorization`` the config sets.

    A secret not yet read (a config parsed but not loaded) is a bug in the caller: it raises
    rather than send a request without the credentials the config asks for.
    """
    built = dict(headers)
    credentials = _credentials(basic_auth, authorization)
    if credentials is not None:
        built["Authorization"] = credentials.value(credentials.secret.get_secret_value())
    return built


@dataclass(frozen=True)
class _Credentials:
    """What ``basic_auth`` or ``authorization`` sends: the secret, the file it was read from
    (None: the environment), its key for messages, and the ``Authorization`` it makes."""

    key: str
    file: Path | None
    secret: SecretStr
    value: Callable[[str], str]


def _credentials(
    basic_auth: BasicAuthConfig | None, authorization: AuthorizationConfig | None
) -> _Credentials | None:
    """The credentials a section sets (at most one of the two: the config checks it)."""
    if basic_auth is not None:
        if basic_auth.password is None:
            raise RuntimeError("basic_auth.password_file was not read: load the config first")
        username = basic_auth.username
        return _Credentials(
            "basic_auth.password_file",
            basic_auth.password_file,
            basic_auth.password,
            lambda password: basic_credentials(username, password),
        )
    if authorization is not None:
        if authorization.credentials is None:
            raise RuntimeError("authorization.credentials_file was not read: load the config first")
        kind = authorization.type
        return _Credentials(
            "authorization.credentials_file",
            authorization.credentials_file,
            authorization.credentials,
            lambda credentials: f"{kind} {credentials}",
        )
    return None


class LiveAuthorization:
    """The ``Authorization`` value ``basic_auth`` or ``authorization`` gives, its file read
    again whenever it changes, as Prometheus reads it on every request.

    A password rotated in place (a Kubernetes secret volume, Vault agent) then applies
    from the next call, without a reload. Each call costs one ``stat``; the file is
    read only when its size, modification time or inode changed. A file that cannot
    be used any more (removed, emptied mid-write) keeps the last value, is read again
    on the next call, and is logged once per reason, never with what it holds.
    """

    def __init__(
        self, where: str, path: Path, loaded: SecretStr, build: Callable[[str], str]
    ) -> None:
        """``loaded`` is the secret read at load: sent until the file is read again."""
        self._where = where
        self._path = path
        self._build = build
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._value = build(loaded.get_secret_value())
        self._problem: str | None = None

    def __call__(self) -> str:
        """The value to send now."""
        with self._lock:
            try:
                status = self._path.stat()
                stamp = (status.st_size, status.st_mtime_ns, status.st_ino)
            except OSError as exc:
                self._refused(f"cannot read {self._path}: {exc.strerror or type(exc).__name__}")
                return self._value
            if stamp != self._stamp:
                try:
                    value = self._build(read_secret(self._path).get_secret_value())
                except SecretFileError as exc:
                    self._refused(str(exc))
                    return self._value
                if value != self._value:
                    hide_in_logs(secrets_sent({}, authorization=[value]))
                    log.info("secret file changed: the new value is sent", key=self._where)
                self._value, self._stamp, self._problem = value, stamp, None
            return self._value

    def _refused(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.warning(
                "secret file unusable: the last value read is sent",
                key=self._where,
                why=problem,
            )


def live_authorization(section_name: str, section: ServerSection) -> LiveAuthorization | None:
    """The ``Authorization`` of a section whose secret is in a file, read again as it changes;
    None when there is none, or when it comes from the environment (fixed until a restart)."""
    credentials = _credentials(section.basic_auth, section.authorization)
    if credentials is None or credentials.file is None:
        return None
    return LiveAuthorization(
        f"{section_name}.{credentials.key}",
        credentials.file,
        credentials.secret,
        credentials.value,
    )


def without_password(url: str) -> str:
    """``url`` with any password in it replaced by ``***`` (a proxy URL may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def echoed_forms(secret: str) -> set[str]:
    """``secret`` as a peer that echoes it may write it: as sent, in a JSON string (``/``
    as it is or as ``\\/``), in HTML, and in a Python bytes literal (how h11's and
    urllib3's errors quote a line they could not parse)."""
    in_json = json.dumps(secret)[1:-1]
    return {
        secret,
        in_json,
        in_json.replace("/", "\\/"),
        html.escape(secret),
        repr(secret.encode("utf-8", "surrogateescape"))[2:-1],
    }


def hidden(secrets: Iterable[str | None]) -> list[str]:
    """The strings to redact for ``secrets``: each in every :func:`echoed_forms`, those of
    fewer than :data:`MIN_SECRET` characters left out, longest first (so that a secret
    holding another is redacted whole)."""
    forms = {
        form
        for secret in secrets
        if secret and len(secret) >= MIN_SECRET
        for form in echoed_forms(secret)
    }
    return sorted(forms, key=len, reverse=True)


def authorization_secrets(value: str) -> list[str]:
    """What an ``Authorization`` value gives away: the value, its credentials and, of basic
    auth, the ``user:password`` they encode and the password."""
    found = [value]
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return found
    found.append(credentials)
    if scheme.lower() == "basic":
        try:
            pair = b64decode(credentials, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return found
        _, colon, password = pair.partition(":")
        if colon:
            found += [pair, password]
    return found


def url_secrets(url: str | None) -> list[str]:
    """What a URL's password gives away (a proxy's, or a server's): the password as written
    and decoded, and the basic auth a client makes of it (requests encodes it in Latin-1,
    httpx in UTF-8)."""
    parts = urlsplit(url or "")
    if parts.password is None:
        return []
    username, password = unquote(parts.username or ""), unquote(parts.password)
    found = [parts.password, password]
    for encoding in ("utf-8", "latin-1"):
        try:
            pair = f"{username}:{password}".encode(encoding)
        except UnicodeEncodeError:
            continue
        found += authorization_secrets("Basic " + b64encode(pair).decode("ascii"))
    return found


def secrets_sent(
    headers: Mapping[str, str],
    urls: Iterable[str | None] = (),
    *,
    authorization: Iterable[str] = (),
) -> list[str]:
    """Every secret that requests with ``headers``, to or through ``urls``, carry, as
    :func:`hidden` lists them: the value of every header (a tenant's too: better hidden
    than shown), what an ``Authorization`` gives away (those of ``authorization`` too: a
    secret file's current one) and the password of each URL."""
    found: list[str] = []
    for name, value in headers.items():
        if name.lower() in ("authorization", "proxy-authorization"):
            found += authorization_secrets(value)
        else:
            found.append(value)
    for value in authorization:
        found += authorization_secrets(value)
    for url in urls:
        found += url_secrets(url)
    return hidden(found)


def redact(text: str, secrets: Iterable[str], *, cut: bool = False) -> str:
    """``text`` with every secret (longest first) replaced by ``[redacted]``; with ``cut``
    (``text`` is the head of something longer), also the head of one it ends with."""
    ordered = sorted(secrets, key=len, reverse=True)
    for secret in ordered:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if not cut:
        return text
    earliest = len(text)  # where the longest head of a secret at the end begins
    for secret in ordered:
        start = text.find(secret[:1], max(len(text) - len(secret) + 1, 0))
        while -1 < start < earliest:
            if secret.startswith(text[start:]):
                earliest = start
                break
            start = text.find(secret[:1], start + 1)
    return text if earliest == len(text) else text[:earliest] + REDACTED


def redacted_line(text: str, secrets: Iterable[str], limit: int, *, cut: bool = False) -> str:
    """What a peer said (or an HTTP library quoting it), fit for a message: one line of at
    most ``limit`` characters (:func:`~rollbackd.text.one_line`) without a secret in it
    (:func:`redact`), redacted before it is clipped, so that no secret is cut in two."""
    listed = list(secrets)
    clean = redact(text, listed, cut=cut)
    line = one_line(clean, len(clean))
    return clip(redact(line, listed), limit)  # folded white space could join one again


class _HideSecrets(logging.Filter):
    """Rewrites log records that mention a registered secret: their message (httpx logs
    request URLs and reason phrases, urllib3 the header lines it could not parse) and the
    traceback they carry (urllib3's holds those lines again)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self._secrets.update(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            secrets = list(self._secrets)
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return True
        clean = redact(text, secrets)
        if clean != text:
            record.msg = clip(clean, 10_000)
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:  # what a formatter shows of the exception, once set
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        return True


_HIDER = _HideSecrets()
_HIDDEN_IN = ("httpx", "httpcore", "requests", "urllib3")
"""The HTTP libraries whose loggers get the filter. A logger's filters do not see its
children's records, so each of their loggers gets it (``httpcore.http11``,
``urllib3.connectionpool``…)."""
_FILTERED: set[str] = set()


def hide_in_logs(secrets: Iterable[str]) -> None:
    """Keep ``secrets`` out of the HTTP libraries' own log records (idempotent).

    rollbackd configures no handler for them: urllib3 and requests log to a
    ``NullHandler``, and httpx and httpcore below WARNING, so nothing of theirs reaches
    its log; this holds when an operator, or a test, shows them all the same.
    """
    _HIDER.add(secrets)
    names = [
        name
        for name in (*_HIDDEN_IN, *list(logging.Logger.manager.loggerDict))
        if name.partition(".")[0] in _HIDDEN_IN and name not in _FILTERED
    ]
    for name in names:
        logging.getLogger(name).addFilter(_HIDER)
        _FILTERED.add(name)


def describe(
    *,
    headers: dict[str, str],
    tls: TLSConfig | None,
    basic_auth: BasicAuthConfig | None = None,
    authorization: AuthorizationConfig | None = None,
    proxy_url: str | None = None,
) -> list[str]:
    """What is set, in phrases for ``check-config``: where each secret comes from, never it."""
    phrases = []
    if basic_auth is not None:
        where = (
            f"password from {basic_auth.password_file}"
            if basic_auth.password_file is not None
            else "password from the environment"
        )
        phrases.append(f"basic auth as user {basic_auth.username!r} ({where})")
    if authorization is not None:
        where = (
            f"credentials from {authorization.credentials_file}"
            if authorization.credentials_file is not None
            else "credentials from the environment"
        )
        phrases.append(f"{authorization.type} authorization ({where})")
    if tls is not None:
        parts = [f"CA {tls.ca_file}" if tls.ca_file else "the system's CAs"]
        if tls.cert_file is not None:
            parts.append(f"client certificate {tls.cert_file} (key {tls.key_file})")
        if tls.server_name:
            parts.append(f"server name {tls.server_name}")
        if tls.insecure_skip_verify:
            parts.append("certificate NOT verified (insecure_skip_verify)")
        phrases.append("TLS with " + ", ".join(parts))
    if headers:
        phrases.append("headers: " + ", ".join(headers))
    if proxy_url:
        phrases.append(f"through proxy {without_password(proxy_url)}")
    return phrases
