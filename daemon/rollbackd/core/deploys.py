"""Deploy history: which version runs, since when, and which one was last known good.

What runs is what the version metric says (or, for a service without one, the
git HEAD of its working copy): those are *sightings*. A deploy event (the API,
told by CI; or the checklist, after a rollback's execute step) adds the ref,
the time and the migration facts to the version it names. An event and a
sighting of the same version are one deploy, in either order of arrival: the
event's time and facts win. A sighting of a version no event speaks for (CI
died before announcing it, or someone deployed by hand) is a deploy of its
own, and current if it is the newest. A rolling deploy shows old and new
versions side by side for a while: the deploy time is when the new version
first appears, and the current version is the newest one seen. A version that
reappears after being gone (a rollback, a redeploy) is a new deploy of that
version.

A deploy is *known good* once it ran ``known_good_after`` with rules evaluated
on real data and no finding starting in that time, the data unbroken: a break
longer than a tenth of ``known_good_after`` (2 minutes and 3 looks at least)
starts the count again, as the app may have been down unseen. The last known good
version is the newest known-good deploy's version. Everything here is pure:
times are passed in.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rollbackd.core.durations import format_duration, format_instant


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
    seen_as: str | None = None
    """The version as a sighting named it (metric label or git sha); None: told, not yet seen."""
    seen_at: datetime | None = None
    first_conclusive: datetime | None = None
    last_conclusive: datetime | None = None
    trouble_at: datetime | None = None
    ended: datetime | None = None

    @property
    def told(self) -> bool:
        """Whether a deploy event speaks for this run (its time and facts are the event's)."""
        return self.deploy.source not in SIGHTINGS


@dataclass
class _ServiceHistory:
    runs: list[_Run] = field(default_factory=list)
    present: dict[str, frozenset[str]] = field(default_factory=dict)
    """By sighting source, the versions it saw running last (absent: not looked yet)."""
    first_seen: dict[str, datetime] = field(default_factory=dict)
    """By sighting source, its earliest sighting: the metric outranks git from then on."""


SIGHTINGS = ("metric", "git")
"""The sources that see what runs, the more trusted first; every other source is an event."""
MIN_GAP = timedelta(minutes=2)
"""A break in the data this short is a lost look or two, never a restart of the count."""
LOOKS_LOST = 3
"""Looks in a row that may lack real data (a missed scrape, a rate over too few samples)
without a restart of the count, however far apart the looks are."""
SAME_DEPLOY = timedelta(minutes=10)
"""A deploy event and a sighting of its version this close in time are one deploy."""
SHA_PREFIX = re.compile(r"^[0-9a-f]{7,40}$")
"""A ref or version that names a commit by its (abbreviated) id: 7 hex digits at least."""


def _around(runs: list[_Run], at: datetime) -> tuple[_Run | None, _Run | None]:
    """The run in effect at ``at`` (begun at or before it) and the first one after it."""
    before = after = None
    for run in runs:
        if run.deploy.time <= at:
            before = run
        elif after is None:
            after = run
    return before, after


def _names(told: Deploy, seen: Deploy) -> bool:
    """Whether a sighting names the version of ``told`` (an event, or an earlier deploy).

    The version metric names versions as CI does. Git names commits: the
    sighting's sha is ``told``'s ref or version, in full or abbreviated.
    """
    if seen.source != "git":
        return seen.version == told.version
    sha = (seen.ref or seen.version).lower()
    for name in (n.lower() for n in (told.ref, told.version) if n is not None):
        if name == sha or (SHA_PREFIX.match(name) is not None and sha.startswith(name)):
            return True
    return False


class DeployHistory:
    """Per service, the deploys in time order and what was observed during each."""

    def __init__(self, known_good_after: timedelta, look_every: timedelta = timedelta(0)) -> None:
        """``look_every``: how often the rules are evaluated (the poll interval, a replay's
        step), so that the looks' own spacing never reads as a break in the data."""
        self.known_good_after = known_good_after
        self.max_gap = max(known_good_after / 10, MIN_GAP, LOOKS_LOST * look_every)
        """The longest break in a run's real data that keeps its clean stretch: a longer
        one (the app down, its metrics gone; Prometheus unreachable) starts it again."""
        self._services: dict[str, _ServiceHistory] = {}
        self.revision = 0
        """Changes whenever a deploy is added or replaced: what depends on deploys can cache."""
        self._currents: tuple[int, Mapping[str, Deploy]] | None = None

    def services(self) -> list[str]:
        return sorted(self._services)

    def record(self, deploy: Deploy) -> bool:
        """Add a deploy event, or a sighting of a version appearing; False if nothing new.

        An event joins the sighting of its version that it belongs to (one
        deploy: the event's time and facts), and a sighting joins the event
        that announced its version; anything else is a deploy of its own.
        """
        history = self._services.setdefault(deploy.service, _ServiceHistory())
        if deploy.source in SIGHTINGS:
            return self._sighting(history, deploy)
        return self._event(history, deploy)

    def _event(self, history: _ServiceHistory, told: Deploy) -> bool:
        """A deploy event: the sighting of its version it explains, or a deploy of its own.

        The sighting it explains is the one just before it (seen early, within
        SAME_DEPLOY), or the next deploy after it (seen late: it would have
        confirmed this event had the event arrived first). A run already
        explained by another event is never taken over.
        """
        if any(run.deploy == told for run in history.runs):
            return False
        before, after = _around(history.runs, told.time)
        for run, close in ((before, True), (after, False)):
            if run is None or run.told:
                continue
            if close and told.time - run.deploy.time > SAME_DEPLOY:
                continue
            if self._same(history, told, run.deploy, run):
                run.deploy = told
                self._changed(history)
                return True
        self._add(history, _Run(told))
        return True

    def _sighting(self, history: _ServiceHistory, seen: Deploy) -> bool:
        """A version seen appearing: the deploy an event announced, or a deploy of its own.

        It is the announced deploy when the run current at that moment is an
        event of that version not seen yet (however late it is seen), or when
        such an event follows within SAME_DEPLOY (seen early). A version that
        reappears after it was seen once is a new deploy of it.
        """
        if not self._spoke(history, seen.source, seen.time):
            return False
        before, after = _around(history.runs, seen.time)
        for run, close in ((before, False), (after, True)):
            if run is None or not run.told or run.seen_as is not None:
                continue
            if close and run.deploy.time - seen.time > SAME_DEPLOY:
                continue
            if self._same(history, run.deploy, seen, run):
                run.seen_as, run.seen_at = seen.version, seen.time
                return False
        for run in history.runs:
            if run.seen_at == seen.time and run.seen_as == seen.version:
                return False
        self._add(history, _Run(seen, seen_as=seen.version, seen_at=seen.time))
        return True

    def _same(self, history: _ServiceHistory, told: Deploy, seen: Deploy, run: _Run) -> bool:
        """Whether ``seen`` is the deploy ``told`` announced (``run`` is the one in question).

        When the sighting names it. Git cannot compare a tag or a version name
        with a sha, so for an event that names no commit id, a git sha that names
        no other deploy is taken as the event's. An event that names a commit is
        never joined to another commit (the previous one, still at HEAD when the
        event came). A rollback's deploy names the commit its execute step left at
        HEAD (a revert's new commit), so git's sighting of it names it.
        """
        if _names(told, seen):
            return True
        names_a_commit = SHA_PREFIX.match((told.ref or told.version).lower()) is not None
        return (
            seen.source == "git"
            and not names_a_commit
            and not any(
                other is not run and (other.seen_as == seen.version or _names(other.deploy, seen))
                for other in history.runs
            )
        )

    def _spoke(self, history: _ServiceHistory, source: str, at: datetime) -> bool:
        """Note that ``source`` saw the service at ``at``; False if a more trusted one has.

        Once the version metric has spoken for a service, git is not asked
        again (the same deploys, named differently); git deploys it saw from
        shortly before on are the metric's to tell.
        """
        rank = SIGHTINGS.index(source)
        for trusted in SIGHTINGS[:rank]:
            since = history.first_seen.get(trusted)
            if since is not None and since <= at:
                return False
        if source not in history.first_seen:
            lesser = SIGHTINGS[rank + 1 :]
            kept = [
                run
                for run in history.runs
                if run.deploy.source not in lesser or run.deploy.time < at - SAME_DEPLOY
            ]
            if len(kept) != len(history.runs):
                history.runs = kept
                self._changed(history)
        history.first_seen[source] = min(history.first_seen.get(source, at), at)
        return True

    def _add(self, history: _ServiceHistory, run: _Run) -> None:
        history.runs.append(run)
        self._changed(history)

    def _changed(self, history: _ServiceHistory) -> None:
        """Keep the runs in time order, each ending where the next begins; a new revision."""
        self.revision += 1
        history.runs.sort(key=lambda r: r.deploy.time)
        for earlier, later in itertools.pairwise(history.runs):
            earlier.ended = later.deploy.time
        if history.runs:
            history.runs[-1].ended = None

    def observe_all(self, running: Mapping[str, Iterable[str]], at: datetime) -> None:
        """:meth:`observe_versions` of the version metric for each service in ``running``:
        one call for a cycle's every service, nearly all of them running what they ran."""
        services = self._services
        for service, versions in running.items():
            history = services.get(service)
            if history is None or history.present.get("metric") != frozenset(versions):
                self.observe_versions(service, versions, at)

    def observe_versions(
        self,
        service: str,
        versions: Iterable[str],
        at: datetime,
        source: str = "metric",
        refs: Mapping[str, str] | None = None,
    ) -> list[Deploy]:
        """The versions running at ``at`` (from the version metric or git); new ones are deploys.

        The first look of a source (after a start without a replay of its
        history) cannot tell what appeared: if the current deploy runs, or the
        versions are earlier deploys still running (a rollout not done yet),
        nothing is new; a version the history does not know is a deploy now.
        """
        history = self._services.setdefault(service, _ServiceHistory())
        now_present = frozenset(versions)
        before = history.present.get(source)
        if before == now_present:  # nearly every service, nearly every cycle
            return []
        history.present[source] = now_present
        sightings = [
            Deploy(service, version, at, source, ref=(refs or {}).get(version))
            for version in sorted(now_present - (before or frozenset()))
        ]
        if before is None and sightings:
            if not self._spoke(history, source, at):
                return []
            sightings = self._first_look(history, sightings, at)
        return [deploy for deploy in sightings if self.record(deploy)]

    def _first_look(
        self, history: _ServiceHistory, sightings: list[Deploy], at: datetime
    ) -> list[Deploy]:
        """Of a source's first sightings of a service, those that are deploys now."""
        current, _ = _around(history.runs, at)
        if current is None:
            return sightings
        for seen in sightings:
            if current.seen_as == seen.version or _names(current.deploy, seen):
                if current.seen_as is None:
                    current.seen_as, current.seen_at = seen.version, seen.time
                return []
        new = []
        for seen in sightings:
            if any(r.seen_as == seen.version or _names(r.deploy, seen) for r in history.runs):
                continue
            if (
                current.told
                and current.seen_as is None
                and self._same(history, current.deploy, seen, current)
            ):
                current.seen_as, current.seen_at = seen.version, seen.time
                continue
            new.append(seen)
        return new

    def serving(self, service: str, source: str = "metric") -> frozenset[str]:
        """The versions ``source`` saw running at its last look (none: not looked yet)."""
        history = self._services.get(service)
        if history is None:
            return frozenset()
        return history.present.get(source, frozenset())

    def set_present(self, service: str, versions: Iterable[str], source: str = "metric") -> None:
        """The versions seen running last, so that the next observation compares with them."""
        history = self._services.setdefault(service, _ServiceHistory())
        history.present[source] = frozenset(versions)

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
            self._real_data(run, at)
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
            if run is not None:
                self._real_data(run, at)

    def _real_data(self, run: _Run, at: datetime) -> None:
        """One look with real data for ``run``: its clean stretch grows to ``at``, or starts
        again at ``at`` after a break in the data longer than :attr:`max_gap`."""
        first, last = run.first_conclusive, run.last_conclusive
        if first is None or last is None or at - last > self.max_gap:
            run.first_conclusive = run.last_conclusive = at
        elif at < first:
            run.first_conclusive = at
        elif at > last:
            run.last_conclusive = at

    def current(self, service: str) -> Deploy | None:
        run = self._current_run(service)
        return run.deploy if run else None

    def currents(self) -> Mapping[str, Deploy]:
        """Every service's current deploy (one without any is absent), as :meth:`current`
        says: built once per :attr:`revision`, for the cycle's loops over every service."""
        if self._currents is None or self._currents[0] != self.revision:
            currents = {s: h.runs[-1].deploy for s, h in self._services.items() if h.runs}
            self._currents = (self.revision, currents)
        return self._currents[1]

    def serving_several(self, source: str = "metric") -> list[str]:
        """The services ``source`` saw running more than one version at its last look."""
        return [s for s, h in self._services.items() if len(h.present.get(source, ())) > 1]

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
