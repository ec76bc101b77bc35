"""Deploy history and deploy events: current version, deploy time, last known good."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rollbackd.core.deploys import Deploy, DeployHistory, MigrationFact, deploys_from_presence
from rollbackd.errors import InvalidInput
from rollbackd.sources.deploys import parse_event, valid_ref

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
MIN = timedelta(minutes=1)
SEC = timedelta(seconds=1)


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


def test_a_long_break_in_the_data_restarts_the_count() -> None:
    """One good look, an hour without data (the app crashed, its metrics gone), one good look
    again: v1 never ran 30 minutes shown healthy, so it is not known good."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event"))
    history.note_evaluation("web", T0, conclusive=True, trouble_started=None)
    for i in range(1, 60):
        history.note_evaluation("web", T0 + i * MIN, conclusive=False, trouble_started=None)
    history.note_conclusive(["web"], T0 + 60 * MIN)
    assert history.last_good("web")[0] is None
    ran_clean(history, "web", T0 + 60 * MIN, 29)
    assert history.last_good("web")[0] is None
    ran_clean(history, "web", T0 + 89 * MIN, 1)
    good, why = history.last_good("web")
    assert good == "v1"
    assert "ran 30m on real data without a finding" in why


def test_a_short_break_in_the_data_does_not_restart_the_count() -> None:
    """A lost look or two (a scrape missed, a rate over too few samples) is not a break."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event"))
    ran_clean(history, "web", T0, 10)
    history.note_evaluation("web", T0 + 11 * MIN, conclusive=False, trouble_started=None)
    ran_clean(history, "web", T0 + 13 * MIN, 17)
    assert history.last_good("web")[0] == "v1"


def test_the_longest_break_that_keeps_the_count_is_a_tenth_of_known_good_after() -> None:
    """Two hours to be known good: a break of 12 minutes keeps the count, 13 restart it."""
    for gap, good in ((12, "v1"), (13, None)):
        history = DeployHistory(timedelta(hours=2))
        history.record(Deploy("web", "v1", T0, "event"))
        ran_clean(history, "web", T0, 60)
        ran_clean(history, "web", T0 + (60 + gap) * MIN, 60)
        assert history.last_good("web")[0] == good, gap


def test_looks_far_apart_are_no_break_in_the_data() -> None:
    """A backtest stepping every 5 minutes still finds a version known good after 30."""
    history = DeployHistory(timedelta(minutes=30), look_every=5 * MIN)
    history.record(Deploy("web", "v1", T0, "event"))
    for look in range(7):
        history.note_conclusive(["web"], T0 + look * 5 * MIN)
    assert history.last_good("web")[0] == "v1"


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


def test_one_look_at_every_service_agrees_with_asking_each_one() -> None:
    """A cycle's bulk reads (current deploys, services serving two versions, every
    service's versions observed at once) say what the per-service calls say, after each
    change: a deploy seen, an event replacing it, a rollout, a version coming back."""
    history = DeployHistory(timedelta(minutes=30))
    looks = [
        {"web": ["v1"], "api": ["a1"]},
        {"web": ["v1"], "api": ["a1"], "db": ["d1"]},
        {"web": ["v1", "v2"], "api": ["a1"], "db": ["d1"]},
        {"web": ["v2"], "api": ["a2"], "db": ["d1"]},
        {"web": ["v1"], "api": ["a2"]},
    ]
    for minutes, running in enumerate(looks):
        at = T0 + 10 * minutes * MIN
        history.observe_all(running, at)
        if minutes == 1:
            history.record(Deploy("db", "d1", at - SEC, "event", ref="abc123"))
        services = ["web", "api", "db", "nowhere"]
        expected = {s: d for s in services if (d := history.current(s)) is not None}
        assert history.currents() == expected
        assert history.serving_several() == [s for s in services if len(history.serving(s)) > 1]
    current = history.current("web")
    assert current is not None and (current.version, current.time) == ("v1", T0 + 40 * MIN)
    assert history.currents()["db"].ref == "abc123"


def versions_and_times(history: DeployHistory) -> list[tuple[str, datetime, str]]:
    return [(d.version, d.time, d.source) for d in history.deploys("web")]


def test_a_version_the_metric_shows_after_the_last_event_is_current() -> None:
    """CI died before announcing v3: the metric shows v3 running, so v3 is current since then."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    history.record(Deploy("web", "v2", T0 + MIN, "event", ref="abc1234"))
    history.observe_versions("web", ["v2"], T0 + 2 * MIN)
    revision = history.revision
    history.observe_versions("web", ["v3"], T0 + 60 * MIN)
    current = history.current("web")
    assert current is not None
    assert (current.version, current.time, current.source) == ("v3", T0 + 60 * MIN, "metric")
    assert history.revision != revision
    assert [d.version for d in history.deploys("web")] == ["v1", "v2", "v3"]


