"""``evaluate``: what the daemon would decide now, from recent history plus live probes.

One instant evaluation cannot tell whether a condition has held for its
``for``. So the engine is replayed over the recent past (long enough for
``for``, the attribution window and the known-good time) at the poll
interval, then stepped once more at ``now`` with live instant queries and
probes. Nothing is acted on, and no rollback is simulated.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rollbackd.config import Config
from rollbackd.core.deploys import DeployHistory
from rollbackd.core.engine import CycleReport, Explanation
from rollbackd.core.model import Decision
from rollbackd.core.rules import Rule
from rollbackd.replay import Replay
from rollbackd.sources import MetricSource
from rollbackd.sources.alertmanager import AlertmanagerSource
from rollbackd.sources.gather import LiveCycle
from rollbackd.sources.probes import Prober
from rollbackd.sources.prometheus import PrometheusSource


@dataclass(frozen=True)
class Evaluation:
    """The last cycle's report and the decisions of the incidents still open.

    ``explained`` holds, with ``explain``, every step's explanation of those services:
    the replayed past, then the live step.
    ``baselines``: by service, each relative rule's value before the current
    deploy (what a rollback's recovery watch compares with).
    """

    report: CycleReport
    decisions: tuple[Decision, ...]
    deploy_error: str | None
    history: DeployHistory
    explained: tuple[Explanation, ...] = ()
    baselines: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def lookback(config: Config, rules: tuple[Rule, ...]) -> timedelta:
    """How much history one evaluation replays."""
    longest_for = max((r.for_ for r in rules), default=timedelta(0))
    return (
        config.deploys.known_good_after
        + config.deploys.attribution_window
        + longest_for
        + config.daemon.poll_interval
    )


def evaluate_now(
    config: Config,
    rules: tuple[Rule, ...],
    now: datetime,
    prometheus: MetricSource | None = None,
    prober: Prober | None = None,
    explain: Collection[str] = (),
    history: DeployHistory | None = None,
) -> Evaluation:
    """Replay the recent past, then evaluate once at ``now`` with live sources (with
    ``[alertmanager] url``, its active alerts too, as the daemon reads them each cycle).

    ``history`` holds deploys known already (the journal's deploy events);
    those found in Prometheus or git are added to it.
    """
    prometheus = prometheus or PrometheusSource.from_config(config)
    step = config.daemon.poll_interval
    replay = Replay(
        config, rules, prometheus, step, history, simulate_rollbacks=False, explain=explain
    )
    explained: list[Explanation] = []
    for past in replay.run(now - lookback(config, rules), now - step):
        explained.extend(past.explanations.values())
    own_prober = prober is None
    prober = prober or Prober()
    try:
        live = LiveCycle(
            replay.engine, config, prometheus, prober, AlertmanagerSource.from_config(config)
        )
        live.baselines = replay.baselines
        report = replay.engine.step(now, live.gather(now), explain)
        explained.extend(report.explanations.values())
        baselines = {service: live.baselines_of(service) for service in replay.engine.services}
    finally:
        if own_prober:
            prober.close()
    return Evaluation(
        report,
        tuple(replay.engine.open_decisions()),
        replay.deploy_error,
        replay.history,
        tuple(explained),
        baselines,
    )
