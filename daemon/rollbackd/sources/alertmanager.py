"""Alertmanager's API as a source: the active alerts, read every cycle beside the webhooks.

Webhooks stay the fast path: Alertmanager pushes a firing alert as soon as its
group is due. But a webhook can be lost, and silence from the webhook says
nothing: it cannot tell a healthy service from a receiver that never heard.
With ``[alertmanager] url`` set, each cycle also reads ``GET /api/v2/alerts``
(on a reading thread, within the cycle's budget and ``[alertmanager]
timeout``), and :func:`merge` combines the answer with the journaled webhook
alerts:

- an alert active in Alertmanager for a watched service is firing, whether or
  not its webhook arrived (the same finding a webhook would give);
- an alert the journal holds as firing that Alertmanager no longer has is
  resolved: its resolved webhook was lost. It is journaled as such. One
  received again after the read began is kept (the answer predates it);
- a service with no alert in the answer, active or muted, and none journaled
  as firing, is *quiet*: Alertmanager answered and has nothing against it,
  which is real data for a service no rule watches (its version can become
  known good).

Every active alert is asked for, silenced and inhibited ones too (the API's
defaults, spelt out). A silenced or inhibited alert is *muted*: it is no
finding, as Alertmanager would not have sent its webhook either (a person
silenced it, or a wider alert covers it), but it still fires: its service is
not quiet, and a recovery watch waiting for it to resolve keeps waiting.
Asking with ``silenced=false`` would make a silenced alert look resolved.

The answer is untrusted like a webhook body: bounded in time and size by the
same machinery as Prometheus' (:mod:`rollbackd.sources.prometheus`), each
alert checked as the webhook's are (:mod:`rollbackd.sources.alerts`). An
Alertmanager that is down, slow or answers garbage is a source error: no
alert is resolved, no service is quiet.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import requests
import urllib3

from rollbackd.config import Config
from rollbackd.core.durations import format_duration, format_instant
from rollbackd.errors import InvalidInput
from rollbackd.httpconfig import TLSConfig, client_options, live_authorization
from rollbackd.journal import AlertRecord, Delivery
from rollbackd.logs import get_logger
from rollbackd.sources.alerts import _alert, _json_document, _may_hold_surrogates, _Problems
from rollbackd.sources.prometheus import (
    _DeadlineSession,
    _RefusedError,
    tls_failure,
)

log = get_logger("rollbackd")

ALERTS_PATH = "/api/v2/alerts"
SOURCE = "alertmanager-api"
"""The source of the deliveries rollbackd journals itself: alerts the API shows resolved."""
_STATES = ("active", "unprocessed", "suppressed")


class AlertmanagerError(Exception):
    """Alertmanager did not answer usefully; the message says why in a sentence."""


@dataclass(frozen=True)
class ActiveAlerts:
    """Alertmanager's answer: its active alerts, those it would notify and those muted."""

    firing: tuple[AlertRecord, ...] = ()
    """Active and neither silenced nor inhibited: findings, as their webhook would be."""
    muted: tuple[AlertRecord, ...] = ()
    """Silenced or inhibited: no finding, but still firing."""

    @property
    def fingerprints(self) -> frozenset[str]:
        return frozenset(a.fingerprint for a in (*self.firing, *self.muted))


@dataclass(frozen=True)
class Merged:
    """The webhooks' alerts and Alertmanager's answer together (:func:`merge`)."""

    firing: list[AlertRecord]
    """Firing in the journal or in Alertmanager (not muted there), oldest first."""
    muted: list[AlertRecord] = field(default_factory=list)
    """Muted in Alertmanager and not journaled as firing."""
    resolved: list[AlertRecord] = field(default_factory=list)
    """Journaled as firing, gone from Alertmanager: their resolved webhook was lost."""
    quiet: frozenset[str] = frozenset()
    """The watched services with no alert firing or muted anywhere."""


def merge(
    journaled: Iterable[AlertRecord],
    answer: ActiveAlerts,
    services: Collection[str],
    fresh: Collection[str] = (),
) -> Merged:
    """Combine the journal's firing alerts with Alertmanager's answer (see the module).

    ``fresh``: fingerprints of journaled alerts received again after the read
    began, which the answer may not know yet: they stay firing.
    """
    known = set(services)
    present = answer.fingerprints
    firing: list[AlertRecord] = []
    resolved: list[AlertRecord] = []
    for alert in journaled:
        if (
            alert.service in known
            and alert.fingerprint not in present
            and alert.fingerprint not in fresh
        ):
            resolved.append(alert)
        else:
            firing.append(alert)
    held = {a.fingerprint for a in firing}
    firing.extend(a for a in answer.firing if a.service in known and a.fingerprint not in held)
    firing.sort(key=lambda a: a.starts_at)
    muted = [a for a in answer.muted if a.service in known and a.fingerprint not in held]
    busy = {a.service for a in (*firing, *muted)}
    return Merged(firing, muted, resolved, frozenset(known - busy))


