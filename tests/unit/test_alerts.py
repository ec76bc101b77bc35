"""Alertmanager webhook payloads: parsed field by field, and firing alerts as findings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rollbackd.core.model import FindingState, Severity, Trigger
from rollbackd.errors import InvalidInput
from rollbackd.sources.alerts import alert_findings, parse_webhook

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures"
NOW = datetime(2026, 11, 25, 16, 5, tzinfo=UTC)


def example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def test_the_captured_alertmanager_payloads_parse() -> None:
    """Both bodies captured from Alertmanager 0.25 are accepted with their alert."""
    for name in ("alertmanager-webhook-v4.json", "alertmanager-webhook-v4-from-prometheus.json"):
        delivery = parse_webhook(example(name))
        assert delivery.status == "firing"
        (alert,) = delivery.alerts
        assert alert.service == "web"
        assert alert.ends_at is None  # Alertmanager's zero time means "not ended"


def test_a_critical_alert_is_a_firing_critical_finding() -> None:
    """rollbackd_trigger=outage makes a critical finding for the service at once."""
    delivery = parse_webhook(example("alertmanager-webhook-v4.json"))
    findings, ignored = alert_findings(delivery.alerts, ["web"], "rollbackd_trigger", NOW)
    assert ignored == []
    (finding,) = findings
    assert (finding.service, finding.trigger, finding.severity) == (
        "web",
        Trigger.OUTAGE,
        Severity.CRITICAL,
    )
    assert finding.state is FindingState.FIRING
    assert finding.rule == "alert:WebDown"


def test_fields_newer_alertmanagers_add_are_ignored() -> None:
    """notification_reason and routeLabels do not make a delivery invalid."""
    body = json.loads(example("alertmanager-webhook-v4.json"))
    body["notification_reason"] = "new"
    body["routeLabels"] = {"team": "web"}
    body["alerts"][0]["silencedBy"] = []
    assert len(parse_webhook(json.dumps(body).encode()).alerts) == 1


def test_a_severity_label_stands_in_for_a_missing_trigger_label() -> None:
    """severity=warning without rollbackd_trigger is a medium finding."""
    body = json.loads(example("alertmanager-webhook-v4.json"))
    body["alerts"][0]["labels"] = {"alertname": "Slow", "service": "web", "severity": "warning"}
    delivery = parse_webhook(json.dumps(body).encode())
    findings, _ = alert_findings(delivery.alerts, ["web"], "rollbackd_trigger", NOW)
    assert [f.severity for f in findings] == [Severity.MEDIUM]


def test_alerts_rollbackd_cannot_place_are_said_and_ignored() -> None:
    """No service, an unknown service, or no trigger/severity: no finding, one line why."""
    body = json.loads(example("alertmanager-webhook-v4.json"))
    base = body["alerts"][0]
    body["alerts"] = [
        {**base, "fingerprint": "a1", "labels": {"alertname": "A"}},
        {**base, "fingerprint": "a2", "labels": {"alertname": "B", "service": "db"}},
        {**base, "fingerprint": "a3", "labels": {"alertname": "C", "service": "web"}},
    ]
    delivery = parse_webhook(json.dumps(body).encode())
    findings, ignored = alert_findings(delivery.alerts, ["web"], "rollbackd_trigger", NOW)
    assert findings == []
    assert [line.split(":")[0] for line in ignored] == ["alert A", "alert B", "alert C"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda b: b.update(version="3"), "version"),
        (lambda b: b.update(alerts="x"), "alerts"),
        (lambda b: b["alerts"][0].update(startsAt="yesterday"), "alerts[0].startsAt"),
        (lambda b: b["alerts"][0].update(status="firingg"), "alerts[0].status"),
        (lambda b: b["alerts"][0].update(fingerprint="--upload-pack"), "alerts[0].fingerprint"),
        (lambda b: b["alerts"][0].update(labels={"service": 1}), "alerts[0].labels"),
    ],
)
def test_each_bad_field_is_named(change: object, expected: str) -> None:
    """A malformed delivery is refused with the path of the field at fault."""
    body = json.loads(example("alertmanager-webhook-v4.json"))
    change(body)  # type: ignore[operator]
    with pytest.raises(InvalidInput) as caught:
        parse_webhook(json.dumps(body).encode())
    assert expected in [p.location for p in caught.value.problems]


def test_a_body_that_is_not_json_is_refused() -> None:
    """Garbage is one clear problem, not a crash."""
    with pytest.raises(InvalidInput, match="not JSON"):
        parse_webhook(b"\xff<html>")


def test_a_firing_alert_whose_ends_at_has_passed_is_no_finding() -> None:
    """An alert no longer re-sent expires at its endsAt; one without an endsAt keeps firing."""
    body = json.loads(example("alertmanager-webhook-v4.json"))
    base = body["alerts"][0]
    ends = {"Ended": "2026-11-25T16:04:59Z", "Ending": "2026-11-25T16:06:00Z"}
    body["alerts"] = [
        {
            **base,
            "fingerprint": name.lower(),
            "labels": {**base["labels"], "alertname": name},
            "endsAt": ends.get(name, "0001-01-01T00:00:00Z"),
        }
        for name in ("Ended", "Ending", "Open")
    ]
    alerts = parse_webhook(json.dumps(body).encode()).alerts
    now, _ = alert_findings(alerts, ["web"], "rollbackd_trigger", NOW)
    assert [f.rule for f in now] == ["alert:Ending", "alert:Open"]
    later, _ = alert_findings(alerts, ["web"], "rollbackd_trigger", NOW.replace(minute=6))
    assert [f.rule for f in later] == ["alert:Open"]


def delivery_with(**alert: object) -> bytes:
    body = json.loads(example("alertmanager-webhook-v4.json"))
    body["alerts"][0].update(alert)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"version": "4", "alerts": [], "x": ' + b"9" * 5000 + b"}", "5000 characters"),
        (b'{"version": "4", "alerts": [], "x": 0.' + b"0" * 150 + b"1}", "153 characters"),
        (b'{"version": "4", "alerts": [], "x": ' + b"[" * 1000 + b"]" * 1000 + b"}", "too deeply"),
        (b'{"version": "4", "alerts": [], "x": 1e999}', "1e999 is out of range"),
        (b'{"version": "4", "alerts": [], "x": NaN}', "NaN is not a JSON number"),
        (b'{"version": "4", "alerts": [], "x": -Infinity}', "-Infinity is not a JSON number"),
    ],
)
def test_json_python_chokes_on_is_one_problem_about_the_body(body: bytes, says: str) -> None:
    """Nesting past the recursion limit, giant, long or infinite numbers, NaN: refused, no
    crash (what orjson would take too: a long number that fits a float, 1,000 levels)."""
    with pytest.raises(InvalidInput) as caught:
        parse_webhook(body)
    [problem] = caught.value.problems
    assert problem.location == ""
    assert says in problem.message
    assert "set_int_max_str_digits" not in problem.message


@pytest.mark.parametrize(
    ("body", "location"),
    [
        (delivery_with(labels={"alertname": "\ud800", "service": "web"}), "alerts[0].labels"),
        (delivery_with(labels={"\udfff": "x", "service": "web"}), "alerts[0].labels"),
        (delivery_with(annotations={"summary": "a\udc00b"}), "alerts[0].annotations"),
        (json.dumps({"version": "4", "alerts": [], "groupKey": "\ud800"}).encode(), "groupKey"),
        (
            delivery_with(annotations={"s": "x"}).replace(b'"x"', b'"\xed\xa0\x80"'),
            "alerts[0].annotations",
        ),
        (
            delivery_with(annotations={"s": "x"}).replace(b'"x"', b'"\\uDBFF"'),
            "alerts[0].annotations",
        ),
        (
            json.dumps({"version": "4", "alerts": [], "groupKey": "\ud800"}).encode("utf-16-le"),
            "groupKey",
        ),
    ],
)
def test_text_with_a_lone_surrogate_is_refused_naming_the_field(body: bytes, location: str) -> None:
    """A lone surrogate (escaped, or as UTF-8 bytes) is refused where it is, and shown escaped."""
    with pytest.raises(InvalidInput) as caught:
        parse_webhook(body)
    assert [p.location for p in caught.value.problems] == [location]
    message = caught.value.problems[0].message
    assert "not valid Unicode" in message
    message.encode("utf-8")  # the answer quoting it can be sent


def test_text_with_escaped_surrogate_pairs_and_any_language_is_accepted() -> None:
    """An emoji escaped as a surrogate pair, and non-ASCII text, are valid Unicode."""
    body = delivery_with(
        labels={"alertname": "Down", "service": "web", "team": "caf\u00e9"},
        annotations={"summary": "\U0001f525 on fire"},
    )
    assert b"\\ud83d\\udd25" in body
    [alert] = parse_webhook(body).alerts
    assert alert.annotations["summary"] == "\U0001f525 on fire"
    assert alert.labels["team"] == "caf\u00e9"
