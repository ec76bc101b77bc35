"""Alertmanager's webhook (payload version 4): parsing it, and firing alerts as findings.

The body is untrusted. It is parsed into plain values, each field checked,
and anything wrong named by its path (``alerts[2].startsAt``). Fields this
version does not know (``notification_reason``, ``routeLabels`` …) are
ignored, so newer Alertmanagers keep working. What Python's JSON reader
would choke on or silently accept is refused as a client mistake: nesting
deeper than its recursion limit, numbers of more than
:data:`MAX_NUMBER_CHARS` characters (Python refuses integers past 4,300
digits), numbers out of a float's range, ``NaN`` and ``Infinity``, and text
that is not valid Unicode (a lone surrogate such as ``"\\ud800"``, which the
journal, being UTF-8, could never store). Alertmanager sends none of these.

A firing alert becomes a finding for the service named by its ``service``
label (``[alerts] service_label``), of the trigger class named by its
``rollbackd_trigger`` label (``[alerts] trigger_label``), or else of the
severity named by its ``severity`` label. Alertmanager has already applied
the alert rule's ``for``, so the finding fires at once. A resolved alert ends
it, and so does the alert's ``endsAt`` once it has passed: an alert that
carries one and is no longer re-sent expires. (Alertmanager itself sends
firing alerts without an ``endsAt``, its zero time; those fire until
resolved.) An alert rollbackd cannot place (no known service, no trigger or
severity) is journaled and otherwise ignored.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from rollbackd.core.durations import format_instant
from rollbackd.core.matrix import assess_severity
from rollbackd.core.model import ALERT_RULE_PREFIX, Finding, FindingState, Severity, Trigger
from rollbackd.errors import InvalidInput, Problem
from rollbackd.journal import AlertRecord, Delivery
from rollbackd.text import quoted

MAX_ALERTS = 1000
MAX_NUMBER_CHARS = 100
"""A JSON number longer than this is refused: none of the payload's fields is a number."""
SHOWN_LIMIT = 60
"""Characters of a bad value from the payload shown in the error that refuses it."""
_FINGERPRINT = re.compile(r"^[0-9A-Za-z]{1,64}$")
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)

SEVERITY_LABELS: dict[str, Severity] = {
    "critical": Severity.CRITICAL,
    "page": Severity.CRITICAL,
    "high": Severity.HIGH,
    "error": Severity.HIGH,
    "major": Severity.HIGH,
    "warning": Severity.MEDIUM,
    "medium": Severity.MEDIUM,
    "minor": Severity.MEDIUM,
    "low": Severity.LOW,
    "info": Severity.LOW,
}
"""What an alert's ``severity`` label means when it has no trigger label."""

_TRIGGER_FOR_SEVERITY = {
    Severity.CRITICAL: Trigger.CRITICAL_BUSINESS_FUNCTION,
    Severity.HIGH: Trigger.MAJOR_FEATURE_BROKEN,
    Severity.MEDIUM: Trigger.MINOR_FEATURE_BROKEN,
    Severity.LOW: Trigger.UI_ISSUE,
}


def parse_webhook(body: bytes, service_label: str = "service") -> Delivery:
    """Parse a version-4 payload; InvalidInput names every field that is wrong."""
    problems = _Problems(may_hold_surrogates=_may_hold_surrogates(body))
    bad = problems.add
    data = _json_document(body)
    if not isinstance(data, dict):
        raise InvalidInput([Problem("body", "", "expected a JSON object (Alertmanager payload)")])
    version = data.get("version")
    if version != "4":
        bad("version", f'expected "4" (Alertmanager webhook payload version 4), got {version!r}')
    raw_alerts = data.get("alerts")
    alerts: list[AlertRecord] = []
    if not isinstance(raw_alerts, list):
        bad("alerts", "expected a list of alerts")
    elif len(raw_alerts) > MAX_ALERTS:
        bad("alerts", f"at most {MAX_ALERTS} alerts per delivery, got {len(raw_alerts)}")
    else:
        for index, raw in enumerate(raw_alerts):
            alert = _alert(raw, f"alerts[{index}]", problems, service_label)
            if alert is not None:
                alerts.append(alert)
    group_key = data.get("groupKey")
    if isinstance(group_key, str) and problems.may_hold_surrogates and not _unicode(group_key):
        bad("groupKey", f"not valid Unicode text: {quoted(group_key, SHOWN_LIMIT)}")
    status = data.get("status")
    if problems.found:
        raise InvalidInput(problems.found)
    return Delivery(
        source="alertmanager",
        group_key=group_key[:1000] if isinstance(group_key, str) else None,
        status=status if status in ("firing", "resolved") else None,
        alerts=alerts,
    )


