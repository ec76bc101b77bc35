"""How Alertmanager's answer and the journaled webhook alerts combine (sources.alertmanager)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.cli import _http_lines
from rollbackd.config import load_config, parse_config
from rollbackd.core.deploys import Deploy, DeployHistory
from rollbackd.core.engine import Engine, Inputs
from rollbackd.errors import InvalidInput
from rollbackd.journal import AlertRecord
from rollbackd.loader import load
from rollbackd.sources.alertmanager import ActiveAlerts, merge

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


def alert(fingerprint: str, service: str | None) -> AlertRecord:
    labels = {"alertname": fingerprint, "rollbackd_trigger": "outage"}
    if service is not None:
        labels["service"] = service
    return AlertRecord(fingerprint, T0, "firing", None, service, fingerprint, labels, {})


def test_an_alert_firing_in_either_is_firing_and_one_gone_from_alertmanager_is_resolved() -> None:
    """Webhook-only and API-only alerts both fire; a journaled one Alertmanager dropped is
    resolved unless it was received again after the read began."""
    journaled = [alert("a1", "web"), alert("a2", "web"), alert("a3", "web"), alert("x", None)]
    answer = ActiveAlerts(firing=(alert("a1", "web"), alert("b1", "api")))
    merged = merge(journaled, answer, ["web", "api", "db"], fresh={"a3"})
    assert sorted(a.fingerprint for a in merged.firing) == ["a1", "a3", "b1", "x"]
    assert [a.fingerprint for a in merged.resolved] == ["a2"]
    assert merged.quiet == {"db"}


def test_a_silenced_alert_is_no_finding_but_its_service_is_not_quiet() -> None:
    """A muted alert (silenced or inhibited) does not fire a finding, keeps its service from
    counting as quiet, and keeps a journaled firing alert from being resolved."""
    answer = ActiveAlerts(muted=(alert("m1", "web"), alert("m2", "api")))
    merged = merge([alert("m2", "api")], answer, ["web", "api"])
    assert [a.fingerprint for a in merged.firing] == ["m2"]
    assert [a.fingerprint for a in merged.muted] == ["m1"]
    assert merged.resolved == []
    assert merged.quiet == frozenset()


def test_a_service_without_rules_is_known_good_only_on_alertmanager_quiet() -> None:
    """With no rule for it, a service's version becomes known good after known_good_after of
    cycles in which Alertmanager answered quiet, and never from cycles without that answer."""
    config = parse_config(
        '[[services]]\nname = "shop"\nexecutor = "command"\ncommand = ["true"]\n', "c"
    )
    for quiet, expected in ((True, "v1"), (False, None)):
        history = DeployHistory(timedelta(minutes=1))
        history.record(Deploy("shop", "v1", T0, "api"))
        engine = Engine(config.engine_settings(), [], history)
        for step in range(6):
            engine.step(
                T0 + step * timedelta(seconds=15), Inputs(quiet_alerts={"shop"} if quiet else set())
            )
        assert history.last_good("shop")[0] == expected


def test_alertmanager_keys_without_a_url_or_with_a_written_secret_are_refused() -> None:
    """``[alertmanager]`` needs a url for its other keys, and never holds a secret itself."""
    with pytest.raises(InvalidInput, match="url is not set"):
        parse_config('[alertmanager]\nheaders = { X-Scope-OrgID = "t1" }\n', "c.toml")
    with pytest.raises(InvalidInput, match="ROLLBACKD_ALERTMANAGER__BASIC_AUTH__PASSWORD"):
        parse_config(
            '[alertmanager]\nurl = "http://am:9093"\n'
            'basic_auth = { username = "u", password = "p" }\n',
            "c.toml",
        )
    with pytest.raises(InvalidInput, match=r"alertmanager\.url"):
        parse_config('[alertmanager]\nurl = "am:9093"\n', "c.toml")


def test_check_config_says_how_alertmanager_is_reached_without_the_secret(tmp_path: Path) -> None:
    """check-config names Alertmanager's URL, timeout and where its password comes from,
    never the password itself."""
    (tmp_path / "am.pass").write_text("hunter2-secret\n")
    path = tmp_path / "config.toml"
    path.write_text(
        '[alertmanager]\nurl = "https://am.internal:9093"\ntimeout = "3s"\n'
        'basic_auth = { username = "rollbackd", password_file = "am.pass" }\n'
    )
    config = load_config(path, env={})
    assert config.alertmanager.basic_auth is not None
    assert config.alertmanager.basic_auth.password is not None
    lines = [line for line in _http_lines(config) if line.startswith("alertmanager:")]
    assert lines == [
        "alertmanager: https://am.internal:9093, active alerts read every cycle (timeout 3s), "
        f"basic auth as user 'rollbackd' (password from {tmp_path / 'am.pass'})"
    ]
    assert "hunter2" not in "".join(_http_lines(config))


def test_unverified_tls_to_alertmanager_is_a_warning(tmp_path: Path) -> None:
    """insecure_skip_verify under [alertmanager] is warned about, as under [prometheus]."""
    (tmp_path / "rules").mkdir()
    path = tmp_path / "config.toml"
    path.write_text(
        '[daemon]\nrules = []\n[[services]]\nname = "web"\nexecutor = "command"\n'
        'command = ["true"]\n'
        '[alertmanager]\nurl = "https://am.internal:9093"\n'
        "tls = { insecure_skip_verify = true }\n"
    )
    warnings = load(path, env={}).warnings
    assert any("alertmanager.tls.insecure_skip_verify" in w for w in warnings), warnings
