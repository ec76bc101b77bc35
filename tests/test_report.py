"""The incident report as a reader sees it, built from incidents in a real SQLite journal.

HTML is parsed with :mod:`html.parser`; Markdown is rendered with markdown-it-py
(CommonMark with tables, raw HTML *allowed*, as a permissive viewer would) and
the result parsed the same way, so escaping is checked where it matters: in
what a browser or a Markdown viewer would show.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from rollbackd.core.model import Action, Decision, Severity
from rollbackd.journal import (
    IncidentRecord,
    IncidentState,
    NewIncident,
    Outcome,
    RollbackFacts,
    SqliteJournal,
)
from rollbackd.report import FOLLOW_UP, OUTPUT_LIMIT, markdown_text, render_report

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
"""The bad deploy."""

HOSTILE = "<script>alert(1)</script> [x](javascript:x) ](javascript:x) a|b\nsecond line"
HOSTILE_SEEN = "<script>alert(1)</script> [x](javascript:x) ](javascript:x) a|b ↵ second line"
"""What a reader must see in a table cell or a field: the same text, line break marked."""

HOSTILE_OUTPUT = (
    "Reverting 3f2c1e\n```\n<script>alert(1)</script>\n``````\n"
    "[x](javascript:x) | `code` \x1b[31mred\x1b[0m\nrestarted web\n"
)
HOSTILE_OUTPUT_SEEN = HOSTILE_OUTPUT.replace("\x1b", "\\x1b")
"""Command output as shown: control characters made visible, nothing else changed."""

SECTIONS = (
    "Summary",
    "What happened and when",
    "Measurements",
    "Evidence",
    "Decisions",
    "Checklist",
    "Recovery",
    "Follow-up (for people)",
)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- building incidents -------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    opened = SqliteJournal(tmp_path / "journal.sqlite3")
    yield opened
    opened.close()


def full_incident(journal: SqliteJournal, output: str = HOSTILE_OUTPUT) -> IncidentRecord:
    """A high-severity automatic rollback that recovered, journaled the way the checklist does."""
    incident = journal.open_incident(
        NewIncident(
            service="web",
            opened_at=at(5),
            severity=Severity.HIGH,
            action=Action.ROLLBACK,
            origin="automatic",
            reason=HOSTILE,
            target="v1",
            current_version="v2",
            state=IncidentState.ROLLING_BACK,
            facts=RollbackFacts(deployed_at=T0, baselines={"latency": 0.12}),
        )
    )
    journal.add_decision(
        incident,
        Decision(
            service="web",
            time=at(5),
            severity=Severity.HIGH,
            action=Action.ROLLBACK,
            proposed=Action.REQUEST_APPROVAL,
            rules=("error-rate",),
            reason=HOSTILE,
            approver="senior_admin",
            deadline=at(20),
            guards=("deadline passed without a veto",),
            value=0.12,
            target="v1",
        ),
        "rollbackd",
    )
    journal.add_evidence(
        incident,
        at(5),
        "snapshot",
        {
            "findings": [
                {
                    "type": "finding",
                    "time": "2026-01-01T12:05:00Z",
                    "service": "web",
                    "rule": "error-rate",
                    "state": "firing",
                    "severity": "high",
                    "value": 0.12,
                    "condition": "> 0.05",
                    "threshold": 0.05,
                    "baseline": None,
                    "since": "2026-01-01T12:02:00Z",
                    "reason": HOSTILE,
                }
            ],
            "deploys": [
                {"version": "v1", "time": "2025-12-31T09:00:00Z", "source": "event"},
                {"version": "v2", "time": "2026-01-01T12:00:00Z", "source": "event"},
            ],
        },
    )
    steps = [
        ("document", 5.02, 5.03, Outcome.OK, "evidence kept: 1 finding, 2 deploys", ""),
        ("notify", 5.03, 5.05, Outcome.OK, "told 1 notifier", ""),
        ("verify_target", 5.05, 5.1, Outcome.OK, "v1 exists and ran 26h without a finding", ""),
        ("backup", 5.1, 5.2, Outcome.OK, "branch rollbackd/backup-1", "Switched to branch\n"),
        ("execute", 5.2, 5.7, Outcome.OK, HOSTILE, output),
        ("recovery", 5.8, 21.0, Outcome.OK, "recovered: every criterion held for 15m", ""),
    ]
    for name, start, end, outcome, summary, out in steps:
        step = journal.step_started(incident, name, at(start), {"attempt": "1"})
        journal.step_finished(step, at(end), outcome, summary, out)
    for minute, held in [(6, False), (6.5, True), (13, True), (21, True)]:
        journal.add_evidence(
            incident,
            at(minute),
            "recovery_check",
            {
                "held": held,
                "failures": [] if held else ["error rate (error-rate) 0.04 is not below 0.01"],
                "passes": ["probe health passes"] if held else [],
            },
        )
    # Journaled late but happened early: the timeline must still put it in place.
    journal.add_evidence(
        incident,
        at(3),
        "alerts",
        [
            {
                "status": "firing",
                "labels": {"alertname": HOSTILE, "service": "web", "severity": "critical"},
                "annotations": {"summary": HOSTILE},
                "startsAt": "2026-01-01T12:02:30Z",
                "generatorURL": "http://prometheus.example/graph?g0.expr=up",
            }
        ],
    )
    journal.add_evidence(incident, at(4), "custom_probe", {"b": [1, 2], "a": "`x`"})
    journal.add_samples(
        incident,
        [(at(m), "error-rate", 0.001 if m < 2 or m > 7 else 0.12) for m in range(-10, 22)]
        + [(at(m), "probe:health", 1.0 if m < 2 or m > 7 else 0.0) for m in range(-10, 22)],
    )
    journal.set_state(
        incident, IncidentState.RECOVERED, "recovered: every criterion held for 15m", at(21)
    )
    record = journal.incident(incident)
    assert record is not None
    return record


def bare_incident(journal: SqliteJournal) -> IncidentRecord:
    """An incident recorded for the next deploy: no decision, step, evidence or sample."""
    incident = journal.open_incident(
        NewIncident(
            service="web",
            opened_at=at(5),
            severity=Severity.LOW,
            action=Action.RECORD,
            origin="automatic",
            reason="minor UI issue",
            state=IncidentState.RECORDED,
        )
    )
    record = journal.incident(incident)
    assert record is not None
    return record


# --- reading what was rendered ------------------------------------------------------------

_VOID = {"meta", "input", "br", "hr", "img", "link", "wbr", "col", "source", "area", "base"}


@dataclass
class Node:
    """An element of a parsed page."""

    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag: str | None = None) -> list[Node]:
        found: list[Node] = []
        for child in self.children:
            if isinstance(child, Node):
                if tag is None or child.tag == tag:
                    found.append(child)
                found.extend(child.all(tag))
        return found

    def by_id(self, ident: str) -> Node:
        return next(n for n in self.all() if n.attrs.get("id") == ident)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(page: str) -> Node:
    parser = _Parser()
    parser.feed(page)
    parser.close()
    return parser.root


_MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable("table")


def markdown_as_html(text: str) -> Node:
    """The Markdown as a permissive viewer shows it (raw HTML allowed through)."""
    return parse(_MARKDOWN.render(text))


def section(markdown: str, title: str) -> str:
    """The Markdown between ``## title`` and the next ``## `` heading."""
    start = markdown.index(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else len(markdown)]


