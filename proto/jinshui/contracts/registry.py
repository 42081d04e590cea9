"""Registry contracts: households (一户一码), visits (走访) and what the registry publishes."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from jinshui.contracts.base import MAX_BATCH, AreaCode, Contract, HouseholdCode, SubmissionSettled, Submitter

# Subjects of this domain (unprefixed); streams.keyed() puts the household code or area last.
INTAKE_ARRIVALS = "intake.arrival.submitted"
INTAKE_DEPARTURES = "intake.departure.submitted"
INTAKE_MOVES = "intake.move.submitted"
REGISTRY_GRID_DEFINED = "registry.grid.defined"
REGISTRY_BEAT_DEFINED = "registry.beat.defined"
REGISTRY_COVERAGE_CHANGED = "registry.coverage.changed"
REGISTRY_ASSIGNMENT_CHANGED = "registry.assignment.changed"
REGISTRY_RESIDENT_ARRIVED = "registry.resident.arrived"
REGISTRY_RESIDENT_DEPARTED = "registry.resident.departed"
AUDIT_PII_READ = "audit.pii.read"
INTAKE_LETTINGS = "intake.letting.submitted"
INTAKE_LETTING_STOPS = "intake.letting_stop.submitted"
REGISTRY_LETTING_REGISTERED = "registry.letting.registered"
REGISTRY_LETTING_STOPPED = "registry.letting.stopped"
INTAKE_TAGS = "intake.tag.submitted"
INTAKE_TAG_ENDS = "intake.tag_end.submitted"
INTAKE_RENEWALS = "intake.renewal.submitted"
REGISTRY_TAG_SET = "registry.tag.set"
REGISTRY_TAG_ENDED = "registry.tag.ended"
REGISTRY_RESIDENCY_RENEWED = "registry.residency.renewed"
REGISTRY_RESIDENCY_EXPIRED = "registry.residency.expired"
REGISTRY_HOUSEHOLDS_IMPORTED = "registry.household.imported"
REGISTRY_RESIDENTS_IMPORTED = "registry.resident.imported"
REGISTRY_UNIT_REGISTERED = "registry.unit.registered"
REGISTRY_RECORD_CORRECTED = "registry.record.corrected"
REGISTRY_RECORD_VOIDED = "registry.record.voided"
REGISTRY_PERSON_DIED = "registry.person.died"
REGISTRY_PERSONS_MERGED = "registry.person.merged"
REGISTRY_HOUSEHOLD_SPLIT = "registry.household.split"
REGISTRY_HOUSEHOLDS_MERGED = "registry.household.merged"
# A version that v1 consumers cannot read goes on a subject of its own, so that their filters never see it.
REGISTRY_VISIT_RECORDED_V2 = "registry.visit.recorded_v2"
# The visits of one submission in one beat, in one event (keyed by the beat): see VisitsRecorded.
REGISTRY_VISITS_RECORDED = "registry.visits.recorded"
# The registry's namespace for the ids it derives (uuid5), here so that a consumer reading a visit out of a
# visits.recorded event can name it by the id its own visit.recorded event carries (visit_recorded_id).
REGISTRY_NS = uuid.UUID("6f1c1f7e-8f4e-4a43-9b7a-6a1f0d6c2b11")


class VisitConcern(StrEnum):
    """What a grid worker saw that needs attention (走访发现)."""

    dispute = "dispute"
    hazard = "hazard"
    welfare_need = "welfare_need"
    urgent = "urgent"


class VisitRecord(Contract):
    """One household visit (走访) as a grid worker reports it."""

    household_code: HouseholdCode
    visited_at: datetime
    concerns: list[VisitConcern] = Field(default_factory=list, max_length=4)
    people_present: int = Field(default=0, ge=0, le=100)
    persons_present: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=50, description="registry ids of the registered persons met"
    )
    follow_up_requested: bool = False
    note: str = Field(default="", max_length=2000)


class VisitsSubmitted(Contract):
    """A batch of visits accepted at the door (INTAKE)."""

    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[VisitRecord] = Field(min_length=1, max_length=MAX_BATCH)


class HouseUse(StrEnum):
    """What an actual house (实有房屋) is used for."""

    owner_occupied = "owner_occupied"
    let = "let"
    vacant = "vacant"
    business = "business"
    basement_other_use = "basement_other_use"


class HouseholdRegistered(Contract):
    """A household was given its code (一户一码) at an address, in a grid and a police beat."""

    code: HouseholdCode
    address: str
    grid: AreaCode
    beat: AreaCode
    registered_at: datetime
    house_id: str | None = None
    house_use: HouseUse | None = None


class VisitRecorded(Contract):
    """The registry recorded a visit; carries the household's grid and beat (reference data travels by event)."""

    visit_id: str
    household_code: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    grid_worker: str
    visited_at: datetime
    concerns: list[VisitConcern]
    follow_up_requested: bool
    submission_id: str
    record_index: int


