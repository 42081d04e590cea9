"""`jinshui demo`: fill a running Jinshui with a community shaped like Jinshui's own, then replay a day of visits.

What the seed (../shared/mission/) tells of the community, at its scale: one police beat over 11 grids with a grid
worker each, about 3,000 households, about 15% of the residents floating, many lettings, restaurants, internet
cafés, shops and a market, tags at the rates a community keeps them (elderly living alone, disabled, families in
difficulty, and the sensitive few). Everything goes through the gateway as a user would send it: the areas as the
community admin sets them up, the households and residents as one bulk import, the lettings, tags and units as the
grid workers register them, and a day of visits as each grid worker's platform uploads them. The same seed gives
the same community; running it again changes nothing (409s for what is there, idempotency keys for the rest).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import orjson

from jinshui.cli.importer import _gateway_url
from jinshui.kit.pii import id_number_check_digit
from jinshui.registry.imports import derived_code

SHANGHAI = ZoneInfo("Asia/Shanghai")
GRIDS = 11
BEAT = "B1"
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国玉兰志红海燕鹏飞斌俊峰凤梅晓东"
# Tags a community keeps, per person or per household, at about these rates (标签化管理).
PERSON_TAGS = {
    "disabled": (0.015, "残疾人证在册"),
    "mental_illness": (0.003, "严重精神障碍患者在册"),
    "unstable_person": (0.002, "多次信访, 情绪不稳"),
    "community_correction": (0.001, "社区矫正对象"),
}
HOUSEHOLD_TAGS = {
    "elderly_alone": (0.04, "独居老人, 子女在外地"),
    "family_in_difficulty": (0.012, "低保户"),
}
UNITS = (  # category, how many, a name pattern (实有单位)
    ("restaurant", 24, "{s}家小馆"),
    ("internet_cafe", 4, "网鱼网咖{n}店"),
    ("market_stall", 36, "金水市场{n}号摊位"),
    ("shop", 30, "{s}记便利店"),
)


@dataclass
class Person:
    name: str
    id_number: str
    phone: str
    kind: str
    arrived: date
    expected_end: date | None


@dataclass
class Household:
    code: str
    address: str
    grid: str
    building: int
    unit: int
    room: str
    use: str
    people: list[Person] = field(default_factory=list)


def _id_number(rng: random.Random, seen: set[str]) -> str:
    while True:
        born = date(1935, 1, 1) + timedelta(days=rng.randrange(0, 365 * 88))
        first17 = f"370502{born:%Y%m%d}{rng.randrange(0, 1000):03d}"
        number = first17 + id_number_check_digit(first17)
        if number not in seen:
            seen.add(number)
            return number


def community(seed: int, households: int, today: date) -> list[Household]:
    """The community's households and residents, the same for the same seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Household] = []
    per_building = 48  # 4 units x 6 floors x 2 rooms
    for i in range(households):
        building, k = divmod(i, per_building)
        unit, k = divmod(k, 12)
        floor, side = divmod(k, 2)
        room = f"{floor + 1}0{side + 1}"
        address = f"金水小区{building + 1}号楼{unit + 1}单元{room}"
        roll = rng.random()
        use = "let" if roll < 0.18 else "vacant" if roll < 0.21 else "owner_occupied"
        h = Household(
            code=derived_code(address),
            address=address,
            grid=f"G{i * GRIDS // households + 1:02d}",  # contiguous blocks of houses
            building=building + 1,
            unit=unit + 1,
            room=room,
            use=use,
        )
        size = 0 if use == "vacant" else rng.choice((1, 1, 2, 2, 2, 3, 3, 3, 4, 5))
        for _ in range(size):
            name = rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")
            phone = f"1{rng.choice('3589')}{rng.randrange(0, 10**9):09d}" if rng.random() < 0.85 else ""
            if use == "let":
                kind = "tenant"
            else:
                kind = "floating" if rng.random() < 0.08 else "permanent"
            arrived = today - timedelta(days=rng.randrange(30, 3000 if kind == "permanent" else 400))
            ends = today + timedelta(days=rng.randrange(20, 300)) if kind != "permanent" else None
            h.people.append(Person(name, _id_number(rng, seen), phone, kind, arrived, ends))
        out.append(h)
    return out