def outside_fences(markdown: str) -> list[str]:
    """The lines of the Markdown that are not inside a fenced code block."""
    lines: list[str] = []
    fence = ""
    for line in markdown.splitlines():
        run = re.match(r"^(`{3,})", line)
        if not fence and run:
            fence = run.group(1)
        elif fence and re.fullmatch(rf"{fence}`*\s*", line):
            fence = ""
        elif not fence:
            lines.append(line)
    return lines


def fields(node: Node) -> dict[str, str]:
    """The label -> value pairs of the definition lists in ``node``."""
    return {dt.text(): dd.text() for dt, dd in zip(node.all("dt"), node.all("dd"), strict=True)}


def assert_inert(page: Node) -> None:
    """No script, no event handler, no javascript: URL, anywhere in the page."""
    assert page.all("script") == []
    for node in page.all():
        for name, value in node.attrs.items():
            assert not name.startswith("on"), (node.tag, name)
            assert not (value or "").strip().lower().startswith("javascript:"), (node.tag, name)


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_every_section_is_present(journal: SqliteJournal, fmt: str) -> None:
    """A reader finds the title and every section of the report, in both formats."""
    incident = full_incident(journal)
    text = render_report(incident, "markdown" if fmt == "markdown" else "html")
    if fmt == "markdown":
        assert text.startswith(f"# Incident {incident.id}: web — recovered\n")
        headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    else:
        page = parse(text)
        assert page.all("h1")[0].text() == f"Incident {incident.id}: web — recovered"
        assert page.all("title")[0].text() == f"Incident {incident.id}: web — recovered"
        headings = [h.text() for h in page.all("h2")]
    assert headings == list(SECTIONS)


