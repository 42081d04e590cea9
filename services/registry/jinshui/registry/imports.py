"""Bulk import of households, persons and residencies from CSV (UTF-8, or GBK as Chinese spreadsheets export).

Streaming: the body is read, parsed (in worker processes) and applied a few chunks of rows at a time (see
Importer), so a million rows need no more memory than a few; the rows' errors are spooled to a temporary file and
sent back after the summary, in row order within a chunk. Valid rows are applied;
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
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time
from typing import Any

import asyncpg
import orjson
from pydantic_core import to_jsonable_python

from jinshui.contracts.envelope import new_event
from jinshui.contracts.events import TYPE_OF
from jinshui.contracts.registry import (
    HouseholdsImported,
    HouseUse,
    ResidencyKind,
    ResidentsImported,
)
from jinshui.kit import outbox
from jinshui.kit.pii import Keyring, PersonalDataError, normalize_id_number, normalize_phone
from jinshui.registry import codes
from jinshui.registry.handlers import EXPIRY
from jinshui.registry.outbox import SOURCE, SUBJECT_OF, derived_id
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
KINDS = {
    "常住": "permanent",
    "户籍": "permanent",
    "流动": "floating",
    "租住": "tenant",
    "租户": "tenant",
}
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


async def chunks(
    lines: AsyncIterator[str],
) -> AsyncIterator[tuple[list[str], list[tuple[int, str]]]]:
    """The header (column names) and chunks of (row number as a spreadsheet shows it, the line); the header is row
    1, blank rows are left out. A chunk has at most CHUNK rows and ends, where it can, with the last row of a
    household (rows of one address in a row). Lines are split into values by `values` (in the parsing workers)."""
    header: list[str] | None = None
    chunk: list[tuple[int, str]] = []
    number = at = 0
    async for line in lines:
        number += 1
        if header is None:
            [values] = list(csv.reader([line])) or [[]]
            header = [ALIASES.get(v.strip().lstrip("\ufeff"), "") for v in values]
            missing = {"address", "grid"} - set(header)
            if missing:
                raise ImportError_(f"the header lacks the column(s) {', '.join(sorted(missing))}")
            unknown = [v for v, h in zip(values, header, strict=True) if not h]
            if unknown:
                raise ImportError_(f"unknown column(s) {', '.join(unknown)} (known: {', '.join(COLUMNS)})")
            at = header.index("address")
            continue
        if '"' in line:
            if not any(v.strip() for v in values(line)):
                continue
        elif not line.replace(",", "").strip():
            continue
        chunk.append((number, line))
        if len(chunk) >= CHUNK:
            # Cut before the last household's rows (they go with the next chunk), so that chunks applied at once
            # seldom share a household; a chunk of one address only is cut where it is.
            cut = len(chunk) - 1
            last = _value(chunk[cut][1], at)
            while cut > 0 and _value(chunk[cut - 1][1], at) == last:
                cut -= 1
            cut = cut or len(chunk)
            yield header, chunk[:cut]
            chunk = chunk[cut:]
    if chunk:
        assert header is not None
        yield header, chunk


def values(line: str) -> list[str]:
    """A line's values as `csv` reads them (a line without quotes is split at its commas)."""
    if '"' in line:
        return next(csv.reader([line]), [])
    return line.split(",")


def _value(line: str, at: int) -> str:
    v = values(line)
    return v[at].strip() if at < len(v) else ""


def as_rows(header: list[str], chunk: list[tuple[int, str]]) -> list[tuple[int, dict[str, str]]]:
    return [(n, {h: v.strip() for h, v in zip(header, values(line), strict=False)}) for n, line in chunk]


async def rows(
    lines: AsyncIterator[str],
) -> AsyncIterator[list[tuple[int, dict[str, str]]]]:
    """Chunks (as `chunks` makes them) of (row number, the row by column name)."""
    async for header, chunk in chunks(lines):
        yield as_rows(header, chunk)


