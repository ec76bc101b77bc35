"""Deploy history and deploy events: current version, deploy time, last known good."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rollbackd.deploys import Deploy, DeployHistory, deploys_from_presence
from rollbackd.errors import InvalidInput
from rollbackd.sources.deploys import DeployEvents, parse_event, valid_ref

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
MIN = timedelta(minutes=1)


def ran_clean(history: DeployHistory, service: str, start: datetime, minutes: int) -> None:
    for i in range(minutes + 1):
        history.note_evaluation(service, start + i * MIN, conclusive=True, trouble_started=None)


def test_the_newest_deploy_is_current_and_the_one_before_is_last_good() -> None:
    """v1 ran 40 clean minutes, then v2: roll back target v1."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event"))
    ran_clean(history, "web", T0, 40)
    history.record(Deploy("web", "v2", T0 + 41 * MIN, "event"))
    current = history.current("web")
    assert current is not None and current.version == "v2"
    good, why = history.last_good("web")
    assert good == "v1"
    assert "ran 40m on real data without a finding" in why


def test_a_version_that_ran_too_briefly_is_not_known_good() -> None:
    """Twenty minutes are not the configured thirty."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event"))
    ran_clean(history, "web", T0, 20)
    history.record(Deploy("web", "v2", T0 + 21 * MIN, "event"))
    assert history.last_good("web")[0] is None


def test_missing_data_never_makes_a_version_known_good() -> None:
    """Hours without data prove nothing about v1."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event"))
    for i in range(120):
        history.note_evaluation("web", T0 + i * MIN, conclusive=False, trouble_started=None)
    history.record(Deploy("web", "v2", T0 + 2 * timedelta(hours=1), "event"))
    assert history.last_good("web") == (
        None,
        "no deploy ran 30m on real data without a finding",
    )


def test_a_finding_early_in_a_run_spoils_it() -> None:
    """A version with a finding 10 minutes after its deploy is not known good."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v0", T0 - timedelta(hours=2), "event"))
    ran_clean(history, "web", T0 - timedelta(hours=2), 60)
    history.record(Deploy("web", "v1", T0, "event"))
    ran_clean(history, "web", T0, 9)
    history.note_evaluation("web", T0 + 10 * MIN, True, trouble_started=T0 + 10 * MIN)
    ran_clean(history, "web", T0 + 11 * MIN, 60)
    history.record(Deploy("web", "v2", T0 + 2 * timedelta(hours=1), "event"))
    assert history.last_good("web")[0] == "v0"


def test_the_current_version_becomes_known_good_after_running_clean() -> None:
    """Then there is nothing to roll back to that is better than what runs."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event"))
    ran_clean(history, "web", T0, 31)
    assert history.last_good("web")[0] == "v1"


def test_a_version_that_comes_back_is_a_new_deploy() -> None:
    """v1 → v2 → v1 (a rollback): v1 is current again, deployed when it came back."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    history.observe_versions("web", ["v2"], T0 + 10 * MIN)
    history.observe_versions("web", ["v1"], T0 + 20 * MIN)
    current = history.current("web")
    assert current is not None
    assert (current.version, current.time) == ("v1", T0 + 20 * MIN)


def test_a_rolling_deploy_keeps_the_new_version_current() -> None:
    """While v1 and v2 run side by side, v2 is current since it first appeared."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    history.observe_versions("web", ["v1", "v2"], T0 + 10 * MIN)
    history.observe_versions("web", ["v1", "v2"], T0 + 11 * MIN)
    history.observe_versions("web", ["v2"], T0 + 15 * MIN)
    current = history.current("web")
    assert current is not None
    assert (current.version, current.time) == ("v2", T0 + 10 * MIN)
    assert [d.version for d in history.deploys("web")] == ["v1", "v2"]


def test_deploy_events_outrank_the_version_metric() -> None:
    """Once CI announces deploys, later metric sightings are not deploys; earlier ones stay."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    history.record(Deploy("web", "v2", T0 + MIN, "event"))
    history.observe_versions("web", ["v3"], T0 + 2 * MIN)
    assert [(d.version, d.source) for d in history.deploys("web")] == [
        ("v1", "metric"),
        ("v2", "event"),
    ]


def test_a_version_that_ran_clean_before_the_first_event_is_still_the_last_good() -> None:
    """The metric saw v1 run clean; CI's first event (v2) does not erase that."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    ran_clean(history, "web", T0, 40)
    history.observe_versions("web", ["v2"], T0 + 41 * MIN)  # seen just before CI said so
    history.record(Deploy("web", "v2", T0 + 42 * MIN, "event", ref="abc"))
    current = history.current("web")
    assert current is not None and (current.version, current.ref) == ("v2", "abc")
    assert history.last_good("web")[0] == "v1"
    assert [d.source for d in history.deploys("web")] == ["metric", "event"]


