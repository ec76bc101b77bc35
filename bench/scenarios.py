"""The scored scenario suite: labelled incident histories replayed through ``rollbackd backtest``.

Every scenario of :mod:`bench.scenario_data` (38: error regressions by size and
traffic, noise that a raw ratio mistakes for a regression, latency and the
daily rush, gaps, counter resets, zero traffic, new services, incidents under
way at a deploy, successive deploys, a slow regression, logins, canaries and a
rolling deploy judged side by side, and a fleet of healthy services) is
generated as prometheus_client would have exported it, backfilled with promtool
into a real Prometheus, and replayed with the shipped default rules
(``rules/*.toml``) by ``rollbackd backtest --json --step 15s`` (the default
poll interval). Each service's decisions are compared with
``scenario_labels.json``; where a label names the scope and target (a canary:
the new version's share, to the old version serving alongside), the first
rolling-back decision must have them, or it counts as wrong (acted on, not caught).

Printed: precision and recall of the decisions that roll back (rollback or
request_approval), false alarms per 1,000 service-hours of healthy history,
next to Gandalf's published figures (Azure, NSDI 2020: 92.4-94.9 % precision,
99.8-100 % recall); time from the fault to the decision by regression size and
traffic; and every scenario whose outcome differs from its label, and why.
Whatever the rules score is reported: nothing fails on a miss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.processes import Prometheus

from bench.common import REPO, Report, arguments, child_env, promtool_backfill, workdir
from bench.scenario_data import (
    DAY,
    HOUR,
    Scenario,
    generate,
    load_labels,
    scenarios,
    services_of,
)

STEP = "15s"
STEP_SECONDS = 15.0
ROLLS_BACK = ("rollback", "request_approval")
GANDALF = "Gandalf (Azure, NSDI 2020): precision 92.4-94.9 %, recall 99.8-100 %"
BACKTEST_TIMEOUT = 2700.0
"""A safety net, not a measure: at a load of 5x the cores the full replay took over 900 s."""


def config_text(chosen: Sequence[Scenario], prometheus_url: str) -> str:
    tables = "".join(
        f'[[services]]\nname = "{service.name}"\nexecutor = "command"\ncommand = ["true"]\n'
        for _, service in services_of(chosen)
    )
    return f"""
[daemon]
rules = ["{REPO / "rules"}/*.toml"]

[prometheus]
url = "{prometheus_url}"
timeout = "120s"

[deploys]
version_metric = "app_build_info"
known_good_after = "30m"
attribution_window = "2h"

{tables}
"""


def backtest(
    config: Path, start: float, end: float, cwd: Path
) -> tuple[list[dict[str, Any]], float]:
    """``rollbackd backtest --json`` over [start, end]: its action records and wall seconds."""
    argv = [
        sys.executable,
        "-m",
        "rollbackd",
        "backtest",
        "--config",
        str(config),
        "--start",
        datetime.fromtimestamp(start, UTC).isoformat(),
        "--end",
        datetime.fromtimestamp(end, UTC).isoformat(),
        "--step",
        STEP,
        "--json",
    ]
    began = time.monotonic()
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=BACKTEST_TIMEOUT,
        cwd=cwd,
        env=child_env(),
        check=False,
    )
    elapsed = time.monotonic() - began
    if result.returncode != 0:
        raise RuntimeError(
            f"rollbackd backtest exited {result.returncode}:\n{result.stderr[-4000:]}"
        )
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [r for r in records if r.get("type") == "action"], elapsed


@dataclass
class Verdict:
    """One service of one scenario: what was expected, what the replay decided, and why."""

    scenario: str
    service: str
    expect: str
    observed: str
    hours: float
    decisions: list[dict[str, Any]] = field(default_factory=list)
    first_positive: float | None = None
    """Seconds from the fault's onset to the first rolling-back decision after it."""
    first_action: dict[str, Any] | None = None
    """That decision's record (its target and scope)."""
    false_alarms: int = 0
    """Rolling-back decisions of a service that should have none (or before its fault)."""

    @property
    def right(self) -> bool:
        return self.expect == self.observed

    def why(self) -> str:
        """The decisions that made the outcome, in one line."""
        if not self.decisions:
            return "no decision"
        shown = []
        for record in self.decisions[:3]:
            rules = ",".join(record.get("rules", []))
            reason = str(record.get("reason", ""))[:140]
            shown.append(f"{record['time']} {record['action']} ({rules}): {reason}")
        more = f" (+{len(self.decisions) - 3} more)" if len(self.decisions) > 3 else ""
        return "; ".join(shown) + more


