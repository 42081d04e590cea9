"""JSON Schema of the contracts: export to proto/schemas/, and the compatibility rule for published ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.events import EVENT_TYPES

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
ENVELOPE_FILE = "cloudevent.json"


def schema_of(event_type: str) -> dict[str, Any]:
    schema = EVENT_TYPES[event_type].model_json_schema()
    return {"$id": f"{event_type}.json", **schema}


def current_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for the envelope and every event type."""
    out = {ENVELOPE_FILE: {"$id": ENVELOPE_FILE, **CloudEvent.model_json_schema()}}
    for t in sorted(EVENT_TYPES):
        out[f"{t}.json"] = schema_of(t)
    return out


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return _resolve(schema, schema["$defs"][ref.split("/")[-1]])
    return node


def _types(schema: dict[str, Any], node: dict[str, Any]) -> set[str]:
    node = _resolve(schema, node)
    if "anyOf" in node:
        return set().union(*(_types(schema, n) for n in node["anyOf"]))
    if "enum" in node:
        return {f"enum:{v}" for v in node["enum"]}
    if "const" in node:
        return {f"enum:{node['const']}"}
    t = node.get("type", "any")
    return {t} if isinstance(t, str) else set(t)


def incompatibilities(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """Why a consumer written against `old` could not read (or a producer of `old` could not write) `new`.

    The rule: no property removed, no property's type narrowed, no enum value removed, no new required
    property; nested objects are checked the same way.
    """
    problems: list[str] = []

    def walk(o_root, o_node, n_root, n_node, where):
        o_node, n_node = _resolve(o_root, o_node), _resolve(n_root, n_node)
        o_types, n_types = _types(o_root, o_node), _types(n_root, n_node)
        if "any" not in n_types and not o_types <= n_types:
            problems.append(f"{where or '/'}: type {sorted(o_types)} became {sorted(n_types)}")
        o_props, n_props = o_node.get("properties", {}), n_node.get("properties", {})
        for name in o_props:
            if name not in n_props:
                problems.append(f"{where}/{name}: removed")
            else:
                walk(o_root, o_props[name], n_root, n_props[name], f"{where}/{name}")
        added_required = set(n_node.get("required", [])) - set(o_node.get("required", []))
        for name in sorted(added_required):
            problems.append(f"{where}/{name}: newly required")
        if "items" in o_node and "items" in n_node:
            walk(o_root, o_node["items"], n_root, n_node["items"], f"{where}[]")
        for key in ("anyOf",):
            if key in o_node and key in n_node:
                for i, (a, b) in enumerate(zip(o_node[key], n_node[key], strict=False)):
                    if _resolve(o_root, a).get("properties") or _resolve(n_root, b).get("properties"):
                        walk(o_root, a, n_root, b, f"{where}|{i}")

    walk(old, old, new, new, path)
    return problems
