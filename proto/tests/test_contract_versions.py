"""A contract's next version: visit.recorded v2 is published beside v1 (proto/CONTRACTS.md). The export knows v2
as a new published schema and still refuses an incompatible change to v1."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import pytest

from jinshui.contracts import export, schemas
from jinshui.contracts.base import Submitter
from jinshui.contracts.events import EVENT_TYPES, TYPE_OF, VisitConcern, VisitRecorded, VisitRecordedV2
from jinshui.contracts.schemas import SCHEMA_DIR, current_schemas, incompatibilities

V1 = "org.jinshui.registry.visit.recorded.v1"
V2 = "org.jinshui.registry.visit.recorded.v2"


@pytest.fixture
def schema_dir(tmp_path, monkeypatch):
    """A copy of the published schemas, which the export then writes to."""
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, copy)
    monkeypatch.setattr(export, "SCHEMA_DIR", copy)
    return copy


def test_v2_is_published_beside_v1_and_could_not_have_been_v1():
    assert EVENT_TYPES[V1] is VisitRecorded and EVENT_TYPES[V2] is VisitRecordedV2
    assert TYPE_OF[VisitRecordedV2] == V2
    assert (SCHEMA_DIR / f"{V1}.json").exists() and (SCHEMA_DIR / f"{V2}.json").exists()
    # Why a new version: read as a change of v1, v2 removes a field and requires new ones.
    published_v1 = json.loads((SCHEMA_DIR / f"{V1}.json").read_text())
    problems = incompatibilities(published_v1, current_schemas()[f"{V2}.json"])
    assert "/grid_worker: removed" in problems and "/visited_by: newly required" in problems
    # v1 itself is exactly as published.
    assert incompatibilities(published_v1, current_schemas()[f"{V1}.json"]) == []


def test_the_export_writes_v2_as_a_new_published_schema(schema_dir, capsys):
    (schema_dir / f"{V2}.json").unlink()
    v1_before = (schema_dir / f"{V1}.json").read_text()
    assert export.main() == 0
    assert f"{V2}.json" in capsys.readouterr().out
    assert json.loads((schema_dir / f"{V2}.json").read_text())["title"] == "VisitRecordedV2"
    assert (schema_dir / f"{V1}.json").read_text() == v1_before


def test_the_export_still_refuses_an_incompatible_change_to_v1(schema_dir, monkeypatch, capsys):
    # Someone "upgrades" v1 in place instead of publishing v2: refused, and the published v1 is left as it was.
    monkeypatch.setitem(schemas.EVENT_TYPES, V1, VisitRecordedV2)
    v1_before = (schema_dir / f"{V1}.json").read_text()
    assert export.main() == 1
    err = capsys.readouterr().err
    assert f"{V1}.json" in err and "/grid_worker: removed" in err and "publish a new version instead" in err
    assert (schema_dir / f"{V1}.json").read_text() == v1_before


def test_v2_carries_everything_v1_does():
    v2 = VisitRecordedV2(
        visit_id="v-1",
        household_code="JS-1",
        grid="G01",
        beat="B1",
        visited_by=Submitter(sub="gw-1", role="grid_worker"),
        visited_at=datetime(2026, 11, 27, tzinfo=UTC),
        concerns=[VisitConcern.dispute],
        follow_up_requested=True,
        people_present=2,
        persons_present=["p-1"],
        submission_id="s-1",
        record_index=0,
    )
    v1 = v2.as_v1()
    assert VisitRecorded.model_validate(v1.model_dump(mode="json")) == v1
    assert v1.grid_worker == "gw-1" and v1.concerns == v2.concerns and v1.visit_id == v2.visit_id
