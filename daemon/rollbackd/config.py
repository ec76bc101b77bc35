"""The TOML config file of design §4, with ``ROLLBACKD_…`` environment overrides.

``parse_config(text, source, env)`` validates text and an environment mapping
and touches nothing else; ``load_config(path)`` reads the file and the process
environment. Any key can be overridden by an environment variable with the
prefix ``ROLLBACKD_`` and ``__`` between nested keys
(``ROLLBACKD_PROMETHEUS__URL``); lists take JSON. Unknown keys are errors.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import typing
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from rollbackd.core.durations import Duration
from rollbackd.core.engine import EngineSettings
from rollbackd.core.model import Action, Severity
from rollbackd.core.policy import DEFAULT_POLICY, Guards, PolicyEntry, Silence
from rollbackd.core.validation import NAME_PATTERN, problems_from
from rollbackd.errors import InvalidInput, Problem
from rollbackd.httpconfig import (
    AuthorizationConfig,
    BasicAuthConfig,
    SecretFileError,
    TLSConfig,
    TLSFileError,
    check_headers,
    check_proxy_url,
    check_server_url,
    read_secret,
    ssl_context,
)
from rollbackd.journal.pgurl import check_url, password_of
from rollbackd.text import quoted

ENV_PREFIX = "ROLLBACKD_"
DEFAULT_CONFIG_PATH = Path("/etc/rollbackd/config.toml")

Role = Literal["admin", "senior_admin", "team", "database", "ci", "alertmanager", "viewer"]
ROLES: tuple[Role, ...] = typing.get_args(Role)
"""Every role a token can have, in order of authority (the API's "any role")."""


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonConfig(_Section):
    """``[daemon]``: how the daemon runs."""

    listen: str = "127.0.0.1:9095"
    state_dir: Path = Path("/var/lib/rollbackd")
    poll_interval: Duration = timedelta(seconds=15)
    rules: list[str] = Field(default_factory=lambda: ["rules/*.toml"])
    dry_run: bool = False
    public_url: str | None = None
    status_page_public: bool = False
    log_format: Literal["auto", "json", "console"] = "auto"
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    """Open HTTP connections at most (and never more than half the descriptor limit):
    a new one beyond closes the one that has waited longest for a request."""
    idle_timeout: Duration = timedelta(seconds=5)
    """A connection with no request under way is closed after this."""
    header_timeout: Duration = timedelta(seconds=10)
    """A request's line and headers must arrive within this of its first byte (else 408)."""
    body_timeout: Duration = timedelta(seconds=30)
    """A request's body must arrive within this of its headers (else 408)."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise ValueError(f"expected HOST:PORT such as '127.0.0.1:9095', got {value!r}")
        bare = host.strip("[]")
        if not re.fullmatch(r"[A-Za-z0-9.-]+", bare):
            try:
                ipaddress.ip_address(bare)
            except ValueError:
                raise ValueError(
                    f"expected HOST:PORT such as '127.0.0.1:9095', got {value!r}"
                ) from None
        return value

    @field_validator("poll_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value

    @field_validator("idle_timeout", "header_timeout", "body_timeout")
    @classmethod
    def _client_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(hours=1):
            raise ValueError("must be between 1s and 1h")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class PrometheusConfig(_Section):
    """``[prometheus]``: where PromQL rules are queried."""

    url: str = "http://127.0.0.1:9090"
    timeout: Duration = timedelta(seconds=5)
    """The whole of one call (connect, headers, body), whatever the server does."""
    max_response_bytes: int = Field(default=64 << 20, ge=64 << 10, le=4 << 30)
    """One answer longer than this is refused unread (the rule is inconclusive): memory
    stays bounded whatever Prometheus, or a proxy in front of it, sends."""
    basic_auth: BasicAuthConfig | None = None
    authorization: AuthorizationConfig | None = None
    tls: TLSConfig | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every query (a tenant: ``X-Scope-OrgID``); not for secrets, which
    ``check-config`` would not show but which sit in the config file."""
    proxy_url: str | None = None

    _url = field_validator("url")(check_server_url)
    _headers = field_validator("headers")(check_headers)
    _proxy_url = field_validator("proxy_url")(check_proxy_url)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(minutes=5):
            raise ValueError("must be between 1ms and 5m: every call to Prometheus needs a timeout")
        return value

    @model_validator(mode="after")
    def _one_authorization(self) -> PrometheusConfig:
        if self.basic_auth is not None and self.authorization is not None:
            raise ValueError("basic_auth and authorization are both set: at most one can be")
        return self


class AlertmanagerConfig(_Section):
    """``[alertmanager]``: Alertmanager's API, read every cycle beside its webhooks.

    With ``url`` set, each cycle reads the active alerts (``GET /api/v2/alerts``):
    an alert firing there is a finding even if its webhook was lost, a firing
    alert the journal holds that Alertmanager no longer has is resolved, and an
    Alertmanager that answered with no alert for a service watched only through
    alerts counts as real data for its version. The same ``http_config`` keys as
    ``[prometheus]``.
    """

    url: str | None = None
    timeout: Duration = timedelta(seconds=5)
    """The whole of one call (connect, headers, body), whatever the server does."""
    max_response_bytes: int = Field(default=16 << 20, ge=64 << 10, le=1 << 30)
    """One answer longer than this is refused unread (a source error)."""
    basic_auth: BasicAuthConfig | None = None
    authorization: AuthorizationConfig | None = None
    tls: TLSConfig | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every call (a tenant header); not for secrets."""
    proxy_url: str | None = None

    _headers = field_validator("headers")(check_headers)
    _proxy_url = field_validator("proxy_url")(check_proxy_url)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_server_url(value)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(minutes=5):
            raise ValueError(
                "must be between 1ms and 5m: every call to Alertmanager needs a timeout"
            )
        return value

    @model_validator(mode="after")
    def _one_authorization(self) -> AlertmanagerConfig:
        if self.basic_auth is not None and self.authorization is not None:
            raise ValueError("basic_auth and authorization are both set: at most one can be")
        if self.url is None and (
            self.basic_auth or self.authorization or self.tls or self.headers or self.proxy_url
        ):
            raise ValueError("url is not set: without it the other keys would do nothing")
        return self


class ProbeConfig(_Section):
    """``[[services.probes]]``: a health or smoke check (the playbook's critical path)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "OPTIONS"] = "GET"
    expect_status: list[int] = Field(default_factory=lambda: [200])
    body_match: str | None = None
    latency_budget: Duration | None = None
    timeout: Duration = timedelta(seconds=5)
    headers: dict[str, str] = Field(default_factory=dict)
    tls: TLSConfig | None = None

    _url = field_validator("url")(_http_url)
    _headers = field_validator("headers")(check_headers)

    @field_validator("expect_status", mode="before")
    @classmethod
    def _status_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, value: list[int]) -> list[int]:
        if not value or any(not 100 <= code <= 599 for code in value):
            raise ValueError(f"expected HTTP status codes 100..599, got {value!r}")
        return value

    @field_validator("body_match")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(minutes=1):
            raise ValueError("must be between 1ms and 1m")
        return value


class ServiceConfig(_Section):
    """``[[services]]``: one deployed service and how to roll it back."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    health_url: str | None = None
    repo: Path | None = None
    remote: str = Field(default="origin", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    branch: str = Field(default="main", pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
    executor: Literal["git", "script", "command"] = "git"
    strategy: Literal["revert", "reset", "tag"] = "revert"
    script: Path | None = None
    command: list[str] | None = None
    after_rollback: list[list[str]] = Field(default_factory=list)
    snapshot: list[str] | None = None
    migrations: list[str] | None = None
    command_timeout: Duration = timedelta(minutes=10)
    probes: list[ProbeConfig] = Field(default_factory=list)

    _health = field_validator("health_url")(lambda v: None if v is None else _http_url(v))

    @field_validator("after_rollback")
    @classmethod
    def _argvs(cls, value: list[list[str]]) -> list[list[str]]:
        for index, argv in enumerate(value):
            if not argv or not argv[0]:
                raise ValueError(
                    f"entry {index} is empty: each command is an argv list "
                    "like ['systemctl', 'restart', 'web']"
                )
        return value

    @field_validator("command", "snapshot")
    @classmethod
    def _argv(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError("expected a command as a list like ['/usr/local/bin/rollback', 'web']")
        return value

    @model_validator(mode="after")
    def _executor_needs(self) -> ServiceConfig:
        if self.executor == "git" and self.repo is None:
            raise ValueError(
                "executor 'git' needs 'repo', the git working copy the service is deployed from"
            )
        if self.executor == "script" and self.script is None:
            raise ValueError("executor 'script' needs 'script', the path of the rollback script")
        if self.executor == "command" and self.command is None:
            raise ValueError("executor 'command' needs 'command', an argv list")
        names = [p.name for p in self.probes]
        if self.health_url is not None:
            names.append("health")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"probe names must be unique per service ('health' is health_url): {duplicates}"
            )
        return self

    @property
    def probe_names(self) -> list[str]:
        """Names of this service's probes; ``health`` stands for ``health_url``."""
        names = [p.name for p in self.probes]
        return ["health", *names] if self.health_url is not None else names


class PolicyEntryConfig(_Section):
    """``[policy.<severity>]``: the action, deadline and approver role for a severity."""

    action: Action
    deadline: Duration | None = None
    approver: Role | None = None

    @model_validator(mode="after")
    def _complete(self) -> PolicyEntryConfig:
        if self.action in (Action.REQUEST_APPROVAL, Action.ROLLBACK) and self.approver is None:
            object.__setattr__(self, "approver", "admin")
        if self.action is Action.ESCALATE and self.approver is None:
            object.__setattr__(self, "approver", "admin")
        if self.action is Action.RECORD and (self.deadline or self.approver):
            raise ValueError("action 'record' takes no deadline or approver")
        return self

    def entry(self) -> PolicyEntry:
        return PolicyEntry(self.action, self.deadline or None, self.approver)


def _default_entry(severity: Severity) -> PolicyEntryConfig:
    entry = DEFAULT_POLICY[severity]
    return PolicyEntryConfig(action=entry.action, deadline=entry.deadline, approver=entry.approver)


class PolicyConfig(_Section):
    """``[policy]``: one table per severity; a missing table keeps the playbook's default."""

    critical: PolicyEntryConfig = Field(default_factory=lambda: _default_entry(Severity.CRITICAL))
    high: PolicyEntryConfig = Field(default_factory=lambda: _default_entry(Severity.HIGH))
    medium: PolicyEntryConfig = Field(default_factory=lambda: _default_entry(Severity.MEDIUM))
    low: PolicyEntryConfig = Field(default_factory=lambda: _default_entry(Severity.LOW))

    def table(self) -> dict[Severity, PolicyEntry]:
        return {s: getattr(self, s.value).entry() for s in Severity}


class GuardsConfig(_Section):
    """``[guards]``: limits that keep rollbacks from looping."""

    cooldown: Duration = timedelta(minutes=30)
    max_rollbacks: int = Field(default=2, ge=0, le=100)
    window: Duration = timedelta(hours=24)


class SilenceConfig(_Section):
    """``[[silences]]``: a maintenance window during which rollbackd only records."""

    service: str = Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]*)$")
    start: datetime
    end: datetime
    reason: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> SilenceConfig:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a time zone, e.g. 2026-01-01T22:00:00Z")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class DeploysConfig(_Section):
    """``[deploys]``: how deploys are recognised and when a version counts as good."""

    version_metric: str | None = Field(default=None, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    version_label: str = Field(default="version", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    instance_label: str = Field(default="instance", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    """The label that names one instance, on the version metric and the rules' metrics alike:
    side-by-side judgement joins the two on it (core.canary)."""
    attribution_window: Duration = timedelta(hours=2)
    known_good_after: Duration = timedelta(minutes=30)
    max_clock_skew: Duration = timedelta(minutes=5)
    """A deploy event dated more than this after rollbackd's clock is refused (422): CI's
    clock may run a little fast, but a deploy from the future would stay the current one."""

    @field_validator("max_clock_skew")
    @classmethod
    def _skew(cls, value: timedelta) -> timedelta:
        if not timedelta(0) <= value <= timedelta(days=1):
            raise ValueError("must be between 0s and 1d")
        return value


class RecoveryConfig(_Section):
    """``[recovery]``: the success criteria after a rollback (the playbook's defaults)."""

    window: Duration = timedelta(minutes=15)
    timeout: Duration = timedelta(minutes=30)
    max_error_rate: float = Field(default=0.01, ge=0, le=1, allow_inf_nan=False)
    latency_tolerance: float = Field(default=0.2, ge=0, le=10, allow_inf_nan=False)

    @model_validator(mode="after")
    def _timeout_covers_window(self) -> RecoveryConfig:
        if self.window <= timedelta(0):
            raise ValueError("window must be longer than 0s")
        if self.timeout < self.window:
            raise ValueError(
                "timeout must be at least the window: the criteria must hold that long"
            )
        return self


class AlertsConfig(_Section):
    """``[alerts]``: how Alertmanager alerts map to services and trigger classes."""

    trigger_label: str = Field(default="rollbackd_trigger", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    service_label: str = Field(default="service", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    expire_after: Duration = timedelta(hours=5)
    """A firing alert Alertmanager has not sent again for this long is over: its resolved
    notification was lost. Alertmanager re-sends firing alerts every repeat_interval (4h
    by default), so this must be longer than that."""

    @field_validator("expire_after")
    @classmethod
    def _longer_than_a_minute(cls, value: timedelta) -> timedelta:
        if value < timedelta(minutes=1):
            raise ValueError("must be at least 1m (and longer than Alertmanager's repeat_interval)")
        return value


class IncidentsConfig(_Section):
    """``[incidents]``: how long an incident nobody acts on stays open."""

    expire_after: Duration = timedelta(hours=24)
    """An incident that waits on people (escalated, vetoed, recorded, or not recovered) and
    whose rules have not all returned to OK ends after this long without anything happening
    to it, with the reason journaled: missing data never keeps an incident open for ever."""

    @field_validator("expire_after")
    @classmethod
    def _at_least_a_minute(cls, value: timedelta) -> timedelta:
        if value < timedelta(minutes=1):
            raise ValueError("must be at least 1m")
        return value


class JournalConfig(_Section):
    """``[journal]``: where the journal is kept. Without ``url``: SQLite in ``state_dir``."""

    url: str | None = Field(default=None, repr=False)
    """``postgresql://USER@HOST:PORT/DB``: the journal in PostgreSQL. Its password, if it
    holds one, is never shown (nor is the URL: ``repr=False``)."""
    password_file: Path | None = None
    """A file holding PostgreSQL's password (its first line); else the URL's, else libpq's
    ``PGPASSFILE`` or ``~/.pgpass``."""
    timeout: Duration = timedelta(seconds=5)
    """Connecting to PostgreSQL, and each statement, at most this long."""

    _url = field_validator("url")(lambda value: None if value is None else check_url(value))

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(minutes=1):
            raise ValueError("must be between 1s and 1m")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> JournalConfig:
        if self.password_file is not None and self.url is None:
            raise ValueError("password_file needs url (the journal in PostgreSQL)")
        if self.password_file is not None and self.url and password_of(self.url):
            raise ValueError("the password is in both url and password_file: keep one")
        return self


class ClusterConfig(_Section):
    """``[cluster]``: replicas sharing one journal in PostgreSQL, one of which leads (acts).

    With SQLite (no ``[journal] url``) the daemon is alone and always leads."""

    name: str = Field(default="rollbackd", pattern=NAME_PATTERN, max_length=64)
    """The cluster: replicas of one name share a lease (one journal may hold several)."""
    replica_name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=128)
    """This replica, as /readyz and the lease show it; default: ``HOST-PID-RANDOM``."""
    lease: Duration = timedelta(seconds=15)
    """How long a leader's lease runs unless renewed (every third of it): a dead leader is
    replaced after at most this long (plus a poll interval to act)."""

    @field_validator("lease")
    @classmethod
    def _lease(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(minutes=10):
            raise ValueError("must be between 1s and 10m")
        return value


class NotifierConfig(_Section):
    """``[[notifiers]]``: where people are told (a JSON webhook, Slack, PagerDuty)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    kind: Literal["webhook", "slack", "pagerduty"]
    url: str
    roles: list[Role] = Field(default_factory=list)
    routing_key: str | None = Field(default=None, min_length=1, max_length=200)
    timeout: Duration = timedelta(seconds=5)
    retries: int = Field(default=3, ge=0, le=10)
    headers: dict[str, str] = Field(default_factory=dict)
    tls: TLSConfig | None = None

    _url = field_validator("url")(_http_url)
    _headers = field_validator("headers")(check_headers)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(minutes=1):
            raise ValueError("must be between 1ms and 1m")
        return value

    @model_validator(mode="after")
    def _key(self) -> NotifierConfig:
        if self.kind == "pagerduty" and not self.routing_key:
            raise ValueError("kind 'pagerduty' needs routing_key, the Events v2 integration key")
        return self


class TokenConfig(_Section):
    """``[[tokens]]``: an API token, stored only as its SHA-256, and its role."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    sha256: str
    role: Role

    @field_validator("sha256")
    @classmethod
    def _hash(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(
                "expected the token's SHA-256 as 64 hex digits "
                '(printf %s "$TOKEN" | sha256sum), never the token itself'
            )
        return value.lower()


class Config(BaseSettings):
    """The whole config file."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter="__"
    )

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    alertmanager: AlertmanagerConfig = Field(default_factory=AlertmanagerConfig)
    services: list[ServiceConfig] = Field(default_factory=list)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    silences: list[SilenceConfig] = Field(default_factory=list)
    incidents: IncidentsConfig = Field(default_factory=IncidentsConfig)
    deploys: DeploysConfig = Field(default_factory=DeploysConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    notifiers: list[NotifierConfig] = Field(default_factory=list)
    tokens: list[TokenConfig] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what parse_config passes in: it merges file and environment itself."""
        return (init_settings,)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [s.name for s in self.services]
        # Counted once: names.count per name is quadratic (seconds at 10,000 services).
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise ValueError(f"services: names must be unique, repeated: {duplicates}")
        for index, silence in enumerate(self.silences):
            if silence.service != "*" and silence.service not in names:
                raise ValueError(
                    f"silences[{index}].service: no service named {silence.service!r} "
                    f"(known: {names or 'none'}; '*' means all)"
                )
        notifier_names = [n.name for n in self.notifiers]
        if len(set(notifier_names)) != len(notifier_names):
            raise ValueError("notifiers: names must be unique")
        token_names = [t.name for t in self.tokens]
        hashes = [t.sha256 for t in self.tokens]
        if len(set(token_names)) != len(token_names):
            raise ValueError("tokens: names must be unique")
        if len(set(hashes)) != len(hashes):
            raise ValueError("tokens: two tokens have the same sha256")
        return self

    def service(self, name: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.name == name), None)

    def engine_settings(self) -> EngineSettings:
        """What the decision engine needs of this config, as plain values."""
        return EngineSettings(
            services={s.name: tuple(s.probe_names) for s in self.services},
            policy=self.policy.table(),
            guards=self.guards_for_policy(),
            expire_after=self.incidents.expire_after,
        )

    def guards_for_policy(self) -> Guards:
        """The pure guard settings this config asks for."""
        return Guards(
            dry_run=self.daemon.dry_run,
            cooldown=self.guards.cooldown,
            max_rollbacks=self.guards.max_rollbacks,
            rollback_window=self.guards.window,
            attribution_window=self.deploys.attribution_window,
            silences=tuple(Silence(s.service, s.start, s.end, s.reason) for s in self.silences),
        )


class _MappingEnv(EnvSettingsSource):
    """Environment overrides read from a mapping passed in, not from the process."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = {k: v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)}
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._given.items()}


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_config(text: str, source: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate config text plus ``ROLLBACKD_…`` overrides; raise InvalidInput naming each key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput([Problem(source, "", f"not valid TOML: {exc}")]) from None
    written = _secrets_written(data)
    if written:
        raise InvalidInput([Problem(source, where, message) for where, message in written])
    overrides: dict[str, Any] = {}
    if env:
        try:
            overrides = dict(_MappingEnv(Config, env)())
        except Exception:  # noqa: BLE001 -- pydantic-settings raises a bare error for bad JSON
            raise InvalidInput(_undecodable(env)) from None
    try:
        return Config(**_merge(data, overrides))
    except ValidationError as exc:
        problems = problems_from(exc, source, hidden=SECRET_HOLDERS)
        raise InvalidInput(_locate(problems, overrides)) from None


SECRET_KEYS = {
    "basic_auth": ("password", "password_file"),
    "authorization": ("credentials", "credentials_file"),
}
"""The secrets of ``[prometheus]`` and ``[alertmanager]``, each with the key naming its file."""
SECRET_HOLDERS = frozenset({"basic_auth", "authorization", "headers", "routing_key"})
"""Keys whose values are or may hold a secret: a mistyped value of theirs is never shown."""
SECRET_SECTIONS = ("prometheus", "alertmanager")
"""The sections that take ``basic_auth`` and ``authorization``."""


def _secrets_written(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Secrets written into the config file itself, which is shown, copied and committed."""
    written = []
    for client in SECRET_SECTIONS:
        held = data.get(client)
        for table, (secret, file_key) in SECRET_KEYS.items():
            section = held.get(table) if isinstance(held, Mapping) else None
            if isinstance(section, Mapping) and secret in section:
                variable = f"{ENV_PREFIX}{client.upper()}__{table.upper()}__{secret.upper()}"
                written.append(
                    (
                        f"{client}.{table}.{secret}",
                        f"a secret is never written in the config file: put it in a file "
                        f"named by {file_key}, or in the environment as {variable}",
                    )
                )
    return written


def _undecodable(env: Mapping[str, str]) -> list[Problem]:
    """Which variables could not be read: a list or table variable must hold JSON."""
    problems = []
    for name, value in sorted(env.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        try:
            _MappingEnv(Config, {name: value})()
        except Exception:  # noqa: BLE001 -- the same bare error, now for one variable
            problems.append(
                Problem(
                    f"environment {name.upper()}",
                    "",
                    "expected JSON for a list or table, e.g. '[\"rules/*.toml\"]' or "
                    f'\'[{{"name": "web"}}]\', got {quoted(value, 60)}',
                )
            )
    return problems or [Problem("environment", ENV_PREFIX + "…", "cannot be read")]


def _locate(problems: list[Problem], overrides: Mapping[str, Any]) -> list[Problem]:
    """Blame the environment, not the file, for a key the environment set."""
    located = []
    for problem in problems:
        path = _set_by_env(problem.location, overrides)
        if path is None:
            located.append(problem)
            continue
        env_name = ENV_PREFIX + "__".join(path).upper()
        inside = problem.location[len(".".join(path)) :].lstrip(".")
        located.append(Problem(f"environment {env_name}", inside, problem.message))
    return located


_LOCATION_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _set_by_env(where: str, overrides: Mapping[str, Any]) -> list[str] | None:
    """The keys of the variable that set the value at ``where`` (``services[0].repo``), if any.

    A variable sets a whole value: a table is merged key by key, anything else
    (a list, a string) replaces what the file had, items and all.
    """
    node: Any = overrides
    path: list[str] = []
    for index, key in _LOCATION_PART.findall(where):
        if not isinstance(node, Mapping):
            break  # a list or a value the variable set whole: what is inside is its too
        if index or key not in node:
            return None
        path.append(key)
        node = node[key]
    return path or None


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file, with overrides from ``env`` (default: the process's)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidInput(
            [Problem(str(path), "", f"cannot read the config file: {reason}")]
        ) from None
    config = parse_config(text, str(path), os.environ if env is None else env)
    return read_http_files(config, path.parent, str(path))


def read_http_files(config: Config, base: Path, source: str) -> Config:
    """``config`` with its HTTP clients' files checked and its secret files read.

    Relative paths are relative to ``base`` (the config file's directory), as in
    Prometheus, and come back absolute. Every TLS file must make a context and
    every secret file must be readable: each that cannot is a Problem naming its
    key, and nothing the files hold is ever part of one.
    """
    problems: list[Problem] = []

    def tls_checked(tls: TLSConfig | None, where: str) -> TLSConfig | None:
        if tls is None:
            return None
        files = {
            key: base / getattr(tls, key)
            for key in ("ca_file", "cert_file", "key_file")
            if getattr(tls, key) is not None
        }
        resolved = tls.model_copy(update=files)
        try:
            ssl_context(resolved)
        except TLSFileError as exc:
            problems.append(Problem(source, f"{where}.tls.{exc.key}", str(exc)))
        return resolved

    clients: dict[str, Any] = {}
    for client in SECRET_SECTIONS:
        held = getattr(config, client)
        updates: dict[str, Any] = {"tls": tls_checked(held.tls, client)}
        for table, (secret, file_key) in SECRET_KEYS.items():
            section = getattr(held, table)
            path = None if section is None else getattr(section, file_key)
            if path is None:
                continue
            try:
                value = read_secret(base / path)
            except SecretFileError as exc:
                problems.append(Problem(source, f"{client}.{table}.{file_key}", str(exc)))
                continue
            updates[table] = section.model_copy(update={file_key: base / path, secret: value})
        clients[client] = held.model_copy(update=updates)
    services = [
        service.model_copy(
            update={
                "probes": [
                    probe.model_copy(
                        update={"tls": tls_checked(probe.tls, f"services[{i}].probes[{j}]")}
                    )
                    for j, probe in enumerate(service.probes)
                ]
            }
        )
        for i, service in enumerate(config.services)
    ]
    notifiers = [
        notifier.model_copy(update={"tls": tls_checked(notifier.tls, f"notifiers[{i}]")})
        for i, notifier in enumerate(config.notifiers)
    ]
    if problems:
        raise InvalidInput(problems)
    return config.model_copy(
        update={
            **clients,
            "services": services,
            "notifiers": notifiers,
        }
    )
