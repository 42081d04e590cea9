"""Personal data on the way out: masked by default; whole only for police stating a purpose, and only once the
AUDIT stream has acknowledged the record of that read."""

from __future__ import annotations

import uuid
from typing import Any

from jinshui.contracts.envelope import new_event
from jinshui.contracts.registry import AUDIT_PII_READ, PersonalDataRead
from jinshui.kit.natsconn import publish_event
from jinshui.kit.pii import Keyring, Protected
from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity
from jinshui.registry.outbox import SOURCE

REVEALING_ROLES = ("police",)


def wants_whole(caller: Identity, purpose: str | None) -> bool:
    """Whether this read shows personal data whole; a purpose from a role that may not is refused."""
    if not purpose:
        return False
    if caller.role not in REVEALING_ROLES:
        raise Problem(403, f"role {caller.role} may not see personal data whole", type="forbidden")
    if len(purpose.strip()) < 2 or len(purpose) > 500:
        raise Problem(422, "X-Purpose: say why the personal data is needed (2 to 500 characters)")
    return True


def shown(value: dict[str, Any] | None, *, whole: bool, keyring: Keyring) -> str | None:
    if value is None:
        return None
    return keyring.reveal(Protected(**value)) if whole else value["masked"]


async def audit_read(svc, *, caller: Identity, purpose: str, person_ids: list[str], fields: list[str], resource: str):
    """Publish the record of this read and wait for the ack; 503 (and nothing shown) when it does not come."""
    now = svc.clock.now()
    data = PersonalDataRead(
        read_id=str(uuid.uuid4()),
        reader=caller.sub,
        reader_role=caller.role,
        purpose=purpose.strip(),
        person_ids=person_ids,
        fields=fields,
        resource=resource,
        read_at=now,
    )
    event = new_event(
        id=data.read_id, type="org.jinshui.audit.pii.read.v1", source=SOURCE, subject=caller.sub, time=now, data=data
    )
    try:
        if svc.js is None:
            raise RuntimeError("not connected to NATS")
        await publish_event(svc.js, svc.naming, event=event, subject=AUDIT_PII_READ)
    except Exception as e:
        raise Problem(
            503,
            f"this read of personal data could not be audited, so it is not shown: {e!r}",
            type="audit-unavailable",
            headers={"Retry-After": "5"},
        ) from e


def fields_shown(*, whole: bool) -> list[str]:
    """What a read of a person's file showed: the ID number and phone whole, or only their masked forms."""
    return ["name", "id_number", "phone"] if whole else ["name", "id_number:masked", "phone:masked"]
