"""Per-version forms of a rule's PromQL, for side-by-side judgement (core.canary).

A rule's query gives one value per service: ``sum by (service) (rate(x[1m]))``.
While two versions of a service serve at once, rollbackd wants one value per
(service, version) instead, without asking anyone to write a second query. Each
aggregation by the service label is rewritten to group by the version label too,
the version coming from the version metric through the instance both are scraped
from:

    sum by (service) (INNER)
    ->
    sum by (service, version) ((INNER) * on (service, instance) group_left (version)
        (group by (service, instance, version) (app_build_info)
         unless on (service, instance) count by (service, instance) (...) > 1))

(``group`` rather than ``max``: the version metric's value is whatever the app
exports, and the product must keep INNER's value. An instance that shows two
versions at once, restarting into the new one, is left out of that look rather
than failing the whole query for every service with "many-to-many matching".)
An aggregation around another one only adds the version label to its grouping:
the inner one has joined already, and its own grouping may have dropped the
instance. Binary operators between the
rewritten parts match on (service, version), so ratios and ``or`` fallbacks keep
working per version.

A query is *not* rewritable (:class:`NotRewritable`, with the reason) when it has
no aggregation, when an aggregation does not group by the service label or uses
``without``, or when one already groups by the version label: such a rule stays
judged on the whole service. Pure text in, text out; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

AGGREGATIONS = frozenset({"sum", "max", "min", "avg", "count"})
"""The aggregations rewritten; any other (``topk``, ``quantile``...) leaves the query as it is
only if it is inside one of these."""

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class NotRewritable(ValueError):  # noqa: N818 -- names the outcome, like InvalidInput
    """The query cannot be judged per version; the message says why."""


@dataclass(frozen=True)
class Labels:
    """The labels the rewrite joins on: the service's, the version's, the instance's,
    and the version metric (a metric name)."""

    service: str
    version: str
    instance: str
    version_metric: str


def per_version(query: str, labels: Labels) -> str:
    """``query`` with every aggregation by the service label grouped by version too.

    Raises :class:`NotRewritable` with the reason when it cannot be.
    """
    rewritten, found = _Rewriter(query, labels).rewrite(0, len(query))
    if not found:
        raise NotRewritable(
            f"no aggregation by {labels.service} (e.g. 'sum by ({labels.service}) (...)')"
        )
    return rewritten


@dataclass
class _Aggregation:
    """One aggregation found in the text: where it starts and ends, its grouping, its body."""

    start: int
    end: int
    operator: str
    grouping: list[str]
    body: tuple[int, int]


class _Rewriter:
    def __init__(self, text: str, labels: Labels) -> None:
        self.text = text
        self.labels = labels

    def rewrite(self, start: int, end: int) -> tuple[str, int]:
        """The text in [start, end) rewritten, and how many aggregations it held."""
        out: list[str] = []
        found = 0
        position = start
        index = start
        depth = 0  # inside {...}: label matchers, never an aggregation
        text = self.text
        while index < end:
            char = text[index]
            if char in "\"'`":
                index = self._skip_string(index, end)
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth = max(depth - 1, 0)
            elif depth == 0 and _IDENT.match(char) and (index == 0 or not _word(text[index - 1])):
                match = _IDENT.match(text, index)
                assert match is not None  # noqa: S101 -- the first character matches
                word = match.group(0)
                if word in AGGREGATIONS:
                    aggregation = self._aggregation(index, match.end(), end)
                    if aggregation is not None:
                        out.append(text[position:index])
                        replaced, inner = self._replace(aggregation)
                        out.append(replaced)
                        found += 1 + inner
                        position = index = aggregation.end
                        continue
                elif word == "without":
                    raise NotRewritable(self._without())
                index = match.end()
                continue
            index += 1
        out.append(text[position:end])
        return "".join(out), found

    def _without(self) -> str:
        return f"an aggregation 'without' labels cannot be grouped by {self.labels.version}"

    def _replace(self, aggregation: _Aggregation) -> tuple[str, int]:
        labels = self.labels
        if labels.service not in aggregation.grouping:
            grouped = f"by ({', '.join(aggregation.grouping)})" if aggregation.grouping else "(...)"
            raise NotRewritable(
                f"'{aggregation.operator} {grouped}' does not group by {labels.service}"
            )
        if labels.version in aggregation.grouping:
            raise NotRewritable(f"an aggregation already groups by {labels.version}")
        body, inner = self.rewrite(*aggregation.body)
        grouping = list(aggregation.grouping)
        grouping.insert(grouping.index(labels.service) + 1, labels.version)
        by = ", ".join(grouping)
        if inner:  # the inner aggregation joined already (and may have dropped the instance)
            return f"{aggregation.operator} by ({by}) ({body})", inner
        on = f"on ({labels.service}, {labels.instance}) group_left ({labels.version})"
        joined = f"({body}) * {on} {versions_by_instance(labels)}"
        return f"{aggregation.operator} by ({by}) ({joined})", inner

    def _aggregation(self, start: int, after_name: int, end: int) -> _Aggregation | None:
        """The aggregation whose operator spans [start, after_name), or None if the word is
        not one here (a metric named ``sum``, ``sum{...}``)."""
        text = self.text
        index = _spaces(text, after_name, end)
        grouping: list[str] | None = None
        if _keyword(text, index, end, "without"):
            raise NotRewritable(self._without())
        if _keyword(text, index, end, "by"):
            grouping, index = self._grouping(index + 2, end)
            index = _spaces(text, index, end)
        if index >= end or text[index] != "(":
            if grouping is not None:
                raise NotRewritable("an aggregation's 'by (...)' is not followed by its body")
            return None
        body_end = self._closing(index, end)
        body = (index + 1, body_end)
        index = body_end + 1
        if grouping is None:
            after = _spaces(text, index, end)
            if _keyword(text, after, end, "without"):
                raise NotRewritable(self._without())
            if _keyword(text, after, end, "by"):
                grouping, index = self._grouping(after + 2, end)
            else:
                grouping = []
        operator = text[start:after_name]
        return _Aggregation(start, index, operator, grouping, body)

    def _grouping(self, index: int, end: int) -> tuple[list[str], int]:
        """The labels of ``(a, b)`` at ``index`` (after spaces), and where it ends."""
        text = self.text
        index = _spaces(text, index, end)
        if index >= end or text[index] != "(":
            raise NotRewritable("'by' is not followed by '(labels)'")
        close = text.find(")", index)
        if close < 0 or close >= end:
            raise NotRewritable("'by (' is not closed")
        names = [name.strip() for name in text[index + 1 : close].split(",")]
        names = [name for name in names if name]
        for name in names:
            if not _LABEL.match(name):
                raise NotRewritable(f"'by' lists {name!r}, not a label name")
        return names, close + 1

    def _closing(self, index: int, end: int) -> int:
        """The index of the ``)`` that closes the ``(`` at ``index``."""
        text = self.text
        depth = 0
        while index < end:
            char = text[index]
            if char in "\"'`":
                index = self._skip_string(index, end)
                continue
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    return index
            index += 1
        raise NotRewritable("unbalanced parentheses")

    def _skip_string(self, index: int, end: int) -> int:
        """The index just after the string literal starting at ``index``."""
        text = self.text
        quote = text[index]
        index += 1
        while index < end:
            char = text[index]
            if char == "\\" and quote != "`":
                index += 2
                continue
            if char == quote:
                return index + 1
            index += 1
        raise NotRewritable("a string is not closed")


def versions_by_instance(labels: Labels) -> str:
    """Each instance's version, 1 per (service, instance, version); an instance showing two
    versions at once (restarting into the new one) is left out, not guessed: one instance's
    ambiguity would otherwise fail the whole query ("many-to-many matching") for every
    service."""
    service, instance, version, metric = (
        labels.service,
        labels.instance,
        labels.version,
        labels.version_metric,
    )
    return (
        f"(group by ({service}, {instance}, {version}) ({metric}) unless on ({service}, "
        f"{instance}) count by ({service}, {instance}) (group by ({service}, {instance}, "
        f"{version}) ({metric})) > 1)"
    )


def _word(char: str) -> bool:
    return char.isalnum() or char in "_:"


def _spaces(text: str, index: int, end: int) -> int:
    while index < end and text[index].isspace():
        index += 1
    return index


def _keyword(text: str, index: int, end: int, word: str) -> bool:
    stop = index + len(word)
    return text.startswith(word, index) and stop <= end and (stop == end or not _word(text[stop]))
