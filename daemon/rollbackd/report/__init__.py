"""The incident report: what happened, what rollbackd did, and what people still must do.

:func:`render_report` turns one journaled incident into Markdown or a
self-contained HTML page, following the rollback playbook: a summary, a
timeline, the evidence, the decisions, the checklist steps with their output,
the recovery watch, and the playbook's follow-up checklists left unchecked
for people. It is pure: no clock, no I/O besides loading its templates.

One module per concern, each importing only those listed before it:

* :mod:`.escape`: escaping untrusted text for Markdown (HTML is
  escaped by Jinja2's autoescaping); the XSS-safety argument is in its docstring.
* :mod:`.playbook`: the playbook's step names, success criteria and follow-up.
* :mod:`.view`: the dataclasses the templates show, plain text throughout.
* :mod:`.cells`: small formatters for one field or table cell.
* :mod:`.evidence`: what the journal holds, parsed into typed values.
* :mod:`.timeline`: every journaled moment in order, and the key moments.
* :mod:`.chart`: SVG geometry of one sampled series.
* :mod:`.build`: the report's sections, one :class:`ReportView` per incident.
* :mod:`.render`: the Jinja2 environments and :func:`render_report`.
"""

from rollbackd.report.build import CHECK_ROWS, NO_SAMPLES, build_view
from rollbackd.report.cells import OUTPUT_LIMIT
from rollbackd.report.escape import MarkdownBlock, markdown_fence, markdown_text
from rollbackd.report.playbook import (
    CRITERIA_BY_HAND,
    CRITERIA_CHECKED,
    FOLLOW_UP,
    PLAYBOOK_STEPS,
    FollowUpGroup,
)
from rollbackd.report.render import ReportFormat, render_report
from rollbackd.report.view import ReportView

__all__ = [
    "CHECK_ROWS",
    "CRITERIA_BY_HAND",
    "CRITERIA_CHECKED",
    "FOLLOW_UP",
    "NO_SAMPLES",
    "OUTPUT_LIMIT",
    "PLAYBOOK_STEPS",
    "FollowUpGroup",
    "MarkdownBlock",
    "ReportFormat",
    "ReportView",
    "build_view",
    "markdown_fence",
    "markdown_text",
    "render_report",
]