def resolved_delivery(
    resolved: Iterable[AlertRecord], at: datetime, url: str
) -> tuple[Delivery, str]:
    """What the journal keeps for alerts seen resolved in the API: a delivery, and its body."""
    alerts = [replace(a, status="resolved", ends_at=at) for a in resolved]
    body = {
        "source": SOURCE,
        "reason": (
            f"firing in the journal, but absent from the active alerts of Alertmanager at {url} "
            f"at {format_instant(at)}: its resolved notification was lost"
        ),
        "resolved": [
            {"fingerprint": a.fingerprint, "startsAt": format_instant(a.starts_at), "name": a.name}
            for a in alerts
        ],
    }
    return Delivery(SOURCE, None, "resolved", alerts), json.dumps(body)


class AlertmanagerSource:
    """Reads one Alertmanager's active alerts; every call bounded by ``timeout`` and size."""

    def __init__(
        self,
        url: str,
        timeout: timedelta,
        service_label: str = "service",
        max_bytes: int = 16 << 20,
        *,
        headers: Mapping[str, str] | None = None,
        tls: TLSConfig | None = None,
        proxy_url: str | None = None,
        authenticated: bool = False,
        authorization: Callable[[], str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.service_label = service_label
        self.client_cert = tls is not None and tls.cert_file is not None
        self._session = _DeadlineSession(
            self.url,
            "alertmanager",
            timeout.total_seconds(),
            max_bytes,
            headers=headers,
            tls=tls,
            proxy_url=proxy_url,
            authenticated=authenticated,
            authorization=authorization,
        )

    @classmethod
    def from_config(cls, config: Config) -> AlertmanagerSource | None:
        """The source ``[alertmanager]`` describes; None without a ``url``.

        ``config`` must come from :func:`~rollbackd.config.load_config`, which reads the
        secret files.
        """
        section = config.alertmanager
        if section.url is None:
            return None
        if section.tls is not None and section.tls.insecure_skip_verify:
            log.warning(
                "alertmanager: TLS certificates are not verified (insecure_skip_verify)",
                url=section.url,
            )
        return cls(
            section.url,
            section.timeout,
            config.alerts.service_label,
            section.max_response_bytes,
            **client_options(section),
            authorization=live_authorization("alertmanager", section),
        )

    def active(self) -> ActiveAlerts:
        """Every active alert carrying the service label; AlertmanagerError saying why not."""
        params = {
            "active": "true",
            "silenced": "true",
            "inhibited": "true",
            "unprocessed": "true",
            "filter": f'{self.service_label}=~".+"',
        }
        where = f"Alertmanager at {self.url}"
        try:
            response = self._session.get(self.url + ALERTS_PATH, params=params)
        except _RefusedError as exc:
            raise AlertmanagerError(f"{where} {exc}") from None
        except requests.Timeout:
            raise AlertmanagerError(
                f"{where} did not answer within {format_duration(self.timeout)}"
            ) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            tls = tls_failure(exc, self.client_cert, "alertmanager")
            if tls is not None:
                raise AlertmanagerError(f"{where}: TLS failed: {tls}") from None
            raise AlertmanagerError(f"{where} is unreachable") from None
        if response.status_code != requests.codes.ok:
            raise AlertmanagerError(
                f"{where} answered {response.status_code} "
                + self._session.said(response.reason or "", 80)
            )
        try:
            return self._parse(response.content)
        except InvalidInput as exc:
            first = exc.problems[0]
            detail = f"{first.location}: {first.message}" if first.location else first.message
            raise AlertmanagerError(
                f"{where} answered something that is not its API: {self._session.said(detail)}"
            ) from None
        except (RecursionError, MemoryError) as exc:  # a backstop behind the parse limits
            raise AlertmanagerError(
                f"{where} answered what cannot be read: {type(exc).__name__}"
            ) from None

    def _parse(self, body: bytes) -> ActiveAlerts:
        """The answer's alerts, each checked as a webhook's; InvalidInput naming what is wrong."""
        data = _json_document(body)
        problems = _Problems(may_hold_surrogates=_may_hold_surrogates(body))
        if not isinstance(data, list):
            problems.add("", "expected a list of alerts (GET /api/v2/alerts)")
            raise InvalidInput(problems.found)
        firing: list[AlertRecord] = []
        muted: list[AlertRecord] = []
        for index, raw in enumerate(data):
            where = f"[{index}]"
            state, is_muted = _state(raw, where, problems)
            if state is None:
                continue
            alert = _alert(
                {**raw, "status": "firing", "endsAt": None}, where, problems, self.service_label
            )
            if alert is not None:
                (muted if is_muted else firing).append(alert)
        if problems.found:
            raise InvalidInput(problems.found)
        return ActiveAlerts(tuple(firing), tuple(muted))


def _state(raw: Any, where: str, problems: _Problems) -> tuple[str | None, bool]:
    """An API alert's state, and whether it is muted (silenced or inhibited)."""
    if not isinstance(raw, dict):
        problems.add(where, "expected an alert object")
        return None, False
    status = raw.get("status")
    if not isinstance(status, dict) or status.get("state") not in _STATES:
        problems.add(f"{where}.status", f"expected a state among {', '.join(_STATES)}")
        return None, False
    silenced, inhibited = status.get("silencedBy") or [], status.get("inhibitedBy") or []
    if not isinstance(silenced, list) or not isinstance(inhibited, list):
        problems.add(f"{where}.status", "expected lists silencedBy and inhibitedBy")
        return None, False
    return str(status["state"]), status["state"] == "suppressed" or bool(silenced or inhibited)