def test_a_late_event_for_the_version_the_metric_showed_adds_its_ref_and_facts() -> None:
    """CI announces v3 after the metric showed it: one deploy of v3, at the event's time."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v2", T0, "event"))
    history.observe_versions("web", ["v3"], T0 + 60 * MIN)
    revision = history.revision
    fact = MigrationFact("migrations/0003.sql", backwards_compatible=True)
    late = Deploy("web", "v3", T0 + 62 * MIN, "event", ref="c3c3c3c", migrations=(fact,))
    assert history.record(late)
    assert history.current("web") == late
    assert [d.version for d in history.deploys("web")] == ["v2", "v3"]
    assert history.revision != revision


@pytest.mark.parametrize("event_first", [True, False])
def test_an_event_and_the_metric_showing_its_version_are_one_deploy(event_first: bool) -> None:
    """Whichever arrives first, v2's deploy is the event's: its time, ref and migrations."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    fact = MigrationFact("migrations/0002.sql", backwards_compatible=True)
    event = Deploy("web", "v2", T0 + 60 * MIN, "event", ref="abc1234", migrations=(fact,))
    if event_first:
        history.record(event)
        history.observe_versions("web", ["v2"], T0 + 60 * MIN + 15 * SEC)
    else:
        history.observe_versions("web", ["v2"], T0 + 60 * MIN - 2 * MIN)
        history.record(event)
    assert history.current("web") == event
    assert versions_and_times(history) == [
        ("v1", T0, "metric"),
        ("v2", T0 + 60 * MIN, "event"),
    ]


def test_an_event_long_before_the_metric_shows_its_version_is_still_that_deploy() -> None:
    """A slow rollout (or a daemon that was not watching): v2 is seen late, not deployed twice."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    history.record(Deploy("web", "v2", T0 + 60 * MIN, "event"))
    history.observe_versions("web", ["v1"], T0 + 61 * MIN)
    history.observe_versions("web", ["v1", "v2"], T0 + 90 * MIN)
    history.observe_versions("web", ["v2"], T0 + 95 * MIN)
    assert versions_and_times(history) == [
        ("v1", T0, "metric"),
        ("v2", T0 + 60 * MIN, "event"),
    ]


def test_after_a_rollback_the_metric_showing_the_target_is_not_another_deploy() -> None:
    """The rollback's deploy of v1 is current; the metric seeing v1 seconds later adds nothing."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event", ref="1111111"))
    history.observe_versions("web", ["v1"], T0 + 15 * SEC)
    ran_clean(history, "web", T0, 40)
    history.record(Deploy("web", "v2", T0 + 41 * MIN, "event", ref="2222222"))
    history.observe_versions("web", ["v2"], T0 + 41 * MIN + 15 * SEC)
    rollback = Deploy("web", "v1", T0 + 45 * MIN, "event", ref="1111111")
    assert history.record(rollback)
    assert history.current("web") == rollback
    revision = history.revision
    assert history.observe_versions("web", ["v1"], T0 + 45 * MIN + 5 * SEC) == []
    assert history.current("web") == rollback
    assert history.revision == revision
    assert [d.version for d in history.deploys("web")] == ["v1", "v2", "v1"]
    assert history.last_good("web")[0] == "v1"  # the first v1 ran clean: still known good


