"""Bulk import of households, persons and residencies from CSV (UTF-8, or GBK as Chinese spreadsheets export).

Streaming: the body is read and applied a chunk of rows at a time, so a million rows need no more memory than a
few; the rows' errors are spooled to a temporary file and sent back after the summary. Valid rows are applied;
an invalid row is reported with its row number, column and reason (an ID number or phone never in clear). What
is already there is left alone, so importing the same file again changes nothing. Each chunk is one transaction
and at most two events (households, residents), each carrying at most CHUNK records.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import hashlib
import multiprocessing
import tempfile
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import asyncpg
import orjson

from jinshui.contracts.registry import (
    HouseholdRegistered,
    HouseholdsImported,
    HouseUse,
    ResidencyKind,
    ResidentArrived,
    ResidentsImported,
)
from jinshui.kit.pii import Keyring, PersonalDataError, normalize_id_number
from jinshui.registry import codes
from jinshui.registry.handlers import EXPIRY
from jinshui.registry.outbox import derived_id, emit
from jinshui.registry.tags import SHANGHAI

CHUNK = 1000
SNIFF = 64 * 1024
COLUMNS = {
    "household_code": ("户码", "户编码"),
    "address": ("地址", "标准地址"),
    "grid": ("网格",),
    "beat": ("警格",),
    "building": ("楼号", "楼栋"),
    "unit": ("单元",),
    "floor": ("楼层",),
    "room": ("房间", "室"),
    "house_use": ("房屋用途",),
    "name": ("姓名",),
    "id_number": ("身份证号", "公民身份号码"),
    "phone": ("电话", "手机号"),
    "kind": ("类别", "人口类别"),
    "arrived_at": ("到达日期", "入住日期"),
    "expected_end": ("预计离开日期",),
}
ALIASES = {alias: name for name, aliases in COLUMNS.items() for alias in (name, *aliases)}
KINDS = {"常住": "permanent", "户籍": "permanent", "流动": "floating", "租住": "tenant", "租户": "tenant"}
USES = {
    "自住": "owner_occupied",
    "出租": "let",
    "空置": "vacant",
    "经营": "business",
    "地下室他用": "basement_other_use",
}


class ImportError_(ValueError):
    """The file as a whole cannot be imported (e.g. its header lacks a required column)."""


@dataclass
class Summary:
    import_id: str
    encoding: str = ""
    rows: int = 0
    rejected: int = 0
    unchanged: int = 0
    households_new: int = 0
    persons_new: int = 0
    residencies_new: int = 0
    chunks: int = 0
    stopped: str | None = None
    errors: Any = field(default=None, repr=False)

    def error(self, row: int, column: str, reason: str) -> None:
        self.rejected += 1
        self.errors.write(orjson.dumps({"row": row, "column": column, "reason": reason}) + b"\n")

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "errors"}
        return {**out, "applied": self.rows - self.rejected - self.unchanged}


def derived_code(address: str) -> str:
    """A household code made from the address, so that a file without codes imports the same way twice."""
    digest = int.from_bytes(hashlib.sha256(address.encode()).digest()[:8], "big")
    body = ""
    for _ in range(codes.BODY_LENGTH):
        digest, i = divmod(digest, len(codes.ALPHABET))
        body += codes.ALPHABET[i]
    return codes.with_check(body)


async def decoded_lines(stream: AsyncIterator[bytes], encoding: str, summary: Summary) -> AsyncIterator[str]:
    """Lines of text from the byte stream; `auto` takes UTF-8 (with or without BOM), else GB 18030 (⊇ GBK)."""
    head, decoder, rest = b"", None, ""
    async for chunk in stream:
        if decoder is None:
            head += chunk
            if len(head) < SNIFF:
                continue
            decoder, text = _pick(head, encoding, summary, final=False)
        else:
            text = decoder.decode(chunk)
        lines = (rest + text).splitlines(keepends=True)
        rest = lines.pop() if lines and not lines[-1].endswith(("\n", "\r")) else ""
        for line in lines:
            yield line
    if decoder is None:
        decoder, text = _pick(head, encoding, summary, final=True)
        rest += text
    rest += decoder.decode(b"", final=True)
    for line in rest.splitlines(keepends=True):
        yield line


def _pick(head: bytes, encoding: str, summary: Summary, *, final: bool):
    names = ["utf-8-sig", "gb18030"] if encoding == "auto" else [{"gbk": "gb18030", "utf-8": "utf-8-sig"}[encoding]]
    for name in names:
        decoder = codecs.getincrementaldecoder(name)()
        try:
            text = decoder.decode(head, final=final)
        except UnicodeDecodeError:
            continue
        summary.encoding = "gbk" if name == "gb18030" else "utf-8"
        return decoder, text
    raise ImportError_(f"the file is not {' or '.join(n.split('-sig')[0] for n in names)} text")


async def rows(lines: AsyncIterator[str]) -> AsyncIterator[list[tuple[int, dict[str, str]]]]:
    """Chunks of (row number as a spreadsheet shows it, the row by column name); the header is row 1."""
    header: list[str] | None = None
    chunk: list[tuple[int, dict[str, str]]] = []
    number = 0
    async for line in lines:
        number += 1
        [values] = list(csv.reader([line])) or [[]]
        if header is None:
            header = [ALIASES.get(v.strip().lstrip("\ufeff"), "") for v in values]
            missing = {"address", "grid"} - set(header)
            if missing:
                raise ImportError_(f"the header lacks the column(s) {', '.join(sorted(missing))}")
            unknown = [v for v, h in zip(values, header, strict=True) if not h]
            if unknown:
                raise ImportError_(f"unknown column(s) {', '.join(unknown)} (known: {', '.join(COLUMNS)})")
            continue
        if not any(v.strip() for v in values):
            continue
        chunk.append((number, {h: v.strip() for h, v in zip(header, values, strict=False)}))
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _when(text: str) -> datetime:
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(0), tzinfo=SHANGHAI)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=SHANGHAI)


@dataclass
class Row:
    number: int
    code: str
    address: str
    grid: str
    beat: str
    house: tuple
    person: dict | None = None


@dataclass
class Parser:
    """Rows of text to Rows ready to apply: pure (no database), so that a worker process can run it."""

    keyring: Keyring
    grids: dict[str, str | None]
    now: datetime
    errors: list[tuple[int, str, str]] = field(default_factory=list)

    def bad(self, row: int, column: str, reason: str) -> None:
        self.errors.append((row, column, reason))

    def chunk(self, chunk: list[tuple[int, dict[str, str]]]) -> tuple[list[Row], list[tuple[int, str, str]]]:
        self.errors = []
        return [r for r in (self.row(n, raw) for n, raw in chunk) if r is not None], self.errors

    def row(self, number: int, raw: dict[str, str]) -> Row | None:
        bad = self.bad
        address, grid = raw.get("address", ""), raw.get("grid", "")
        if not address or len(address) > 200:
            return bad(number, "address", "required (at most 200 characters)")
        if grid not in self.grids:
            if self.grids or not grid:
                return bad(number, "grid", f"unknown grid {grid}" if grid else "required")
            beat = raw.get("beat", "")
            if not beat:
                return bad(number, "beat", "required while no grids are set up")
        else:
            beat = self.grids[grid]
            if beat is None:
                return bad(number, "grid", f"grid {grid} is not covered by a police beat yet")
        code = codes.normalize(raw.get("household_code", ""))
        if code and not (len(code) <= 32 and code.isalnum()):
            return bad(number, "household_code", "not a household code (letters and digits, at most 32)")
        use = raw.get("house_use", "")
        use = USES.get(use, use) or None
        if use is not None and use not in HouseUse.__members__:
            return bad(number, "house_use", f"one of {', '.join(HouseUse.__members__)}")
        house = (
            raw.get("building") or None,
            raw.get("unit") or None,
            raw.get("floor") or None,
            raw.get("room") or None,
            use,
        )
        row = Row(number=number, code=code, address=address, grid=grid, beat=beat, house=house)
        name, number_text = raw.get("name", ""), raw.get("id_number", "")
        if not name and not number_text:
            return row
        if not name or len(name) > 64:
            return bad(number, "name", "required with an ID number (at most 64 characters)")
        try:
            normal = normalize_id_number(number_text)
            id_number = self.keyring.seal("id_number", normal)
            phone = self.keyring.protect("phone", raw["phone"]) if raw.get("phone") else None
        except PersonalDataError as e:
            return bad(number, e.field, e.reason)
        kind = raw.get("kind", "") or "permanent"
        kind = KINDS.get(kind, kind)
        if kind not in ResidencyKind.__members__:
            return bad(number, "kind", f"one of {', '.join(ResidencyKind.__members__)}")
        try:
            arrived = _when(raw["arrived_at"]) if raw.get("arrived_at") else self.now
        except ValueError:
            return bad(number, "arrived_at", "not a date (YYYY-MM-DD) or time (ISO 8601)")
        try:
            ends = _when(raw["expected_end"]) if raw.get("expected_end") else None
        except ValueError:
            return bad(number, "expected_end", "not a date (YYYY-MM-DD) or time (ISO 8601)")
        if ends is not None and ends <= arrived:
            return bad(number, "expected_end", "not after arrived_at")
        row.person = {
            "id": derived_id("person", id_number.hash),
            "name": name,
            "id_number": id_number,
            "phone": phone,
            "birth_date": date(int(normal[6:10]), int(normal[10:12]), int(normal[12:14])),
            "sex": "male" if int(normal[16]) % 2 else "female",
            "kind": kind,
            "arrived_at": arrived,
            "expected_end": ends,
        }
        return row


_worker: Parser | None = None


def _start_worker(keys: str, grids: dict[str, str | None], now: datetime) -> None:
    global _worker
    _worker = Parser(keyring=Keyring.from_json(keys), grids=grids, now=now)


def _parse_in_worker(chunk: list[tuple[int, dict[str, str]]]) -> tuple[list[Row], list[tuple[int, str, str]]]:
    assert _worker is not None
    return _worker.chunk(chunk)


class Importer:
    """Chunk n+1 is parsed (validated, its ID numbers and phones sealed) in a worker process while chunk n is
    applied, so that parsing and PostgreSQL work at once on two cores; a file of one chunk is parsed in place."""

    def __init__(self, *, pool: asyncpg.Pool, keyring: Keyring, actor: str, now: datetime) -> None:
        self.pool, self.keyring, self.actor, self.now = pool, keyring, actor, now
        self.summary = Summary(import_id=str(uuid.uuid4()), errors=tempfile.SpooledTemporaryFile(max_size=1 << 20))
        self.grids: dict[str, str | None] = {}

    async def run(self, stream: AsyncIterator[bytes], encoding: str) -> Summary:
        async with self.pool.acquire() as conn:
            self.grids = {
                r["code"]: r["beat"]
                for r in await conn.fetch("SELECT g.code, c.beat FROM grids g LEFT JOIN coverage c ON c.grid = g.code")
            }
        parser = Parser(keyring=self.keyring, grids=self.grids, now=self.now)
        workers: ProcessPoolExecutor | None = None
        try:
            parsing: asyncio.Future | None = None
            try:
                async for chunk in rows(decoded_lines(stream, encoding, self.summary)):
                    self.summary.rows += len(chunk)
                    if parsing is None:
                        parsing = asyncio.get_running_loop().create_future()
                        parsing.set_result(parser.chunk(chunk))
                        continue
                    if workers is None:
                        workers = ProcessPoolExecutor(
                            1,
                            mp_context=multiprocessing.get_context("spawn"),
                            initializer=_start_worker,
                            initargs=(self.keyring.to_json(), self.grids, self.now),
                        )
                    following = asyncio.get_running_loop().run_in_executor(workers, _parse_in_worker, chunk)
                    await self._apply_parsed(await parsing)
                    parsing = following
            except UnicodeDecodeError as e:
                if not self.summary.chunks and not self.summary.rows:
                    raise ImportError_(
                        f"the file is not {self.summary.encoding or encoding} text: {e.reason}"
                    ) from None
                self.summary.stopped = f"stopped after row {self.summary.rows + 1}: not {self.summary.encoding} text"
            if parsing is not None:  # the last chunk read (or the last before the text went wrong)
                await self._apply_parsed(await parsing)
        finally:
            if workers is not None:
                workers.shutdown(cancel_futures=True)
        return self.summary

    async def _apply_parsed(self, result: tuple[list[Row], list[tuple[int, str, str]]]) -> None:
        parsed, errors = result
        for number, column, reason in errors:
            self.summary.error(number, column, reason)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._apply(conn, parsed)
        self.summary.chunks += 1

    async def _apply(self, conn: asyncpg.Connection, parsed: list[Row]) -> None:
        s = self.summary
        # Which household each row means: its code, else the one already at its address, else one made from it.
        by_address = {
            r["address"]: r["code"]
            for r in await conn.fetch(
                """SELECT DISTINCT ON (address) address, code FROM households WHERE address = ANY($1::text[])
                   ORDER BY address, registered_at""",
                sorted({r.address for r in parsed}),
            )
        }
        for r in parsed:
            r.code = r.code or by_address.get(r.address) or derived_code(r.address)
        by_code = {
            r["code"]: r["address"]
            for r in await conn.fetch(
                "SELECT code, address FROM households WHERE code = ANY($1::text[])", sorted({r.code for r in parsed})
            )
        }
        made: dict[str, Row] = {}
        ok: list[Row] = []
        for r in parsed:
            known = by_code.get(r.code) or (made[r.code].address if r.code in made else None)
            if known is not None and known != r.address:
                s.error(r.number, "household_code", f"household {r.code} is registered at another address")
                continue
            if r.code not in by_code:
                made.setdefault(r.code, r)
            ok.append(r)
        new_households = await self._households(conn, list(made.values()))
        s.households_new += len(new_households)
        people = [r for r in ok if r.person is not None]
        seen: dict[str, int] = {}
        open_ = {
            r["person_id"]: r["household_code"]
            for r in await conn.fetch(
                """SELECT person_id, household_code FROM residencies
                   WHERE person_id = ANY($1::text[]) AND departed_at IS NULL""",
                [r.person["id"] for r in people],
            )
        }
        arriving: list[Row] = []
        for r in people:
            pid = r.person["id"]
            if pid in seen:
                s.error(r.number, "id_number", f"the same person as row {seen[pid]}")
                continue
            seen[pid] = r.number
            where = open_.get(pid)
            if where == r.code:
                continue
            if where is not None:
                s.error(r.number, "id_number", f"the person is resident in household {where}: submit a move")
                continue
            arriving.append(r)
        unchanged_households = {r.code for r in ok} - set(new_households)
        s.unchanged += sum(
            1
            for r in ok
            if r.code in unchanged_households and (r.person is None or open_.get(r.person["id"]) == r.code)
        )
        s.persons_new += await self._persons(conn, arriving)
        arrived = await self._residencies(conn, arriving)
        s.residencies_new += len(arrived)
        chunk = s.chunks
        if new_households:
            data = HouseholdsImported(import_id=s.import_id, chunk=chunk, households=list(new_households.values()))
            await emit(
                conn, data, id=derived_id("households.imported", s.import_id, str(chunk)), key=None, time=self.now
            )
        if arrived:
            data = ResidentsImported(import_id=s.import_id, chunk=chunk, arrivals=arrived)
            await emit(
                conn, data, id=derived_id("residents.imported", s.import_id, str(chunk)), key=None, time=self.now
            )

    async def _households(self, conn, rows_: list[Row]) -> dict[str, HouseholdRegistered]:
        if not rows_:
            return {}
        houses = [derived_id("house", r.address) for r in rows_]
        await conn.execute(
            """INSERT INTO houses (id, address, building, unit, floor, room, use, grid, registered_at)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                    $7::text[], $8::text[], $9::timestamptz[])
               ON CONFLICT DO NOTHING""",
            houses,
            [r.address for r in rows_],
            *[[r.house[i] for r in rows_] for i in range(5)],
            [r.grid for r in rows_],
            [self.now] * len(rows_),
        )
        inserted = await conn.fetch(
            """INSERT INTO households (code, address, grid, beat, registered_at, registered_by, house_id)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                                    $7::text[])
               ON CONFLICT DO NOTHING RETURNING code""",
            [r.code for r in rows_],
            [r.address for r in rows_],
            [r.grid for r in rows_],
            [r.beat for r in rows_],
            [self.now] * len(rows_),
            [self.actor] * len(rows_),
            houses,
        )
        new = {r["code"] for r in inserted}
        out = {}
        for r, house_id in zip(rows_, houses, strict=True):
            if r.code in new:
                out[r.code] = HouseholdRegistered(
                    code=r.code,
                    address=r.address,
                    grid=r.grid,
                    beat=r.beat,
                    registered_at=self.now,
                    house_id=house_id,
                    house_use=r.house[4],
                )
        await self._history(conn, [(c, "household", c, "registered", h.model_dump_json()) for c, h in out.items()])
        return out

    async def _persons(self, conn, rows_: list[Row]) -> int:
        if not rows_:
            return 0
        p = [r.person for r in rows_]
        inserted = await conn.fetch(
            """INSERT INTO persons (id, name, id_hash, id_number, phone_hash, phone, birth_date, sex, registered_at)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::jsonb[],
                                    $7::date[], $8::text[], $9::timestamptz[])
               ON CONFLICT DO NOTHING RETURNING id""",
            [x["id"] for x in p],
            [x["name"] for x in p],
            [x["id_number"].hash for x in p],
            [x["id_number"].model_dump() for x in p],
            [x["phone"].hash if x["phone"] else None for x in p],
            [x["phone"].model_dump() if x["phone"] else None for x in p],
            [x["birth_date"] for x in p],
            [x["sex"] for x in p],
            [self.now] * len(p),
        )
        return len(inserted)

    async def _residencies(self, conn, rows_: list[Row]) -> list[ResidentArrived]:
        if not rows_:
            return []
        ids = [derived_id("imported residency", r.person["id"], r.code) for r in rows_]
        inserted = await conn.fetch(
            """INSERT INTO residencies (id, person_id, household_code, kind, arrived_at, expected_end,
                                        arrival_submission)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                                    $6::timestamptz[], $7::text[])
               ON CONFLICT DO NOTHING RETURNING id""",
            ids,
            [r.person["id"] for r in rows_],
            [r.code for r in rows_],
            [r.person["kind"] for r in rows_],
            [r.person["arrived_at"] for r in rows_],
            [r.person["expected_end"] for r in rows_],
            [self.summary.import_id] * len(rows_),
        )
        new = {r["id"] for r in inserted}
        houses = {
            r["code"]: r
            for r in await conn.fetch(
                "SELECT code, house_id FROM households WHERE code = ANY($1::text[])", sorted({r.code for r in rows_})
            )
        }
        out, timers_, versions = [], [], []
        for r, rid in zip(rows_, ids, strict=True):
            if rid not in new:
                continue
            p = r.person
            out.append(
                ResidentArrived(
                    residency_id=rid,
                    person_id=p["id"],
                    id_hash=p["id_number"].hash,
                    household_code=r.code,
                    house_id=houses[r.code]["house_id"],
                    grid=r.grid,
                    beat=r.beat,
                    kind=ResidencyKind(p["kind"]),
                    arrived_at=p["arrived_at"],
                    expected_end=p["expected_end"],
                    submission_id=self.summary.import_id,
                    record_index=r.number,
                )
            )
            if p["expected_end"] is not None:
                timers_.append((EXPIRY, rid, p["expected_end"]))
            data = {"person_id": p["id"], "kind": p["kind"], "arrived_at": p["arrived_at"].isoformat(), "row": r.number}
            versions.append((r.code, "residency", rid, "arrived", orjson.dumps(data).decode()))
        if timers_:
            await conn.executemany(
                "INSERT INTO timers (kind, ref, due_at, payload) VALUES ($1, $2, $3, '{}') ON CONFLICT DO NOTHING",
                timers_,
            )
        await self._history(conn, versions)
        return out

    async def _history(self, conn, versions: list[tuple]) -> None:
        if not versions:
            return
        await conn.execute(
            """INSERT INTO history (household_code, entity, entity_id, action, data, actor, submission_id, at)
               SELECT h, e, i, a, d::jsonb, $6, $7, $8 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                                             $5::text[]) AS v(h, e, i, a, d)
               ON CONFLICT DO NOTHING""",
            *[[v[k] for v in versions] for k in range(5)],
            self.actor,
            self.summary.import_id,
            self.now,
        )
