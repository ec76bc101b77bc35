"""The incident model: its table of state changes, as documented, and facts read leniently."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.core import incident as model
from rollbackd.core.deploys import MigrationFact
from rollbackd.core.incident import (
    ACTIVE_STATES,
    FINISHED_STATES,
    OPENED_AS,
    TRANSITIONS,
    IncidentState,
    RollbackFacts,
    allowed,
    check_transition,
)
from rollbackd.errors import InvalidTransition

ENDS = {IncidentState.RESOLVED, IncidentState.EXPIRED, IncidentState.SUPERSEDED}


def _drawn() -> tuple[set[IncidentState], dict[IncidentState, set[IncidentState]]]:
    """The opening states and the table as the module's docstring draws them."""
    doc = model.__doc__ or ""
    opened = re.search(r"^\s*opened as\s+(.+)$", doc, re.MULTILINE)
    assert opened is not None, "the docstring draws the states incidents are opened in"
    rows = re.findall(r"^\s*([a-z_]+)\s+→ (.+)$", doc, re.MULTILINE)
    table = {
        IncidentState(old): set()
        if new.startswith("(none")
        else {IncidentState(s.strip()) for s in new.split(",")}
        for old, new in rows
    }
    return {IncidentState(s.strip()) for s in opened.group(1).split(",")}, table


def test_the_table_is_the_one_the_module_documents() -> None:
    """Every state has a row, and each row is what the drawing people read says."""
    opened, drawn = _drawn()
    assert set(drawn) == set(IncidentState)
    assert drawn == {state: set(after) for state, after in TRANSITIONS.items()}
    assert opened == OPENED_AS


def test_finished_incidents_stay_finished() -> None:
    """Nothing follows recovered, resolved, expired or superseded (the README's promise)."""
    assert all(not TRANSITIONS[state] for state in FINISHED_STATES)


def test_a_rollback_under_way_is_never_ended_from_outside_its_checklist() -> None:
    """Rolling back or recovering never resolves, expires, is superseded or vetoed."""
    for state in (IncidentState.ROLLING_BACK, IncidentState.RECOVERING):
        assert not TRANSITIONS[state] & (ENDS | {IncidentState.VETOED})


def test_only_incidents_waiting_on_people_expire() -> None:
    """Expired follows escalated, vetoed, recorded and not recovered only (README: expired)."""
    assert {s for s in IncidentState if allowed(s, IncidentState.EXPIRED)} == {
        IncidentState.ESCALATED,
        IncidentState.VETOED,
        IncidentState.RECORDED,
        IncidentState.NOT_RECOVERED,
    }


def test_only_an_approval_veto_or_deadline_moves_a_request_on_besides_its_end() -> None:
    """A request awaiting approval starts rolling back or is vetoed; nothing else but an end."""
    assert TRANSITIONS[IncidentState.AWAITING_APPROVAL] - ENDS == {
        IncidentState.ROLLING_BACK,
        IncidentState.VETOED,
    }
    assert {s for s in IncidentState if allowed(s, IncidentState.ROLLING_BACK)} == {
        IncidentState.AWAITING_APPROVAL
    }
    assert ACTIVE_STATES - {IncidentState.RECOVERING} <= OPENED_AS


def test_a_change_not_in_the_table_names_the_incident_and_both_states() -> None:
    """The error says which incident, from what, to what, and what it could have become."""
    with pytest.raises(InvalidTransition) as raised:
        check_transition(7, IncidentState.RECOVERED, IncidentState.ROLLING_BACK)
    assert str(raised.value) == (
        "incident 7: recovered → rolling_back is not a state change an incident makes "
        "(from recovered: none, it is finished)"
    )
    check_transition(7, IncidentState.RECOVERING, IncidentState.RECOVERING)  # a resumed watch


def test_facts_survive_their_json() -> None:
    """What the checklist keeps when it opens an incident is what it reads back."""
    facts = RollbackFacts(
        baselines={"latency": 0.12},
        migrations=(MigrationFact("db/002.sql", False, True),),
        deployed_at=datetime(2026, 5, 1, 11, 58, 1, 250000, tzinfo=UTC),
        target_version="v1",
    )
    assert RollbackFacts.from_json(facts.to_json()) == facts


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers()
    | st.just(10**400)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FACTS_KEYS = st.sampled_from(["baselines", "migrations", "deployed_at", "target_version"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(FACTS_KEYS | st.text(max_size=6), JSON) | JSON)
def test_facts_from_any_journal_never_crash_a_reader(value: Any) -> None:
    """Whatever an old or edited journal holds as facts reads as facts (the bad parts left out)."""
    facts = RollbackFacts.from_json(value)
    assert all(isinstance(v, float) and math.isfinite(v) for v in facts.baselines.values())
    assert all(isinstance(m.file, str) for m in facts.migrations)
    assert facts.deployed_at is None or facts.deployed_at.tzinfo is not None
    assert RollbackFacts.from_json(facts.to_json()) == facts
