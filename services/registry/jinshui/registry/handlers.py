"""Registry handlers: what the registry does with what arrives on INTAKE (and the AUDIT index)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
from pydantic import BaseModel, ValidationError

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.events import (
    OutcomeStatus,
    RecordOutcome,
    SubmissionSettled,
    VisitRecordedV2,
    VisitsSubmitted,
)
from jinshui.contracts.registry import (
    ArrivalRecord,
    ArrivalsSubmitted,
    DepartureRecord,
    DeparturesSubmitted,
    LettingRecord,
    LettingRegistered,
    LettingsSubmitted,
    LettingStop,
    LettingStopped,
    LettingStopsSubmitted,
    MoveRecord,
    MovesSubmitted,
    PersonalDataRead,
    PersonRef,
    RenewalRecord,
    RenewalsSubmitted,
    ResidencyExpired,
    ResidencyKind,
    ResidencyRenewed,
    ResidentArrived,
    ResidentDeparted,
    VisitsRecorded,
    visit_recorded_id,
)
from jinshui.kit import outbox, timers
from jinshui.kit.clock import Clock
from jinshui.kit.consumer import Permanent
from jinshui.kit.timers import Timer
from jinshui.registry.outbox import derived_id, emit, event, history, raw_event

FUTURE_TOLERANCE = timedelta(minutes=5)
EXPIRY = "residency.expiry"


class Rejected(Exception):
    """This record cannot be applied; the reason goes to its outcome."""


def _batch(model: type[BaseModel], event: CloudEvent):
    try:
        return model.model_validate(event.data)
    except ValidationError as e:
        raise Permanent(f"not a valid {model.__name__}: {e.errors()[:3]}") from e


async def _settle(conn: asyncpg.Connection, submission_id: str, outcomes: list[RecordOutcome], at: datetime) -> None:
    data = SubmissionSettled(submission_id=submission_id, outcomes=outcomes)
    await emit(conn, data, id=derived_id("settled", submission_id), key=None, time=at)


async def record_visits(
    conn: asyncpg.Connection, event_: CloudEvent, *, clock: Clock, publish: frozenset[str] = frozenset({"batch"})
) -> None:
    """Record each visit of a submitted batch; every record gets an outcome, settled in the same transaction."""
    await record_visit_submissions(conn, [event_], clock=clock, publish=publish)


async def record_visit_submissions(
    conn: asyncpg.Connection,
    submitted: list[CloudEvent],
    *,
    clock: Clock,
    publish: frozenset[str] = frozenset({"batch"}),
) -> None:
    """Record the visits of several submitted batches at once (a consumer's run of them): every record gets an
    outcome, each submission is settled, all in the caller's transaction and in a few statements whatever the
    number of submissions (the households looked up once, the visits, their history and the events written once).

    `publish`: which events tell of the visits: "batch", one visits.recorded per beat of a submission (the
    default); "1" and "2", one visit.recorded v1 or v2 per visit (see proto/CONTRACTS.md)."""
    batches = [(e, _batch(VisitsSubmitted, e)) for e in submitted]
    codes = sorted({r.household_code for _, b in batches for r in b.records})
    households = {
        r["code"]: r
        for r in await conn.fetch(
            "SELECT code, grid, beat, merged_into FROM households WHERE code = ANY($1::text[])", codes
        )
    }
    named = sorted({p for _, b in batches for r in b.records for p in r.persons_present})
    persons = (
        {
            r["id"]: r["kept"]
            for r in await conn.fetch(
                "SELECT id, coalesce(merged_into, id) AS kept FROM persons WHERE id = ANY($1::text[])", named
            )
        }
        if named
        else {}
    )
    rows, events, versions = [], [], []
    now = clock.now()
    for event_, batch in batches:
        outcomes = _visits_of(event_, batch, households, persons, now, publish, rows, events, versions)
        data = SubmissionSettled(submission_id=batch.submission_id, outcomes=outcomes)
        events.append(event(data, id=derived_id("settled", batch.submission_id), key=None, time=event_.time))
    if rows:
        await conn.executemany(
            """INSERT INTO visits (id, household_code, grid_worker, visited_at, concerns, people_present,
                                   persons_present, follow_up_requested, note, submission_id, record_index,
                                   recorded_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING""",
            rows,
        )
        await conn.executemany(
            """INSERT INTO history (household_code, entity, entity_id, action, data, actor, submission_id, at)
               VALUES ($1, 'visit', $2, 'recorded', $3, $4, $5, $6)
               ON CONFLICT (entity, entity_id, action) DO NOTHING""",
            versions,
        )
    await outbox.add_many(conn, events)


def _visits_of(event_, batch, households, persons, now, publish, rows, events, versions) -> list[RecordOutcome]:
    """One submission's visits checked against the households and persons looked up: the rows, history versions
    and events of those applied are appended to the run's; the outcome of every record is returned."""
    latest_allowed = max(now, batch.received_at) + FUTURE_TOLERANCE
    outcomes: list[RecordOutcome] = []
    by_beat: dict[str, list[dict]] = {}
    submitter = batch.submitter.model_dump(mode="json")
    for index, record in enumerate(batch.records):
        household = households.get(record.household_code)
        if household is None:
            reason = f"household {record.household_code} is not registered"
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.rejected, reason=reason))
            continue
        if household["merged_into"] is not None:
            reason = f"household {record.household_code} was merged into {household['merged_into']}: visit that one"
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.rejected, reason=reason))
            continue
        if record.visited_at > latest_allowed:
            reason = f"visited_at {record.visited_at.isoformat()} is in the future"
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.rejected, reason=reason))
            continue
        unknown = [i for i, p in enumerate(record.persons_present) if p not in persons]
        if unknown:
            reason = f"persons_present[{unknown[0]}] is not a registered person"
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.rejected, reason=reason))
            continue
        visit_id = derived_id("visit", batch.submission_id, str(index))
        rows.append(
            (
                visit_id,
                record.household_code,
                batch.submitter.sub,
                record.visited_at,
                [c.value for c in record.concerns],
                record.people_present,
                sorted({persons[p] for p in record.persons_present}),
                record.follow_up_requested,
                record.note,
                batch.submission_id,
                index,
                event_.time,
            )
        )
        versions.append(
            (
                record.household_code,
                visit_id,
                {"visited_at": record.visited_at.isoformat(), "concerns": [c.value for c in record.concerns]},
                batch.submitter.sub,
                batch.submission_id,
                event_.time,
            )
        )
        # The visit as visits.recorded carries it (visit.recorded v2's fields), built as JSON from the validated
        # record and the household's row: not validated again, its consumers validate what they read.
        recorded = {
            "visit_id": visit_id,
            "household_code": record.household_code,
            "grid": household["grid"],
            "beat": household["beat"],
            "visited_by": submitter,
            "visited_at": record.visited_at.isoformat(),
            "concerns": [c.value for c in record.concerns],
            "follow_up_requested": record.follow_up_requested,
            "people_present": record.people_present,
            "persons_present": sorted({persons[p] for p in record.persons_present}),
            "submission_id": batch.submission_id,
            "record_index": index,
        }
        key, at = record.household_code, event_.time
        if "1" in publish or "2" in publish:
            v2 = VisitRecordedV2.model_validate(recorded)
            if "1" in publish:
                events.append(event(v2.as_v1(), id=visit_recorded_id(visit_id), key=key, time=at))
            if "2" in publish:
                events.append(event(v2, id=derived_id("visit.recorded.v2", visit_id), key=key, time=at))
        by_beat.setdefault(household["beat"], []).append(recorded)
        outcomes.append(RecordOutcome.model_construct(index=index, status=OutcomeStatus.applied, ref=visit_id))
    if "batch" in publish:
        for beat, visits in by_beat.items():
            data = {"submission_id": batch.submission_id, "beat": beat, "visits": visits}
            made = derived_id("visits.recorded", batch.submission_id, beat)
            events.append(raw_event(VisitsRecorded, data, id=made, key=beat, time=event_.time))
    return outcomes


