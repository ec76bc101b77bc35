"""Reading rule files (design §5): valid files, and errors that name file, rule and key."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from rollbackd.core.model import Severity, Trigger
from rollbackd.core.rules import parse_rules
from rollbackd.errors import InvalidInput

SOURCE = "rules/errors.toml"

DESIGN_EXAMPLE = """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"      # the playbook's trigger class; sets the base severity
query = 'sum by (service) (rate(http_requests_total{code=~"5.."}[2m])) / sum by (service) (rate(http_requests_total[2m]))'
condition = "> 0.05"
for = "2m"

[[rules]]
name = "latency-regression"
trigger = "performance_degradation"
query = 'histogram_quantile(0.95, sum by (service, le) (rate(http_request_duration_seconds_bucket[5m])))'
condition = "> +50%"             # relative to the baseline
baseline = "before_deploy"       # the value over `baseline_window` before the current deploy
baseline_window = "30m"
for = "5m"
"""  # noqa: E501 -- the design's example, verbatim


def table(**keys: object) -> str:
    """One [[rules]] table; a value of None leaves its key out."""
    defaults: dict[str, object] = {
        "name": "error-rate",
        "trigger": "high_error_rate",
        "query": "rate(errors[2m])",
        "condition": "> 0.05",
    }
    defaults.update(keys)
    lines = ["[[rules]]"]
    for key, value in defaults.items():
        if value is None:
            continue
        if isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")  # a JSON string is a TOML basic string
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def problems(text: str, source: str = SOURCE) -> list[str]:
    """The lines a user sees for a rule file that does not load."""
    with pytest.raises(InvalidInput) as caught:
        parse_rules(text, source)
    assert caught.value.problems, "InvalidInput without problems tells the user nothing"
    return [str(p) for p in caught.value.problems]


# --- valid files ---------------------------------------------------------------------------


def test_the_design_example_loads_with_its_values() -> None:
    """The two rules of design §5 load with trigger, condition, for and baseline as written."""
    error_rate, latency = parse_rules(DESIGN_EXAMPLE, "rules/high.toml")
    assert error_rate.name == "error-rate"
    assert error_rate.trigger is Trigger.HIGH_ERROR_RATE
    assert error_rate.condition.op == ">"
    assert error_rate.condition.threshold(None) == 0.05
    assert error_rate.for_ == timedelta(minutes=2)
    assert error_rate.baseline is None
    assert not error_rate.relative
    assert latency.relative
    assert latency.baseline == "before_deploy"
    assert latency.baseline_window == timedelta(minutes=30)
    assert latency.for_ == timedelta(minutes=5)
    assert latency.condition.threshold(0.2) == pytest.approx(0.3)


def test_optional_keys_take_their_documented_defaults() -> None:
    """Without for, severity or baseline_window a rule fires at once, at its trigger's severity."""
    (rule,) = parse_rules(table(), SOURCE)
    assert rule.for_ == timedelta(0)
    assert rule.severity is None
    assert rule.labels == {}
    assert rule.baseline_window == timedelta(minutes=30)
    assert rule.min_change is None
    assert rule.probe is None
    assert rule.impact_query is None


def test_a_relative_condition_implies_the_before_deploy_baseline() -> None:
    """'> +50%' without a baseline key compares to the value before the deploy."""
    (rule,) = parse_rules(table(condition="> +50%"), SOURCE)
    assert rule.baseline == "before_deploy"


def test_every_optional_key_is_read() -> None:
    """severity, impact_query, labels, description, min_change and baseline_window are kept."""
    text = (
        table(
            condition="> +50%",
            baseline="before_deploy",
            baseline_window="1h",
            min_change=0.05,
            severity="critical",
            impact_query="sum by (service) (affected_users) / sum by (service) (users)",
            description="p95 latency more than 50% above its value before the deploy",
        )
        + 'labels = { team = "payments", page = "yes" }\n'
    )
    (rule,) = parse_rules(text, SOURCE)
    assert rule.severity is Severity.CRITICAL
    assert rule.impact_query is not None
    assert rule.labels == {"team": "payments", "page": "yes"}
    assert rule.description.startswith("p95 latency")
    assert rule.min_change == 0.05
    assert rule.baseline_window == timedelta(hours=1)


def test_a_probe_rule_names_its_probe_instead_of_a_query() -> None:
    """A rule on a health probe carries the probe's name and no PromQL."""
    (rule,) = parse_rules(
        table(name="health", trigger="outage", query=None, probe="health", condition="> 0"),
        SOURCE,
    )
    assert rule.probe == "health"
    assert rule.query is None