class VisitRecordedV2(Contract):
    """v2 of visit.recorded: who visited is the submitter with their role (`visited_by`, was `grid_worker`), and
    who was met is carried (how many people, and the registered persons' ids). Published on its own subject
    (REGISTRY_VISIT_RECORDED_V2) beside v1 while consumers move over; see proto/CONTRACTS.md."""

    visit_id: str
    household_code: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    visited_by: Submitter
    visited_at: datetime
    concerns: list[VisitConcern]
    follow_up_requested: bool
    people_present: int
    persons_present: list[str]
    submission_id: str
    record_index: int

    def as_v1(self) -> VisitRecorded:
        """The same visit as v1 carries it (what v1 lacks is left out), for publishing both during a transition."""
        return VisitRecorded(
            visit_id=self.visit_id,
            household_code=self.household_code,
            grid=self.grid,
            beat=self.beat,
            grid_worker=self.visited_by.sub,
            visited_at=self.visited_at,
            concerns=self.concerns,
            follow_up_requested=self.follow_up_requested,
            submission_id=self.submission_id,
            record_index=self.record_index,
        )


def visit_recorded_id(visit_id: str) -> str:
    """The id of the visit.recorded event of a visit: the same whether the registry published that event or the
    visit came in a visits.recorded batch, so that an effect keyed by it happens once either way."""
    return str(uuid.uuid5(REGISTRY_NS, f"visit.recorded:{visit_id}"))


class VisitsRecorded(Contract):
    """The visits of one submission in one beat, recorded in one transaction and published as one event (on
    REGISTRY_VISITS_RECORDED, keyed by the beat): what the registry publishes by default. A morning's upload of
    500 visits is a handful of events instead of 500, so the registry, the stream and every consumer do their work
    once per batch (proto/CONTRACTS.md). Each visit is as visit.recorded v2 carries it, in submission order."""

    submission_id: str
    beat: AreaCode
    visits: list[VisitRecordedV2] = Field(min_length=1, max_length=MAX_BATCH)


# --- areas: grids (网格), police beats (警格), which beat covers which grid, who is assigned where ---------------
class GridDefined(Contract):
    """A grid (网格) was set up or renamed."""

    code: AreaCode
    name: str
    community: str
    defined_at: datetime


class BeatDefined(Contract):
    """A police beat (警格) was set up or renamed."""

    code: AreaCode
    name: str
    defined_at: datetime


class CoverageChanged(Contract):
    """The grids a police beat covers now (警格+网格); a grid moved here is no longer covered by its old beat."""

    beat: AreaCode
    grids: list[AreaCode]
    moved_from: dict[str, str] = Field(default_factory=dict, description="grid -> the beat that covered it before")
    changed_at: datetime


class AssignmentRole(StrEnum):
    grid_worker = "grid_worker"
    officer = "officer"


class AssignmentChanged(Contract):
    """A person was assigned to an area (a grid worker to a grid, an officer to a beat), or the assignment ended."""

    assignment_id: str
    person: str = Field(description="the person's subject, as in their token")
    role: AssignmentRole
    area: AreaCode
    change: Literal["assigned", "ended"]
    at: datetime


# --- persons and residencies (实有人口 / 流动人口): submitted at the door with personal data protected --------
class ResidencyKind(StrEnum):
    permanent = "permanent"
    floating = "floating"
    tenant = "tenant"


class ProtectedValue(Contract):
    """An ID number or phone as the gateway's keyring protected it (jinshui.kit.pii.Protected)."""

    kind: Literal["id_number", "phone"]
    hash: str
    ciphertext: str
    key_id: str
    masked: str


class PersonData(Contract):
    name: str = Field(min_length=1, max_length=64)
    id_number: ProtectedValue
    phone: ProtectedValue | None = None
    birth_date: date | None = None
    sex: Literal["female", "male"] | None = None


class ArrivalRecord(Contract):
    """A person arrived to live in a household (人来登记)."""

    household_code: HouseholdCode
    person: PersonData
    kind: ResidencyKind
    arrived_at: datetime
    expected_end: datetime | None = None