def test_summary_states_versions_origin_and_duration(journal: SqliteJournal) -> None:
    """The summary says what ran, what it went back to, who started it and how long it took."""
    text = render_report(full_incident(journal), "markdown")
    summary = section(text, "Summary")
    for line in [
        "- **Service:** web",
        "- **Severity:** high",
        "- **Origin:** automatic (rollbackd decided)",
        "- **Opened:** 2026-01-01T12:05:00Z",
        "- **Closed:** 2026-01-01T12:21:00Z",
        "- **Duration:** 16m",
        "- **Version:** v2 → v1",
        "- **Deployed at:** 2026-01-01T12:00:00Z",
        "- **Final state:** recovered",
        "- **Summary:** recovered: every criterion held for 15m",
    ]:
        assert line in summary


def test_timeline_is_in_time_order_in_both_formats(journal: SqliteJournal) -> None:
    """The timeline reads top to bottom in time order, whatever order things were journaled in."""
    incident = full_incident(journal)
    rows = [
        line.split(" | ")
        for line in section(
            render_report(incident, "markdown"), "What happened and when"
        ).splitlines()
        if line.startswith("| 20")
    ]
    times = [row[0].removeprefix("| ") for row in rows]
    assert times == sorted(times)
    kinds = [row[2] for row in rows]
    assert kinds[:3] == ["deploy", "deploy", "finding"]  # v1 yesterday, v2, then the trouble
    assert kinds.index("evidence") < kinds.index("incident") < kinds.index("decision")
    assert kinds[-1] == "state"
    assert rows[kinds.index("decision")][1] == "T+0s"
    assert any("step execute finished: ok" in row[3] for row in rows)

    page = parse(render_report(incident, "html"))
    stamps = [t.attrs["datetime"] or "" for t in page.by_id("timeline").all("time")]
    assert stamps == sorted(stamps)
    assert len(stamps) == len(rows)


def test_hostile_text_is_only_text_in_html(journal: SqliteJournal) -> None:
    """Script tags, javascript: links and pipes in reasons, labels and output show as text."""
    page = parse(render_report(full_incident(journal), "html"))
    assert_inert(page)
    assert [a.attrs["href"] for a in page.all("a")] == [
        f"#{ident}"
        for ident in (
            "summary",
            "timeline",
            "measurements",
            "evidence",
            "decisions",
            "checklist",
            "recovery",
            "follow-up",
        )
    ]
    assert fields(page.by_id("summary"))["Reason"] == HOSTILE
    assert fields(page.by_id("decisions"))["Reason"] == HOSTILE
    assert HOSTILE in page.by_id("evidence").text()  # the alert's label and the finding's reason
    outputs = [pre.text() for pre in page.by_id("checklist").all("pre")]
    assert HOSTILE_OUTPUT_SEEN in outputs


def test_hostile_text_is_escaped_or_fenced_in_markdown(journal: SqliteJournal) -> None:
    """In Markdown the same text is escaped outside fences and renders as text, never as markup."""
    text = render_report(full_incident(journal), "markdown")
    for line in outside_fences(text):
        assert re.search(r"(?<!\\)[<>`]", line) is None, line
        assert "](javascript" not in line.replace("\\](javascript", "")
    page = markdown_as_html(text)
    assert_inert(page)
    assert page.all("a") == []  # nothing the journal holds became a link
    cells = [td.text() for td in page.all("td")]
    assert HOSTILE_SEEN in cells  # the finding's reason, in one cell of the evidence table
    assert any(HOSTILE_SEEN in cell for cell in cells)  # ... and the timeline's decision
    fields = [li.text() for li in page.all("li")]
    assert f"Reason: {HOSTILE_SEEN}" in fields


def test_command_output_cannot_close_its_fence(journal: SqliteJournal) -> None:
    """Output containing ``` and longer backtick runs stays one code block, shown byte for byte."""
    text = render_report(full_incident(journal), "markdown")
    assert "\n```````text\n" in text  # one longer than the run of six in the output
    fences = [t.content for t in _MARKDOWN.parse(text) if t.type == "fence"]
    assert HOSTILE_OUTPUT_SEEN in fences
    assert '{"a":"`x`","b":[1,2]}\n' in fences  # unknown evidence: compact JSON, fenced too


