"""The rule file: what it accepts, how it refuses (saying where), and the rule book that keeps old rules in force."""

from __future__ import annotations

import os

import pytest

from jinshui.risk.rules import DEFAULT_RULES, RuleBook, RuleFileError, parse, render

VISIT = "org.jinshui.registry.visit.recorded.v1"
GOOD = f"""
version: 2
rules:
  - id: welfare
    events: [{VISIT}]
    when:
      - {{field: concerns, contains: welfare_need}}
      - {{field: follow_up_requested, equals: true}}
    effects:
      - alert: {{level: LOW, subject: household_code, explanation: "help needed at {{household_code}}"}}
"""


def test_the_shipped_rules_parse():
    rules = parse(DEFAULT_RULES.read_text(encoding="utf-8"))
    assert "urgent-visit" in [r.id for r in rules.rules]


def test_conditions_must_all_hold():
    rule = parse(GOOD).rules[0]
    base = {"household_code": "H1", "concerns": ["welfare_need"], "follow_up_requested": True}
    assert all(c.holds(base) for c in rule.when)
    assert not all(c.holds({**base, "follow_up_requested": False}) for c in rule.when)
    assert not all(c.holds({**base, "concerns": ["dispute"]}) for c in rule.when)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (GOOD.replace("level: LOW", "level: SEVERE"), "rules.0.effects.0.alert.level"),
        (GOOD.replace("subject: household_code", "subjekt: household_code"), "rules.0.effects.0.alert.subjekt"),
        (GOOD.replace(VISIT, "org.jinshui.registry.visit.invented.v1"), "unknown event types"),
        (GOOD.replace("contains: welfare_need", "contains: welfare_need, equals: 1"), "exactly one of"),
        (GOOD.replace("field: concerns", "field: 'concerns[0]'"), "is not a field path"),
        (GOOD.replace("version: 2", "version: 0"), "version"),
        (GOOD.replace("events: [", "events: [["), "not YAML"),
        (GOOD.replace("id: welfare", "id: Welfare Rule"), "rules.0.id"),
    ],
)
def test_a_bad_file_is_refused_saying_where(text, where):
    with pytest.raises(RuleFileError) as refused:
        parse(text, source="rules.yaml")
    assert where in str(refused.value)
    assert str(refused.value).startswith("rules.yaml")


def test_duplicate_rule_ids_are_refused():
    doubled = GOOD + GOOD.split("rules:\n")[1]
    with pytest.raises(RuleFileError, match="unique"):
        parse(doubled, source="r")


def test_templates_fill_fields_and_evaluate_nothing():
    data = {"household_code": "H1", "person": {"masked": "370***"}}
    assert render("at {household_code} ({person.masked}) {missing}", data) == "at H1 (370***) None"
    assert render("{__class__} {household_code.__class__}", data) == "None None"


def test_the_book_keeps_the_rules_in_force_when_a_new_file_is_refused(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    book = RuleBook(path)
    book.reload()
    assert book.version == 2
    path.write_text(GOOD.replace("version: 2", "version: 3").replace("level: LOW", "level: LOUD"))
    with pytest.raises(RuleFileError):
        book.reload()
    assert book.version == 2 and "LOUD" not in str(book.describe()["rules"])
    assert "rules.0.effects.0.alert.level" in book.last_error
    data = {"household_code": "H1", "concerns": ["welfare_need"], "follow_up_requested": True}
    assert [r.id for r in book.matching(VISIT, data)] == ["welfare"]


def test_a_changed_rule_needs_a_higher_version(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    book = RuleBook(path)
    book.reload()
    path.write_text(GOOD.replace("level: LOW", "level: MEDIUM"))
    with pytest.raises(RuleFileError, match="version must grow"):
        book.reload()
    path.write_text(GOOD.replace("level: LOW", "level: MEDIUM").replace("version: 2", "version: 3"))
    os.utime(path, ns=(1, 1))
    book.reload_if_changed()
    assert book.version == 3
