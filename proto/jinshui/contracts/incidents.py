"""Incidents contracts: the one incident stream (police calls and grid reports)."""

from __future__ import annotations

from jinshui.contracts.base import Contract

TYPES: dict[str, type[Contract]] = {}