def test_table_cells_keep_pipes_and_line_breaks_inside(journal: SqliteJournal) -> None:
    """A pipe or a line break in a value stays in its cell instead of breaking the table."""
    text = render_report(full_incident(journal), "markdown")
    page = markdown_as_html(text)
    for table in page.all("table"):
        width = len(table.all("th"))
        for row in table.all("tr"):
            assert len(row.all("td")) in (0, width)
    timeline = [
        tr.all("td")
        for table in page.all("table")
        if [th.text() for th in table.all("th")] == ["time", "T", "what", "detail"]
        for tr in table.all("tr")
    ]
    decisions = [cells[3].text() for cells in timeline if cells and cells[2].text() == "decision"]
    assert decisions == [
        "rollbackd decided rollback (proposed request_approval, severity high; approver "
        f"senior_admin by 2026-01-01T12:20:00Z) — {HOSTILE_SEEN}"
    ]


def test_urls_in_journal_text_do_not_become_links() -> None:
    """A URL in a label is shown, but broken up so that no Markdown viewer autolinks it."""
    shown = markdown_text("see http://evil.example/x or WWW.evil.example, ops@example.com")
    assert shown == "see http\\://evil.example/x or WWW\\.evil.example, ops\\@example.com"
    assert parse(_MARKDOWN.render(shown)).text().strip() == (
        "see http://evil.example/x or WWW.evil.example, ops@example.com"
    )


def test_charts_draw_each_series_with_labelled_markers(journal: SqliteJournal) -> None:
    """Each series is one line chart with the deploy, decision, rollback and recovery marked."""
    incident = full_incident(journal)
    page = parse(render_report(incident, "html"))
    charts = page.by_id("measurements").all("svg")
    assert len(charts) == len(incident.samples) == 2
    for chart in charts:
        lines = chart.all("polyline")
        assert len(lines) == 1
        points = (lines[0].attrs["points"] or "").split()
        assert len(points) == 32
        xs = [float(p.split(",")[0]) for p in points]
        assert xs == sorted(xs)
        labels = [t.text() for t in chart.all("text")]
        for label in ("deploy v2", "decision: rollback", "rollback", "recovered"):
            assert label in labels
        assert "2026-01-01T11:50:00Z" in labels and "2026-01-01T12:21:00Z" in labels
        assert {line.attrs["class"] for line in chart.all("line")} >= {
            "marker deploy",
            "marker decision",
            "marker rollback",
            "marker recovery",
        }
    error_rate = charts[0].all("text")
    assert [t.text() for t in error_rate][:2] == ["0.12", "0.001"]  # y axis: max, min


def test_markdown_lists_series_and_marker_times(journal: SqliteJournal) -> None:
    """Without charts, the Markdown still gives each series' range and when each marker fell."""
    measurements = section(render_report(full_incident(journal), "markdown"), "Measurements")
    assert "| error-rate | 32 | 0.001 | 0.12 | 0.001 | 2026-01-01T11:50:00Z |" in measurements
    assert "- deploy v2 at 2026-01-01T12:00:00Z" in measurements
    assert "- recovered at 2026-01-01T12:21:00Z" in measurements


def test_follow_up_checklists_are_the_playbooks_unchecked(journal: SqliteJournal) -> None:
    """The playbook's short- and long-term follow-up items are there for people, none ticked."""
    incident = full_incident(journal)
    text = render_report(incident, "markdown")
    follow_up = section(text, "Follow-up (for people)")
    expected = [item for group in FOLLOW_UP for item in group.items]
    assert re.findall(r"^- \[ \] (.+)$", follow_up, flags=re.MULTILINE) == expected
    for must in (
        "Document what went wrong",
        "Identify why it wasn't caught in testing",
        "Determine preventive measures",
        "Create fix for the original issue",
        "Enhanced testing procedures",
        "Schedule fix deployment",
        "Add issue to known issues log",
        "What went well?",
        "What could be improved?",
        "What will we do differently?",
    ):
        assert must in expected
    for title in ("Root Cause Analysis", "Plan Forward", "Update Documentation"):
        assert f"#### {title}" in follow_up
    assert "#### Conduct Retrospective" in follow_up
    assert re.search(r"^\s*- \[[xX]\]", text, flags=re.MULTILINE) is None

    page = parse(render_report(incident, "html")).by_id("follow-up")
    boxes = page.all("input")
    assert len(boxes) == len(expected)
    assert all(b.attrs.get("type") == "checkbox" and "checked" not in b.attrs for b in boxes)
    assert [li.text().strip() for li in page.all("li")] == expected


