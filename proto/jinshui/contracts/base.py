"""What every contract shares: the base model, common field types, submissions and their outcomes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

HouseholdCode = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9-]+$")]
AreaCode = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

MAX_BATCH = 500


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Submitter(Contract):
    sub: str
    role: str


class OutcomeStatus(StrEnum):
    applied = "applied"
    rejected = "rejected"


class RecordOutcome(Contract):
    index: int
    status: OutcomeStatus
    reason: str | None = None
    ref: str | None = None


class SubmissionSettled(Contract):
    """The owner's verdict on every record of one submission."""

    submission_id: str
    outcomes: list[RecordOutcome]
