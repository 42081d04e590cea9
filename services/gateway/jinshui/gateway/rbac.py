"""Which role may call which endpoint: the one table the gateway enforces (tests walk all of it)."""

from __future__ import annotations

from fastapi import Depends, Request

from jinshui.gateway.auth import require
from jinshui.kit.tokens import Identity

SUBMITTERS_READ = (
    "grid_worker",
    "grid_platform",
    "police",
    "police_platform",
    "gate_system",
    "mediator",
    "community_admin",
)
REGISTRY_READ = ("police", "grid_worker", "community_admin", "mediator")
RESIDENCY_SUBMITTERS = ("grid_worker", "grid_platform", "community_admin")
INCIDENT_READ = ("police", "mediator", "community_admin", "grid_worker")
INCIDENT_HANDLERS = ("police", "mediator", "community_admin", "grid_worker")  # the move itself is checked per role
INCIDENT_ROLES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/v1/police-calls"): ("police_platform", "police"),
    ("POST", "/v1/reports"): ("grid_worker", "grid_platform"),
    ("GET", "/v1/incidents"): INCIDENT_READ,
    ("GET", "/v1/incidents/{incident_id}"): INCIDENT_READ,
    ("POST", "/v1/incidents/{incident_id}/transitions"): INCIDENT_HANDLERS,
    ("POST", "/v1/incidents/{incident_id}/mediations"): ("mediator", "community_admin"),
    ("POST", "/v1/incidents/{incident_id}/satisfaction"): ("mediator", "community_admin", "police"),
    ("POST", "/v1/incidents/{incident_id}/sources"): ("mediator", "police", "community_admin"),
    ("POST", "/v1/incidents/{incident_id}/sources/{source_id}/unlink"): ("mediator", "police", "community_admin"),
    ("GET", "/v1/sources/unresolved"): ("mediator", "police", "community_admin"),
    ("GET", "/v1/mentions/unresolved"): ("mediator", "police", "community_admin"),
    ("POST", "/v1/incidents/{incident_id}/sources/{source_id}/persons/{index}/link"): (
        "police",
        "mediator",
        "community_admin",
    ),
    ("GET", "/v1/stats/incidents"): ("police", "mediator", "community_admin"),
    ("POST", "/v1/incidents/{incident_id}/rectification-deadline"): ("grid_worker", "police", "community_admin"),
    ("POST", "/v1/incidents/{incident_id}/inspections"): ("grid_worker", "police", "community_admin"),
    ("POST", "/v1/incidents/{incident_id}/pause"): ("police", "mediator", "community_admin"),
    ("POST", "/v1/incidents/{incident_id}/resume"): ("police", "mediator", "community_admin"),
    ("POST", "/v1/incidents/{incident_id}/extensions"): INCIDENT_HANDLERS,
    ("POST", "/v1/incidents/{incident_id}/extensions/{extension_id}/decision"): ("community_admin", "police"),
    ("POST", "/v1/incidents/{incident_id}/follow-ups"): INCIDENT_HANDLERS,
}

