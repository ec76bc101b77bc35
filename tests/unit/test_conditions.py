"""Rule conditions: absolute thresholds (``> 0.05``) and changes from a baseline (``> +50%``)."""

from __future__ import annotations

import pytest

from rollbackd.core.rules import parse_condition

OPERATORS = [">", ">=", "<", "<=", "==", "!="]
RELATIVE_OPERATORS = [">", ">=", "<", "<="]

# For each operator: does it hold for a value below, equal to, and above the threshold?
TRUTH = {
    ">": (False, False, True),
    ">=": (False, True, True),
    "<": (True, False, False),
    "<=": (True, True, False),
    "==": (False, True, False),
    "!=": (True, False, True),
}


@pytest.mark.parametrize("op", OPERATORS)
def test_every_operator_compares_a_value_to_an_absolute_number(op: str) -> None:
    """'<op> 0.05' holds for values below, at and above 0.05 exactly as the operator says."""
    condition = parse_condition(f"{op} 0.05")
    assert not condition.relative
    threshold = condition.threshold(None)
    assert threshold == 0.05
    below, equal, above = TRUTH[op]
    assert condition.holds(0.01, threshold) is below
    assert condition.holds(0.05, threshold) is equal
    assert condition.holds(0.5, threshold) is above


@pytest.mark.parametrize("op", RELATIVE_OPERATORS)
def test_every_ordering_operator_compares_to_a_baseline_raised_by_a_percentage(op: str) -> None:
    """'<op> +50%' compares a value to 1.5 times the baseline with the given operator."""
    condition = parse_condition(f"{op} +50%")
    assert condition.relative
    threshold = condition.threshold(0.2)
    assert threshold == pytest.approx(0.3)
    below, equal, above = TRUTH[op]
    assert condition.holds(0.25, threshold) is below
    assert condition.holds(threshold, threshold) is equal
    assert condition.holds(0.35, threshold) is above


@pytest.mark.parametrize("op", RELATIVE_OPERATORS)
def test_a_negative_percentage_lowers_the_baseline(op: str) -> None:
    """'<op> -30%' compares a value to 70 % of the baseline."""
    condition = parse_condition(f"{op} -30%")
    assert condition.relative
    assert condition.amount == pytest.approx(-0.3)
    assert condition.threshold(100.0) == pytest.approx(70.0)


@pytest.mark.parametrize(
    ("text", "op", "amount"),
    [
        ("> 0.05", ">", 0.05),
        (">0.05", ">", 0.05),
        ("  >=   3  ", ">=", 3.0),
        ("< -5", "<", -5.0),
        ("> +5", ">", 5.0),
        ("<= .5", "<=", 0.5),
        ("== 1e3", "==", 1000.0),
        ("!= 0", "!=", 0.0),
        ("> 2.5E-3", ">", 0.0025),
    ],
)
def test_absolute_numbers_are_read_in_every_usual_notation(
    text: str, op: str, amount: float
) -> None:
    """Spacing, signs, leading dots and exponents all read as the number they write."""
    condition = parse_condition(text)
    assert (condition.op, condition.amount, condition.relative) == (op, amount, False)


def test_a_relative_condition_needs_a_baseline_to_give_a_threshold() -> None:
    """Asking a relative condition for its threshold without a baseline is an error, not 0."""
    with pytest.raises(ValueError, match="needs a baseline"):
        parse_condition("> +50%").threshold(None)


def test_an_absolute_condition_ignores_any_baseline() -> None:
    """An absolute threshold stays the number written whatever the baseline is."""
    assert parse_condition("> 0.05").threshold(10.0) == 0.05


@pytest.mark.parametrize(
    ("text", "shown"),
    [("> 0.05", "> 0.05"), (">=3", ">= 3"), ("> +50%", "> +50%"), ("<  -30 %", "< -30%")],
)
def test_the_condition_is_shown_in_one_normal_form(text: str, shown: str) -> None:
    """Findings and decisions show the condition in one spacing, whatever the file wrote."""
    assert str(parse_condition(text)) == shown


@pytest.mark.parametrize(
    "text",
    [
        ">> 5",
        "=> 5",
        "= 5",
        "5",
        "> ",
        "",
        "> abc",
        "> 5 5",
        "5 >",
        "> 5e",
        "> nan",
        "> inf",
        "> 1e400",
        "> +1e400%",
        "> 5%%",
        "> +-5",
    ],
)
def test_malformed_conditions_say_which_forms_are_accepted(text: str) -> None:
    """A condition that does not parse names both accepted forms and quotes the input."""
    with pytest.raises(ValueError, match=r"expected '> 0\.05' or '> \+50%'") as caught:
        parse_condition(text)
    assert f"got {text!r}" in str(caught.value)


@pytest.mark.parametrize("op", RELATIVE_OPERATORS)
def test_a_percentage_without_a_sign_asks_for_one(op: str) -> None:
    """'> 50%' is ambiguous; the error offers '+50%' (above) and '-50%' (below the baseline)."""
    with pytest.raises(ValueError, match="needs a sign") as caught:
        parse_condition(f"{op} 50%")
    message = str(caught.value)
    assert f"'{op} +50%'" in message
    assert f"'{op} -50%'" in message


@pytest.mark.parametrize("text", ["== +5%", "!= -5%", "== -5%", "!= +50%"])
def test_equality_against_a_percentage_is_refused_naming_the_usable_operators(text: str) -> None:
    """Equality to a percentage of a baseline is meaningless; the error lists > >= < <=."""
    with pytest.raises(ValueError, match="takes > >= < <=") as caught:
        parse_condition(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text", ["< -100%", "> -100%", "<= -100%"])
def test_a_fall_of_100_percent_is_refused(text: str) -> None:
    """Nothing positive falls 100 % below its baseline, so such a condition is refused."""
    with pytest.raises(ValueError, match="100% or more below its baseline") as caught:
        parse_condition(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text", ["< -150%", "<= -250%"])
def test_a_fall_beyond_100_percent_is_refused_naming_the_100_percent_limit(text: str) -> None:
    """A fall of more than 100 % is refused with the real limit (100 %), not the number written."""
    with pytest.raises(ValueError, match="100% or more below its baseline") as caught:
        parse_condition(text)
    assert repr(text) in str(caught.value)


def test_a_fall_just_under_100_percent_is_accepted() -> None:
    """'< -99.9%' is the largest fall that can still be expressed."""
    condition = parse_condition("< -99.9%")
    assert condition.threshold(1000.0) == pytest.approx(1.0)


@pytest.mark.parametrize("text", ["> 1234567", "> 0.1234567", "<= 98765.4321"])
def test_the_condition_shown_is_the_threshold_applied(text: str) -> None:
    """The number shown in a finding's condition is exactly the threshold compared against."""
    condition = parse_condition(text)
    shown = str(condition).split()[1]
    assert float(shown) == condition.threshold(None)
