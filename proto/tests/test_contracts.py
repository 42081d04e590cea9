from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import Field, ValidationError

from jinshui.contracts.envelope import decode, encode, new_event
from jinshui.contracts.events import EVENT_TYPES, Contract, VisitRecord, VisitsSubmitted
from jinshui.contracts.schemas import SCHEMA_DIR, current_schemas, dumps, incompatibilities


def test_exported_schemas_match_the_models():
    on_disk = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    expected = {name: dumps(schema) for name, schema in current_schemas().items()}
    assert set(on_disk) == set(expected), "run `make schemas` to export new contracts"
    drifted = [name for name in expected if on_disk[name] != expected[name]]
    assert not drifted, f"schemas drifted from the models (run `make schemas`): {drifted}"


@pytest.mark.parametrize("name", sorted(current_schemas()))
def test_published_schema_is_still_compatible(name):
    published = json.loads((SCHEMA_DIR / name).read_text())
    assert incompatibilities(published, current_schemas()[name]) == []


class _V1(Contract):
    household_code: str
    count: int
    tags: list[str] = Field(default_factory=list)


def _schema(model):
    return model.model_json_schema()


def test_adding_an_optional_field_is_compatible():
    class V1b(_V1):
        note: str = ""

    assert incompatibilities(_schema(_V1), _schema(V1b)) == []


def test_removing_a_field_is_incompatible():
    class V1b(Contract):
        household_code: str
        tags: list[str] = Field(default_factory=list)

    assert incompatibilities(_schema(_V1), _schema(V1b)) == ["/count: removed"]


def test_a_new_required_field_is_incompatible():
    class V1b(_V1):
        beat: str

    assert incompatibilities(_schema(_V1), _schema(V1b)) == ["/beat: newly required"]


def test_changing_a_type_is_incompatible():
    class V1b(Contract):
        household_code: str
        count: str
        tags: list[str] = Field(default_factory=list)

    assert incompatibilities(_schema(_V1), _schema(V1b)) == ["/count: type ['integer'] became ['string']"]


def test_changing_an_item_type_is_incompatible():
    class V1b(Contract):
        household_code: str
        count: int
        tags: list[int] = Field(default_factory=list)

    assert incompatibilities(_schema(_V1), _schema(V1b)) == ["/tags[]: type ['string'] became ['integer']"]


def test_envelope_round_trips_and_versions():
    data = VisitsSubmitted(
        submission_id="s1",
        submitter={"sub": "gw-1", "role": "grid_worker"},
        received_at=datetime(2026, 11, 26, tzinfo=UTC),
        records=[VisitRecord(household_code="JS-1", visited_at=datetime(2026, 11, 26, tzinfo=UTC))],
    )
    event = new_event(type="org.jinshui.intake.visit.submitted.v1", source="/gateway", data=data)
    back = decode(encode(event))
    assert back == event
    assert back.version == 1
    assert EVENT_TYPES[back.type].model_validate(back.data) == data


def test_envelope_refuses_a_type_outside_the_naming_rule():
    with pytest.raises(ValidationError):
        new_event(type="visit.submitted", source="/gateway", data={})


def test_decode_refuses_what_is_not_json():
    with pytest.raises(ValueError):
        decode(b"{not json")