ROLES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/v1/visits"): ("grid_worker", "grid_platform"),
    ("GET", "/v1/submissions/{submission_id}"): SUBMITTERS_READ,
    ("POST", "/v1/households"): ("community_admin", "grid_worker"),
    ("GET", "/v1/households/{code}"): ("police", "grid_worker", "community_admin", "mediator"),
    ("POST", "/v1/grids"): ("community_admin",),
    ("GET", "/v1/grids"): REGISTRY_READ,
    ("POST", "/v1/beats"): ("community_admin",),
    ("GET", "/v1/beats"): REGISTRY_READ,
    ("PUT", "/v1/beats/{code}/grids"): ("community_admin",),
    ("POST", "/v1/assignments"): ("community_admin",),
    ("POST", "/v1/assignments/{assignment_id}/end"): ("community_admin",),
    ("GET", "/v1/households/{code}/qr"): ("police", "grid_worker", "community_admin"),
    ("GET", "/v1/households/{code}/history"): ("police", "grid_worker", "community_admin"),
    ("POST", "/v1/persons/search"): ("police", "grid_worker", "community_admin"),
    ("GET", "/v1/persons/{person_id}"): ("police", "grid_worker", "community_admin"),
    ("GET", "/v1/audit"): ("community_admin",),
    ("POST", "/v1/residents/arrivals"): RESIDENCY_SUBMITTERS,
    ("POST", "/v1/residents/departures"): RESIDENCY_SUBMITTERS,
    ("POST", "/v1/residents/moves"): RESIDENCY_SUBMITTERS,
    ("POST", "/v1/lettings"): RESIDENCY_SUBMITTERS,
    ("POST", "/v1/lettings/{letting_id}/stop"): RESIDENCY_SUBMITTERS,
    ("POST", "/v1/residents/renewals"): RESIDENCY_SUBMITTERS,
    ("POST", "/v1/tags"): (*RESIDENCY_SUBMITTERS, "police"),
    ("POST", "/v1/tags/end"): (*RESIDENCY_SUBMITTERS, "police"),
    ("GET", "/v1/tag-kinds"): REGISTRY_READ,
    ("POST", "/v1/tag-kinds"): ("community_admin",),
    ("GET", "/v1/grids/{code}/coverage"): ("grid_worker", "police", "community_admin"),
    ("GET", "/v1/my/households-due"): ("grid_worker",),
    ("POST", "/v1/imports"): ("community_admin",),
    ("POST", "/v1/units"): ("community_admin", "grid_worker"),
    ("GET", "/v1/units"): REGISTRY_READ,
    ("POST", "/v1/corrections"): ("community_admin", "grid_worker", "police"),  # the author or an admin
    ("POST", "/v1/voids"): ("community_admin", "grid_worker", "police"),
    ("POST", "/v1/persons/{person_id}/death"): ("community_admin", "grid_worker", "police"),
    ("POST", "/v1/persons/merge"): ("community_admin",),
    ("POST", "/v1/households/{code}/split"): ("community_admin", "grid_worker"),
    ("POST", "/v1/households/merge"): ("community_admin",),
    ("GET", "/v1/alerts"): ("police",),
    ("GET", "/v1/alerts/stream"): ("police",),
    ("GET", "/v1/alerts/{alert_id}"): ("police",),
    ("POST", "/v1/alerts/{alert_id}/acknowledge"): ("police",),
    ("POST", "/v1/alerts/{alert_id}/resolve"): ("police",),
    ("POST", "/v1/alerts/{alert_id}/dismiss"): ("police",),
    ("POST", "/v1/gates"): ("police", "community_admin"),
    ("GET", "/v1/gates"): ("police", "community_admin"),
    ("POST", "/v1/watchlists"): ("police",),
    ("GET", "/v1/watchlists"): ("police",),
    ("DELETE", "/v1/watchlists/{entry_id}"): ("police",),
    ("POST", "/v1/sightings"): ("gate_system",),
    ("GET", "/v1/rules"): ("police", "community_admin"),
    ("POST", "/v1/rules/reload"): ("community_admin",),
    ("GET", "/v1/tasks"): ("grid_worker", "community_admin", "police"),
    ("GET", "/v1/ledger"): ("police", "community_admin", "grid_worker"),
    ("GET", "/v1/ledger/{entry_id}"): ("police", "community_admin", "grid_worker"),
    ("POST", "/v1/ledger/{entry_id}/close"): ("police", "community_admin"),
    ("GET", "/v1/profiles/persons/{person_hash}"): ("police", "community_admin", "grid_worker"),
    ("GET", "/v1/profiles/households/{code}"): ("police", "community_admin", "grid_worker"),
    ("GET", "/v1/profiles/addresses/{address}"): ("police", "community_admin", "grid_worker"),
    ("GET", "/v1/ops/status"): ("ops",),
    **INCIDENT_ROLES,
}


def allowed(method: str, path: str):
    """The dependency for one endpoint: authenticated, a role the table admits, within the role's rate."""
    check_role = require(*ROLES[(method, path)])

    async def dependency(request: Request) -> Identity:  # async: no thread hop per request
        identity = check_role(request)
        request.app.state.rate_limiter.check(sub=identity.sub, role=identity.role)
        return identity

    return Depends(dependency)
