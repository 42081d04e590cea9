"""The incidents domain without servers: working days, address resolution, correlation scores, the state machine."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import pytest

from jinshui.contracts.incidents import IncidentStatus as S
from jinshui.incidents import addresses, rules, workdays
from jinshui.incidents.intake import Located, NewSource, match


def test_a_make_up_saturday_is_a_working_day_and_a_holiday_monday_is_not():
    assert workdays.is_working_day(date(2026, 1, 4))  # Sunday, made up for the New Year holiday
    assert not workdays.is_working_day(date(2026, 10, 5))  # Monday in the National Day week
    assert workdays.is_working_day(date(2026, 10, 10))  # Saturday, made up for it
    assert not workdays.is_working_day(date(2026, 11, 28))  # an ordinary Saturday


def test_working_days_skip_the_national_day_week():
    start = datetime(2026, 9, 30, 2, 0, tzinfo=UTC)  # Wednesday 10:00 in Shanghai
    due = workdays.add_working_days(start, 1)
    # 1–7 October are the National Day holidays of 2026.
    assert due.astimezone(workdays.CHINA).date() == date(2026, 10, 8)
    assert due.astimezone(workdays.CHINA).hour == 10


def test_a_year_the_official_calendar_does_not_know_falls_back_to_weekdays_minus_holidays(caplog):
    workdays._fallback_holidays.cache_clear()
    with caplog.at_level(logging.WARNING, logger="jinshui.incidents.workdays"):
        assert not workdays.is_working_day(date(2027, 10, 1))  # National Day, known to `holidays`
        assert not workdays.is_working_day(date(2027, 1, 2))  # a Saturday
        assert workdays.is_working_day(date(2027, 1, 4))  # an ordinary Monday
    assert any("does not know this year" in r.getMessage() for r in caplog.records)
    start = datetime(2026, 12, 31, 2, 0, tzinfo=UTC)  # Thursday; 1 January 2027 is a holiday
    assert workdays.add_working_days(start, 1).astimezone(workdays.CHINA).date() == date(2027, 1, 4)


def test_police_deadlines_count_clock_hours_and_mediation_counts_working_days():
    start = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)  # Friday 09:00 in Shanghai
    police = rules.deadlines("police:fire", start)
    assert police == {"accept": start + timedelta(minutes=15), "resolve": start + timedelta(hours=4)}
    mediation = rules.deadlines("report:dispute", start)
    assert mediation["accept"].astimezone(workdays.CHINA).date() == date(2026, 11, 30)  # the next Monday


HOUSEHOLDS = [
    {"code": "A", "address": "金水小区3-2-501"},
    {"code": "B", "address": "银河小区3-2-501"},
]


@pytest.mark.parametrize(
    ("text", "code", "confidence"),
    [
        ("金水小区3号楼2单元501室", "A", 1.0),
        ("金水小区３-２-0501", "A", 0.95),
        ("银河小区3栋2单元501", "B", 1.0),
        ("3号楼2单元501", None, None),  # two estates have a 3-2-501: ambiguous, so unresolved
        ("9号楼9单元909", None, None),
    ],
)
def test_free_text_addresses_resolve_by_their_numbers_and_estate(text, code, confidence):
    found = addresses.resolve(text, HOUSEHOLDS)
    assert found.household_code == code
    if confidence is not None:
        assert found.confidence == confidence


def test_an_address_without_its_estate_resolves_with_lower_confidence_when_only_one_matches():
    found = addresses.resolve("3号楼2单元501", HOUSEHOLDS[:1])
    assert found.household_code == "A" and 0.75 <= found.confidence < 0.95


def _source(**kw) -> NewSource:
    base = dict(
        origin="police_call", external_id="c1", category="dispute", occurred_at=datetime(2026, 11, 1, tzinfo=UTC)
    )
    return NewSource(**{**base, **kw})


def _other(**kw) -> dict:
    base = dict(
        id="s0",
        origin="report",
        category="dispute",
        household_code=None,
        address_norm=None,
        person_hashes=[],
        occurred_at=datetime(2026, 11, 1, tzinfo=UTC) - timedelta(hours=1),
    )
    return {**base, **kw}


def _at(household=None, norm=None) -> Located:
    return Located(household, norm, household is not None, 1.0, None, None, None)


def test_the_same_household_within_the_window_matches_with_its_reasons():
    reason = match(_source(), _at("H1"), _other(household_code="H1"))
    assert reason.fields == ["household_code", "category_group", "time_window"]
    assert 0.69 < reason.score < 0.7


def test_different_households_never_match_even_with_the_same_persons():
    persons = [{"id_hash": "h1:abc"}]
    assert match(_source(persons=persons), _at("H1"), _other(household_code="H2", person_hashes=["h1:abc"])) is None


def test_the_same_persons_match_when_one_side_has_no_address():
    reason = match(
        _source(persons=[{"id_hash": "h1:abc"}]), _at(), _other(household_code="H2", person_hashes=["h1:abc"])
    )
    assert reason is not None and "persons" in reason.fields


def test_outside_the_category_window_nothing_matches():
    late = _source(occurred_at=datetime(2026, 11, 5, tzinfo=UTC))
    assert match(late, _at("H1"), _other(household_code="H1")) is None


def test_every_state_but_closed_can_move_on_and_every_target_has_its_movers():
    assert set(rules.MOVES) == set(S)
    for moves in rules.MOVES.values():
        assert all(rules.MOVERS[m] for m in moves)
    assert S.closed not in rules.MOVES[S.reported]
    assert rules.MOVES[S.closed] == (S.reopened,)


def test_a_hazard_s_default_rectification_deadline_counts_working_days_per_category():
    start = datetime(2026, 9, 29, 2, 0, tzinfo=UTC)  # Tuesday 10:00 in Shanghai, before the National Day week
    assert rules.rectification_due("blocked_fire_lane", start).astimezone(workdays.CHINA).date() == date(2026, 9, 30)
    # Three working days: 30 September, then 8 and 9 October (1–7 October are holidays).
    assert rules.rectification_due("falling_tiles", start).astimezone(workdays.CHINA).date() == date(2026, 10, 9)
    assert rules.rectification_due("unheard_of", start) == rules.rectification_due("other", start)


def test_an_extension_adds_calendar_days_to_police_deadlines_and_working_days_to_mediation():
    due = datetime(2026, 9, 30, 2, 0, tzinfo=UTC)
    assert rules.extended("police:dispute", due, 2) == due + timedelta(days=2)
    assert rules.extended("report:dispute", due, 1).astimezone(workdays.CHINA).date() == date(2026, 10, 8)
