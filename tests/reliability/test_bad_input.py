"""Bad input: fuzzed config, rules, durations, conditions, webhooks, deploy events, and the API.

The parsers get structured input built from the project's own captured files
(``config.example.toml``, ``rules/*.toml``, the Alertmanager deliveries in
``tests/fixtures``) and mutated by hypothesis: values replaced by any
JSON or TOML value, keys dropped or added, alerts duplicated, times with any
offset, text scrambled. Every outcome must be a parsed value or a clean error:
:class:`~rollbackd.errors.InvalidInput` whose problems each name the field at
fault (ValueError naming the accepted form for the duration and condition
parsers), never any other exception. Generated times stay a year inside the
calendar; its very ends are tested on their own below.
``RELIABILITY_EXAMPLES`` (default 400 per test) and ``RELIABILITY_API_EXAMPLES``
(default 500 per operation) set the budgets for a deeper run.

Then schemathesis sends thousands of generated requests to the served API of a
daemon whose journal holds incidents in every state (so approve, veto and
report reach real records), with the token of a random role, an unknown token
or none, and the answer must never be a 5xx, and every 4xx must be the
documented JSON error. ``tests/test_api_fuzz.py`` covers an empty journal with
an admin token and no token at a small budget; this is the large run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response, response_content_type

from rollbackd.api import create_app
from rollbackd.config import Config, parse_config
from rollbackd.core.durations import format_duration, parse_duration
from rollbackd.core.model import Action, Decision, Severity
from rollbackd.core.rules import Rule, parse_condition, parse_rules
from rollbackd.errors import InvalidInput, Problem
from rollbackd.journal import IncidentState, NewIncident, Outcome, SqliteJournal, journal_path
from rollbackd.loader import Loaded, load
from rollbackd.runtime import Runtime
from rollbackd.sources.alerts import parse_webhook
from rollbackd.sources.deploys import parse_event
from rollbackd.testing import ScriptedMetrics
from rollbackd.text import clip, printable
from tests.conftest import EXAMPLES, REPO
from tests.reliability import figures
from tests.reliability.support import ROLES, TOKENS, LiveServer, sha256, tokens_toml

SECTION = "bad input"
FUZZ = settings(
    max_examples=int(os.environ.get("RELIABILITY_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# -- strategies ------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=40)
"""Any text a file or a JSON body can carry (no lone surrogates, which neither can)."""
keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
"""Keys of tables and objects (an empty key is reported without a location: see the report)."""

FIRST_DAY = datetime(1, 1, 2)  # noqa: DTZ001 -- hypothesis takes naive bounds, zones apart
LAST_DAY = datetime(9999, 12, 30)  # noqa: DTZ001 -- hypothesis takes naive bounds, zones apart
safe_instants = st.datetimes(
    min_value=FIRST_DAY + timedelta(days=365),
    max_value=LAST_DAY - timedelta(days=365),
    timezones=st.just(UTC),
)
offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23))


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """An RFC 3339 time with any offset, far enough from year 1 and 9999 to be representable."""
    moment = draw(safe_instants).astimezone(timezone(draw(offsets)))
    return moment.isoformat().replace("+00:00", draw(st.sampled_from(["Z", "+00:00"])))


durations = st.from_regex(r"\A(\d{1,4}(y|w|d|h|m|s|ms)){1,3}\Z")
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
    | durations
    | rfc3339()
    | st.sampled_from(["", "-", "--upload-pack=touch /tmp/x", "$(id)", "web", "v1", "4"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=10,
)
toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | text
    | durations
    | st.datetimes(min_value=FIRST_DAY, max_value=LAST_DAY)
    | st.datetimes(min_value=FIRST_DAY, max_value=LAST_DAY, timezones=st.just(UTC))
    | st.sampled_from(["", "rollback", "escalate", "record", "git", "command", "15s", "> 0.05"])
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=8,
)

Path_ = tuple[str | int, ...]


def paths(document: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def parent_of(document: Any, path: Path_) -> Any:
    node = document
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def mutated(draw: st.DrawFn, base: Any, values: st.SearchStrategy[Any]) -> Any:
    """``base`` after 1-4 mutations: a value replaced, a key dropped or added, an item repeated."""
    document = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        found = list(paths(document))
        if not found:
            break
        path = found[draw(st.integers(0, len(found) - 1))]
        parent = parent_of(document, path)
        kind = draw(st.sampled_from(["replace", "replace", "drop", "add", "repeat"]))
        if kind == "replace":
            parent[path[-1]] = draw(values)
        elif kind == "drop":
            del parent[path[-1]]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        elif kind == "repeat" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[int(path[-1])]))
    return document


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: Any) -> str:
    """A value as TOML (inline tables and arrays nest), for the structured config fuzzing."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def toml_document(document: dict[str, Any]) -> str:
    """A TOML document: one ``key = value`` line per top-level key."""
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in document.items())


