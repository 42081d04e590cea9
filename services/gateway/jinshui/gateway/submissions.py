"""Submissions: accepted when JetStream has them; their outcome folded into the `submissions` KV bucket."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from datetime import datetime
from typing import Any

import orjson
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.events import OutcomeStatus, SubmissionSettled
from jinshui.contracts.streams import Naming
from jinshui.kit.consumer import Permanent
from jinshui.kit.natsconn import publish_event
from jinshui.kit.tokens import Identity

SOURCE = "/jinshui/gateway"
INTAKE_NS = uuid.UUID("5d8a3c0e-41f7-4c8e-9a53-0f3b2a7d1c64")


def bucket_name(naming: Naming, name: str) -> str:
    return f"{naming.prefix}_{name}" if naming.prefix else name


async def open_bucket(js, naming: Naming, name: str, *, ttl_seconds: int, replicas: int = 1) -> KeyValue:
    try:
        return await js.key_value(bucket_name(naming, name))
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket_name(naming, name), ttl=float(ttl_seconds), storage=StorageType.FILE, replicas=replicas
            )
        )


class Submissions:
    def __init__(self, *, js, kv: KeyValue, naming: Naming) -> None:
        self.js, self.kv, self.naming = js, kv, naming

    async def submit(
        self,
        *,
        caller: Identity,
        kind: str,
        event_type: str,
        subject: str,
        data: dict[str, Any],
    ) -> dict[str, Any]:
        """Write `received`, then publish one INTAKE message (`data`: the contract, JSON-ready); returns its state."""
        submission_id = data["submission_id"]
        received_at = datetime.fromisoformat(data["received_at"])
        state = {
            "submission_id": submission_id,
            "kind": kind,
            "submitter": caller.sub,
            "status": "received",
            "received_at": received_at.isoformat(),
            "records": len(data["records"]),
        }
        try:
            created = await self.kv.create(submission_id, orjson.dumps(state))
        except KeyWrongLastSequenceError:
            created = None  # a retry of a submission already received: keep what we know of it
        # The event id follows from the submission id, so a retried submission is one event (deduplicated by
        # JetStream within its window and by the consumer's inbox after it).
        event = new_event(
            id=str(uuid.uuid5(INTAKE_NS, submission_id)),
            type=event_type,
            source=SOURCE,
            subject=submission_id,
            time=received_at,
            data=data,
        )
        try:
            await publish_event(self.js, self.naming, event=event, subject=subject)
        except Exception:
            if created is not None:
                with contextlib.suppress(Exception):
                    await self.kv.delete(submission_id, last=created)
            raise
        return state

    async def get(self, submission_id: str) -> dict[str, Any] | None:
        if not KV_KEY.fullmatch(submission_id):
            return None  # not a key this bucket can hold, so not a submission id we gave
        try:
            entry = await self.kv.get(submission_id)
        except KeyNotFoundError:
            return None
        return orjson.loads(entry.value) if entry.value else None

    async def wait_settled(self, submission_id: str, *, timeout: float) -> dict[str, Any] | None:
        """The settled state, if it comes within `timeout` seconds (polls the bucket with a growing interval)."""
        deadline = time.monotonic() + timeout
        interval = 0.005
        while True:
            state = await self.get(submission_id)
            if state is not None and state.get("status") != "received":
                return state
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 2, 0.1)

    async def fold_settled(self, _conn, event: CloudEvent) -> None:
        """Fold an owner's `submission.settled` into the bucket (a put of the final state: idempotent)."""
        try:
            settled = SubmissionSettled.model_validate(event.data)
        except ValueError as e:
            raise Permanent(f"not a valid settlement: {e}") from e
        state = await self.get(settled.submission_id) or {"submission_id": settled.submission_id}
        applied = sum(1 for o in settled.outcomes if o.status == OutcomeStatus.applied)
        rejected = len(settled.outcomes) - applied
        state.update(
            status="applied" if rejected == 0 else "rejected" if applied == 0 else "partially_applied",
            applied=applied,
            rejected=rejected,
            settled_at=event.time.isoformat(),
            outcomes=[o.model_dump(mode="json", exclude_none=True) for o in settled.outcomes],
        )
        await self.kv.put(settled.submission_id, orjson.dumps(state))


KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


def new_submission_id(idempotency_id: str | None = None) -> str:
    """A fresh id, or the one an Idempotency-Key stands for (so a retry after a lost answer is the same one)."""
    return idempotency_id or str(uuid.uuid4())