# --- residencies: each record applied whole in its own savepoint, or rejected with the reason --------------
Apply = Callable[[asyncpg.Connection, object, int], Awaitable[str]]


async def _per_record(conn: asyncpg.Connection, submission_id: str, records: list, apply: Apply, at: datetime):
    outcomes = []
    for index, record in enumerate(records):
        try:
            async with conn.transaction():
                ref = await apply(conn, record, index)
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.applied, ref=ref))
        except Rejected as e:
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.rejected, reason=str(e)))
    await _settle(conn, submission_id, outcomes, at)


async def _household(conn, code: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT code, grid, beat, house_id, merged_into FROM households WHERE code = $1", code)
    if row is None:
        raise Rejected(f"household {code} is not registered")
    return row


def _person_id(ref: PersonRef) -> str:
    return ref.person_id or derived_id("person", ref.id_number.hash)  # type: ignore[union-attr]


async def follow(conn, person_id: str) -> str:
    """The record that stands for this person: a merged record stands for the one it was merged into."""
    return await conn.fetchval("SELECT coalesce(merged_into, id) FROM persons WHERE id = $1", person_id) or person_id


def _not_future(at: datetime, what: str, latest: datetime) -> None:
    if at > latest:
        raise Rejected(f"{what} {at.isoformat()} is in the future")


class Residencies:
    """Arrivals (人来登记), departures (人走注销) and moves, as one submission's records are applied."""

    def __init__(self, *, clock: Clock, event_: CloudEvent, batch) -> None:
        self.batch, self.at = batch, event_.time
        self.sid, self.actor = batch.submission_id, batch.submitter.sub
        self.latest = max(clock.now(), batch.received_at) + FUTURE_TOLERANCE

    @classmethod
    def direct(cls, *, actor: str, at: datetime, sid: str) -> Residencies:
        """For a command a person waits for (a death, a split, a merge): `sid` names the command."""
        self = cls.__new__(cls)
        self.batch, self.at, self.sid, self.actor, self.latest = None, at, sid, actor, at + FUTURE_TOLERANCE
        return self

    async def arrive(self, conn, record: ArrivalRecord, index: int) -> str:
        _not_future(record.arrived_at, "arrived_at", self.latest)
        if record.expected_end is not None and record.expected_end <= record.arrived_at:
            raise Rejected("expected_end is not after arrived_at")
        household = await _household(conn, record.household_code)
        p = record.person
        person_id = derived_id("person", p.id_number.hash)
        await conn.execute(
            """INSERT INTO persons (id, name, id_hash, id_number, phone_hash, phone, birth_date, sex, registered_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,
                   phone_hash = coalesce(EXCLUDED.phone_hash, persons.phone_hash),
                   phone = coalesce(EXCLUDED.phone, persons.phone),
                   birth_date = coalesce(EXCLUDED.birth_date, persons.birth_date),
                   sex = coalesce(EXCLUDED.sex, persons.sex)""",
            person_id,
            p.name,
            p.id_number.hash,
            p.id_number.model_dump(),
            p.phone.hash if p.phone else None,
            p.phone.model_dump() if p.phone else None,
            p.birth_date,
            p.sex,
            self.at,
        )
        id_hash = p.id_number.hash
        if (kept := await follow(conn, person_id)) != person_id:
            person_id, id_hash = kept, await conn.fetchval("SELECT id_hash FROM persons WHERE id = $1", kept)
        residency_id = derived_id("residency", self.sid, str(index))
        await self._open(
            conn,
            household,
            residency_id=residency_id,
            person_id=person_id,
            id_hash=id_hash,
            kind=record.kind,
            arrived_at=record.arrived_at,
            expected_end=record.expected_end,
            index=index,
        )
        return residency_id

    async def depart(self, conn, record: DepartureRecord, index: int) -> str:
        _not_future(record.departed_at, "departed_at", self.latest)
        household = await _household(conn, record.household_code)
        person_id = await follow(conn, _person_id(record.person))
        stay = await self._close(conn, household, person_id, record.departed_at, record.reason or "departed", index)
        return stay["id"]

    async def move(self, conn, record: MoveRecord, index: int) -> str:
        _not_future(record.moved_at, "moved_at", self.latest)
        if record.from_household == record.to_household:
            raise Rejected("from_household and to_household are the same household")
        there = await _household(conn, record.from_household)
        here = await _household(conn, record.to_household)
        move_id = derived_id("move", self.sid, str(index))
        person_id = await follow(conn, _person_id(record.person))
        stay = await self._close(conn, there, person_id, record.moved_at, f"moved to {here['code']}", index, move_id)
        residency_id = derived_id("residency", self.sid, str(index))
        await self._open(
            conn,
            here,
            residency_id=residency_id,
            person_id=stay["person_id"],
            id_hash=stay["id_hash"],
            kind=record.kind or ResidencyKind(stay["kind"]),
            arrived_at=record.moved_at,
            expected_end=record.expected_end,
            index=index,
            move_id=move_id,
        )
        return residency_id

    async def renew(self, conn, record: RenewalRecord, index: int) -> str:
        household = await _household(conn, record.household_code)
        person_id = await follow(conn, _person_id(record.person))
        stay = await conn.fetchrow(
            """SELECT r.id, r.arrived_at, r.expected_end, p.id_hash FROM residencies r
               JOIN persons p ON p.id = r.person_id
               WHERE r.person_id = $1 AND r.household_code = $2 AND r.departed_at IS NULL FOR UPDATE OF r""",
            person_id,
            household["code"],
        )
        if stay is None:
            raise Rejected(f"the person is not resident in household {household['code']}")
        if record.expected_end <= stay["arrived_at"]:
            raise Rejected("expected_end is not after the arrival")
        await conn.execute(
            """UPDATE residencies SET expected_end = $2, expired_at = NULL, departure_check = false
               WHERE id = $1""",
            stay["id"],
            record.expected_end,
        )
        await timers.schedule(conn, kind=EXPIRY, ref=stay["id"], due_at=record.expected_end)
        data = ResidencyRenewed(
            residency_id=stay["id"],
            person_id=person_id,
            id_hash=stay["id_hash"],
            household_code=household["code"],
            grid=household["grid"],
            beat=household["beat"],
            previous_end=stay["expected_end"],
            expected_end=record.expected_end,
            submission_id=self.sid,
            record_index=index,
        )
        renewal_id = derived_id("residency.renewed", self.sid, str(index))
        await emit(conn, data, id=renewal_id, key=household["code"], time=self.at)
        await history(
            conn,
            household_code=household["code"],
            entity="residency",
            entity_id=f"{stay['id']}@{renewal_id}",
            action="renewed",
            actor=self.actor,
            at=self.at,
            submission_id=self.sid,
            data={"person_id": person_id, "expected_end": record.expected_end.isoformat()},
        )
        return stay["id"]

    async def _open(
        self, conn, household, *, residency_id, person_id, id_hash, kind, arrived_at, expected_end, index, move_id=None
    ):
        if household["merged_into"] is not None:
            raise Rejected(f"household {household['code']} was merged into {household['merged_into']}")
        died_on = await conn.fetchval("SELECT died_on FROM persons WHERE id = $1", person_id)
        if died_on is not None:
            raise Rejected(f"the person's death was recorded ({died_on.isoformat()})")
        current = await conn.fetchrow(
            "SELECT household_code, arrived_at FROM residencies WHERE person_id = $1 AND departed_at IS NULL",
            person_id,
        )
        if current is not None:
            if current["household_code"] == household["code"]:
                raise Rejected(f"the person is already resident in household {household['code']}")
            raise Rejected(
                f"the person is resident in household {current['household_code']}: submit a move, not an arrival"
            )
        await conn.execute(
            """INSERT INTO residencies (id, person_id, household_code, kind, arrived_at, expected_end,
                                        arrival_submission) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            residency_id,
            person_id,
            household["code"],
            kind.value,
            arrived_at,
            expected_end,
            self.sid,
        )
        if expected_end is not None:
            await timers.schedule(conn, kind=EXPIRY, ref=residency_id, due_at=expected_end)
        data = ResidentArrived(
            residency_id=residency_id,
            person_id=person_id,
            id_hash=id_hash,
            household_code=household["code"],
            house_id=household["house_id"],
            grid=household["grid"],
            beat=household["beat"],
            kind=kind,
            arrived_at=arrived_at,
            expected_end=expected_end,
            submission_id=self.sid,
            record_index=index,
            move_id=move_id,
        )
        await emit(conn, data, id=derived_id("resident.arrived", residency_id), key=household["code"], time=self.at)
        await history(
            conn,
            household_code=household["code"],
            entity="residency",
            entity_id=residency_id,
            action="arrived",
            actor=self.actor,
            at=self.at,
            submission_id=self.sid,
            data={"person_id": person_id, "kind": kind.value, "arrived_at": arrived_at.isoformat(), "move_id": move_id},
        )

    async def _close(
        self, conn, household, person_id: str, departed_at: datetime, reason: str, index: int, move_id=None
    ):
        stay = await conn.fetchrow(
            """SELECT r.id, r.person_id, r.kind, r.arrived_at, p.id_hash FROM residencies r
               JOIN persons p ON p.id = r.person_id
               WHERE r.person_id = $1 AND r.household_code = $2 AND r.departed_at IS NULL FOR UPDATE OF r""",
            person_id,
            household["code"],
        )
        if stay is None:
            last = await conn.fetchval(
                """SELECT max(departed_at) FROM residencies
                   WHERE person_id = $1 AND household_code = $2 AND voided_at IS NULL""",
                person_id,
                household["code"],
            )
            if last is not None:
                raise Rejected(f"the person already departed from household {household['code']} on {last.isoformat()}")
            raise Rejected(f"the person is not resident in household {household['code']}")
        if departed_at < stay["arrived_at"]:
            arrived = stay["arrived_at"].isoformat()
            raise Rejected(f"the departure ({departed_at.isoformat()}) is dated before the arrival ({arrived})")
        await conn.execute(
            """UPDATE residencies SET departed_at = $2, departure_reason = $3, departure_submission = $4,
                      departure_check = false WHERE id = $1""",
            stay["id"],
            departed_at,
            reason,
            self.sid,
        )
        await timers.cancel(conn, kind=EXPIRY, ref=stay["id"])
        data = ResidentDeparted(
            residency_id=stay["id"],
            person_id=person_id,
            id_hash=stay["id_hash"],
            household_code=household["code"],
            grid=household["grid"],
            beat=household["beat"],
            departed_at=departed_at,
            reason=reason,
            submission_id=self.sid,
            record_index=index,
            move_id=move_id,
        )
        await emit(conn, data, id=derived_id("resident.departed", stay["id"]), key=household["code"], time=self.at)
        await history(
            conn,
            household_code=household["code"],
            entity="residency",
            entity_id=stay["id"],
            action="departed",
            actor=self.actor,
            at=self.at,
            submission_id=self.sid,
            data={"person_id": person_id, "departed_at": departed_at.isoformat(), "reason": reason, "move_id": move_id},
        )
        return stay


async def record_arrivals(conn: asyncpg.Connection, event_: CloudEvent, *, clock: Clock) -> None:
    batch = _batch(ArrivalsSubmitted, event_)
    r = Residencies(clock=clock, event_=event_, batch=batch)
    await _per_record(conn, batch.submission_id, batch.records, r.arrive, event_.time)


async def record_departures(conn: asyncpg.Connection, event_: CloudEvent, *, clock: Clock) -> None:
    batch = _batch(DeparturesSubmitted, event_)
    r = Residencies(clock=clock, event_=event_, batch=batch)
    await _per_record(conn, batch.submission_id, batch.records, r.depart, event_.time)


async def record_renewals(conn: asyncpg.Connection, event_: CloudEvent, *, clock: Clock) -> None:
    batch = _batch(RenewalsSubmitted, event_)
    r = Residencies(clock=clock, event_=event_, batch=batch)
    await _per_record(conn, batch.submission_id, batch.records, r.renew, event_.time)


async def residency_expired(conn: asyncpg.Connection, timer: Timer, now: datetime) -> None:
    """A residency's expected end passed with neither departure nor renewal: mark it for a departure check and
    say so, for risk's "confirm the departure" task. Times come from the timer, so a replay says the same."""
    stay = await conn.fetchrow(
        """SELECT r.*, p.id_hash, h.grid, h.beat, h.house_id FROM residencies r
           JOIN persons p ON p.id = r.person_id JOIN households h ON h.code = r.household_code
           WHERE r.id = $1 FOR UPDATE OF r""",
        timer.ref,
    )
    if stay is None or stay["departed_at"] is not None or stay["expected_end"] != timer.due_at:
        return
    await conn.execute(
        "UPDATE residencies SET expired_at = $2, departure_check = true WHERE id = $1", stay["id"], timer.due_at
    )
    data = ResidencyExpired(
        residency_id=stay["id"],
        person_id=stay["person_id"],
        id_hash=stay["id_hash"],
        household_code=stay["household_code"],
        house_id=stay["house_id"],
        grid=stay["grid"],
        beat=stay["beat"],
        kind=ResidencyKind(stay["kind"]),
        arrived_at=stay["arrived_at"],
        expected_end=stay["expected_end"],
    )
    expiry_id = derived_id("residency.expired", stay["id"], timer.due_at.isoformat())
    await emit(conn, data, id=expiry_id, key=stay["household_code"], time=timer.due_at)
    await history(
        conn,
        household_code=stay["household_code"],
        entity="residency",
        entity_id=f"{stay['id']}@{expiry_id}",
        action="expired",
        actor="registry",
        at=timer.due_at,
        data={"person_id": stay["person_id"], "expected_end": timer.due_at.isoformat()},
    )


async def record_moves(conn: asyncpg.Connection, event_: CloudEvent, *, clock: Clock) -> None:
    batch = _batch(MovesSubmitted, event_)
    r = Residencies(clock=clock, event_=event_, batch=batch)
    await _per_record(conn, batch.submission_id, batch.records, r.move, event_.time)


class Lettings:
    """Lettings registered while let (租有登记) and written off when they stop (停有核销)."""

    def __init__(self, *, event_: CloudEvent, batch) -> None:
        self.at, self.sid, self.actor = event_.time, batch.submission_id, batch.submitter.sub

    async def register(self, conn, record: LettingRecord, index: int) -> str:
        if record.expected_end is not None and record.expected_end <= record.starts_on:
            raise Rejected("the letting ends before it starts (expected_end is not after starts_on)")
        household = await _household(conn, record.household_code)
        tenants = []
        for i, ref in enumerate(record.tenants):
            person_id = await follow(conn, _person_id(ref))
            if not await conn.fetchval("SELECT 1 FROM persons WHERE id = $1", person_id):
                raise Rejected(f"tenants[{i}] is not a registered person: register their arrival first")
            tenants.append(person_id)
        letting_id = derived_id("letting", self.sid, str(index))
        await conn.execute(
            """INSERT INTO lettings (id, household_code, landlord, starts_on, expected_end, submission_id,
                                     registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            letting_id,
            household["code"],
            record.landlord,
            record.starts_on,
            record.expected_end,
            self.sid,
            self.at,
        )
        await conn.executemany(
            "INSERT INTO letting_tenants (letting_id, person_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [(letting_id, t) for t in tenants],
        )
        data = LettingRegistered(
            letting_id=letting_id,
            household_code=household["code"],
            house_id=household["house_id"],
            grid=household["grid"],
            beat=household["beat"],
            tenants=tenants,
            starts_on=record.starts_on,
            expected_end=record.expected_end,
            submission_id=self.sid,
        )
        await emit(conn, data, id=derived_id("letting.registered", letting_id), key=household["code"], time=self.at)
        await self._history(conn, household["code"], letting_id, "registered", data)
        return letting_id

    async def stop(self, conn, record: LettingStop, index: int) -> str:
        letting = await conn.fetchrow(
            "SELECT id, household_code, starts_on, stopped_on FROM lettings WHERE id = $1 FOR UPDATE",
            record.letting_id,
        )
        if letting is None:
            raise Rejected(f"no letting {record.letting_id}")
        if letting["stopped_on"] is not None:
            raise Rejected(f"the letting was already written off on {letting['stopped_on'].isoformat()}")
        if record.stopped_on < letting["starts_on"]:
            raise Rejected(f"the letting cannot stop before it started ({letting['starts_on'].isoformat()})")
        household = await _household(conn, letting["household_code"])
        await conn.execute(
            "UPDATE lettings SET stopped_on = $2, stop_reason = $3 WHERE id = $1",
            letting["id"],
            record.stopped_on,
            record.reason,
        )
        marked = await conn.fetch(
            """UPDATE residencies r SET departure_check = true FROM letting_tenants t
               WHERE t.letting_id = $1 AND r.person_id = t.person_id AND r.household_code = $2
                 AND r.departed_at IS NULL RETURNING r.person_id""",
            letting["id"],
            household["code"],
        )
        data = LettingStopped(
            letting_id=letting["id"],
            household_code=household["code"],
            grid=household["grid"],
            beat=household["beat"],
            stopped_on=record.stopped_on,
            reason=record.reason,
            departure_checks=sorted(r["person_id"] for r in marked),
            submission_id=self.sid,
        )
        await emit(conn, data, id=derived_id("letting.stopped", letting["id"]), key=household["code"], time=self.at)
        await self._history(conn, household["code"], letting["id"], "stopped", data)
        return letting["id"]

    async def _history(self, conn, code: str, letting_id: str, action: str, data) -> None:
        await history(
            conn,
            household_code=code,
            entity="letting",
            entity_id=letting_id,
            action=action,
            actor=self.actor,
            at=self.at,
            submission_id=self.sid,
            data=data.model_dump(mode="json"),
        )


async def record_lettings(conn: asyncpg.Connection, event_: CloudEvent) -> None:
    batch = _batch(LettingsSubmitted, event_)
    await _per_record(
        conn, batch.submission_id, batch.records, Lettings(event_=event_, batch=batch).register, event_.time
    )


async def record_letting_stops(conn: asyncpg.Connection, event_: CloudEvent) -> None:
    batch = _batch(LettingStopsSubmitted, event_)
    await _per_record(conn, batch.submission_id, batch.records, Lettings(event_=event_, batch=batch).stop, event_.time)


async def index_audit(conn: asyncpg.Connection, event_: CloudEvent) -> None:
    """Keep the registry's index of the AUDIT stream, for GET /v1/audit."""
    read = _batch(PersonalDataRead, event_)
    await conn.execute(
        """INSERT INTO audit_reads (read_id, reader, reader_role, purpose, person_ids, fields, resource, read_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (read_id) DO NOTHING""",
        read.read_id,
        read.reader,
        read.reader_role,
        read.purpose,
        read.person_ids,
        read.fields,
        read.resource,
        read.read_at,
    )