@st.composite
def scrambled(draw: st.DrawFn, original: str) -> str:
    """``original`` with a few characters deleted, inserted or swapped: typos, cut files."""
    chars = list(original)
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, max(len(chars) - 1, 0)))
        kind = draw(st.sampled_from(["delete", "insert", "cut"]))
        if kind == "delete" and chars:
            del chars[where]
        elif kind == "insert":
            chars.insert(where, draw(st.sampled_from(list("[]{}=\"'#,.\n -0123456789xé\\"))))
        else:
            chars = chars[:where]
    return "".join(chars)


EXAMPLE_CONFIG_TEXT = (REPO / "config.example.toml").read_text(encoding="utf-8")
EXAMPLE_CONFIG: dict[str, Any] = tomllib.loads(EXAMPLE_CONFIG_TEXT)
RULE_TEXTS = {
    p.name: p.read_text(encoding="utf-8") for p in sorted((REPO / "rules").glob("*.toml"))
}
RULE_FILES: dict[str, dict[str, Any]] = {n: tomllib.loads(t) for n, t in RULE_TEXTS.items()}
WEBHOOKS = [
    json.loads(p.read_text(encoding="utf-8"))
    for p in sorted(EXAMPLES.glob("alertmanager-webhook-*.json"))
]
DEPLOY_EVENT = {
    "service": "web",
    "version": "v2",
    "ref": "3f2c1e0",
    "time": "2026-01-01T12:00:00Z",
    "migrations": [
        {
            "file": "migrations/0002_add_index.sql",
            "backwards_compatible": True,
            "changes_data": False,
        }
    ],
}


# -- what a clean error looks like -----------------------------------------------------------


def starts_with_key(location: str, keys: Iterable[str]) -> bool:
    """``location`` is one of ``keys`` or a path below one (``key.sub``, ``key[2]``)."""
    return any(location == k or location.startswith((f"{k}.", f"{k}[")) for k in keys)


def config_problem_named(problem: Problem, source: str, document: dict[str, Any]) -> bool:
    """The problem names the file (or the environment variable) and the key at fault."""
    if problem.source.startswith("environment "):
        return "ROLLBACKD_" in problem.source or "ROLLBACKD_" in problem.location
    if problem.source != source or not problem.message:
        return False
    if not problem.location:
        keys = {*document, *Config.model_fields}
        return problem.message.startswith("not valid TOML") or any(
            problem.message.startswith(f"{key}:") or problem.message.startswith(f"{key}[")
            for key in keys
        )
    return starts_with_key(problem.location, {*document, *Config.model_fields})


RULE_KEYS = {*Rule.model_fields, "for"}