def test_a_rollback_seen_by_the_metric_before_it_is_recorded_is_one_deploy() -> None:
    """An executor that restarts the app itself: the metric sees v1 before the checklist says so."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event", ref="1111111"))
    history.observe_versions("web", ["v1"], T0 + 15 * SEC)
    history.record(Deploy("web", "v2", T0 + 41 * MIN, "event", ref="2222222"))
    history.observe_versions("web", ["v2"], T0 + 41 * MIN + 15 * SEC)
    history.observe_versions("web", ["v1"], T0 + 45 * MIN)
    rollback = Deploy("web", "v1", T0 + 45 * MIN + 3 * SEC, "event", ref="1111111")
    assert history.record(rollback)
    assert history.current("web") == rollback
    assert [d.version for d in history.deploys("web")] == ["v1", "v2", "v1"]


SHA_V1 = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
SHA_V2 = "2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e"
SHA_REVERT = "3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"


def see_head(history: DeployHistory, sha: str, at: datetime) -> list[Deploy]:
    return history.observe_versions("web", [sha[:12]], at, "git", {sha[:12]: sha})


@pytest.mark.parametrize("ref", [SHA_V2, SHA_V2[:7], None])
def test_git_head_at_the_commit_an_event_names_is_that_deploy(ref: str | None) -> None:
    """HEAD moves to the sha the event's ref (full or abbreviated) or version names: one deploy."""
    history = DeployHistory(timedelta(minutes=30))
    see_head(history, SHA_V1, T0)
    event = Deploy("web", SHA_V2[:12] if ref is None else "v2", T0 + 60 * MIN, "event", ref=ref)
    history.record(event)
    assert see_head(history, SHA_V2, T0 + 60 * MIN + 15 * SEC) == []
    assert history.current("web") == event
    assert len(history.deploys("web")) == 2


def test_git_head_moving_again_without_an_event_is_a_deploy() -> None:
    """HEAD was seen at v2's commit; when it moves on with no event, the new commit is current."""
    history = DeployHistory(timedelta(minutes=30))
    see_head(history, SHA_V1, T0)
    history.record(Deploy("web", "v2", T0 + 60 * MIN, "event", ref=SHA_V2))
    see_head(history, SHA_V2, T0 + 60 * MIN + 15 * SEC)
    see_head(history, SHA_REVERT, T0 + 65 * MIN)
    current = history.current("web")
    assert current is not None
    assert (current.version, current.ref, current.source) == (SHA_REVERT[:12], SHA_REVERT, "git")


def test_git_head_after_a_revert_rollback_is_the_rollback_deploy() -> None:
    """A revert makes a new commit with v1's content: HEAD there is the rollback's deploy of v1,
    which names that commit (the checklist journals the commit execute left at HEAD)."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event", ref=SHA_V1))
    see_head(history, SHA_V1, T0 + 15 * SEC)
    history.record(Deploy("web", "v2", T0 + 60 * MIN, "event", ref=SHA_V2))
    see_head(history, SHA_V2, T0 + 60 * MIN + 15 * SEC)
    rollback = Deploy("web", "v1", T0 + 70 * MIN, "event", ref=SHA_REVERT)
    history.record(rollback)
    assert see_head(history, SHA_REVERT, T0 + 70 * MIN + 15 * SEC) == []
    assert history.current("web") == rollback
    assert [d.version for d in history.deploys("web")] == ["v1", "v2", "v1"]


def test_git_head_back_at_an_earlier_commit_is_a_rollback_by_hand() -> None:
    """HEAD goes back to v1's commit after v2 (no event): v1 is current again, a new deploy."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event", ref=SHA_V1))
    see_head(history, SHA_V1, T0 + 15 * SEC)
    history.record(Deploy("web", "v2", T0 + 60 * MIN, "event", ref="v2"))
    see_head(history, SHA_V2, T0 + 60 * MIN + 15 * SEC)  # a tag ref: v2's HEAD all the same
    see_head(history, SHA_V1, T0 + 70 * MIN)
    assert versions_and_times(history) == [
        ("v1", T0, "event"),
        ("v2", T0 + 60 * MIN, "event"),
        (SHA_V1[:12], T0 + 70 * MIN, "git"),
    ]