class _RefusedNumberError(ValueError):
    """A JSON value the parser hooks refuse; the message says which and why."""


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    if len(text) > MAX_NUMBER_CHARS:
        shown = f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})"
        raise _RefusedNumberError(shown)
    value = kind(text)
    if not math.isfinite(value):
        raise _RefusedNumberError(f"the number {text} is out of range")
    return value


def _constant(text: str) -> Any:
    raise _RefusedNumberError(f"{text} is not a JSON number")


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19
FEW_BRACKETS = 512
"""Bodies with fewer brackets than this nest within what both JSON readers take."""


def _json_document(body: bytes) -> Any:
    """The body as JSON; InvalidInput for anything Python's JSON reader would fail on.

    orjson reads it first, in a third of the time; what it refuses (NaN, lone surrogates,
    a byte-order mark or UTF-16, malformed JSON) Python's reader reads again, to accept
    or refuse it as it always has. It is not asked at all when the two could differ on
    what they both take: a run of 19 digits (orjson makes a float of an integer past 64
    bits, and takes numbers longer than :data:`MAX_NUMBER_CHARS`) or deep nesting.
    """
    if (
        _LONG_DIGITS not in body.translate(_DIGITS_AS_ZERO)
        and body.count(b"[") + body.count(b"{") < FEW_BRACKETS
    ):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(
            body,
            parse_int=lambda text: _number(text, int),
            parse_float=lambda text: _number(text, float),
            parse_constant=_constant,
        )
    except _RefusedNumberError as exc:
        raise InvalidInput([Problem("body", "", f"not JSON rollbackd accepts: {exc}")]) from None
    except RecursionError:
        message = "not JSON rollbackd accepts: arrays or objects nested too deeply"
        raise InvalidInput([Problem("body", "", message)]) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidInput([Problem("body", "", f"not JSON: {exc}")]) from None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _may_hold_surrogates(body: bytes) -> bool:
    """Whether a string parsed from ``body`` may hold a lone surrogate; False is certain.

    Plain ASCII UTF-8 (no byte above 127, no NUL: not UTF-16 or 32) holds one only as a
    ``\\uD800``-``\\uDFFF`` escape, which one scan of the bytes finds. Then every label
    need not be checked one by one, which was most of a delivery's parsing.
    """
    return not body.isascii() or b"\x00" in body or _SURROGATE_ESCAPE.search(body) is not None


def _unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: JSON escapes and Python's reader let lone
    surrogates through (``"\\ud800"``, or their UTF-8 bytes); UTF-8 cannot hold them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Problems:
    """Problems found in a body, each located by its field path."""

    def __init__(self, *, may_hold_surrogates: bool) -> None:
        self.found: list[Problem] = []
        self.may_hold_surrogates = may_hold_surrogates
        """Whether its strings must be checked for lone surrogates (see
        :func:`_may_hold_surrogates`)."""

    def add(self, where: str, message: str) -> None:
        self.found.append(Problem("body", where, message))


def _alert(raw: Any, where: str, problems: _Problems, service_label: str) -> AlertRecord | None:
    bad = problems.add
    if not isinstance(raw, dict):
        bad(where, "expected an alert object")
        return None
    before = len(problems.found)
    status = raw.get("status")
    if status not in ("firing", "resolved"):
        bad(
            f"{where}.status", f'expected "firing" or "resolved", got {quoted(status, SHOWN_LIMIT)}'
        )
    check = problems.may_hold_surrogates
    labels = _strings(raw.get("labels"), f"{where}.labels", bad, check, required=True)
    annotations = _strings(raw.get("annotations", {}), f"{where}.annotations", bad, check)
    fingerprint = raw.get("fingerprint")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
        bad(f"{where}.fingerprint", "expected Alertmanager's fingerprint (1-64 letters/digits)")
    starts = _time(raw.get("startsAt"), f"{where}.startsAt", bad, required=True)
    ends = _time(raw.get("endsAt"), f"{where}.endsAt", bad, required=False)
    if len(problems.found) != before:
        return None
    assert isinstance(fingerprint, str) and starts is not None  # noqa: S101 -- checked above
    service = labels.get(service_label)
    return AlertRecord(
        fingerprint=fingerprint,
        starts_at=starts,
        status=str(status),
        ends_at=ends,
        service=service if service and _SERVICE.match(service) else None,
        name=labels.get("alertname"),
        labels=labels,
        annotations=annotations,
    )


