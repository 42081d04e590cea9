"""Risk profiles per person and household: the score is the sum of what the rules' `score` effects added, each
halved every `half_life_days`; the factors say which rule and which events, the history every change."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from typing import Any

import asyncpg

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.risk import Evidence
from jinshui.risk.alerts import derived_id
from jinshui.risk.rules import lookup

log = logging.getLogger(__name__)
# A score at or above these is that level (below the lowest: NONE).
LEVELS = ((50.0, "HIGH"), (20.0, "MEDIUM"), (1.0, "LOW"))


async def add(conn: asyncpg.Connection, *, rule: str, effect, event: CloudEvent, explanation: str) -> None:
    d = event.data
    subjects: list[tuple[str, str]] = []
    if effect.persons is not None:
        persons = lookup(d, effect.persons)
        persons = persons if isinstance(persons, list) else [persons]
        subjects += [("person", str(p)) for p in persons if p]
    if effect.household is not None and (household := lookup(d, effect.household)):
        subjects.append(("household", str(household)))
    evidence = [Evidence(event_id=event.id, type=event.type, time=event.time).model_dump(mode="json")]
    await conn.executemany(
        """INSERT INTO score_factors (id, subject_kind, subject_key, rule, points, half_life_days, at, grid, beat,
                                      household_code, explanation, evidence)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING""",
        [
            (
                derived_id("score", rule, event.id, kind, key),
                kind,
                key,
                rule,
                effect.points,
                effect.half_life_days,
                event.time,
                lookup(d, effect.grid),
                lookup(d, effect.beat),
                lookup(d, "household_code"),
                explanation,
                evidence,
            )
            for kind, key in subjects
        ],
    )


def decayed(points: float, half_life_days: float, since: datetime, now: datetime) -> float:
    age_days = max((now - since).total_seconds(), 0.0) / 86400
    return points * 0.5 ** (age_days / half_life_days)


def level_of(score: float) -> str:
    return next((name for floor, name in LEVELS if score >= floor), "NONE")


def summarize(rows: list[asyncpg.Record], now: datetime) -> dict[str, Any]:
    """Score, level, the factors by rule (with their events), and the history of every change, oldest first."""
    by_rule: dict[str, dict[str, Any]] = defaultdict(lambda: {"score": 0.0, "events": []})
    history, total = [], 0.0
    for r in rows:
        now_worth = decayed(r["points"], r["half_life_days"], r["at"], now)
        total += now_worth
        factor = by_rule[r["rule"]]
        factor["rule"] = r["rule"]
        factor["score"] += now_worth
        factor["events"] += r["evidence"]
        history.append(
            {
                "at": r["at"],
                "rule": r["rule"],
                "points": r["points"],
                "half_life_days": r["half_life_days"],
                "worth_now": round(now_worth, 3),
                "explanation": r["explanation"],
                "evidence": r["evidence"],
            }
        )
    factors = sorted(by_rule.values(), key=lambda f: -f["score"])
    for f in factors:
        f["score"] = round(f["score"], 3)
    return {"score": round(total, 3), "level": level_of(total), "factors": factors, "history": history}
