-- Hazards: the rectification deadline (整改期限) and re-inspections (复查).
ALTER TABLE incidents
    ADD COLUMN hazard_category      text,
    ADD COLUMN rectify_by           timestamptz,
    ADD COLUMN rectified_at         timestamptz,
    ADD COLUMN rectification_overdue boolean NOT NULL DEFAULT false,
    -- Paused while waiting on a party: the pending timers are kept here until the clocks run again.
    ADD COLUMN paused_at            timestamptz,
    ADD COLUMN paused_waiting_on    text,
    ADD COLUMN paused_timers        jsonb,
    ADD COLUMN paused_seconds       double precision NOT NULL DEFAULT 0;

CREATE TABLE inspections (
    id           text PRIMARY KEY,
    incident_id  text        NOT NULL REFERENCES incidents (id),
    result       text        NOT NULL,   -- rectified | not_rectified
    note         text        NOT NULL DEFAULT '',
    inspected_at timestamptz NOT NULL,
    new_deadline timestamptz,
    inspected_by text        NOT NULL,
    role         text        NOT NULL,
    recorded_at  timestamptz NOT NULL
);
CREATE INDEX inspections_incident ON inspections (incident_id, inspected_at);

-- Extensions of the time to resolve (申请延期), asked for and decided.
CREATE TABLE extensions (
    id                 text PRIMARY KEY,
    incident_id        text        NOT NULL REFERENCES incidents (id),
    days               int         NOT NULL,
    reason             text        NOT NULL,
    status             text        NOT NULL,   -- requested | approved | refused
    requested_by       text        NOT NULL,
    requested_at       timestamptz NOT NULL,
    decided_by         text,
    decided_at         timestamptz,
    decision_reason    text,
    resolve_due_before timestamptz,
    resolve_due_after  timestamptz
);
CREATE INDEX extensions_incident ON extensions (incident_id, requested_at);
CREATE UNIQUE INDEX extensions_one_open ON extensions (incident_id) WHERE status = 'requested';

-- Follow-up visits after closing (事后消解).
CREATE TABLE follow_ups (
    id            text PRIMARY KEY,
    incident_id   text        NOT NULL REFERENCES incidents (id),
    visited_by    text        NOT NULL,
    visited_at    timestamptz NOT NULL,
    note          text        NOT NULL DEFAULT '',
    still_settled boolean     NOT NULL,
    recorded_by   text        NOT NULL,
    recorded_at   timestamptz NOT NULL
);
CREATE INDEX follow_ups_incident ON follow_ups (incident_id, visited_at);