def test_recovery_counts_checks_and_says_when_criteria_held(journal: SqliteJournal) -> None:
    """The recovery section gives the verdict, how many checks ran and since when they held."""
    recovery = section(render_report(full_incident(journal), "markdown"), "Recovery")
    assert "**Verdict:** recovered: every criterion held for 15m\n" in recovery
    assert "- **Checks:** 4 (3 held, 1 did not)" in recovery
    assert "- **Criteria held since:** 2026-01-01T12:06:30Z (14m30s to the last check)" in recovery
    assert "| 1 | 2026-01-01T12:06:00Z | no | error rate (error-rate) 0.04" in recovery
    assert "- [ ] Database integrity maintained" in recovery


def test_a_recovery_that_could_not_be_proven_says_which_criteria_had_no_data(
    journal: SqliteJournal,
) -> None:
    """An unproven recovery is not called "not recovered"; each check lists what had no data."""
    incident = journal.open_incident(
        NewIncident(
            service="web",
            opened_at=at(5),
            severity=Severity.HIGH,
            action=Action.ROLLBACK,
            origin="automatic",
            reason="error-rate firing",
            state=IncidentState.ROLLING_BACK,
        )
    )
    unknown = (
        "recovery unknown after 30m: no criterion fails, but nothing proves health: "
        "error rate (error-rate): no data (no series for this service)"
    )
    step = journal.step_started(incident, "recovery", at(6))
    journal.step_finished(step, at(36), Outcome.UNKNOWN, unknown)
    journal.add_evidence(
        incident,
        at(36),
        "recovery_check",
        {
            "held": False,
            "failures": [],
            "passes": ["alert HighErrorRate resolved"],
            "missing": [
                "error rate (error-rate): no data (no series for this service)",
                "nothing proves recovery: no error-rate, latency or probe criterion has data",
            ],
        },
    )
    journal.add_samples(incident, [(at(6), "errors", 0.0), (at(36), "errors", 0.0)])
    journal.set_state(incident, IncidentState.ESCALATED, f"check the service: {unknown}", at(36))
    record = journal.incident(incident)
    assert record is not None
    text = render_report(record, "markdown")
    assert "- recovery unknown at 2026-01-01T12:36:00Z" in text  # the charts' marker
    assert "not recovered" not in text
    recovery = section(text, "Recovery")
    assert f"**Verdict:** {unknown}\n" in recovery
    assert (
        "- **Criteria held since:** they did not hold at the last check: the criteria do not "
        "hold: nothing proves recovery: no error-rate, latency or probe criterion has data"
    ) in recovery
    assert "| \\# | time | held | failures | passes | no data |" in recovery
    assert (
        "| 1 | 2026-01-01T12:36:00Z | no | — | alert HighErrorRate resolved | error rate "
        "(error-rate): no data (no series for this service); nothing proves recovery"
    ) in recovery


def test_steps_show_outcome_duration_and_playbook_item(journal: SqliteJournal) -> None:
    """Each checklist step shows the playbook item it did, its outcome, start and duration."""
    checklist = section(render_report(full_incident(journal), "markdown"), "Checklist")
    assert (
        "| 3 | verify\\_target | Verify Rollback Target | ok | 2026-01-01T12:05:03Z | 3s |"
        in checklist
    )
    assert "### Step 5: execute — ok" in checklist
    assert "- **attempt:** 1" in checklist


