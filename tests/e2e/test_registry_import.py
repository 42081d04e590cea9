"""Bulk import through the gateway: CSV in UTF-8 or GBK, streamed; valid rows applied, each invalid row reported
with its row number, column and reason (personal data masked); the same file again changes nothing."""

from __future__ import annotations

import itertools
import uuid

import orjson

from jinshui.registry import imports

from .test_registry_residents import LI, ZHANG, id_number, registry  # noqa: F401  (registry is a fixture)

WANG = id_number("37050219700505301")


def csv_of(rows: list[str]) -> str:
    return "\n".join(["地址,网格,户码,楼号,姓名,身份证号,电话,类别,到达日期,预计离开日期", *rows]) + "\n"


async def post(client, text: bytes, **params) -> tuple[dict, list[dict]]:
    headers = client.auth("community_admin", "admin-1", **{"Content-Type": "text/csv"})
    r = await client.post("/v1/imports", content=text, headers=headers, params=params)
    assert r.status_code == 200, r.text
    summary, *errors = [orjson.loads(line) for line in r.content.splitlines()]
    return summary, errors


async def test_a_gbk_file_is_imported_once_with_its_bad_rows_named(registry):  # noqa: F811
    bad_number = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")
    text = csv_of(
        [
            f"金水小区7号楼101,G01,,7,张伟,{ZHANG},13812345678,流动,2026-01-05,2027-01-05",
            f"金水小区7号楼101,G01,,7,李娜,{LI},,常住,,",
            "金水小区7号楼102,G01,,7,,,,,,",
            f"金水小区7号楼103,G09,,7,王强,{WANG},,,,",
            f"金水小区7号楼104,G01,,7,赵六,{bad_number},,,,",
            f"金水小区7号楼105,G01,,7,赵七,{WANG},139,,,",
            f"金水小区7号楼106,G01,,7,孙八,{WANG},,火星,,",
        ]
    ).encode("gbk")
    summary, errors = await post(registry, text)
    assert summary["encoding"] == "gbk" and summary["rows"] == 7
    assert (summary["households_new"], summary["persons_new"], summary["residencies_new"]) == (2, 2, 2)
    assert summary["rejected"] == 4 and summary["applied"] == 3
    assert [(e["row"], e["column"]) for e in errors] == [
        (5, "grid"),
        (6, "id_number"),
        (7, "phone"),
        (8, "kind"),
    ]
    assert errors[0]["reason"] == "unknown grid G09" and "check digit" in errors[1]["reason"]
    assert bad_number not in r_text(errors) and ZHANG not in r_text(errors)

    found = await registry.ok("POST", "/v1/persons/search", role="police", json={"address": "7号楼101"})
    assert sorted(p["name"] for p in found["persons"]) == ["张伟", "李娜"]
    code = found["persons"][0]["household_code"]
    card = await registry.ok("GET", f"/v1/households/{code}", role="police")
    zhang = next(r for r in card["residents"] if r["name"] == "张伟")
    assert zhang["kind"] == "floating" and zhang["phone"] == "138****5678" and zhang["expected_end"]

    # The same file again (now as UTF-8) changes nothing and says no event.
    before = len(await registry.stream_messages("REGISTRY"))
    again, errors = await post(registry, text.decode("gbk").encode("utf-8"))
    assert again["encoding"] == "utf-8" and len(errors) == 4
    assert (again["households_new"], again["persons_new"], again["residencies_new"]) == (0, 0, 0)
    assert again["unchanged"] == 3 and again["applied"] == 0
    assert len(await registry.stream_messages("REGISTRY")) == before

    # Events go per chunk, with the households' grid and beat and no personal data in clear.
    [households] = await registry.events("household.imported.v1")
    assert {h["address"]: (h["grid"], h["beat"]) for h in households["data"]["households"]} == {
        "金水小区7号楼101": ("G01", "B1"),
        "金水小区7号楼102": ("G01", "B1"),
    }
    [residents] = await registry.events("resident.imported.v1")
    assert sorted(a["record_index"] for a in residents["data"]["arrivals"]) == [2, 3]
    for _, data in await registry.stream_messages("REGISTRY"):
        assert ZHANG.encode() not in data and b"13812345678" not in data