def _strings(
    raw: Any,
    where: str,
    bad: Callable[[str, str], None],
    check_unicode: bool,
    required: bool = False,
) -> dict[str, str]:
    if raw is None and not required:
        return {}
    strings = isinstance(raw, dict)
    size = 0
    if strings:
        for key, value in raw.items():
            if type(key) is not str or type(value) is not str:
                strings = False
                break
            size += len(key) + len(value)
    if not strings:
        bad(where, "expected an object of string values")
        return {}
    if size > 64 * 1024:
        bad(where, "larger than 64 KiB")
        return {}
    if check_unicode:
        for key, value in raw.items():
            if not _unicode(key) or not _unicode(value):
                bad(
                    where,
                    f"{quoted(key, SHOWN_LIMIT)}: not valid Unicode text: "
                    f"{quoted(value, SHOWN_LIMIT)}",
                )
                return {}
    return dict(raw)


def _time(raw: Any, where: str, bad: Callable[[str, str], None], required: bool) -> datetime | None:
    if raw is None and not required:
        return None
    if not isinstance(raw, str):
        bad(where, "expected an RFC 3339 time")
        return None
    try:
        moment = _instant(raw)
    except _NoZoneError:
        bad(where, "expected a time with a zone")
        return None
    except (ValueError, OverflowError):
        bad(where, f"expected an RFC 3339 time in years 1-9999, got {quoted(raw, SHOWN_LIMIT)}")
        return None
    return None if moment == ZERO_TIME else moment


class _NoZoneError(ValueError):
    """A time without a zone."""


@functools.lru_cache(maxsize=1024)
def _instant(text: str) -> datetime:
    """The UTC instant of an RFC 3339 time, worked out once: a delivery's alerts mostly
    share their times (every firing alert's endsAt is the zero time), and Alertmanager
    sends the same alerts again. Only valid times, a few dozen characters, are kept."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise _NoZoneError(text)
    return moment.astimezone(UTC)


def classify(
    labels: Mapping[str, str], trigger_label: str
) -> tuple[Trigger, Severity | None] | None:
    """The trigger class (and a severity override) an alert's labels ask for, if any."""
    named = labels.get(trigger_label)
    if named is not None:
        try:
            return Trigger(named), None
        except ValueError:
            pass
    severity = SEVERITY_LABELS.get(labels.get("severity", "").lower())
    if severity is not None:
        return _TRIGGER_FOR_SEVERITY[severity], severity
    return None


def alert_findings(
    alerts: Iterable[AlertRecord],
    services: Iterable[str],
    trigger_label: str,
    now: datetime,
) -> tuple[list[Finding], list[str]]:
    """Alerts firing at ``now`` as firing findings; and one line per alert not placed."""
    known = set(services)
    findings: list[Finding] = []
    ignored: list[str] = []
    for alert in alerts:
        if alert.status != "firing" or (alert.ends_at is not None and alert.ends_at <= now):
            continue
        name = alert.name or alert.fingerprint
        if alert.service is None or alert.service not in known:
            ignored.append(f"alert {name}: no configured service in its labels")
            continue
        placed = classify(alert.labels, trigger_label)
        if placed is None:
            ignored.append(
                f"alert {name}: neither a {trigger_label} label naming a trigger class "
                "nor a severity label rollbackd knows"
            )
            continue
        trigger, override = placed
        severity, why = assess_severity(trigger, override, None)
        findings.append(
            Finding(
                rule=f"{ALERT_RULE_PREFIX}{name}"[:100],
                service=alert.service,
                trigger=trigger,
                state=FindingState.FIRING,
                time=now,
                value=1.0,
                threshold=None,
                baseline=None,
                condition="firing in Alertmanager",
                severity=severity,
                reason=f"Alertmanager alert {name} firing since {format_instant(alert.starts_at)}",
                since=alert.starts_at,
                started=alert.starts_at,
                severity_reason=why,
                labels=dict(alert.labels),
            )
        )
    return findings, ignored
