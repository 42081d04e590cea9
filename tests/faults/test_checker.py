"""The checker itself: a missing effect is lost, a second one (or one nobody asked for) is duplicated."""

from __future__ import annotations

from .harness import Report


def test_every_expected_effect_once_is_neither_lost_nor_duplicated():
    report = Report()
    report.tally("police_calls", "sources of police_call", expected={"C1": 1, "C2": 1}, found={"C1": 1, "C2": 1})
    assert (report.lost, report.duplicated) == ([], [])
    assert report.effects["police_calls"] == report.effects_expected["police_calls"] == 2


def test_a_missing_effect_is_lost_and_a_doubled_one_duplicated():
    report = Report()
    report.tally("visits", "visits of submission", expected={"s1": 50, "s2": 50}, found={"s1": 49, "s2": 51})
    assert report.lost == ["visits of submission s1: 49 of 50"]
    assert report.duplicated == ["visits of submission s2: 51 for 50"]
    assert (report.effects["visits"], report.effects_expected["visits"]) == (99, 100)


def test_an_effect_of_nothing_accepted_counts_as_duplicated():
    report = Report()
    report.tally("watch_hits", "watch-list hits of entry", expected={"w1": 1}, found={"w1": 1, "w9": 1})
    assert report.lost == []
    assert report.duplicated == ["watch-list hits of entry w9: 1 unexpected"]
    assert "watch_hits=1/1" in report.line("x")