def test_long_output_is_bounded_and_points_to_the_journal(journal: SqliteJournal) -> None:
    """A huge command output shows only its head and tail, and says the journal has it all."""
    output = "".join(f"line {n} of the build log\n" for n in range(20000))
    incident = full_incident(journal, output=output)
    text = render_report(incident, "markdown")
    fences = [t.content for t in _MARKDOWN.parse(text) if t.type == "fence"]
    shown = next(f for f in fences if f.startswith("line 0 of"))
    assert len(shown.encode()) < OUTPUT_LIMIT + 100
    assert shown.rstrip().endswith("line 19999 of the build log")
    assert "omitted …]" in shown
    assert "The journal holds all of it (incident" in text
    page = parse(render_report(incident, "html"))
    pre = next(p for p in page.by_id("checklist").all("pre") if p.text().startswith("line 0"))
    assert len(pre.text().encode()) < OUTPUT_LIMIT + 100


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_odd_journal_content_still_renders(journal: SqliteJournal, fmt: str) -> None:
    """An interrupted step, bodies of unexpected shapes and a one-sample series read plainly."""
    incident = journal.open_incident(
        NewIncident(
            service="web",
            opened_at=at(5),
            severity=Severity.CRITICAL,
            action=Action.ROLLBACK,
            origin="manual",
            reason="by hand",
            state=IncidentState.ROLLING_BACK,
        )
    )
    journal.step_started(incident, "execute", at(6))  # the daemon died here
    journal.add_evidence(incident, at(5), "findings", "not a list")
    journal.add_evidence(incident, at(5), "deploys", {"version": "v9"})  # no time: when journaled
    journal.add_evidence(incident, at(5), "recovery_check", ["unreadable"])
    journal.add_samples(incident, [(at(6), "latency", 0.3), (at(7), "errors", float("inf"))])
    record = journal.incident(incident)
    assert record is not None
    text = render_report(record, "markdown" if fmt == "markdown" else "html")
    flat = parse(text).text() if fmt == "html" else text
    assert "interrupted (never finished)" in flat
    assert "step execute started; never finished" in flat
    assert '"not a list"' in flat
    assert "not closed: still rolling_back" in flat.replace("\\_", "_")
    assert "manual (a person asked)" in flat
    if fmt == "html":
        page = parse(text)
        assert_inert(page)
        charts = page.by_id("measurements").all("svg")
        assert len(charts) == 1  # the journal keeps no non-finite sample, so no errors chart
        assert len(charts[0].all("circle")) == 1  # latency: a single sample is a dot
        assert "deploy v9" in [t.text() for t in charts[0].all("text")]


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_bare_incident_still_renders(journal: SqliteJournal, fmt: str) -> None:
    """An incident with nothing but its opening still reads whole, saying what is missing."""
    incident = bare_incident(journal)
    text = render_report(incident, "markdown" if fmt == "markdown" else "html")
    flat = parse(text).text() if fmt == "html" else text
    assert "no samples were journaled for this incident" in flat.lower()
    assert "No checklist steps were journaled for this incident." in flat
    assert "No decisions were journaled for this incident." in flat
    assert "No evidence was journaled for this incident." in flat
    assert "no recovery watch was journaled for this incident" in flat
    assert "not closed: still recorded" in flat  # open until what fired is OK again
    if fmt == "html":
        assert fields(parse(text).by_id("summary"))["Version"] == "unknown → none chosen"
        assert parse(text).all("svg") == []
    else:
        assert "- **Version:** unknown → none chosen" in text


def test_html_page_is_self_contained_and_fits_a_phone(journal: SqliteJournal) -> None:
    """The page loads nothing from elsewhere, allows no script and scales to a phone screen."""
    text = render_report(full_incident(journal), "html")
    page = parse(text)
    metas = {m.attrs.get("name") or m.attrs.get("http-equiv"): m.attrs for m in page.all("meta")}
    assert "width=device-width" in (metas["viewport"]["content"] or "")
    assert "default-src 'none'" in (metas["Content-Security-Policy"]["content"] or "")
    for node in page.all():
        assert "src" not in node.attrs
        assert (node.attrs.get("href") or "#").startswith("#")
    style = page.all("style")[0].text()
    assert "max-width" in style and "url(" not in style and "@import" not in style
    assert page.all("link") == []


def test_unknown_format_is_refused(journal: SqliteJournal) -> None:
    """Asking for a format the report does not have is an error that names both formats."""
    with pytest.raises(ValueError, match="'markdown' or 'html'"):
        render_report(bare_incident(journal), "pdf")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_rules_never_measured_are_one_quiet_line(journal: SqliteJournal, fmt: str) -> None:
    """Rules on metrics the service does not export are named once, not as a row each."""
    number = bare_incident(journal).id
    snapshot = {"findings": [], "unmeasured": ["auth-failures", "data-loss", "ui-errors"]}
    journal.add_evidence(number, at(6), "snapshot", snapshot)
    record = journal.incident(number)
    assert record is not None
    text = render_report(record, "markdown" if fmt == "markdown" else "html")
    flat = parse(text).text() if fmt == "html" else text
    assert "Not measured" in flat
    assert "since rollbackd began looking, for: auth-failures, data-loss, ui-errors" in flat
    assert flat.count("auth-failures") == 1