def test_a_rollback_target_is_the_ref_of_the_newest_deploy_of_that_version() -> None:
    """v1 deployed twice: its newest deploy's ref; a version no deploy had is taken as a ref."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event", ref="aaa111"))
    history.record(Deploy("web", "v2", T0 + MIN, "event", ref="bbb222"))
    history.record(Deploy("web", "v1", T0 + 2 * MIN, "event", ref="ccc333"))
    history.record(Deploy("web", "v3", T0 + 3 * MIN, "event"))
    assert history.target_ref("web", "v1") == "ccc333"
    assert history.target_ref("web", "v3") == "v3"  # an event without a ref: the version
    assert history.target_ref("web", "release-7") == "release-7"
    assert history.target_ref("api", "v1") == "v1"


def test_presence_gaps_mark_redeploys() -> None:
    """A version missing from the metric for more than two steps came back as a new deploy."""
    step = timedelta(seconds=30)
    presence = {
        "v1": [T0 + i * step for i in range(10)] + [T0 + i * step for i in range(20, 30)],
        "v2": [T0 + i * step for i in range(10, 20)],
    }
    deploys = deploys_from_presence("web", presence, step)
    assert [(d.version, d.time) for d in deploys] == [
        ("v1", T0),
        ("v2", T0 + 10 * step),
        ("v1", T0 + 20 * step),
    ]


def test_a_deploy_event_is_parsed_with_its_migration_facts() -> None:
    """The body of design §3 becomes a deploy with time, ref and migrations."""
    deploy = parse_event(
        {
            "service": "web",
            "version": "v2",
            "ref": "3f2c1e",
            "time": "2026-01-01T12:00:00Z",
            "migrations": [
                {
                    "file": "migrations/0002_add_index.sql",
                    "backwards_compatible": True,
                    "changes_data": False,
                }
            ],
        },
        T0,
        {"web"},
    )
    assert deploy.time == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert deploy.target_ref == "3f2c1e"
    assert deploy.migrations[0].backwards_compatible is True


def test_a_deploy_event_defaults_time_to_now_and_ref_to_version() -> None:
    """Only service and version are required."""
    events = DeployEvents(DeployHistory(timedelta(minutes=30)), ["web"])
    deploy = events.announce({"service": "web", "version": "v7"}, T0)
    assert (deploy.time, deploy.target_ref) == (T0, "v7")
    assert events.history.current("web") == deploy


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"version": "v2"}, "request: service: required, a configured service name"),
        ({"service": "db", "version": "v2"}, "request: service: no service named 'db'"),
        ({"service": "web"}, "request: version: required"),
        ({"service": "web", "version": "--upload-pack=evil"}, "request: version: required"),
        ({"service": "web", "version": "v2", "ref": "$(rm -rf /)"}, "request: ref: a git commit"),
        ({"service": "web", "version": "v2", "time": "yesterday"}, "request: time: an RFC 3339"),
        ({"service": "web", "version": "v2", "time": "2026-01-01T12:00:00"}, "request: time:"),
        ({"service": "web", "version": "v2", "extra": 1}, "request: extra: unknown field"),
        (
            {"service": "web", "version": "v2", "migrations": [{"file": "-x"}]},
            "request: migrations[0].file: required",
        ),
        (
            {"service": "web", "version": "v2", "migrations": [{"file": "a", "changes_data": 1}]},
            "request: migrations[0].changes_data: true or false",
        ),
    ],
)
def test_a_bad_deploy_event_names_the_field(body: dict[str, object], expected: str) -> None:
    """Every bad field is reported by name; nothing is recorded."""
    history = DeployHistory(timedelta(minutes=30))
    with pytest.raises(InvalidInput) as caught:
        DeployEvents(history, ["web"]).announce(body, T0)
    assert any(str(p).startswith(expected) for p in caught.value.problems), caught.value
    assert history.current("web") is None


@pytest.mark.parametrize(
    "ref", ["--upload-pack=x", "-x", "a..b", "a b", "x@{1}", "a;b", "$(x)", "a\nb", "", "x.lock"]
)
def test_refs_that_git_could_misread_are_refused(ref: str) -> None:
    """Nothing that could be an option, a range or a shell word passes."""
    assert not valid_ref(ref)


@pytest.mark.parametrize("ref", ["v1.2.3", "release/2026-01", "3f2c1e0", "build+42", "HEAD"])
def test_ordinary_versions_and_refs_pass(ref: str) -> None:
    """Tags, branches and commit ids are accepted."""
    assert valid_ref(ref)