def test_git_is_not_asked_once_the_version_metric_has_spoken() -> None:
    """The same deploys, named by sha: a less trusted sighting must not count them twice."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    see_head(history, SHA_V1, T0 + MIN)
    history.observe_versions("web", ["v2"], T0 + 10 * MIN)
    see_head(history, SHA_V2, T0 + 10 * MIN)
    assert [(d.version, d.source) for d in history.deploys("web")] == [
        ("v1", "metric"),
        ("v2", "metric"),
    ]


def test_after_a_restart_the_first_look_does_not_deploy_what_already_runs() -> None:
    """Deploys loaded from the journal; the metric first shows v1 and v2 mid-rollout: no deploy."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event"))
    history.record(Deploy("web", "v2", T0 + 60 * MIN, "event"))
    assert history.observe_versions("web", ["v1", "v2"], T0 + 3 * 60 * MIN) == []
    assert history.observe_versions("web", ["v2"], T0 + 3 * 60 * MIN + 15 * SEC) == []
    assert [d.version for d in history.deploys("web")] == ["v1", "v2"]


def test_after_a_restart_the_first_look_waits_for_a_rollout_that_has_not_happened() -> None:
    """CI announced v2 while the daemon was down; the metric still shows v1: v2 once it appears."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event"))
    history.record(Deploy("web", "v2", T0 + 60 * MIN, "event"))
    assert history.observe_versions("web", ["v1"], T0 + 61 * MIN) == []
    assert history.observe_versions("web", ["v2"], T0 + 62 * MIN) == []
    current = history.current("web")
    assert current is not None and (current.version, current.source) == ("v2", "event")


def test_after_a_restart_a_version_no_deploy_names_is_a_deploy() -> None:
    """CI died while the daemon was down: the first look shows v3, which is current from then."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v2", T0, "event"))
    [deploy] = history.observe_versions("web", ["v3"], T0 + 60 * MIN)
    assert history.current("web") == deploy
    assert (deploy.version, deploy.time) == ("v3", T0 + 60 * MIN)


def test_after_a_restart_git_head_confirms_an_event_named_by_a_tag() -> None:
    """A tag or version name cannot be compared with a sha: HEAD is that deploy, not a new one."""
    history = DeployHistory(timedelta(minutes=30))
    history.record(Deploy("web", "v1", T0, "event", ref="release-1"))
    assert see_head(history, SHA_V1, T0 + 60 * MIN) == []
    current = history.current("web")
    assert current is not None and (current.version, current.time) == ("v1", T0)