def rule_problem_named(problem: Problem, source: str, document: dict[str, Any]) -> bool:
    """The problem names the file, the rule (by name, else by index) and the key."""
    if problem.source != source or not problem.message:
        return False
    if not problem.location:
        return problem.message.startswith("not valid TOML")
    if problem.location in document:
        return True  # an unknown top-level key, or 'rules' that is not an array of tables
    tables = document.get("rules")
    if not isinstance(tables, list):
        return False
    for index, table in enumerate(tables):
        name = table.get("name") if isinstance(table, dict) else None
        prefix = f'rule "{name}"' if isinstance(name, str) else f"rules[{index}]"
        if problem.location == prefix:
            return True  # the rule as a whole: the message says which keys clash
        if problem.location.startswith(prefix + ": "):
            rest = problem.location.removeprefix(prefix + ": ")
            return starts_with_key(rest, {*RULE_KEYS, *(table if isinstance(table, dict) else ())})
    return False


WEBHOOK_LOCATION = re.compile(
    r"^(version|alerts)(\[(\d+)\](\.(status|labels|annotations|fingerprint|startsAt|endsAt))?)?$"
)


def webhook_problem_named(problem: Problem, payload: Any) -> bool:
    """The problem names the payload's field by path (``alerts[2].startsAt``)."""
    if problem.source != "body" or not problem.message:
        return False
    if not problem.location:
        return problem.message.startswith(("not JSON", "expected a JSON object"))
    match = WEBHOOK_LOCATION.match(problem.location)
    if match is None:
        return False
    if match.group(3) is not None:
        alerts = payload.get("alerts") if isinstance(payload, dict) else None
        return isinstance(alerts, list) and int(match.group(3)) < len(alerts)
    return True


def event_problem_named(problem: Problem, body: dict[str, Any]) -> bool:
    """The problem names a key of the event (an unknown one by its first 60 characters, made
    printable: a control character is shown escaped, never raw)."""
    if problem.source != "request" or not problem.message:
        return False
    known = {printable(clip(str(key), 60)) for key in body} | {"service", "version"}
    if problem.location in known:
        return True
    match = re.match(r"^migrations\[(\d+)\](\.(.+))?$", problem.location, re.DOTALL)
    if match is None:
        return False
    items = body.get("migrations")
    return isinstance(items, list) and int(match.group(1)) < len(items)


# -- the parsers -----------------------------------------------------------------------------


@FUZZ
@given(st.one_of(text, durations, st.from_regex(r"\A\s*[\dymwdhs]{1,12}\s*\Z")))
def test_a_duration_either_parses_or_is_refused_with_the_accepted_form(raw: str) -> None:
    """`for = "…"` in a rule is a duration or a clear 'expected a duration such as 15s'."""
    figures.count(SECTION, "durations fuzzed")
    try:
        parsed = parse_duration(raw)
    except ValueError as exc:
        assert "duration" in str(exc), exc
        return
    assert parsed >= timedelta(0)
    assert parse_duration(format_duration(parsed)) == parsed


@FUZZ
@given(
    st.one_of(
        text,
        st.from_regex(r"\A\s*(>=|<=|==|!=|>|<)?\s*[+-]?\s*[\d.eE+-]{0,12}\s*%?\s*\Z"),
    )
)
def test_a_condition_either_parses_or_is_refused_with_the_accepted_form(raw: str) -> None:
    """`condition = "…"` is '> 0.05'-like or a clear error quoting what was written."""
    figures.count(SECTION, "conditions fuzzed")
    try:
        condition = parse_condition(raw)
    except ValueError as exc:
        assert repr(raw) in str(exc), exc
        return
    assert math.isfinite(condition.amount)
    assert parse_condition(condition.text) == condition


def test_a_duration_with_thousands_of_digits_is_refused_as_a_duration() -> None:
    """A pasted run of digits gets the duration message, not Python's integer-size complaint."""
    with pytest.raises(ValueError, match="duration") as refused:
        parse_duration("9" * 5000 + "s")
    assert "set_int_max_str_digits" not in str(refused.value)


def check_config(text_: str, document: dict[str, Any], env: dict[str, str]) -> None:
    source = "fuzz/config.toml"
    figures.count(SECTION, "config files fuzzed")
    try:
        parse_config(text_, source, env)
    except InvalidInput as exc:
        assert exc.problems, exc
        for problem in exc.problems:
            assert config_problem_named(problem, source, document), problem


