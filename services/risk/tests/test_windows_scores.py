"""Risk's own windows and scores: month arithmetic in Asia/Shanghai, decay by half-life, the new rule effects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jinshui.risk.profiles import decayed, level_of
from jinshui.risk.rules import RuleFileError, parse
from jinshui.risk.windows import LOCAL, last_week_starts, month_of

MISSED = "org.jinshui.risk.ledger.review_missed.v1"
TAG = "org.jinshui.registry.tag.set.v1"


def test_the_last_week_starts_seven_days_before_the_next_month_at_shanghai_midnight():
    assert last_week_starts("2026-11") == datetime(2026, 11, 24, tzinfo=LOCAL)
    assert last_week_starts("2026-12") == datetime(2026, 12, 25, tzinfo=LOCAL)
    assert last_week_starts("2027-02") == datetime(2027, 2, 22, tzinfo=LOCAL)
    assert last_week_starts("2026-11").astimezone(UTC) == datetime(2026, 11, 23, 16, tzinfo=UTC)


def test_the_month_is_shanghais():
    assert month_of(datetime(2026, 11, 30, 17, tzinfo=UTC)) == "2026-12"  # 01:00 on 1 December in Shanghai
    assert month_of(datetime(2026, 11, 30, 15, tzinfo=UTC)) == "2026-11"


def test_a_score_halves_every_half_life_and_sets_the_level():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert decayed(40, 30, at, at) == 40
    assert decayed(40, 30, at, at + timedelta(days=30)) == pytest.approx(20)
    assert decayed(40, 30, at, at + timedelta(days=90)) == pytest.approx(5)
    assert [level_of(s) for s in (0, 0.5, 1, 19.9, 20, 50)] == ["NONE", "NONE", "LOW", "LOW", "MEDIUM", "HIGH"]


RULES = f"""
version: 1
rules:
  - id: ledger-tag
    events: [{TAG}]
    effects:
      - ledger: {{person: id_hash, interval_days: 30, reason: "{{label}}"}}
      - score: {{persons: id_hash, points: 20, half_life_days: 90}}
  - id: twice
    events: [{MISSED}]
    when:
      - {{field: misses, at_least: 2}}
    effects:
      - alert: {{level: MEDIUM, subject: entry_id, explanation: "missed {{misses}}"}}
"""


def test_ledger_score_and_at_least_are_rule_file_words():
    rules = parse(RULES).rules
    assert rules[0].effects[0].ledger.interval_days == 30 and rules[0].effects[1].score.half_life_days == 90
    [at_least] = rules[1].when
    assert [at_least.holds({"misses": n}) for n in (1, 2, 3)] == [False, True, True]
    assert not at_least.holds({"misses": True}) and not at_least.holds({})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (RULES.replace("interval_days: 30", "interval_days: 0"), "rules.0.effects.0.ledger.interval_days"),
        (RULES.replace("persons: id_hash, ", ""), "a score names `persons`, `household`, or both"),
        (RULES.replace("ledger: {person", "ledger: {persn"), "rules.0.effects.0.ledger.persn"),
        (RULES.replace("at_least: 2}", "at_least: 2, equals: 3}"), "exactly one of"),
    ],
)
def test_bad_effects_are_refused_saying_where(text, where):
    with pytest.raises(RuleFileError, match=where.replace("`", ".")):
        parse(text)