def csv_text(households: list[Household]) -> bytes:
    kinds = {"permanent": "常住", "floating": "流动", "tenant": "租住"}
    uses = {"owner_occupied": "自住", "let": "出租", "vacant": "空置"}
    lines = ["地址,网格,楼号,单元,房间,房屋用途,姓名,身份证号,电话,类别,到达日期,预计离开日期"]
    for h in households:
        head = f"{h.address},{h.grid},{h.building},{h.unit},{h.room},{uses[h.use]}"
        if not h.people:
            lines.append(f"{head},,,,,,")
        for p in h.people:
            ends = p.expected_end.isoformat() if p.expected_end else ""
            lines.append(f"{head},{p.name},{p.id_number},{p.phone},{kinds[p.kind]},{p.arrived.isoformat()},{ends}")
    return ("\n".join(lines) + "\n").encode()


class Gateway:
    def __init__(self, url: str, home: Path, *, seed: int, out=sys.stdout) -> None:
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(600, connect=10))
        self.home, self.seed, self.out = home, seed, out
        self.tokens: dict[tuple[str, str], str] = {}

    def headers(self, role: str, sub: str, **extra: str) -> dict[str, str]:
        from jinshui.kit.tokens import issue_token

        if (role, sub) not in self.tokens:
            self.tokens[role, sub] = issue_token(home=self.home, role=role, sub=sub, ttl_seconds=3600)
        return {"Authorization": f"Bearer {self.tokens[role, sub]}", **extra}

    def setup(self, path: str, body: dict, role: str = "community_admin", sub: str = "demo-admin") -> bool:
        """An admin call: True if made, False if it was already there (409)."""
        r = self.http.post(path, json=body, headers=self.headers(role, sub))
        if r.status_code == 409:
            return False
        if r.status_code >= 300:
            raise SystemExit(f"jinshui demo: POST {path} answered {r.status_code}: {r.text}")
        return True

    def submit(self, path: str, body: dict, *, key: str, role: str, sub: str) -> list[dict]:
        """A submission, waited for; its per-record outcomes."""
        headers = self.headers(role, sub, Prefer="wait=60", **{"Idempotency-Key": f"demo-{self.seed}-{key}"})
        r = self.http.post(path, json=body, headers=headers)
        if r.status_code not in (200, 202):
            raise SystemExit(f"jinshui demo: POST {path} answered {r.status_code}: {r.text}")
        return r.json().get("outcomes", [])


def _batches(items: list, size: int = 500):
    for i in range(0, len(items), size):
        yield i // size, items[i : i + size]