def r_text(errors: list[dict]) -> str:
    return orjson.dumps(errors).decode()


async def test_a_file_without_the_required_columns_is_refused_whole(registry):  # noqa: F811
    headers = registry.auth("community_admin", **{"Content-Type": "text/csv"})
    r = await registry.post("/v1/imports", content="姓名,身份证号\n张伟,x\n".encode(), headers=headers)
    assert r.status_code == 422 and "address, grid" in r.json()["detail"]
    r = await registry.post(
        "/v1/imports", content=b"a,b\n", headers=registry.auth("grid_worker", **{"Content-Type": "text/csv"})
    )
    assert r.status_code == 403


async def test_a_file_of_several_chunks_is_applied_whole_with_its_bad_rows_in_order(registry):  # noqa: F811
    # 2,600 person rows: the first chunk is parsed in place, the others in the worker process while the one before
    # is applied; bad rows sit in the second and third chunks and come back in row order.
    lines, bad = [], {}
    for i in range(2600):
        number = id_number(f"3705{i // 1000:02d}{1950 + i % 50}0101{i % 1000:03d}")
        if i in (1500, 2100):
            number = number[:-1] + ("0" if number[-1] != "0" else "1")
            bad[i + 2] = "id_number"  # the header is row 1
        grid = "G01" if i != 1801 else "G77"
        if i == 1801:
            bad[i + 2] = "grid"
        lines.append(f"金水小区9号楼{i // 4},{grid},,9,居民{i},{number},,常住,2025-01-01,")
    numbers = {line.split(",")[5] for line in lines}
    assert len(numbers) == 2600  # distinct persons
    text = csv_of(lines).encode()
    summary, errors = await post(registry, text)
    assert summary["rows"] == 2600 and summary["chunks"] == 3
    assert [(e["row"], e["column"]) for e in errors] == sorted(bad.items())
    assert summary["persons_new"] == summary["residencies_new"] == 2597
    assert summary["households_new"] == 650
    arrivals = [a for e in await registry.events("resident.imported.v1") for a in e["data"]["arrivals"]]
    assert len(arrivals) == 2597 and len({a["person_id"] for a in arrivals}) == 2597

    again, errors = await post(registry, text)
    assert again["unchanged"] == 2597 and again["applied"] == 0 and len(errors) == 3


async def test_chunks_end_with_a_household_and_rows_of_one_household_in_several_chunks_count_once(registry):  # noqa: F811
    # Chunks are applied several at a time. A file not sorted by household spreads each household (and here one
    # person twice) over several chunks: they must still count and tell each household and residency once, and
    # the later row of a person must be the one refused, as when chunks are applied one after the other.
    lines = []
    for i in range(3600):
        number = id_number(f"3706{i // 1000:02d}{1950 + i % 50}0101{i % 1000:03d}")
        lines.append([f"金水小区11号楼{i % 900}", "G01", "", "11", f"居民{i}", number, "", "常住", "2025-01-01", ""])
    lines[3100][5] = lines[100][5]  # the same person in another household, three chunks later: refused
    lines[3201][5] = lines[1401][5]  # the same person in the same household, two chunks later: unchanged
    text = csv_of([",".join(line) for line in lines]).encode()
    summary, errors = await post(registry, text)
    assert summary["rows"] == 3600 and summary["chunks"] >= 4
    assert [(e["row"], e["column"]) for e in errors] == [(3102, "id_number")]
    assert "submit a move" in errors[0]["reason"]
    assert (summary["households_new"], summary["persons_new"], summary["residencies_new"]) == (900, 3598, 3598)
    assert summary["unchanged"] == 1 and summary["applied"] == 3598

    households = await registry.events("household.imported.v1")
    codes = [h["code"] for e in households for h in e["data"]["households"]]
    assert len(codes) == len(set(codes)) == 900
    residents = await registry.events("resident.imported.v1")
    arrivals = [a for e in residents for a in e["data"]["arrivals"]]
    assert len(arrivals) == len({a["residency_id"] for a in arrivals}) == 3598
    assert sorted(a["record_index"] for a in arrivals) == [i + 2 for i in range(3600) if i not in (3100, 3201)]
    chunks = [e["data"]["chunk"] for e in households + residents]
    assert len(chunks) == len({(e["type"], e["data"]["chunk"]) for e in households + residents})
    assert max(chunks) < summary["chunks"]

    before = len(await registry.stream_messages("REGISTRY"))
    again, errors = await post(registry, text)
    assert (again["households_new"], again["persons_new"], again["residencies_new"]) == (0, 0, 0)
    assert again["unchanged"] == 3599 and [e["row"] for e in errors] == [3102]
    assert len(await registry.stream_messages("REGISTRY")) == before