def test_an_empty_rule_file_holds_no_rules() -> None:
    """A file with only comments is valid and adds no rule."""
    assert parse_rules("# nothing here yet\n", SOURCE) == []


def test_the_shipped_rule_files_load(repo: Path) -> None:
    """Every rule file shipped in rules/ loads, and names are unique within each file."""
    files = sorted((repo / "rules").glob("*.toml"))
    assert files, "rules/ ships the playbook's default rule set"
    for path in files:
        rules = parse_rules(path.read_text(encoding="utf-8"), f"rules/{path.name}")
        assert rules
        assert len({r.name for r in rules}) == len(rules)


# --- malformed files -----------------------------------------------------------------------


def test_a_bad_condition_names_file_rule_and_key() -> None:
    """The user sees which file, which rule and which key is wrong, and what is accepted."""
    assert problems(table(condition=">> 5")) == [
        "rules/errors.toml: rule \"error-rate\": condition: expected '> 0.05' or '> +50%', "
        "got '>> 5'"
    ]


def test_a_condition_that_is_not_a_string_is_refused_with_the_accepted_forms() -> None:
    """'condition = 5' is refused showing '> 0.05' and '> +50%' as the way to write it."""
    assert problems(table(condition=5)) == [
        "rules/errors.toml: rule \"error-rate\": condition: expected '> 0.05' or '> +50%', got 5"
    ]


def test_an_unknown_key_is_named() -> None:
    """A misspelt key (here 'treshold') is reported as unknown, under its rule."""
    assert problems(table(treshold=0.05)) == [
        'rules/errors.toml: rule "error-rate": treshold: unknown key'
    ]


def test_a_bad_trigger_lists_the_playbook_triggers() -> None:
    """A trigger that is not a playbook class is refused with the accepted classes listed."""
    (line,) = problems(table(trigger="slow"))
    assert line.startswith('rules/errors.toml: rule "error-rate": trigger: ')
    assert "'high_error_rate'" in line
    assert "'noticeable_slowdown'" in line
    assert line.endswith("got 'slow'")


@pytest.mark.parametrize(
    ("value", "shown"),
    [('"5"', "'5'"), ('"1m1h"', "'1m1h'"), ('"-1s"', "'-1s'"), ('"soon"', "'soon'"), ("5", "5")],
)
def test_a_bad_for_names_the_key_and_shows_a_duration(value: str, shown: str) -> None:
    """'for' that is not a duration is refused with an example such as '15s'."""
    (line,) = problems(table() + f"for = {value}\n")
    assert line.startswith('rules/errors.toml: rule "error-rate": for: expected a duration')
    assert "'15s'" in line
    assert line.endswith(f"got {shown}")


def test_a_bad_baseline_window_names_the_key() -> None:
    """A baseline_window that is not a duration is reported under that key."""
    (line,) = problems(table(condition="> +50%", baseline_window="half an hour"))
    assert line.startswith('rules/errors.toml: rule "error-rate": baseline_window: ')


def test_a_zero_baseline_window_is_refused() -> None:
    """A baseline over no time at all is refused naming baseline_window."""
    (line,) = problems(table(condition="> +50%", baseline_window="0s"))
    assert line.startswith('rules/errors.toml: rule "error-rate": ')
    assert "baseline_window" in line


@pytest.mark.parametrize(
    "keys",
    [{"probe": "health"}, {"query": None}],
    ids=["both query and probe", "neither query nor probe"],
)
def test_a_rule_takes_exactly_one_of_query_and_probe(keys: dict[str, object]) -> None:
    """Both or neither of query and probe is refused, naming the two keys."""
    (line,) = problems(table(**keys))
    assert line == (
        'rules/errors.toml: rule "error-rate": '
        "a rule takes exactly one of 'query' (PromQL) or 'probe' (a probe name)"
    )


def test_a_baseline_with_an_absolute_condition_is_refused() -> None:
    """baseline only makes sense with '> +50%'; with '> 0.05' it is refused, naming both."""
    (line,) = problems(table(baseline="before_deploy"))
    assert line.startswith('rules/errors.toml: rule "error-rate": baseline is used only by ')
    assert "'> 0.05'" in line


def test_min_change_with_an_absolute_condition_is_refused() -> None:
    """min_change guards relative conditions only; with '> 0.05' it is refused."""
    (line,) = problems(table(min_change=0.01))
    assert line.startswith('rules/errors.toml: rule "error-rate": min_change is used only by ')


