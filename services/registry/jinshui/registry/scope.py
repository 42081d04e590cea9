"""What a caller may see, from the registry's own assignments: a grid worker the households of their grids, an
officer those of their beat, a community admin everything. A caller with no open assignment is not narrowed
(until a community's assignments are set up, reads work as before); outside a scope the answer is 404."""

from __future__ import annotations

from dataclasses import dataclass

from jinshui.kit.tokens import Identity


@dataclass(frozen=True)
class Scope:
    grids: frozenset[str] = frozenset()
    beats: frozenset[str] = frozenset()
    everything: bool = False

    def covers(self, *, grid: str, beat: str) -> bool:
        return self.everything or grid in self.grids or beat in self.beats


EVERYTHING = Scope(everything=True)


async def of(conn, caller: Identity) -> Scope:
    if caller.role not in ("grid_worker", "police"):
        return EVERYTHING
    role = "grid_worker" if caller.role == "grid_worker" else "officer"
    areas = await conn.fetch(
        "SELECT area FROM assignments WHERE person = $1 AND role = $2 AND until IS NULL", caller.sub, role
    )
    if not areas:
        return EVERYTHING
    mine = frozenset(r["area"] for r in areas)
    if role == "grid_worker":
        return Scope(grids=mine)
    covered = await conn.fetch("SELECT grid FROM coverage WHERE beat = ANY($1::text[])", list(mine))
    return Scope(grids=frozenset(r["grid"] for r in covered), beats=mine)