@FUZZ
@given(mutated(EXAMPLE_CONFIG, toml_values))
def test_a_mutated_config_is_valid_or_each_problem_names_its_key(document: dict[str, Any]) -> None:
    """config.example.toml with values, keys and tables mutated: each problem names its key."""
    check_config(toml_document(document), document, {})


@FUZZ
@given(scrambled(EXAMPLE_CONFIG_TEXT))
def test_a_scrambled_config_file_is_refused_cleanly(text_: str) -> None:
    """Typos and cut-off files: 'not valid TOML' with the position, or the key at fault."""
    try:
        document = tomllib.loads(text_)
    except tomllib.TOMLDecodeError:
        document = {}
    check_config(text_, document, {})


SCALAR_VARIABLES = [
    "ROLLBACKD_PROMETHEUS__URL",
    "ROLLBACKD_PROMETHEUS__TIMEOUT",
    "ROLLBACKD_DAEMON__POLL_INTERVAL",
    "ROLLBACKD_DAEMON__DRY_RUN",
    "ROLLBACKD_DAEMON__LISTEN",
    "ROLLBACKD_DAEMON__MAX_BODY_BYTES",
    "ROLLBACKD_GUARDS__MAX_ROLLBACKS",
    "ROLLBACKD_RECOVERY__MAX_ERROR_RATE",
    "ROLLBACKD_NOPE",
    "ROLLBACKD_DAEMON__NOPE",
]
TABLE_VARIABLES = ["ROLLBACKD_POLICY__HIGH", "ROLLBACKD_DEPLOYS", "ROLLBACKD_RECOVERY"]
environments = st.dictionaries(
    st.sampled_from(SCALAR_VARIABLES), st.one_of(text, durations, scalars.map(str)), max_size=3
) | st.dictionaries(
    st.sampled_from(TABLE_VARIABLES),
    st.dictionaries(
        st.from_regex(r"\A[a-z_]{1,12}\Z") | st.sampled_from(["action", "deadline", "window"]),
        json_values,
    ).map(json.dumps),
    max_size=2,
)


def env_path(variable: str) -> str:
    """``ROLLBACKD_POLICY__HIGH`` → ``policy.high``: the config key a variable sets."""
    return variable.removeprefix("ROLLBACKD_").lower().replace("__", ".")


def blamed_right(problem: Problem, env: dict[str, str]) -> bool:
    """A problem about a key the environment set names the variable, never the file."""
    if problem.source.startswith("environment"):
        shown = f"{problem.source} {problem.location}"
        return any(variable in shown for variable in env)
    return not any(
        problem.location == env_path(v)
        or problem.location.startswith((env_path(v) + ".", env_path(v) + "["))
        for v in env
    )


@FUZZ
@given(environments)
def test_bad_environment_overrides_are_blamed_on_the_variable(env: dict[str, str]) -> None:
    """ROLLBACKD_… overrides with any value: valid, or each problem names the variable it set."""
    figures.count(SECTION, "environment overrides fuzzed")
    try:
        parse_config(EXAMPLE_CONFIG_TEXT, "fuzz/config.toml", env)
    except InvalidInput as exc:
        assert exc.problems, exc
        for problem in exc.problems:
            assert blamed_right(problem, env), problem
            if not problem.source.startswith("environment"):
                assert config_problem_named(problem, "fuzz/config.toml", EXAMPLE_CONFIG), problem


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ROLLBACKD_SERVICES", "web"),
        ("ROLLBACKD_POLICY__HIGH", "rollback"),
        ("ROLLBACKD_DAEMON__RULES", "rules/*.toml"),
    ],
)
def test_a_list_or_table_variable_that_is_not_json_is_named(variable: str, value: str) -> None:
    """ROLLBACKD_SERVICES=web is refused naming ROLLBACKD_SERVICES, not '_MappingEnv'."""
    with pytest.raises(InvalidInput) as refused:
        parse_config(EXAMPLE_CONFIG_TEXT, "config.toml", {variable: value})
    [problem] = refused.value.problems
    assert variable in f"{problem.source} {problem.location}", problem
    assert "_MappingEnv" not in problem.message, problem


