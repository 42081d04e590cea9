"""JetStream streams and subjects. A prefix lets several deployments (or tests) share one NATS server."""

from __future__ import annotations

from dataclasses import dataclass

DAY = 24 * 3600


@dataclass(frozen=True)
class StreamDef:
    name: str
    subjects: tuple[str, ...]
    max_age_seconds: int = 0  # 0 keeps messages until limits say otherwise
    duplicate_window_seconds: int = 120


INTAKE = StreamDef("INTAKE", ("intake.>",), max_age_seconds=30 * DAY)
SIGHTINGS = StreamDef("SIGHTINGS", ("sightings.>",), max_age_seconds=1 * DAY)
REGISTRY = StreamDef("REGISTRY", ("registry.>",))
INCIDENTS = StreamDef("INCIDENTS", ("incidents.>",))
RISK = StreamDef("RISK", ("risk.>",))
AUDIT = StreamDef("AUDIT", ("audit.>",), max_age_seconds=3 * 365 * DAY)
DLQ = StreamDef("DLQ", ("dlq.>",), max_age_seconds=30 * DAY)

ALL_STREAMS = (INTAKE, SIGHTINGS, REGISTRY, INCIDENTS, RISK, AUDIT, DLQ)


@dataclass(frozen=True)
class Naming:
    """Applies a deployment's prefix to stream names, subjects and durable consumer names."""

    prefix: str = ""

    def stream(self, stream: StreamDef | str) -> str:
        name = stream.name if isinstance(stream, StreamDef) else stream
        return f"{self.prefix.upper()}_{name}" if self.prefix else name

    def subject(self, subject: str) -> str:
        return f"{self.prefix}.{subject}" if self.prefix else subject

    def unprefix(self, subject: str) -> str:
        if self.prefix and subject.startswith(self.prefix + "."):
            return subject[len(self.prefix) + 1 :]
        return subject

    def subjects(self, stream: StreamDef) -> list[str]:
        return [self.subject(s) for s in stream.subjects]


# Subjects: <domain>.<entity>.<verb>[.<key>]; the key (household code, beat) is last so that a
# deployment can partition with subject mapping.
INTAKE_VISITS = "intake.visit.submitted"
REGISTRY_HOUSEHOLD_REGISTERED = "registry.household.registered"
REGISTRY_VISIT_RECORDED = "registry.visit.recorded"
REGISTRY_SUBMISSION_SETTLED = "registry.submission.settled"
RISK_ALERT_RAISED = "risk.alert.raised"
RISK_ALERT = "risk.alert"  # risk.alert.<verb>.<beat>
RISK_WATCH_ENTRY_CHANGED = "risk.watch_entry.changed"
RISK_TASK = "risk.task"  # risk.task.<verb>.<grid>
RISK_LEDGER = "risk.ledger"  # risk.ledger.<verb>.<grid>
RISK_LETTING = "risk.letting"  # risk.letting.<verb>.<grid>
RISK_HOUSEHOLD = "risk.household"  # risk.household.<verb>.<grid>
RISK_SUBMISSION_SETTLED = "risk.submission.settled"
SIGHTINGS_SUBMITTED = "sightings.batch.submitted"
DLQ_PREFIX = "dlq"
# One INTAKE or SIGHTINGS message carries a whole submitted batch (up to 500 records), a REGISTRY visits.recorded
# a beat's share of one: a consumer fetches up to BATCHES_PER_FETCH of them and applies them in transactions of
# about RECORDS_PER_TRANSACTION records, so that 32 small submissions cost one transaction, not 16, and one
# transaction stays around a thousand records, not a hundred thousand.
BATCHES_PER_FETCH = 32
RECORDS_PER_TRANSACTION = 1000


def keyed(subject: str, key: str) -> str:
    """A subject with its ordering key as the last token (dots and wildcards in the key are replaced)."""
    safe = "".join("_" if c in ".*> \t" else c for c in key) or "_"
    return f"{subject}.{safe}"
