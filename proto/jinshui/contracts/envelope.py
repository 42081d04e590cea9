"""The CloudEvents 1.0 envelope, structured mode (application/cloudevents+json)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

CONTENT_TYPE = "application/cloudevents+json"
TYPE_PREFIX = "org.jinshui."


class CloudEvent(BaseModel):
    """One event as it travels: the CloudEvents context attributes and the data."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: str = Field(pattern=r"^org\.jinshui\.[a-z_]+\.[a-z_]+\.[a-z_]+\.v[0-9]+$")
    subject: str | None = None
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    traceparent: str | None = None
    data: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.type.rsplit(".v", 1)[1])


def new_event(
    *,
    type: str,
    source: str,
    data: BaseModel | dict[str, Any],
    subject: str | None = None,
    id: str | None = None,
    time: datetime | None = None,
) -> CloudEvent:
    """An event with a fresh id (or the given, derived one) and the time given or now."""
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return CloudEvent(
        id=id or str(uuid.uuid4()),
        source=source,
        type=type,
        subject=subject,
        time=time or datetime.now(UTC),
        data=payload,
    )


def encode(event: CloudEvent) -> bytes:
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


def decode(raw: bytes) -> CloudEvent:
    """Parse an envelope; raises ValueError (pydantic.ValidationError or JSON error) when it is not one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from e
    return CloudEvent.model_validate(obj)