def run(gw: Gateway, *, households: int, day: date, visits_per_worker: int) -> dict:
    rng = random.Random(gw.seed + 1)
    started = time.monotonic()
    made: dict = {}
    say = lambda *a: print(*a, file=gw.out, flush=True)  # noqa: E731

    # 1. Areas: the beat, its 11 grids, a grid worker on each, the community police officer and two auxiliaries.
    gw.setup("/v1/beats", {"code": BEAT, "name": "金水社区警格"})
    grids = [f"G{g:02d}" for g in range(1, GRIDS + 1)]
    for g in grids:
        gw.setup("/v1/grids", {"code": g, "name": f"金水社区第{int(g[1:])}网格", "beat": BEAT})
        gw.setup("/v1/assignments", {"person": f"gw-{g[1:]}", "role": "grid_worker", "area": g})
    for officer in ("po-1", "aux-1", "aux-2"):
        gw.setup("/v1/assignments", {"person": officer, "role": "officer", "area": BEAT})
    made["areas"] = {"beats": 1, "grids": len(grids), "grid_workers": len(grids), "officers": 3}
    say(f"areas: beat {BEAT} over {len(grids)} grids, {len(grids)} grid workers (gw-01…gw-11), 3 officers")

    # 2. Households and residents: one bulk import, as a grid platform's spreadsheet would come.
    homes = community(gw.seed, households, day)
    r = gw.http.post(
        "/v1/imports",
        content=csv_text(homes),
        headers=gw.headers("community_admin", "demo-admin", **{"Content-Type": "text/csv"}),
    )
    if r.status_code != 200:
        raise SystemExit(f"jinshui demo: the import answered {r.status_code}: {r.text}")
    summary = orjson.loads(r.content.splitlines()[0])
    people = [p for h in homes for p in h.people]
    floating = sum(p.kind != "permanent" for p in people)
    made["import"] = summary
    made["households"], made["residents"], made["floating_or_tenant"] = len(homes), len(people), floating
    say(
        f"households: {len(homes)} ({summary['households_new']} new), residents: {len(people)} "
        f"({summary['residencies_new']} new), floating or tenant: {floating} ({floating / len(people):.0%}); "
        f"rows rejected: {summary['rejected']}"
    )

    # 3. Lettings (租有登记): every let house, its tenants named by ID number.
    lettings = [
        {
            "household_code": h.code,
            "landlord": rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN),
            "tenants": [{"id_number": p.id_number} for p in h.people],
            "starts_on": min(p.arrived for p in h.people).isoformat(),
            "expected_end": max(p.expected_end for p in h.people).isoformat(),
        }
        for h in homes
        if h.use == "let" and h.people
    ]
    applied = 0
    for i, batch in _batches(lettings):
        outcomes = gw.submit("/v1/lettings", {"lettings": batch}, key=f"lettings-{i}", role="grid_platform", sub="gp")
        applied += sum(o.get("status") == "applied" for o in outcomes)
    made["lettings"] = len(lettings)
    say(f"lettings: {len(lettings)} registered ({applied} applied now)")

    # 4. Tags at a community's rates.
    tags, counts = [], dict.fromkeys([*PERSON_TAGS, *HOUSEHOLD_TAGS], 0)
    for h in homes:
        for tag, (rate, reason) in HOUSEHOLD_TAGS.items():
            if h.people and rng.random() < rate:
                tags.append({"tag": tag, "household_code": h.code, "since": "2025-03-01", "reason": reason})
                counts[tag] += 1
        for p in h.people:
            for tag, (rate, reason) in PERSON_TAGS.items():
                if rng.random() < rate:
                    since = (day - timedelta(days=rng.randrange(30, 700))).isoformat()
                    tags.append({"tag": tag, "person": {"id_number": p.id_number}, "since": since, "reason": reason})
                    counts[tag] += 1
                    break
    for i, batch in _batches(tags):
        gw.submit("/v1/tags", {"tags": batch}, key=f"tags-{i}", role="police", sub="po-1")
    made["tags"] = counts
    say("tags: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    # 5. Units (实有单位) on the ground floors along the street.
    units, n = [], 0
    for category, count, pattern in UNITS:
        for k in range(count):
            h = homes[(n * 37) % len(homes)]
            n += 1
            name = pattern.format(s=rng.choice(SURNAMES), n=k + 1)
            units.append(
                {
                    "household_code": h.code,
                    "name": name,
                    "category": category,
                    "operator": {"name": rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN)},
                    "licence_number": f"91370502MA{rng.randrange(10**7, 10**8)}",
                }
            )
    made["units"] = _units(gw, units)
    if made["units"] is None:
        say("units: this registry has no /v1/units yet; none made")
    else:
        say("units: " + ", ".join(f"{c} {k}" for c, k, _ in UNITS))

    # 6. A day of visits (走访): each grid worker's round, uploaded by the grid platform as it ends.
    opening = datetime.combine(day, datetime.min.time(), SHANGHAI).replace(hour=8, minute=30)
    span = 9 * 3600.0  # 08:30 to 17:30: the same times for the same seed and day, so a second run is a replay
    concerns_made = dict.fromkeys(("dispute", "hazard", "welfare_need", "urgent"), 0)
    visits = 0
    for g in grids:
        theirs = [h for h in homes if h.grid == g and h.people]
        if not theirs:
            continue
        round_ = []
        for h in rng.sample(theirs, min(visits_per_worker, len(theirs))):
            roll, concerns = rng.random(), []
            for concern, below in (("urgent", 0.005), ("dispute", 0.025), ("hazard", 0.045), ("welfare_need", 0.085)):
                if roll < below:
                    concerns.append(concern)
                    concerns_made[concern] += 1
                    break
            round_.append(
                {
                    "household_code": h.code,
                    "visited_at": (opening + timedelta(seconds=rng.uniform(0, span))).isoformat(),
                    "concerns": concerns,
                    "people_present": rng.randint(1, len(h.people)),
                    "follow_up_requested": rng.random() < 0.05,
                }
            )
        round_.sort(key=lambda v: v["visited_at"])
        gw.submit("/v1/visits", {"visits": round_}, key=f"visits-{day}-{g}", role="grid_worker", sub=f"gw-{g[1:]}")
        visits += len(round_)
    made["day"], made["visits"], made["concerns"] = day.isoformat(), visits, concerns_made
    say(f"visits on {day}: {visits} by {len(grids)} grid workers; concerns: " + _plain(concerns_made))

    # What the desk and the mediation room now see.
    police = gw.headers("police", "po-1")
    alerts = gw.http.get("/v1/alerts", params={"limit": 200}, headers=police)
    incidents = gw.http.get("/v1/incidents", params={"limit": 200}, headers=police)
    made["alerts"] = len(alerts.json().get("alerts", [])) if alerts.status_code == 200 else None
    made["incidents"] = len(incidents.json().get("items", [])) if incidents.status_code == 200 else None
    coverage = gw.http.get(f"/v1/grids/{grids[0]}/coverage", params={"month": f"{day:%Y-%m}"}, headers=police)
    if coverage.status_code == 200:
        c = coverage.json()
        made["coverage_g01"] = {k: c.get(k) for k in ("visited", "households")}
        say(f"coverage of {grids[0]} in {day:%Y-%m}: {c.get('visited')} of {c.get('households')} households visited")
    say(
        f"on the desk: {made['alerts']} alerts; in the incident stream: {made['incidents']} incidents "
        f"(made in {time.monotonic() - started:.1f} s)"
    )
    return made