class ArrivalsSubmitted(Contract):
    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[ArrivalRecord] = Field(min_length=1, max_length=MAX_BATCH)


class PersonRef(Contract):
    """A person named by their registry id or by their ID number (protected)."""

    person_id: str | None = None
    id_number: ProtectedValue | None = None

    @model_validator(mode="after")
    def _one(self) -> PersonRef:
        if (self.person_id is None) == (self.id_number is None):
            raise ValueError("give either person_id or id_number")
        return self


class DepartureRecord(Contract):
    """A person left a household (人走注销)."""

    household_code: HouseholdCode
    person: PersonRef
    departed_at: datetime
    reason: str = Field(default="", max_length=500)


class DeparturesSubmitted(Contract):
    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[DepartureRecord] = Field(min_length=1, max_length=MAX_BATCH)


class MoveRecord(Contract):
    """A person moved from one household to another: one departure and one arrival, applied together."""

    from_household: HouseholdCode
    to_household: HouseholdCode
    person: PersonRef
    moved_at: datetime
    kind: ResidencyKind | None = Field(default=None, description="the new residency's kind; default: as before")
    expected_end: datetime | None = None


class MovesSubmitted(Contract):
    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[MoveRecord] = Field(min_length=1, max_length=MAX_BATCH)


class ResidentArrived(Contract):
    """A residency opened; carries the household's house, grid and beat and the person's keyed ID hash."""

    residency_id: str
    person_id: str
    id_hash: str
    household_code: HouseholdCode
    house_id: str | None = None
    grid: AreaCode
    beat: AreaCode
    kind: ResidencyKind
    arrived_at: datetime
    expected_end: datetime | None = None
    submission_id: str
    record_index: int
    move_id: str | None = None


class ResidentDeparted(Contract):
    """A residency closed."""

    residency_id: str
    person_id: str
    id_hash: str
    household_code: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    departed_at: datetime
    reason: str
    submission_id: str
    record_index: int
    move_id: str | None = None


# --- lettings (租有登记，停有核销) ---------------------------------------------------------------------------
class LettingRecord(Contract):
    """A house let: registered while let."""

    household_code: HouseholdCode
    landlord: str = Field(min_length=1, max_length=64)
    tenants: list[PersonRef] = Field(min_length=1, max_length=20)
    starts_on: date
    expected_end: date | None = None


class LettingsSubmitted(Contract):
    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[LettingRecord] = Field(min_length=1, max_length=MAX_BATCH)


class LettingStop(Contract):
    """A letting stopped: written off, and its tenants' residencies marked for a departure check."""

    letting_id: str
    stopped_on: date
    reason: str = Field(default="", max_length=500)


class LettingStopsSubmitted(Contract):
    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[LettingStop] = Field(min_length=1, max_length=MAX_BATCH)


class LettingRegistered(Contract):
    letting_id: str
    household_code: HouseholdCode
    house_id: str | None = None
    grid: AreaCode
    beat: AreaCode
    tenants: list[str] = Field(description="person ids")
    starts_on: date
    expected_end: date | None = None
    submission_id: str


class LettingStopped(Contract):
    letting_id: str
    household_code: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    stopped_on: date
    reason: str
    departure_checks: list[str] = Field(description="person ids whose residency here is marked for a departure check")
    submission_id: str


# --- floating residencies: renewed, or expired with neither departure nor renewal ----------------------------
class RenewalRecord(Contract):
    """A floating resident stays on: their residency here gets a new expected end."""

    household_code: HouseholdCode
    person: PersonRef
    expected_end: datetime


class RenewalsSubmitted(Contract):
    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[RenewalRecord] = Field(min_length=1, max_length=MAX_BATCH)


class ResidencyRenewed(Contract):
    residency_id: str
    person_id: str
    id_hash: str
    household_code: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    previous_end: datetime | None = None
    expected_end: datetime
    submission_id: str
    record_index: int


class ResidencyExpired(Contract):
    """A floating residency's expected end passed with neither departure nor renewal: confirm the departure."""

    residency_id: str
    person_id: str
    id_hash: str
    household_code: HouseholdCode
    house_id: str | None = None
    grid: AreaCode
    beat: AreaCode
    kind: ResidencyKind
    arrived_at: datetime
    expected_end: datetime


# --- tags (标签化管理): on a person or a household, with since / until, who set it and why ---------------------
TagCode = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")]