async def test_the_reader_ends_a_chunk_before_a_household_it_would_split() -> None:
    # 3 rows per household: 1,000 rows would end inside household 333, so the first chunk stops at 999 rows.
    header = "地址,网格,姓名\n"
    body = "".join(f"金水小区12号楼{i // 3},G01,居民{i}\n" for i in range(2500))

    async def lines():
        for line in (header + body).splitlines(keepends=True):
            yield line

    chunks = [chunk async for chunk in imports.rows(lines())]
    assert [len(c) for c in chunks] == [999, 999, 502]
    for before, after in itertools.pairwise(chunks):
        assert before[-1][1]["address"] != after[0][1]["address"]
    assert [n for c in chunks for n, _ in c] == list(range(2, 2502))

    # A chunk of one address only is cut where it is.
    async def one_address():
        yield header
        for i in range(1500):
            yield f"金水小区12号楼0,G01,居民{i}\n"

    assert [len(c) async for c in imports.rows(one_address())] == [1000, 500]


def test_what_the_importer_writes_by_hand_is_what_the_contracts_would() -> None:
    # The importer makes its events' data and derived ids without pydantic models or UUID objects (millions of
    # rows): they must stay what the models and derived_id make.
    from datetime import UTC, datetime

    from jinshui.contracts.registry import HouseholdRegistered, ResidentArrived
    from jinshui.kit.pii import Keyring, Protected
    from jinshui.registry.outbox import NS, derived_id

    for parts in [("person", "h1:0af3"), ("house", "金水小区1号楼101室"), ("imported residency", "p", "Q7")]:
        assert derived_id(*parts) == str(uuid.uuid5(NS, ":".join(parts)))
    keyring = Keyring.generate()
    sealed = keyring.seal_fields("phone", "13812345678")
    assert Protected.model_validate(sealed).model_dump() == sealed and keyring.reveal(Protected(**sealed))

    now = datetime(2026, 11, 27, 7, 30, 1, 123456, tzinfo=UTC)
    parser = imports.Parser(keyring=keyring, grids={"G01": "B1"}, now=now)
    header = ["address", "grid", "house_use", "name", "id_number", "phone", "kind", "arrived_at", "expected_end"]
    line = f"金水小区7号楼101,G01,出租,张伟,{ZHANG},13812345678,流动,2026-01-05,2027-01-05T08:00:00\n"
    [row], errors = parser.lines(header, [(2, line)])
    assert not errors
    row.code = row.derived
    importer = imports.Importer(pool=None, keyring=keyring, actor="admin-1", now=now)  # type: ignore[arg-type]
    registered = importer._registered(row)
    assert HouseholdRegistered.model_validate(registered).model_dump(mode="json") == registered
    arrived = importer._arrived(row, row.house_id)
    assert ResidentArrived.model_validate(arrived).model_dump(mode="json") == arrived
    assert arrived["arrived_at"] == "2026-01-05T00:00:00+08:00" and arrived["kind"] == "floating"
    assert registered["registered_at"] == "2026-11-27T07:30:01.123456Z" and registered["house_use"] == "let"