def _when(text: str) -> datetime:
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(0), tzinfo=SHANGHAI)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=SHANGHAI)


@dataclass
class Person:
    """A row's person as the parser (a worker process) makes it: the ids derived, the times as events write them,
    and what only the database needs (the name, the sealed ID number and phone, the history entry...) already as
    a JSON object, so that passing it on costs next to nothing."""

    id: str
    id_hash: str
    kind: str
    arrived_json: str  # arrived_at and expected_end as in events
    ends_json: str | None
    stored: bytes  # the JSON object of the columns, without the household's code and the residency's id
    residency_id: str = ""  # for the household code the parser chose; made again if the database says another
    code: str = ""  # the household, once known

    def __reduce__(self):  # pickled as a tuple of its fields: half the cost of a dataclass's dict
        return Person, astuple_shallow(self)

    def as_json(self) -> bytes:
        return b'{"code":%b,"residency_id":%b,%b' % (
            orjson.dumps(self.code),
            orjson.dumps(self.residency_id),
            self.stored[1:],
        )


@dataclass
class Row:
    number: int
    code: str  # the code given in the file ("" when none)
    address: str
    grid: str
    beat: str
    house: tuple
    person: Person | None = None
    derived: str = ""  # the code made from the address (when no code is given)
    house_id: str = ""

    def __reduce__(self):
        return Row, astuple_shallow(self)

    @property
    def candidate(self) -> str:
        return self.code or self.derived


def astuple_shallow(obj) -> tuple:
    return tuple(getattr(obj, f.name) for f in fields(obj))


def residency_id(person_id: str, code: str) -> str:
    return derived_id("imported residency", person_id, code)


def _json_time(moment: datetime, cache: dict[datetime, str]) -> str:
    """A time as pydantic writes it in an event."""
    text = cache.get(moment)
    if text is None:
        text = cache[moment] = to_jsonable_python(moment)
    return text


@dataclass
class Parser:
    """Rows of text to Rows ready to apply: pure (no database), so that a worker process can run it."""

    keyring: Keyring
    grids: dict[str, str | None]
    now: datetime
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    _times: dict[datetime, str] = field(default_factory=dict)
    _addresses: dict[str, tuple[str, str]] = field(default_factory=dict)

    def bad(self, row: int, column: str, reason: str) -> None:
        self.errors.append((row, column, reason))

    def chunk(self, chunk: list[tuple[int, dict[str, str]]]) -> tuple[list[Row], list[tuple[int, str, str]]]:
        self.errors = []
        self._addresses = {}
        return [r for r in (self.row(n, raw) for n, raw in chunk) if r is not None], self.errors

    def lines(self, header: list[str], chunk: list[tuple[int, str]]) -> tuple[list[Row], list[tuple[int, str, str]]]:
        return self.chunk(as_rows(header, chunk))

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
            return bad(
                number,
                "household_code",
                "not a household code (letters and digits, at most 32)",
            )
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
        if name or number_text:
            if not name or len(name) > 64:
                return bad(number, "name", "required with an ID number (at most 64 characters)")
            try:
                normal = normalize_id_number(number_text)
                id_number = self.keyring.seal_fields("id_number", normal)
                phone_text = raw.get("phone")
                phone = self.keyring.seal_fields("phone", normalize_phone(phone_text)) if phone_text else None
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
            person_id = derived_id("person", id_number["hash"])
            history = {"person_id": person_id, "kind": kind, "arrived_at": arrived.isoformat(), "row": number}
            stored = {
                "id": person_id,
                "name": name,
                "id_hash": id_number["hash"],
                "id_number": id_number,
                "phone_hash": phone["hash"] if phone else None,
                "phone": phone,
                "birth_date": date(int(normal[6:10]), int(normal[10:12]), int(normal[12:14])),
                "sex": "male" if int(normal[16]) % 2 else "female",
                "kind": kind,
                "arrived_at": arrived,
                "expected_end": ends,
                "history": history,
            }
            row.person = Person(
                id=person_id,
                id_hash=id_number["hash"],
                kind=kind,
                arrived_json=_json_time(arrived, self._times),
                ends_json=_json_time(ends, self._times) if ends is not None else None,
                stored=orjson.dumps(stored),
            )
        # The derived ids (hashes) are made here too, off the event loop; once per address.
        made = self._addresses.get(address)
        if made is None:
            made = self._addresses[address] = (
                derived_code(address),
                derived_id("house", address),
            )
        row.derived = "" if code else made[0]
        row.house_id = made[1]
        if row.person is not None:
            row.person.residency_id = residency_id(row.person.id, row.candidate)
        return row