class TagRecord(Contract):
    """Set a tag on a person (by id or ID number) or on a household (give exactly one)."""

    tag: TagCode
    person: PersonRef | None = None
    household_code: HouseholdCode | None = None
    since: date
    until: date | None = None
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _one_subject(self) -> TagRecord:
        if (self.person is None) == (self.household_code is None):
            raise ValueError("give either person or household_code")
        if self.until is not None and self.until < self.since:
            raise ValueError("until is before since")
        return self


class TagsSubmitted(Contract):
    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[TagRecord] = Field(min_length=1, max_length=MAX_BATCH)


class TagEnd(Contract):
    """End an open tag (named by its id)."""

    tag_id: str
    ended_on: date
    reason: str = Field(min_length=1, max_length=500)


class TagEndsSubmitted(Contract):
    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[TagEnd] = Field(min_length=1, max_length=MAX_BATCH)


class TagSet(Contract):
    """A tag was set. Self-sufficient for the copies others keep: who (person id and keyed ID hash, or only the
    household), where (household, house, grid, beat), what (tag, whether it is sensitive), since / until, why."""

    tag_id: str
    tag: str
    label: str
    sensitive: bool
    person_id: str | None = None
    id_hash: str | None = None
    household_code: HouseholdCode
    house_id: str | None = None
    grid: AreaCode
    beat: AreaCode
    since: date
    until: date | None = None
    reason: str
    set_by: str
    submission_id: str
    record_index: int


class TagEnded(Contract):
    """A tag ended: by a submitted end, or when its `until` passed (`ended_by` is then `registry`)."""

    tag_id: str
    tag: str
    sensitive: bool
    person_id: str | None = None
    id_hash: str | None = None
    household_code: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    ended_on: date
    reason: str
    ended_by: str
    submission_id: str | None = None


# --- bulk import: one event per chunk of rows, each with at most 1,000 records -------------------------------
class HouseholdsImported(Contract):
    """Households a bulk import registered, one chunk of rows at a time (each as household.registered says it)."""

    import_id: str
    chunk: int
    households: list[HouseholdRegistered] = Field(max_length=1000)


class ResidentsImported(Contract):
    """Residencies a bulk import opened, one chunk at a time (each as resident.arrived says it; `submission_id`
    is the import's id and `record_index` the row number in the file)."""

    import_id: str
    chunk: int
    arrivals: list[ResidentArrived] = Field(max_length=1000)


# --- access audit: who read whose personal data, when and why -------------------------------------------------
class PersonalDataRead(Contract):
    """A person's file was read, masked or whole (on the AUDIT stream; the read fails unless this is acknowledged).

    `fields` says what was shown (`id_number:masked` when only the masked form); `purpose` is the one the reader
    stated, empty when none was needed."""

    read_id: str
    reader: str
    reader_role: str
    purpose: str
    person_ids: list[str]
    fields: list[str]
    resource: str
    read_at: datetime


# --- units (实有单位), corrections and voids, deaths, merges and splits ----------------------------------------
class UnitCategory(StrEnum):
    restaurant = "restaurant"
    internet_cafe = "internet_cafe"
    market_stall = "market_stall"
    shop = "shop"
    other = "other"


class UnitRegistered(Contract):
    """A unit (restaurant, internet café, market stall, shop) registered at a house; its operator by keyed hash."""

    unit_id: str
    name: str
    category: UnitCategory
    licence_number: str | None = None
    household_code: HouseholdCode | None = None
    house_id: str
    grid: AreaCode
    beat: AreaCode
    operator_id_hash: str | None = None
    registered_at: datetime
    registered_by: str


RecordKind = Literal["visit", "residency", "letting", "tag", "unit", "person"]


class RecordCorrected(Contract):
    """A record entered by mistake was corrected: the fields changed, before and after (personal data as its
    keyed hash only), so that copies elsewhere follow."""

    correction_id: str
    kind: RecordKind
    record_id: str
    household_code: HouseholdCode | None = None
    grid: AreaCode | None = None
    beat: AreaCode | None = None
    person_id: str | None = None
    before: dict[str, object]
    after: dict[str, object]
    reason: str
    corrected_by: str
    corrected_at: datetime


class RecordVoided(Contract):
    """A record entered by mistake was voided: it no longer counts (kept in the history)."""

    void_id: str
    kind: RecordKind
    record_id: str
    household_code: HouseholdCode | None = None
    grid: AreaCode | None = None
    beat: AreaCode | None = None
    person_id: str | None = None
    reason: str
    voided_by: str
    voided_at: datetime