def test_a_negative_min_change_is_refused() -> None:
    """min_change is a size of change, so a negative one is refused under its key."""
    (line,) = problems(table(condition="> +50%", min_change=-1))
    assert line.startswith('rules/errors.toml: rule "error-rate": min_change: ')
    assert line.endswith("got -1")


def test_a_probe_rule_cannot_compare_to_a_baseline() -> None:
    """Probes have no history before the deploy, so '> +50%' on a probe is refused."""
    (line,) = problems(table(query=None, probe="health", condition="> +50%"))
    assert line.startswith('rules/errors.toml: rule "error-rate": ')
    assert "probe" in line
    assert "baseline" in line


def test_an_unknown_baseline_kind_is_refused() -> None:
    """Only 'before_deploy' is a baseline; anything else is refused showing it."""
    (line,) = problems(table(condition="> +50%", baseline="last_week"))
    assert line.startswith('rules/errors.toml: rule "error-rate": baseline: ')
    assert "'before_deploy'" in line


def test_an_unknown_severity_lists_the_matrix_severities() -> None:
    """A severity override must be one of the matrix's four rows."""
    (line,) = problems(table(severity="urgent"))
    assert line.startswith('rules/errors.toml: rule "error-rate": severity: ')
    for severity in ("'low'", "'medium'", "'high'", "'critical'"):
        assert severity in line


def test_a_rule_without_a_name_is_located_by_its_index() -> None:
    """With no name to quote, the problem says rules[i] for the i-th table of the file."""
    text = table(name="first") + table(name=None, condition=">> 5")
    assert problems(text) == [
        "rules/errors.toml: rules[1]: name: required key is missing",
        "rules/errors.toml: rules[1]: condition: expected '> 0.05' or '> +50%', got '>> 5'",
    ]


def test_a_missing_condition_is_named() -> None:
    """A rule without a condition is told that the key is required."""
    assert problems(table(condition=None)) == [
        'rules/errors.toml: rule "error-rate": condition: required key is missing'
    ]


def test_an_invalid_rule_name_is_refused() -> None:
    """Rule names are used in logs and URLs, so spaces are refused under 'name'."""
    (line,) = problems(table(name="error rate"))
    assert line.startswith('rules/errors.toml: rule "error rate": name: ')


def test_a_name_with_a_quote_is_shown_as_written() -> None:
    """The location quotes the rule's name as the user wrote it, even when it is invalid."""
    (line,) = problems(table(name="it's"))
    assert line.startswith('rules/errors.toml: rule "it\'s": name: ')


def test_duplicate_names_in_one_file_are_refused() -> None:
    """Two rules with one name would share state; the second is reported under that name."""
    text = table() + table(condition="> 0.1")
    assert problems(text) == [
        'rules/errors.toml: rule "error-rate": name: another rule in this file has this name'
    ]


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    """A file with several broken rules lists them all, each under its own rule."""
    text = table(name="a", trigger="slow") + table(name="b", colour="red") + table(name="c")
    lines = problems(text)
    assert len(lines) == 2
    assert lines[0].startswith('rules/errors.toml: rule "a": trigger: ')
    assert lines[1] == 'rules/errors.toml: rule "b": colour: unknown key'


def test_invalid_toml_names_the_file_and_the_position() -> None:
    """A syntax error says the file is not valid TOML and where."""
    (line,) = problems('[[rules]\nname = "x"\n', "rules/broken.toml")
    assert line.startswith("rules/broken.toml: not valid TOML: ")
    assert "line 1" in line


def test_an_unknown_top_level_key_is_named() -> None:
    """Only [[rules]] tables belong in a rule file; a stray key is named as unknown."""
    assert problems('rule = "error-rate"\n' + table()) == [
        "rules/errors.toml: rule: unknown key (a rule file holds [[rules]] tables)"
    ]


@pytest.mark.parametrize("text", ['[rules]\nname = "x"\n', 'rules = ["x"]\n', "rules = 5\n"])
def test_rules_that_are_not_an_array_of_tables_are_refused(text: str) -> None:
    """[rules] (a single table) or a list of strings is refused asking for [[rules]] tables."""
    assert problems(text) == ["rules/errors.toml: rules: expected [[rules]] tables"]


def test_the_source_given_is_the_one_reported() -> None:
    """Problems name the file the caller read, so several rule files can be told apart."""
    (line,) = problems(table(condition=">> 5"), "/etc/rollbackd/rules/custom.toml")
    assert line.startswith('/etc/rollbackd/rules/custom.toml: rule "error-rate": condition: ')
