"""Rendering: the report's view through the Jinja2 templates in ``rollbackd/templates``, with
escaping done by the template engine itself (see :mod:`rollbackd.report.escape`)."""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from rollbackd.journal import IncidentRecord
from rollbackd.report.build import build_view
from rollbackd.report.escape import markdown_fence, markdown_finalize

ReportFormat = Literal["markdown", "html"]


def render_report(incident: IncidentRecord, fmt: ReportFormat) -> str:
    """The incident report of a wholly loaded incident, as Markdown or as an HTML page."""
    view = build_view(incident)
    if fmt == "markdown":
        return _markdown_env().get_template("report.md.j2").render(r=view)
    if fmt == "html":
        return _html_env().get_template("report.html.j2").render(r=view)
    raise ValueError(f"unknown report format {fmt!r}: expected 'markdown' or 'html'")


def _environment(**options: Any) -> Environment:
    return Environment(  # noqa: S701 -- each caller sets autoescape: HTML on, Markdown finalize
        loader=PackageLoader("rollbackd", "templates"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        **options,
    )


@cache
def _markdown_env() -> Environment:
    env = _environment(autoescape=False, finalize=markdown_finalize)
    env.filters["fence"] = markdown_fence
    return env


@cache
def _html_env() -> Environment:
    return _environment(
        autoescape=select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=True, default=True
        )
    )