def test_a_bad_item_of_a_list_set_by_the_environment_is_blamed_on_the_variable() -> None:
    """ROLLBACKD_SERVICES='[1]' is the environment's mistake, not config.toml's."""
    with pytest.raises(InvalidInput) as refused:
        parse_config(EXAMPLE_CONFIG_TEXT, "config.toml", {"ROLLBACKD_SERVICES": "[1]"})
    assert all(p.source == "environment ROLLBACKD_SERVICES" for p in refused.value.problems), [
        str(p) for p in refused.value.problems
    ]
    assert [p.location for p in refused.value.problems] == ["[0]"]


def check_rules(text_: str, document: dict[str, Any]) -> None:
    source = "fuzz/rules.toml"
    figures.count(SECTION, "rule files fuzzed")
    try:
        parse_rules(text_, source)
    except InvalidInput as exc:
        assert exc.problems, exc
        for problem in exc.problems:
            assert rule_problem_named(problem, source, document), problem


@FUZZ
@given(st.sampled_from(sorted(RULE_FILES)).flatmap(lambda n: mutated(RULE_FILES[n], toml_values)))
def test_a_mutated_rule_file_is_valid_or_each_problem_names_rule_and_key(
    document: dict[str, Any],
) -> None:
    """The default rules with values and keys mutated: each problem names the rule and the key."""
    check_rules(toml_document(document), document)


@FUZZ
@given(st.sampled_from(sorted(RULE_TEXTS)).flatmap(lambda n: scrambled(RULE_TEXTS[n])))
def test_a_scrambled_rule_file_is_refused_cleanly(text_: str) -> None:
    """Typos in a rule file: 'not valid TOML', or the rule and key at fault."""
    try:
        document = tomllib.loads(text_)
    except tomllib.TOMLDecodeError:
        document = {}
    check_rules(text_, document)


webhook_values = st.one_of(
    json_values,
    rfc3339(),
    st.dictionaries(text, text, max_size=4),
    st.from_regex(r"\A[0-9a-f]{1,70}\Z"),
)


@FUZZ
@given(
    st.one_of(
        st.sampled_from(WEBHOOKS).flatmap(lambda w: mutated(w, webhook_values)),
        json_values,
    )
)
def test_a_mutated_alertmanager_delivery_is_accepted_or_each_problem_names_its_path(
    payload: Any,
) -> None:
    """Captured deliveries, mutated: a Delivery, or 422 problems naming ``alerts[i].field``."""
    figures.count(SECTION, "webhook payloads fuzzed")
    body = json.dumps(payload).encode()
    try:
        delivery = parse_webhook(body)
    except InvalidInput as exc:
        assert exc.problems, exc
        for problem in exc.problems:
            assert webhook_problem_named(problem, payload), problem
        return
    assert isinstance(payload, dict)
    assert len(delivery.alerts) == len(payload["alerts"])


@FUZZ
@given(st.binary(max_size=200) | text.map(str.encode))
def test_bytes_that_are_not_a_delivery_are_refused_as_such(body: bytes) -> None:
    """Not JSON, not UTF-8, not an object: one problem about the body, never a crash."""
    figures.count(SECTION, "webhook payloads fuzzed")
    try:
        parse_webhook(body)
    except InvalidInput as exc:
        payload: Any
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        for problem in exc.problems:
            assert webhook_problem_named(problem, payload), problem


@FUZZ
@given(mutated(DEPLOY_EVENT, json_values))
def test_a_mutated_deploy_event_is_accepted_or_each_problem_names_its_key(
    body: dict[str, Any],
) -> None:
    """CI's deploy event, mutated: a Deploy, or problems naming each bad key."""
    figures.count(SECTION, "deploy events fuzzed")
    try:
        deploy = parse_event(body, NOW, {"web", "api"})
    except InvalidInput as exc:
        assert exc.problems, exc
        for problem in exc.problems:
            assert event_problem_named(problem, body), problem
        return
    assert deploy.service == body["service"]
    assert deploy.version == body["version"]


