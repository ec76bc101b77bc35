"""Deploy history: which version runs, since when, and which one was last known good.

Deploys come from three places, in this order of trust per service: deploy
events (the API, told by CI), the version metric (a new value of its
``version`` label), and the git HEAD of the service's working copy (its
reflog). A rolling deploy shows old and new versions side by side for a while:
the deploy time is when the new version first appears, and the current
version is the newest one seen. A version that reappears after being gone
(a rollback, a redeploy) is a new deploy of that version.

A deploy is *known good* once it ran ``known_good_after`` with rules evaluated
on real data and no finding starting in that time. The last known good
version is the newest known-good deploy's version. Everything here is pure:
times are passed in.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rollbackd.durations import format_duration, format_instant


@dataclass(frozen=True)
class MigrationFact:
    """What a deploy event says about one migration file."""

    file: str
    backwards_compatible: bool | None = None
    changes_data: bool | None = None


@dataclass(frozen=True)
class Deploy:
    """One version starting to run for one service."""

    service: str
    version: str
    time: datetime
    source: str
    ref: str | None = None
    migrations: tuple[MigrationFact, ...] = ()

    @property
    def target_ref(self) -> str:
        """What the git executor checks against: the ref, else the version."""
        return self.ref or self.version


@dataclass
class _Run:
    """A deploy and what was seen while it was current."""

    deploy: Deploy
    first_conclusive: datetime | None = None
    last_conclusive: datetime | None = None
    trouble_at: datetime | None = None
    ended: datetime | None = None


@dataclass
class _ServiceHistory:
    runs: list[_Run] = field(default_factory=list)
    present: frozenset[str] = frozenset()


SOURCE_PRIORITY = {"event": 0, "metric": 1, "git": 2}
SAME_DEPLOY = timedelta(minutes=10)
"""A less trusted sighting of a version this soon before its deploy event is that deploy."""


class DeployHistory:
    """Per service, the deploys in time order and what was observed during each."""

    def __init__(self, known_good_after: timedelta) -> None:
        self.known_good_after = known_good_after
        self._services: dict[str, _ServiceHistory] = {}
        self.revision = 0
        """Changes whenever a deploy is added or replaced: what depends on deploys can cache."""

    def services(self) -> list[str]:
        return sorted(self._services)

    def record(self, deploy: Deploy) -> bool:
        """Add a deploy (an event, or one found in history); False if already known.

        Once a more trusted source has spoken for a service, a less trusted
        one is ignored from then on (it would count the same deploys twice);
        what it saw before stays, so a version that ran clean before CI first
        announced a deploy is still the last known good. A less trusted
        sighting of the same version shortly before an event is that event's
        deploy, seen early: the event replaces it.
        """
        history = self._services.setdefault(deploy.service, _ServiceHistory())
        rank = SOURCE_PRIORITY[deploy.source]
        trusted = [r for r in history.runs if SOURCE_PRIORITY[r.deploy.source] < rank]
        if trusted and deploy.time >= min(r.deploy.time for r in trusted):
            return False
        self.revision += 1
        history.runs = [
            r
            for r in history.runs
            if SOURCE_PRIORITY[r.deploy.source] <= rank
            or (
                r.deploy.time < deploy.time - SAME_DEPLOY
                or (r.deploy.version != deploy.version and r.deploy.time < deploy.time)
            )
        ]
        for run in history.runs:
            if run.deploy.version == deploy.version and run.deploy.time == deploy.time:
                return False
        history.runs.append(_Run(deploy))
        history.runs.sort(key=lambda r: r.deploy.time)
        for earlier, later in itertools.pairwise(history.runs):
            earlier.ended = later.deploy.time
        history.runs[-1].ended = None
        return True

    def observe_versions(
        self,
        service: str,
        versions: Iterable[str],
        at: datetime,
        source: str = "metric",
        refs: Mapping[str, str] | None = None,
    ) -> list[Deploy]:
        """The versions running at ``at`` (from the version metric or git); new ones are deploys."""
        history = self._services.setdefault(service, _ServiceHistory())
        now_present = frozenset(versions)
        appeared = sorted(now_present - history.present)
        history.present = now_present
        added = []
        for version in appeared:
            deploy = Deploy(service, version, at, source, ref=(refs or {}).get(version))
            if self.record(deploy):
                added.append(deploy)
        return added

    def set_present(self, service: str, versions: Iterable[str]) -> None:
        """The versions seen running last, so that the next observation compares with them."""
        self._services.setdefault(service, _ServiceHistory()).present = frozenset(versions)

    def note_evaluation(
        self, service: str, at: datetime, conclusive: bool, trouble_started: datetime | None
    ) -> None:
        """What one cycle saw for the service: real data or not, and any finding's start.

        It counts for the deploy that was running at ``at`` (a replay of the
        past may run while later deploys are already known).
        """
        run = self._run_at(service, at)
        if run is None:
            return
        if conclusive:
            run.first_conclusive = min(run.first_conclusive or at, at)
            run.last_conclusive = max(run.last_conclusive or at, at)
        if trouble_started is not None:
            start = max(trouble_started, run.deploy.time)
            if run.trouble_at is None or start < run.trouble_at:
                run.trouble_at = start

    def note_conclusive(self, services: Iterable[str], at: datetime) -> None:
        """Services whose cycle at ``at`` saw real data and no finding: one call for many."""
        for service in services:
            history = self._services.get(service)
            if not history or not history.runs:
                continue
            run: _Run | None = history.runs[-1]
            if run is not None and run.deploy.time > at:
                run = self._run_at(service, at)
            if run is None:
                continue
            if run.first_conclusive is None or at < run.first_conclusive:
                run.first_conclusive = at
            if run.last_conclusive is None or at > run.last_conclusive:
                run.last_conclusive = at

    def current(self, service: str) -> Deploy | None:
        run = self._current_run(service)
        return run.deploy if run else None

    def deploys(self, service: str) -> list[Deploy]:
        history = self._services.get(service)
        return [r.deploy for r in history.runs] if history else []

    def target_ref(self, service: str, version: str) -> str:
        """What rolling back to ``version`` checks out: the ref of its newest deploy, if
        any deploy of that version is known, else ``version`` itself taken as a ref."""
        for deploy in reversed(self.deploys(service)):
            if deploy.version == version:
                return deploy.target_ref
        return version

    def last_good(self, service: str) -> tuple[str | None, str]:
        """The last known good version and why it is (or why there is none)."""
        history = self._services.get(service)
        if not history or not history.runs:
            return None, "no deploy is known"
        for run in reversed(history.runs):
            good, why = self._known_good(run)
            if good:
                return run.deploy.version, why
        return None, (
            f"no deploy ran {format_duration(self.known_good_after)} on real data without a finding"
        )

    def _known_good(self, run: _Run) -> tuple[bool, str]:
        """Ran ``known_good_after`` on real data, with no finding starting in that time."""
        if run.first_conclusive is None or run.last_conclusive is None:
            return False, ""
        start = run.deploy.time
        clean_until = run.last_conclusive
        if run.trouble_at is not None:
            clean_until = min(clean_until, run.trouble_at)
        observed_from = max(start, run.first_conclusive)
        if clean_until - observed_from < self.known_good_after:
            return False, ""
        return True, (
            f"{run.deploy.version} (deployed {format_instant(start)}) ran "
            f"{format_duration(clean_until - observed_from)} on real data without a finding"
        )

    def _run_at(self, service: str, at: datetime) -> _Run | None:
        history = self._services.get(service)
        if not history:
            return None
        for run in reversed(history.runs):
            if run.deploy.time <= at:
                return run
        return None

    def _current_run(self, service: str) -> _Run | None:
        history = self._services.get(service)
        if not history or not history.runs:
            return None
        return history.runs[-1]


def deploys_from_presence(
    service: str, presence: Mapping[str, list[datetime]], step: timedelta
) -> list[Deploy]:
    """Deploys from a version metric's history: each time a version (re)appears.

    ``presence`` maps each version to the sample times its series existed;
    a gap longer than two steps means the version was gone and came back.
    """
    starts: list[tuple[datetime, str]] = []
    for version, times in presence.items():
        previous: datetime | None = None
        for moment in sorted(times):
            if previous is None or moment - previous > 2 * step:
                starts.append((moment, version))
            previous = moment
    return [Deploy(service, version, moment, "metric") for moment, version in sorted(starts)]
