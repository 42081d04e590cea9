"""Every event contract, by CloudEvents type. Published versions never change incompatibly: add v2 instead.

Models live in one module per domain (registry, incidents, risk); this module gathers them.
"""

from __future__ import annotations

from jinshui.contracts import incidents, registry, risk
from jinshui.contracts.base import *  # noqa: F403
from jinshui.contracts.base import Contract
from jinshui.contracts.incidents import *  # noqa: F403
from jinshui.contracts.registry import *  # noqa: F403
from jinshui.contracts.risk import *  # noqa: F403

EVENT_TYPES: dict[str, type[Contract]] = {**registry.TYPES, **incidents.TYPES, **risk.TYPES}
TYPE_OF: dict[type[Contract], str] = {model: t for t, model in EVENT_TYPES.items()}


def parse(event_type: str, data: dict) -> Contract:
    """The model of a known event type, validated; KeyError for an unknown type."""
    return EVENT_TYPES[event_type].model_validate(data)
