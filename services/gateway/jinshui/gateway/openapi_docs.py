"""The gateway's public OpenAPI, completed: a summary and description per endpoint, the bearer scheme, the
problem+json answers every /v1 call can give, and request examples. Documentation only: no route changes.

A route that sets its own `summary=` keeps it; the table below fills in the others (one place, beside the role
table, so the routes' modules stay as their owners write them)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

PROBLEM = "application/problem+json"

# (method, path) -> (summary, description)
DOCS: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/v1/visits"): (
        "Submit household visits (走访)",
        "Up to 500 visits from a grid worker or the grid platform, submitted through INTAKE: `202` with a "
        "submission id, or with `Prefer: wait=N` the outcome per record when it comes in time.",
    ),
    ("GET", "/v1/submissions/{submission_id}"): (
        "Read one of your submissions",
        "Its state (`received`, then `settled` with an outcome per record). Only the submitter sees it.",
    ),
    ("GET", "/v1/alerts/stream"): (
        "Live alert feed (Server-Sent Events)",
        "Events named `alert` whose data is a CloudEvent (`org.jinshui.risk.alert.*.v1`); ids are RISK stream "
        "sequences, so `Last-Event-ID` resumes with no gap and no repeat. `reset` when the id is older than the "
        "stream keeps; `reconnect` when this client fell too far behind. Comments are heartbeats.",
    ),
    ("GET", "/v1/grids"): ("List grids (网格)", "The grids the registry knows, with the beat covering each."),
    ("POST", "/v1/grids"): ("Define a grid", "Community admins set up the grids."),
    ("GET", "/v1/beats"): ("List police beats (警格)", "The beats and the grids each covers."),
    ("POST", "/v1/beats"): ("Define a police beat", "Community admins set up the beats."),
    ("PUT", "/v1/beats/{code}/grids"): ("Set the grids a beat covers", "Replaces the beat's coverage."),
    ("GET", "/v1/grids/{code}/coverage"): ("Who covers a grid", "The grid's beat and assigned people."),
    ("POST", "/v1/assignments"): ("Assign a person to a grid or beat", "Scope follows assignments."),
    ("POST", "/v1/assignments/{assignment_id}/end"): ("End an assignment", "From now on, out of that scope."),
    ("POST", "/v1/households"): (
        "Register a household (一户一码)",
        "The household gets its code (given, or generated with a check character), address, grid and beat.",
    ),
    ("GET", "/v1/households/{code}"): (
        "Household card",
        "Address, house, residents (personal data masked; police stating an `X-Purpose` see it whole, and the "
        "read is audited), lettings, tags, last visits.",
    ),
    ("GET", "/v1/households/{code}/qr"): ("Household QR code", "The code as a QR image (SVG or PNG)."),
    ("GET", "/v1/households/{code}/history"): ("Household history", "Every version of the household's file."),
    ("GET", "/v1/my/households-due"): ("Households due a visit", "The caller's households not visited lately."),
    ("POST", "/v1/persons/search"): (
        "Search persons",
        "By name prefix, ID number, phone or address; ID numbers and phones are matched by keyed hash and shown "
        "masked.",
    ),
    ("GET", "/v1/persons/{person_id}"): (
        "Read a person",
        "Masked by default; police stating an `X-Purpose` see ID number and phone whole (audited).",
    ),
    ("GET", "/v1/audit"): ("Personal data reads (audit)", "Who read whose personal data whole, when and why."),
    ("POST", "/v1/residents/arrivals"): (
        "Register arrivals (人来登记)",
        "Residents arriving at a household; ID numbers and phones are protected at the door before anything is "
        "published.",
    ),
    ("POST", "/v1/residents/departures"): ("Register departures (人走注销)", "Residents leaving a household."),
    ("POST", "/v1/residents/moves"): ("Register moves", "Residents moving from one household to another."),
    ("POST", "/v1/residents/renewals"): ("Renew floating residencies", "Extend a floating resident's stay."),
    ("POST", "/v1/lettings"): ("Register lettings (租有登记)", "A household let, with its tenants."),
    ("POST", "/v1/lettings/{letting_id}/stop"): ("Stop a letting (停有核销)", "Writes the letting off."),
    ("POST", "/v1/tags"): ("Tag persons or households (标签化管理)", "Tags set in the field, submitted."),
    ("POST", "/v1/tags/end"): ("End tags", "Cross tags off, submitted."),
    ("GET", "/v1/tag-kinds"): ("List tag kinds", "The kinds of tag and who may see them."),
    ("POST", "/v1/tag-kinds"): ("Define a tag kind", "Community admins define the tags in use."),
    ("GET", "/v1/alerts"): (
        "List alerts",
        "Newest first; filter by `status` and `level` (repeatable), `beat`, `rule`, `since`; page with `before` "
        "(the previous page's `next`).",
    ),
    ("GET", "/v1/alerts/{alert_id}"): ("Read an alert", "With its history: raised, acknowledged, resolved..."),
    ("POST", "/v1/alerts/{alert_id}/acknowledge"): (
        "Acknowledge an alert",
        "The desk has seen it and someone is on it; an optional note. `409` when the alert cannot move so.",
    ),
    ("POST", "/v1/alerts/{alert_id}/resolve"): ("Resolve an alert", "Dealt with; a reason is required."),
    ("POST", "/v1/alerts/{alert_id}/dismiss"): ("Dismiss an alert", "Not a real risk; a reason is required."),
    ("GET", "/v1/gates"): ("List gates", "Estate gates whose cameras report sightings."),
    ("POST", "/v1/gates"): ("Add a gate", "A gate, in a grid and a beat."),
    ("GET", "/v1/watchlists"): ("List watch-list entries", "Plates, and persons by masked ID number."),
    ("POST", "/v1/watchlists"): (
        "Add a watch-list entry",
        "A plate or a person (by ID number, kept by risk only as a keyed hash and a mask) and the alert level.",
    ),
    ("DELETE", "/v1/watchlists/{entry_id}"): ("Remove a watch-list entry", "Sightings no longer match it."),
    ("POST", "/v1/sightings"): (
        "Submit gate sightings",
        "Plates and persons seen at a gate, matched against the watch-lists; ID numbers become keyed hashes at "
        "the door.",
    ),
    ("GET", "/v1/rules"): ("Risk rules in force", "The rule file's version, its rules, and why a file was refused."),
    ("POST", "/v1/rules/reload"): ("Reload the risk rules", "Read the rule file again; a bad file is refused."),
    ("GET", "/v1/tasks"): ("List tasks", "Follow-ups for grid workers made by the rules."),
    ("POST", "/v1/police-calls"): (
        "Submit police calls (警情)",
        "From the police platform; persons' ID numbers are protected at the door. Becomes or joins an incident.",
    ),
    ("POST", "/v1/reports"): ("Submit grid reports", "Disputes and hazards reported by grid workers."),
    ("GET", "/v1/incidents"): (
        "List incidents",
        "Filter by status, category, kind, grid, beat, household, time and overdue; paged by cursor.",
    ),
    ("GET", "/v1/incidents/{incident_id}"): (
        "Read an incident",
        "With its sources from both sides, its timeline, mediation record and deadlines.",
    ),
    ("POST", "/v1/incidents/{incident_id}/transitions"): ("Move an incident on", "One step of its lifecycle."),
    ("POST", "/v1/incidents/{incident_id}/mediations"): ("Record a mediation (调解)", "Who, how, and the outcome."),
    ("POST", "/v1/incidents/{incident_id}/satisfaction"): ("Record satisfaction", "The parties' satisfaction."),
    ("POST", "/v1/incidents/{incident_id}/sources"): ("Link a source", "Join a police call or report to it."),
    ("POST", "/v1/incidents/{incident_id}/sources/{source_id}/unlink"): (
        "Unlink a source",
        "The source becomes an incident of its own.",
    ),
    ("GET", "/v1/sources/unresolved"): ("Sources with unresolved addresses", "Waiting for someone to place them."),
    ("GET", "/v1/stats/incidents"): ("Incident statistics", "Counts, closure and satisfaction rates by group."),
}

EXAMPLES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/visits"): {
        "visits": [
            {"household_code": "A1", "visited_at": "2026-03-01T09:30:00+08:00", "concerns": ["urgent"]},
        ]
    },
    ("POST", "/v1/households"): {"code": "A1", "address": "金水小区1-1-101", "grid": "G01", "beat": "B1"},
    ("POST", "/v1/alerts/{alert_id}/acknowledge"): {"reason": "民警已前往"},
    ("POST", "/v1/alerts/{alert_id}/resolve"): {"reason": "visited, family calm"},
    ("POST", "/v1/alerts/{alert_id}/dismiss"): {"reason": "false alarm"},
    ("POST", "/v1/persons/search"): {"name_prefix": "张"},
    ("POST", "/v1/gates"): {"code": "N1", "name": "北门", "grid": "G01", "beat": "B1"},
    ("POST", "/v1/watchlists"): {"kind": "plate", "plate": "鲁E·12345", "level": "HIGH", "reason": "stolen vehicle"},
}

PROBLEM_SCHEMA = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `errors` lists the fields at fault for a 422.",
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
    "required": ["type", "title", "status"],
    "additionalProperties": True,
    "example": {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no household Z9",
        "instance": "/v1/households/Z9",
    },
}

# What every /v1 call may answer besides its own success: the door's and the owner's refusals.
ERRORS = {
    "400": "Bad request (a header or cursor that is not understood)",
    "401": "No token, or one that is not valid",
    "403": "This role may not call this endpoint, or not on this thing",
    "404": "Not found, or outside the caller's scope",
    "409": "In conflict with the current state (e.g. an alert that cannot move so, a duplicate)",
    "413": "The body is too large",
    "415": "The body is not JSON",
    "422": "The request is not valid (`errors` says which fields)",
    "429": "Too many requests for this caller (see Retry-After)",
    "503": "Not ready, or the owning service did not answer (see Retry-After)",
}


def _explicit_summaries(app: FastAPI) -> set[tuple[str, str]]:
    """The operations whose route sets its own summary."""
    out: set[tuple[str, str]] = set()

    def walk(routes) -> None:
        for r in routes:
            if isinstance(r, APIRoute):
                if r.summary:
                    out.update((m, r.path) for m in r.methods)
            elif hasattr(r, "original_router"):
                walk(r.original_router.routes)
            elif hasattr(r, "routes"):
                walk(r.routes)

    walk(app.router.routes)
    return out


def enrich(schema: dict, explicit: set[tuple[str, str]]) -> dict:
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A token from the identity provider (in development: `jinshui token --role police`).",
    }
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    problem = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            key = (method.upper(), path)
            if key in DOCS and key not in explicit:
                op["summary"], op["description"] = DOCS[key]
            if not path.startswith("/v1/"):
                continue
            op["security"] = [{"bearer": []}]
            if not op.get("tags"):
                op["tags"] = [path.split("/")[2]]
            responses = op.setdefault("responses", {})
            for code, description in ERRORS.items():
                responses.setdefault(code, {"description": description, "content": problem})
            responses["422"] = {"description": ERRORS["422"], "content": problem}  # problem+json, not FastAPI's
            params = {p.get("name", "").lower() for p in op.get("parameters", [])}
            if "prefer" in params and "200" not in responses:
                responses["200"] = {
                    "description": "The outcome per record, when it came within `Prefer: wait`",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and key in EXAMPLES:
                body["example"] = EXAMPLES[key]
    stream = schema.get("paths", {}).get("/v1/alerts/stream", {}).get("get")
    if stream is not None:
        stream["responses"]["200"] = {
            "description": "An endless text/event-stream of alert events",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    qr = schema.get("paths", {}).get("/v1/households/{code}/qr", {}).get("get")
    if qr is not None:
        qr["responses"]["200"] = {
            "description": "The QR image",
            "content": {"image/svg+xml": {"schema": {"type": "string"}}, "image/png": {"schema": {"type": "string"}}},
        }
    return schema


def install(app: FastAPI) -> None:
    """Complete the generated OpenAPI once, when it is first asked for."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = enrich(generate(), _explicit_summaries(app))
        return app.openapi_schema

    app.openapi = openapi