class PersonDied(Contract):
    """A death recorded; the person's open residencies closed (each also said by resident.departed)."""

    person_id: str
    id_hash: str
    died_on: date
    reason: str
    residencies_closed: list[str]
    recorded_by: str
    recorded_at: datetime


class PersonsMerged(Contract):
    """Two person records found to be one: `merged` now points to `kept`, which took its residencies and tags."""

    merge_id: str
    kept: str
    kept_id_hash: str
    merged: str
    merged_id_hash: str
    residencies: list[str]
    tags: list[str]
    lettings: list[str]
    visits: list[str] = Field(default_factory=list, description="visits that met the merged record")
    reason: str
    merged_by: str
    merged_at: datetime


class HouseholdSplit(Contract):
    """Members of a household set up their own (a grown child): a new household, their residencies moved."""

    split_id: str
    from_household: HouseholdCode
    new_household: HouseholdCode
    house_id: str
    grid: AreaCode
    beat: AreaCode
    persons: list[str]
    reason: str
    split_by: str
    split_at: datetime


class HouseholdsMerged(Contract):
    """Two household records found to be one: `merged` now points to `kept`, which took its residents and tags."""

    merge_id: str
    kept: HouseholdCode
    merged: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    persons: list[str]
    tags: list[str]
    lettings: list[str]
    reason: str
    merged_by: str
    merged_at: datetime


# CloudEvents type -> model, for every contract this domain publishes (or the gateway publishes for it).
TYPES: dict[str, type[Contract]] = {
    "org.jinshui.intake.visit.submitted.v1": VisitsSubmitted,
    "org.jinshui.registry.household.registered.v1": HouseholdRegistered,
    "org.jinshui.registry.visit.recorded.v1": VisitRecorded,
    "org.jinshui.registry.visit.recorded.v2": VisitRecordedV2,
    "org.jinshui.registry.visits.recorded.v1": VisitsRecorded,
    "org.jinshui.registry.submission.settled.v1": SubmissionSettled,
    "org.jinshui.registry.grid.defined.v1": GridDefined,
    "org.jinshui.registry.beat.defined.v1": BeatDefined,
    "org.jinshui.registry.coverage.changed.v1": CoverageChanged,
    "org.jinshui.registry.assignment.changed.v1": AssignmentChanged,
    "org.jinshui.intake.arrival.submitted.v1": ArrivalsSubmitted,
    "org.jinshui.intake.departure.submitted.v1": DeparturesSubmitted,
    "org.jinshui.intake.move.submitted.v1": MovesSubmitted,
    "org.jinshui.registry.resident.arrived.v1": ResidentArrived,
    "org.jinshui.registry.resident.departed.v1": ResidentDeparted,
    "org.jinshui.audit.pii.read.v1": PersonalDataRead,
    "org.jinshui.intake.letting.submitted.v1": LettingsSubmitted,
    "org.jinshui.intake.letting_stop.submitted.v1": LettingStopsSubmitted,
    "org.jinshui.registry.letting.registered.v1": LettingRegistered,
    "org.jinshui.registry.letting.stopped.v1": LettingStopped,
    "org.jinshui.intake.renewal.submitted.v1": RenewalsSubmitted,
    "org.jinshui.registry.residency.renewed.v1": ResidencyRenewed,
    "org.jinshui.registry.residency.expired.v1": ResidencyExpired,
    "org.jinshui.intake.tag.submitted.v1": TagsSubmitted,
    "org.jinshui.intake.tag_end.submitted.v1": TagEndsSubmitted,
    "org.jinshui.registry.tag.set.v1": TagSet,
    "org.jinshui.registry.tag.ended.v1": TagEnded,
    "org.jinshui.registry.household.imported.v1": HouseholdsImported,
    "org.jinshui.registry.resident.imported.v1": ResidentsImported,
    "org.jinshui.registry.unit.registered.v1": UnitRegistered,
    "org.jinshui.registry.record.corrected.v1": RecordCorrected,
    "org.jinshui.registry.record.voided.v1": RecordVoided,
    "org.jinshui.registry.person.died.v1": PersonDied,
    "org.jinshui.registry.person.merged.v1": PersonsMerged,
    "org.jinshui.registry.household.split.v1": HouseholdSplit,
    "org.jinshui.registry.household.merged.v1": HouseholdsMerged,
}
TYPES_BY_MODEL: dict[type[Contract], str] = {model: t for t, model in TYPES.items()}