def test_a_rolling_deploy_announced_by_ci_is_one_deploy_of_the_new_version() -> None:
    """v1 and v2 side by side after CI announced v2: v2 is current, deployed when announced."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    event = Deploy("web", "v2", T0 + 10 * MIN, "event")
    history.record(event)
    history.observe_versions("web", ["v1", "v2"], T0 + 10 * MIN + 15 * SEC)
    history.observe_versions("web", ["v2"], T0 + 15 * MIN)
    assert history.current("web") == event
    assert [d.version for d in history.deploys("web")] == ["v1", "v2"]


def test_a_version_seen_again_after_it_was_gone_is_a_redeploy_despite_its_event() -> None:
    """v2 (announced) → v1 (by hand) → v2 again: v2 is current since it came back."""
    history = DeployHistory(timedelta(minutes=30))
    history.observe_versions("web", ["v1"], T0)
    history.record(Deploy("web", "v2", T0 + 10 * MIN, "event"))
    history.observe_versions("web", ["v2"], T0 + 10 * MIN + 15 * SEC)
    history.observe_versions("web", ["v1"], T0 + 20 * MIN)
    history.observe_versions("web", ["v2"], T0 + 25 * MIN)
    assert versions_and_times(history) == [
        ("v1", T0, "metric"),
        ("v2", T0 + 10 * MIN, "event"),
        ("v1", T0 + 20 * MIN, "metric"),
        ("v2", T0 + 25 * MIN, "metric"),
    ]


def test_deploys_loaded_twice_are_recorded_once() -> None:
    """The journal's events read again (a restart, a reload) add nothing and keep the revision."""
    history = DeployHistory(timedelta(minutes=30))
    event = Deploy("web", "v2", T0, "event", ref="abc1234")
    assert history.record(event)
    history.observe_versions("web", ["v2"], T0 + 15 * SEC)
    revision = history.revision
    assert not history.record(event)
    assert history.revision == revision
    assert history.deploys("web") == [event]


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
    deploy = parse_event({"service": "web", "version": "v7"}, T0, {"web"})
    assert (deploy.time, deploy.target_ref) == (T0, "v7")


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
    """Every bad field is reported by name."""
    with pytest.raises(InvalidInput) as caught:
        parse_event(body, T0, {"web"})
    assert any(str(p).startswith(expected) for p in caught.value.problems), caught.value


def test_an_unknown_field_named_by_a_hostile_key_is_shown_quoted_and_bounded() -> None:
    """A key with a line break and 10,000 characters is named as one short quoted literal."""
    key = "ok\n[rollbackd] approved" + "x" * 10_000
    with pytest.raises(InvalidInput) as caught:
        parse_event({"service": "web", "version": "v2", key: 1}, T0, {"web"})
    (shown,) = (str(p) for p in caught.value.problems if "unknown field" in str(p))
    assert "\n" not in shown and len(shown) < 120
    assert shown.startswith("request: 'ok\\n[rollbackd] approved")


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


def test_an_event_naming_a_commit_is_never_joined_to_another_commit_still_at_head() -> None:
    """CI announces v2 by its sha while HEAD still shows v1's: v2 is current once HEAD moves."""
    history = DeployHistory(timedelta(minutes=30))
    see_head(history, SHA_V1, T0)
    history.record(Deploy("web", "v2", T0 + 5 * SEC, "event", ref=SHA_V2))
    see_head(history, SHA_V2, T0 + 15 * SEC)
    current = history.current("web")
    assert current is not None and (current.version, current.ref) == ("v2", SHA_V2)
    assert [d.version for d in history.deploys("web")] == [SHA_V1[:12], "v2"]


def test_a_deploy_event_from_the_future_is_refused_beyond_the_clock_skew() -> None:
    """Up to max_skew ahead of the clock is CI's clock running fast; beyond is an error."""
    body = {"service": "web", "version": "v2"}
    fast = parse_event({**body, "time": "2026-05-01T12:04:59Z"}, T0, {"web"})
    assert fast.time == T0 + timedelta(minutes=4, seconds=59)
    with pytest.raises(InvalidInput) as caught:
        parse_event({**body, "time": "2099-01-01T00:00:00Z"}, T0, {"web"})
    [problem] = caught.value.problems
    assert problem.location == "time"
    assert "more than 5m after" in problem.message
    with pytest.raises(InvalidInput):
        parse_event({**body, "time": "2026-05-01T12:00:02Z"}, T0, {"web"}, max_skew=timedelta(0))