def judge(
    chosen: Sequence[Scenario],
    labels: dict[str, dict[str, str]],
    actions: list[dict[str, Any]],
    origin: float,
    hours: float,
) -> list[Verdict]:
    """Each service's decisions against its scenario's label."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for record in actions:
        by_service.setdefault(record["service"], []).append(record)
    verdicts = []
    for scenario, service in services_of(chosen):
        expect = labels[scenario.name]["expect"]
        decisions = sorted(by_service.get(service.name, []), key=lambda r: r["time"])
        moments = [datetime.fromisoformat(r["time"]).timestamp() - origin for r in decisions]
        onset = scenario.onset
        positive = [
            (moment, record)
            for moment, record in zip(moments, decisions, strict=True)
            if record["action"] in ROLLS_BACK
        ]
        after = [
            (moment, record)
            for moment, record in positive
            if onset is not None and moment >= onset - STEP_SECONDS
        ]
        wrong = len(positive) - len(after) if expect in ROLLS_BACK else len(positive)
        kinds = {record["action"] for _, record in (after if expect in ROLLS_BACK else positive)}
        if "rollback" in kinds:
            observed = "rollback"
        elif "request_approval" in kinds:
            observed = "request_approval"
        elif any(r["action"] == "escalate" for r in decisions):
            observed = "escalate"
        else:
            observed = "nothing"
        first = after[0][1] if after and expect in ROLLS_BACK else None
        if first is not None:
            observed += misdirected(labels[scenario.name], first)
        exists_from = max(0.0, service.history_start or 0.0)
        verdicts.append(
            Verdict(
                scenario.name,
                service.name,
                expect,
                observed,
                hours=(hours * HOUR - exists_from) / HOUR,
                decisions=decisions,
                first_positive=after[0][0] - onset if after and onset is not None else None,
                first_action=first,
                false_alarms=wrong,
            )
        )
    return verdicts


def misdirected(label: dict[str, str], record: dict[str, Any]) -> str:
    """`` (scope all, target v0)`` when the first rolling-back decision does not roll back the
    label's scope to its target (a canary's share to the version alongside); else ``""``."""
    wrong = any(key in label and record.get(key) != label[key] for key in ("scope", "target"))
    if not wrong:
        return ""
    return f" (scope {record.get('scope')}, target {record.get('target')})"


def rolls_back(verdict: Verdict) -> bool:
    """Whether the service was acted on with a rollback or an approval request (to any target)."""
    return verdict.observed.split(" ")[0] in ROLLS_BACK


def score(report: Report, verdicts: list[Verdict], chosen: Sequence[Scenario]) -> None:
    """Precision, recall, false alarms per 1,000 service-hours, time to decision, what is wrong."""
    positive = [v for v in verdicts if v.expect in ROLLS_BACK]
    negative = [v for v in verdicts if v.expect not in ROLLS_BACK]
    caught = [v for v in positive if v.observed in ROLLS_BACK]
    raised = [v for v in negative if rolls_back(v)]
    misaimed = [v for v in positive if rolls_back(v) and v.observed not in ROLLS_BACK]
    flagged = len(caught) + len(raised) + len(misaimed)
    precision = len(caught) / flagged if flagged else None
    recall = len(caught) / len(positive) if positive else None
    healthy = [v for v in verdicts if v.expect == "nothing"]
    healthy_hours = sum(v.hours for v in healthy)
    alarms = sum(v.false_alarms for v in healthy)
    escalations = sum(sum(1 for r in v.decisions if r["action"] == "escalate") for v in healthy)
    right = sum(1 for v in verdicts if v.right)
    report.say(f"  anchor: {GANDALF}; target 100 % and 100 %, no false alarm")
    report.figure(
        "precision (rollback/approval decisions)",
        None if precision is None else 100 * precision,
        "%",
        100.0,
        "higher",
        note=f"{len(caught)} right of {flagged} services acted on; Gandalf 92.4-94.9 %",
    )
    report.figure(
        "recall (rollback/approval decisions)",
        None if recall is None else 100 * recall,
        "%",
        100.0,
        "higher",
        note=f"{len(caught)} of {len(positive)} services to roll back; Gandalf 99.8-100 %",
    )
    report.figure(
        "false alarms per 1,000 service-hours",
        1000 * alarms / healthy_hours if healthy_hours else None,
        "",
        0.0,
        note=f"{alarms} rollback/approval decisions in {healthy_hours:,.0f} service-hours of"
        f" {len(healthy)} healthy services",
    )
    report.figure(
        "escalations per 1,000 healthy service-hours",
        1000 * escalations / healthy_hours if healthy_hours else None,
        "",
        note="people paged for nothing (not a rollback)",
    )
    report.figure(
        "services whose outcome matches the label",
        right,
        "",
        float(len(verdicts)),
        "higher",
        note=f"of {len(verdicts)} in {len(chosen)} scenarios (the exact action, escalations too)",
    )
    report.say("  time from the fault to the decision (first rollback or approval request):")
    for scenario in chosen:
        if scenario.regression is None:
            continue
        verdict = next(v for v in verdicts if v.scenario == scenario.name)
        seconds = verdict.first_positive
        target = 30.0 if scenario.name == "errors-gross-high" else None
        note = scenario.name if seconds is not None else f"{scenario.name}: no decision"
        if verdict.first_action is not None and verdict.first_action.get("scope") == "canary":
            note += f" (canary: {verdict.first_action.get('target')} alongside)"
        report.figure(
            f"  {scenario.regression}, {scenario.traffic}", seconds, "s", target, note=note
        )
    wrong = [v for v in verdicts if not v.right]
    report.fact("verdicts", [_record(v) for v in verdicts])
    report.fact("healthy_service_hours", healthy_hours)
    if not wrong:
        report.say("  every scenario's outcome matches its label")
        return
    report.say(f"  {len(wrong)} services whose outcome differs from the label:")
    for verdict in wrong:
        report.say(
            f"    {verdict.service}: expected {verdict.expect}, got {verdict.observed}"
            f" -- {verdict.why()}"
        )


def _record(verdict: Verdict) -> dict[str, Any]:
    return {
        "scenario": verdict.scenario,
        "service": verdict.service,
        "expect": verdict.expect,
        "observed": verdict.observed,
        "right": verdict.right,
        "seconds_to_decision": verdict.first_positive,
        "false_alarms": verdict.false_alarms,
        "decisions": [
            {
                k: r.get(k)
                for k in ("time", "action", "rules", "severity", "target", "scope", "reason")
            }
            for r in verdict.decisions
        ],
    }


def main() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--hours", type=float, help="evaluated window (default 24, quick 4)")
        parser.add_argument("--fleet", type=int, help="healthy services (default 40, quick 6)")
        parser.add_argument(
            "--only",
            help="comma-separated scenario names to run (the fleet only if named:"
            " healthy-fleet); the results file is not written",
        )

    args = arguments(__doc__.splitlines()[0] if __doc__ else "scenarios", extra)
    quick: bool = args.quick
    hours: float = args.hours or (4.0 if quick else 24.0)
    fleet_size: int = args.fleet or (6 if quick else 40)
    chosen = scenarios(quick, hours, fleet_size)
    only: str | None = args.only
    if only:
        wanted = {name.strip() for name in only.split(",") if name.strip()}
        unknown = wanted - {s.name for s in scenarios(False, hours, fleet_size)}
        if unknown:
            raise SystemExit(f"--only: no scenario named {', '.join(sorted(unknown))}")
        chosen = [s for s in scenarios(False, hours, fleet_size) if s.name in wanted]
    labels = load_labels()
    missing = [s.name for s in chosen if s.name not in labels]
    if missing:
        raise SystemExit(f"scenario_labels.json: no label for {', '.join(missing)}")
    services = sum(len(s.services) for s in chosen)
    report = Report("scenarios", quick)
    report.title(
        f"{len(chosen)} scenarios, {services} services, {hours:g} h evaluated every {STEP}"
        " with the default rules"
    )
    end = (time.time() // 7200) * 7200 - 7200
    origin = end - hours * HOUR
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(workdir("scenarios", args.keep))
        began = time.monotonic()
        files, series, samples = generate(
            chosen, root / "history", origin, hours, history_cap=2.0 if quick else 7.0
        )
        generated = time.monotonic() - began
        backfill = promtool_backfill(files, root / "data", timeout=900)
        report.say(
            f"  {series} series, {samples} samples: generated in {generated:.1f}s,"
            f" promtool {backfill:.1f}s ({len(files)} files)"
        )
        prometheus = stack.enter_context(Prometheus(root / "prometheus", storage_dir=root / "data"))
        config = root / "config.toml"
        config.write_text(config_text(chosen, prometheus.url))
        actions, replayed = backtest(config, origin, end, root)
    report.say(f"  rollbackd backtest: {len(actions)} decisions in {replayed:.1f}s")
    report.fact("generate_seconds", generated)
    report.fact("backfill_seconds", backfill)
    report.fact("backtest_seconds", replayed)
    report.fact("series", series)
    report.fact("samples", samples)
    report.fact("window_days", hours * HOUR / DAY)
    verdicts = judge(chosen, labels, actions, origin, hours)
    score(report, verdicts, chosen)
    if not only:
        report.write()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