EDGE_TIMES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"]
"""Valid RFC 3339 times whose UTC instant is before year 1 or after 9999."""


@pytest.mark.parametrize("moment", EDGE_TIMES)
def test_an_alert_time_at_the_end_of_the_calendar_is_a_clean_error(moment: str) -> None:
    """startsAt = 0001-01-01T00:00:00+01:00 is refused naming the field, not a server error."""
    payload = copy.deepcopy(WEBHOOKS[0])
    payload["alerts"][0]["startsAt"] = moment
    with pytest.raises(InvalidInput) as refused:
        parse_webhook(json.dumps(payload).encode())
    assert [p.location for p in refused.value.problems] == ["alerts[0].startsAt"]


@pytest.mark.parametrize("moment", EDGE_TIMES)
def test_a_deploy_time_at_the_end_of_the_calendar_is_a_clean_error(moment: str) -> None:
    """A deploy event with time 9999-12-31T23:59:59-23:59 is refused naming 'time'."""
    with pytest.raises(InvalidInput) as refused:
        parse_event({"service": "web", "version": "v1", "time": moment}, NOW, {"web"})
    assert [p.location for p in refused.value.problems] == ["time"]


# -- the served API under schemathesis -------------------------------------------------------

EXAMPLES_PER_OPERATION = int(os.environ.get("RELIABILITY_API_EXAMPLES", "50"))
FUZZ_RULES = """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = 'sum(rate(http_requests_total{code=~"5.."}[1m])) by (service)'
condition = "> 0.05"
"""


def fuzz_config(state_dir: Path, port: int) -> str:
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{state_dir}"
poll_interval = "1s"
rules = ["rules/*.toml"]
max_body_bytes = 65536

[[services]]
name = "web"
executor = "command"
command = ["true"]
command_timeout = "5s"

[[services]]
name = "api"
executor = "command"
command = ["true"]
command_timeout = "5s"

[recovery]
window = "1s"
timeout = "5s"

{tokens_toml()}
"""


def document() -> dict[str, Any]:
    """The OpenAPI document of the app, from a daemon that touches no file."""

    config = parse_config(fuzz_config(Path("/nonexistent"), 9), "fuzz.toml", env={})
    loaded = Loaded(config, Path("fuzz.toml"), tuple(parse_rules(FUZZ_RULES, "r.toml")), ())
    journal = SqliteJournal(Path(":memory:"))
    try:
        return create_app(
            Runtime(loaded, journal, metrics_source=ScriptedMetrics(["web"]))
        ).openapi()
    finally:
        journal.close()


DOCUMENT = document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def seed_incidents(journal: SqliteJournal) -> int:
    """An incident in every state, with decisions, steps, evidence and samples; how many."""
    count = 0
    for index, state in enumerate(IncidentState):
        service = "web" if index % 2 == 0 else "api"
        opened = NOW - timedelta(minutes=30 - index)
        incident = journal.open_incident(
            NewIncident(
                service=service,
                opened_at=opened,
                severity=Severity.HIGH,
                action=Action.ROLLBACK,
                origin="automatic",
                reason=f"seeded <b>{state.value}</b> & `$(id)`",
                target="v1",
                current_version="v2",
                state=state,
            )
        )
        journal.add_decision(
            incident,
            Decision(
                service=service,
                time=opened,
                severity=Severity.HIGH,
                action=Action.REQUEST_APPROVAL,
                proposed=Action.REQUEST_APPROVAL,
                rules=("error-rate",),
                reason="rule error-rate firing: 0.2 > 0.05",
                approver="senior_admin",
                deadline=datetime.now(UTC) + timedelta(hours=1),
                value=0.2,
                target="v1",
            ),
            "rollbackd",
        )
        journal.add_evidence(
            incident, opened, "approval", {"deadline": datetime.now(UTC) + timedelta(hours=1)}
        )
        step = journal.step_started(incident, "document", opened)
        journal.step_finished(step, opened, Outcome.OK, "documented")
        journal.add_samples(
            incident, [(opened + timedelta(seconds=s), "error-rate", 0.2) for s in range(10)]
        )
        count += 1
    return count


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A daemon with an incident in every state, served on loopback; its base URL."""
    root = tmp_path_factory.mktemp("schemathesis")
    (root / "rules").mkdir()
    (root / "rules" / "errors.toml").write_text(FUZZ_RULES, encoding="utf-8")
    from tests.support.processes import free_port  # noqa: PLC0415 -- only this fixture

    config = root / "config.toml"
    config.write_text(fuzz_config(root / "state", free_port()), encoding="utf-8")
    loaded = load(config, env={})
    journal = SqliteJournal(journal_path(loaded.config.daemon.state_dir))
    metrics = ScriptedMetrics(["web", "api"])
    metrics.set('sum(rate(http_requests_total{code=~"5.."}[1m])) by (service)', lambda _s, _t: 0.0)
    figures.record(SECTION, "incidents seeded for the API fuzzing", seed_incidents(journal))
    figures.record(SECTION, "API callers", "admin (1/3), every other role, unknown token, none")
    daemon = Runtime(loaded, journal, metrics_source=metrics)  # cycles run: /readyz stays 200
    server = LiveServer(daemon).start()
    try:
        response = httpx.get(f"{server.url}/openapi.json", timeout=10)
        assert response.json() == DOCUMENT  # the fuzzed schema is the one served
        yield server.url
    finally:
        server.stop()


