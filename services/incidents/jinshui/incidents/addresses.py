"""Free-text addresses (`3号楼2单元501`, `金水小区3-2-501`) resolved against the local copy of households."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Building / unit / room markers, read as separators between the numbers.
_SEPARATORS = re.compile(r"(号楼|号院|栋|幢|座|楼|单元|门|室|号|[-－—_#/\\.、,，\s])+")
_NUMBERS = re.compile(r"[0-9]+")
_PLACE = re.compile(r"^[^0-9]*")
MIN_CONFIDENCE = 0.75


def normalize(text: str) -> str:
    """Full-width folded, separators unified: `金水小区3号楼2单元501室` -> `金水小区3-2-501`."""
    s = unicodedata.normalize("NFKC", text).strip()
    s = _SEPARATORS.sub("-", s).strip("-")
    return re.sub(r"(?<=[^0-9-])-(?=[0-9])", "", s)


def numbers_key(text: str) -> str:
    """The building-unit-room numbers, leading zeros dropped: the part of an address that must match."""
    return "-".join(str(int(n)) for n in _NUMBERS.findall(unicodedata.normalize("NFKC", text)))


def place(text: str) -> str:
    """The named part before the numbers (an estate's name), normalised."""
    return _PLACE.match(normalize(text)).group(0)


@dataclass(frozen=True)
class Resolution:
    household_code: str | None
    confidence: float
    candidates: int


def resolve(text: str, households: list[dict]) -> Resolution:
    """The household whose address this text names, with a confidence; unresolved when unsure or ambiguous.

    `households` are rows with `code`, `address` (all those whose numbers key matches `text`'s).
    """
    wanted, wanted_place = normalize(text), place(text)
    key = numbers_key(text)
    if not key:
        return Resolution(None, 0.0, 0)
    scored: list[tuple[float, str]] = []
    for h in households:
        if numbers_key(h["address"]) != key:
            continue
        theirs = normalize(h["address"])
        if theirs == wanted:
            scored.append((1.0, h["code"]))
        elif wanted_place and place(h["address"]) == wanted_place:
            scored.append((0.95, h["code"]))
        elif not wanted_place or wanted_place in theirs or place(h["address"]).endswith(wanted_place):
            scored.append((0.8, h["code"]))
        else:
            scored.append((0.4, h["code"]))
    if not scored:
        return Resolution(None, 0.0, 0)
    scored.sort(reverse=True)
    best, code = scored[0]
    if len(scored) > 1 and scored[1][0] >= best - 0.05:
        return Resolution(None, round(best / len(scored), 2), len(scored))
    if best < MIN_CONFIDENCE:
        return Resolution(None, best, len(scored))
    return Resolution(code, best, len(scored))