def _units(gw: Gateway, units: list[dict]) -> int | None:
    made = 0
    for unit in units:
        r = gw.http.post("/v1/units", json=unit, headers=gw.headers("community_admin", "demo-admin"))
        if r.status_code in (404, 405):
            return None
        if r.status_code >= 300 and r.status_code != 409:  # 409: its licence is registered (a second run)
            raise SystemExit(f"jinshui demo: POST /v1/units answered {r.status_code}: {r.text}")
        made += r.status_code == 201
    return made


def _plain(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def cmd_demo(args: argparse.Namespace) -> int:
    home = Path(args.home).resolve()
    day = date.fromisoformat(args.date) if args.date else _default_day()
    gw = Gateway(_gateway_url(args), home, seed=args.seed)
    made = run(gw, households=args.households, day=day, visits_per_worker=args.visits)
    if args.json:
        print(orjson.dumps(made, option=orjson.OPT_INDENT_2).decode())
    return 0


def _default_day() -> date:
    """The last working day that is over: today in Shanghai after 17:30, else yesterday (no visit in the future)."""
    now = datetime.now(SHANGHAI)
    return now.date() if (now.hour, now.minute) >= (17, 30) else now.date() - timedelta(days=1)


def add_parser(sub, default_home: str) -> None:
    p = sub.add_parser("demo", help="fill a running Jinshui with a community like Jinshui's and a day of visits")
    p.add_argument("--households", type=int, default=3000)
    p.add_argument("--visits", type=int, default=20, help="visits per grid worker in the day")
    p.add_argument("--date", help="the day of visits, YYYY-MM-DD (default: the last working day that is over)")
    p.add_argument("--seed", type=int, default=1994, help="the same seed makes the same community")
    p.add_argument("--url", help="the gateway (default: from run.json under --home)")
    p.add_argument("--home", default=default_home)
    p.add_argument("--json", action="store_true", help="also print what was made as JSON")
    p.set_defaults(func=cmd_demo)