CALLERS = ("admin", "admin", "admin", *ROLES, "unknown-token", "no-token")
"""Who sends each request: admin a third of the time (every handler runs), else anyone."""


def headers_for(caller: str) -> dict[str, str]:
    if caller == "no-token":
        return {}
    if caller == "unknown-token":
        return {"Authorization": "Bearer rel-unknown-" + sha256("nobody")[:24]}
    return {"Authorization": f"Bearer {TOKENS[caller]}"}


def documented_error(response: Response) -> str | None:
    """Why a 4xx is not the documented ``{"error": ..., "field": ...}`` JSON, if it is not."""
    if not 400 <= response.status_code < 500:
        return None
    kind = response_content_type(response) or ""
    if not kind.startswith("application/json"):
        return f"{response.status_code} with content-type {kind!r}: {response.text[:200]!r}"
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
        return f"{response.status_code} body without an error sentence: {body!r}"
    return None


@pytest.mark.integration
@pytest.mark.one_process
@schema.parametrize()
@schema.given(caller=st.sampled_from(CALLERS))
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_generated_request_from_any_caller_gets_a_server_error(
    served: str, case: schemathesis.Case[Any], caller: str
) -> None:
    """Whatever anyone sends, with any role's token or none, the daemon answers 2xx or 4xx."""
    response = case.call(base_url=served, headers=headers_for(caller), timeout=15)
    figures.count(SECTION, "API requests generated (schemathesis)")
    figures.count(SECTION, "API 5xx answers", int(response.status_code >= 500))
    case.validate_response(response, checks=[not_a_server_error])
    problem = documented_error(response)
    assert problem is None, f"{case.method} {case.formatted_path}: {problem}"


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/webhooks/alertmanager", "/api/v1/deploys"])
def test_a_time_at_the_end_of_the_calendar_is_a_422_from_the_api(served: str, path: str) -> None:
    """A client sending startsAt/time 0001-01-01T00:00:00+01:00 gets a 422 naming the field."""
    if path == "/api/v1/deploys":
        body: dict[str, Any] = {"service": "web", "version": "v9", "time": EDGE_TIMES[0]}
        field = "time"
    else:
        body = copy.deepcopy(WEBHOOKS[0])
        body["alerts"][0]["startsAt"] = EDGE_TIMES[0]
        field = "alerts[0].startsAt"
    response = httpx.post(served + path, json=body, headers=headers_for("admin"), timeout=10)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