_worker: Parser | None = None


def _start_worker(keys: str, grids: dict[str, str | None], now: datetime) -> None:
    global _worker
    _worker = Parser(keyring=Keyring.from_json(keys), grids=grids, now=now)


def _parse_in_worker(header: list[str], chunk: list[tuple[int, str]]) -> tuple[list[Row], list[tuple[int, str, str]]]:
    assert _worker is not None
    return _worker.lines(header, chunk)


def _keys(parsed: list[Row]) -> set[str]:
    """What a chunk's rows may touch that another chunk's may too: addresses, household codes, persons."""
    keys = set()
    for r in parsed:
        keys.add("a:" + r.address)
        keys.add("c:" + r.candidate)
        if r.person is not None:
            keys.add("p:" + r.person.id)
    return keys


class Importer:
    """Chunks are parsed (validated, ID numbers and phones sealed, ids derived) in worker processes and applied
    CONCURRENCY at a time, each in its own transaction on its own connection. A chunk that shares an address, a
    household code or a person with a chunk still being applied waits for that one to commit first, so every
    chunk sees what the file's earlier rows made, as when chunks are applied one after the other (the reader
    cuts chunks at household boundaries, so in a file sorted by household that seldom happens). The rejected
    rows are reported in chunk order; events are numbered by the chunk's place in the file. The first chunk is
    parsed in place (a file of one chunk starts no process)."""

    CONCURRENCY = 3
    WORKERS = 2

    def __init__(self, *, pool: asyncpg.Pool, keyring: Keyring, actor: str, now: datetime) -> None:
        self.pool, self.keyring, self.actor, self.now = pool, keyring, actor, now
        self.summary = Summary(
            import_id=str(uuid.uuid4()),
            errors=tempfile.SpooledTemporaryFile(max_size=1 << 20),
        )
        self.grids: dict[str, str | None] = {}
        self._now_json = to_jsonable_python(now)
        self._inflight: dict[int, tuple[set[str], asyncio.Task]] = {}
        self._done: dict[int, list[tuple[int, str, str]]] = {}
        self._flushed = 0

    async def run(self, stream: AsyncIterator[bytes], encoding: str) -> Summary:
        async with self.pool.acquire() as conn:
            self.grids = {
                r["code"]: r["beat"]
                for r in await conn.fetch("SELECT g.code, c.beat FROM grids g LEFT JOIN coverage c ON c.grid = g.code")
            }
        parser = Parser(keyring=self.keyring, grids=self.grids, now=self.now)
        loop = asyncio.get_running_loop()
        workers: ProcessPoolExecutor | None = None
        parsing: deque[asyncio.Future] = deque()
        try:
            try:
                async for header, chunk in chunks(decoded_lines(stream, encoding, self.summary)):
                    self.summary.rows += len(chunk)
                    if not parsing and self.summary.chunks == 0 and not self._inflight:
                        first = loop.create_future()
                        first.set_result(parser.lines(header, chunk))
                        parsing.append(first)
                        continue
                    if workers is None:
                        workers = ProcessPoolExecutor(
                            self.WORKERS,
                            mp_context=multiprocessing.get_context("spawn"),
                            initializer=_start_worker,
                            initargs=(self.keyring.to_json(), self.grids, self.now),
                        )
                    parsing.append(loop.run_in_executor(workers, _parse_in_worker, header, chunk))
                    while len(parsing) > self.WORKERS or (parsing and parsing[0].done()):
                        await self._dispatch(await parsing.popleft())
            except UnicodeDecodeError as e:
                if not self.summary.chunks and not self.summary.rows:
                    raise ImportError_(
                        f"the file is not {self.summary.encoding or encoding} text: {e.reason}"
                    ) from None
                self.summary.stopped = f"stopped after row {self.summary.rows + 1}: not {self.summary.encoding} text"
            while parsing:  # the chunks read (or those before the text went wrong)
                await self._dispatch(await parsing.popleft())
            while self._inflight:
                await self._settle(next(iter(self._inflight.values()))[1])
        finally:
            for f in parsing:
                f.cancel()
            for _, task in self._inflight.values():
                task.cancel()
            if self._inflight:
                await asyncio.gather(*(t for _, t in self._inflight.values()), return_exceptions=True)
            if workers is not None:
                workers.shutdown(cancel_futures=True)
        return self.summary

    async def _dispatch(self, result: tuple[list[Row], list[tuple[int, str, str]]]) -> None:
        """Start applying the next chunk, once fewer than CONCURRENCY are being applied."""
        while len(self._inflight) >= self.CONCURRENCY:
            done, _ = await asyncio.wait(
                [t for _, t in self._inflight.values()],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                await self._settle(task)
        parsed, errors = result
        index = self.summary.chunks
        self.summary.chunks += 1
        keys = _keys(parsed)
        after = [task for k, task in self._inflight.values() if not k.isdisjoint(keys)]
        task = asyncio.create_task(self._apply_chunk(index, parsed, errors, after))
        self._inflight[index] = (keys, task)

    async def _settle(self, task: asyncio.Task) -> None:
        """Take a finished chunk's rejections (raising its error, if any) and write those due in chunk order."""
        index, errors = await task
        self._inflight.pop(index, None)
        self._done[index] = errors
        while self._flushed in self._done:
            for number, column, reason in self._done.pop(self._flushed):
                self.summary.error(number, column, reason)
            self._flushed += 1

    async def _apply_chunk(
        self,
        index: int,
        parsed: list[Row],
        errors: list[tuple[int, str, str]],
        after: list[asyncio.Task],
    ) -> tuple[int, list[tuple[int, str, str]]]:
        if after:
            await asyncio.wait(after)
        errors = list(errors)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._apply(conn, index, parsed, errors)
        errors.sort(key=lambda e: e[0])
        return index, errors

    async def _apply(self, conn: asyncpg.Connection, index: int, parsed: list[Row], errors: list) -> None:
        s = self.summary
        # What the database has already: the households at the rows' addresses or codes, the persons' residencies.
        found = await conn.fetch(
            """SELECT 0 AS t, code AS a, address AS b, house_id AS c, registered_at AS at FROM households
                WHERE address = ANY(ARRAY(SELECT json_array_elements_text($1::json)))
                   OR code = ANY(ARRAY(SELECT json_array_elements_text($2::json)))
               UNION ALL
               SELECT 1, person_id, household_code, NULL, NULL FROM residencies
                WHERE person_id = ANY(ARRAY(SELECT json_array_elements_text($3::json))) AND departed_at IS NULL
               ORDER BY 1, 5, 2""",
            list({r.address for r in parsed}),
            list({r.candidate for r in parsed}),
            [r.person.id for r in parsed if r.person is not None],
        )
        by_address: dict[str, str] = {}
        by_code: dict[str, tuple[str, str | None]] = {}
        open_: dict[str, str] = {}
        for t, a, b, c, _ in found:
            if t == 0:
                by_address.setdefault(b, a)
                by_code[a] = (b, c)
            else:
                open_[a] = b
        # Which household each row means: its code, else the one already at its address, else one made from it.
        for r in parsed:
            if not r.code:
                r.code = by_address.get(r.address) or r.derived
                if r.code != r.derived and r.person is not None:
                    r.person.residency_id = residency_id(r.person.id, r.code)
        made: dict[str, Row] = {}
        ok: list[Row] = []
        for r in parsed:
            known = by_code[r.code][0] if r.code in by_code else (made[r.code].address if r.code in made else None)
            if known is not None and known != r.address:
                errors.append(
                    (
                        r.number,
                        "household_code",
                        f"household {r.code} is registered at another address",
                    )
                )
                continue
            if r.code not in by_code:
                made.setdefault(r.code, r)
            ok.append(r)
        seen: dict[str, int] = {}
        arriving: list[Person] = []
        for r in ok:
            p = r.person
            if p is None:
                continue
            if p.id in seen:
                errors.append((r.number, "id_number", f"the same person as row {seen[p.id]}"))
                continue
            seen[p.id] = r.number
            where = open_.get(p.id)
            if where == r.code:
                continue
            if where is not None:
                errors.append(
                    (
                        r.number,
                        "id_number",
                        f"the person is resident in household {where}: submit a move",
                    )
                )
                continue
            p.code = r.code
            arriving.append(p)
        households = {r.code: self._registered(r) for r in made.values()}
        new_codes, new_residencies, persons_new = await self._write(conn, list(made.values()), households, arriving)
        s.households_new += len(new_codes)
        s.persons_new += persons_new
        s.residencies_new += len(new_residencies)
        s.unchanged += sum(
            1 for r in ok if r.code not in new_codes and (r.person is None or open_.get(r.person.id) == r.code)
        )
        events = []
        if new_codes:
            data = {
                "import_id": s.import_id,
                "chunk": index,
                "households": [h for code, h in households.items() if code in new_codes],
            }
            id_ = derived_id("households.imported", s.import_id, str(index))
            events.append(self._event(HouseholdsImported, data, id_))
        if new_residencies:
            arrivals = [
                self._arrived(r, by_code[r.code][1] if r.code in by_code else r.house_id)
                for r in ok
                if r.person is not None and r.person.residency_id in new_residencies and r.person.code
            ]
            data = {"import_id": s.import_id, "chunk": index, "arrivals": arrivals}
            id_ = derived_id("residents.imported", s.import_id, str(index))
            events.append(self._event(ResidentsImported, data, id_))
        if events:
            await outbox.add_many(conn, events)

    def _event(self, contract: type, data: dict, id_: str):
        """The event of a HouseholdsImported or ResidentsImported made as a dict (as its model_dump would be)."""
        return new_event(id=id_, type=TYPE_OF[contract], source=SOURCE, time=self.now, data=data), SUBJECT_OF[contract]

    def _registered(self, r: Row) -> dict:
        """HouseholdRegistered, as its model_dump(mode="json") is."""
        return {
            "code": r.code,
            "address": r.address,
            "grid": r.grid,
            "beat": r.beat,
            "registered_at": self._now_json,
            "house_id": r.house_id,
            "house_use": r.house[4],
        }

    def _arrived(self, r: Row, house_id: str | None) -> dict:
        """ResidentArrived, as its model_dump(mode="json") is."""
        p = r.person
        assert p is not None
        return {
            "residency_id": p.residency_id,
            "person_id": p.id,
            "id_hash": p.id_hash,
            "household_code": r.code,
            "house_id": house_id,
            "grid": r.grid,
            "beat": r.beat,
            "kind": p.kind,
            "arrived_at": p.arrived_json,
            "expected_end": p.ends_json,
            "submission_id": self.summary.import_id,
            "record_index": r.number,
            "move_id": None,
        }

    async def _write(
        self, conn, made: list[Row], households: dict[str, dict], arriving: list[Person]
    ) -> tuple[set[str], set[str], int]:
        """One statement: the houses and households new to the registry with their history, the persons, their
        residencies with their expiry timers and history; returns the codes and residency ids it made, and how many
        persons. What is there already is left alone (ON CONFLICT DO NOTHING)."""
        if not made and not arriving:
            return set(), set(), 0
        hin = [
            {
                "code": r.code,
                "address": r.address,
                "grid": r.grid,
                "beat": r.beat,
                "house_id": r.house_id,
                "building": r.house[0],
                "unit": r.house[1],
                "floor": r.house[2],
                "room": r.house[3],
                "use": r.house[4],
                "data": households[r.code],
            }
            for r in made
        ]
        got = await conn.fetchrow(
            """WITH hin AS (
                   SELECT * FROM json_to_recordset($1::json)
                       AS t(code text, address text, grid text, beat text, house_id text, building text, unit text,
                            floor text, room text, use text, data jsonb)),
               houses_ AS (
                   INSERT INTO houses (id, address, building, unit, floor, room, use, grid, registered_at)
                   SELECT house_id, address, building, unit, floor, room, use, grid, $3 FROM hin
                   ON CONFLICT DO NOTHING),
               households_ AS (
                   INSERT INTO households (code, address, grid, beat, registered_at, registered_by, house_id)
                   SELECT code, address, grid, beat, $3, $4, house_id FROM hin
                   ON CONFLICT DO NOTHING RETURNING code),
               hhistory AS (
                   INSERT INTO history (household_code, entity, entity_id, action, data, actor, submission_id, at)
                   SELECT h.code, 'household', h.code, 'registered', hin.data, $4, $5, $3
                   FROM households_ h JOIN hin USING (code)
                   ON CONFLICT DO NOTHING),
               pin AS (
                   SELECT * FROM json_to_recordset($2::text::json)
                       AS t(id text, name text, id_hash text, id_number jsonb, phone_hash text, phone jsonb,
                            birth_date date, sex text, kind text, arrived_at timestamptz, expected_end timestamptz,
                            history jsonb, residency_id text, code text)),
               persons_ AS (
                   INSERT INTO persons (id, name, id_hash, id_number, phone_hash, phone, birth_date, sex, registered_at)
                   SELECT id, name, id_hash, id_number, phone_hash, phone, birth_date, sex, $3 FROM pin
                   ON CONFLICT DO NOTHING RETURNING id),
               residencies_ AS (
                   INSERT INTO residencies (id, person_id, household_code, kind, arrived_at, expected_end,
                                            arrival_submission)
                   SELECT residency_id, id, code, kind, arrived_at, expected_end, $5 FROM pin
                   ON CONFLICT DO NOTHING RETURNING id),
               timers_ AS (
                   INSERT INTO timers (kind, ref, due_at, payload)
                   SELECT $6, pin.residency_id, pin.expected_end, '{}'
                   FROM residencies_ r JOIN pin ON pin.residency_id = r.id
                   WHERE pin.expected_end IS NOT NULL
                   ON CONFLICT DO NOTHING),
               rhistory AS (
                   INSERT INTO history (household_code, entity, entity_id, action, data, actor, submission_id, at)
                   SELECT pin.code, 'residency', pin.residency_id, 'arrived', pin.history, $4, $5, $3
                   FROM residencies_ r JOIN pin ON pin.residency_id = r.id
                   ON CONFLICT DO NOTHING)
               SELECT (SELECT array_agg(code) FROM households_) AS households,
                      (SELECT array_agg(id) FROM residencies_) AS residencies,
                      (SELECT count(*) FROM persons_) AS persons""",
            hin,
            (b"[%b]" % b",".join(p.as_json() for p in arriving)).decode(),
            self.now,
            self.actor,
            self.summary.import_id,
            EXPIRY,
        )
        return (
            set(got["households"] or ()),
            set(got["residencies"] or ()),
            got["persons"],
        )
