-- Addresses are resolved by their building-unit-room numbers first (see addresses.py).
ALTER TABLE households ADD COLUMN numbers_key text;
CREATE INDEX households_numbers_key ON households (numbers_key);

-- One joint incident; every police call, grid report and visit concern that makes it up is a source.
CREATE TABLE incidents (
    id             text PRIMARY KEY,
    category       text        NOT NULL,   -- police:<category> | report:<kind>
    kind           text        NOT NULL,   -- the correlation group (dispute, hazard, crime, ...)
    status         text        NOT NULL,
    household_code text,
    address        text,
    grid           text,
    beat           text,
    priority       int         NOT NULL,
    opened_at      timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    closed_at      timestamptz,
    assignee       text,
    satisfied      boolean,
    satisfaction_score int,
    overdue        boolean     NOT NULL DEFAULT false,
    merged_into    text REFERENCES incidents (id)
);
CREATE INDEX incidents_list ON incidents (opened_at DESC, id DESC);
CREATE INDEX incidents_status ON incidents (status);

CREATE TABLE sources (
    id                 text PRIMARY KEY,
    origin             text        NOT NULL,   -- police_call | report | visit
    external_id        text        NOT NULL,   -- the call id, report id or visit id
    category           text        NOT NULL,
    kind               text        NOT NULL,
    incident_id        text        NOT NULL REFERENCES incidents (id),
    household_code     text,
    address_text       text,
    address_norm       text,
    address_confidence real,
    address_resolved   boolean     NOT NULL,
    grid               text,
    beat               text,
    occurred_at        timestamptz NOT NULL,
    description        text        NOT NULL DEFAULT '',
    priority           int         NOT NULL DEFAULT 3,
    hazard_category    text,
    photos             jsonb       NOT NULL DEFAULT '[]',
    persons            jsonb       NOT NULL DEFAULT '[]',  -- {name, id_hash, id_masked, role}: never clear values
    person_hashes      text[]      NOT NULL DEFAULT '{}',
    submitted_by       text,
    submission_id      text,
    record_index       int,
    match              jsonb,
    received_at        timestamptz NOT NULL,
    UNIQUE (origin, external_id)
);
CREATE INDEX sources_household ON sources (household_code, occurred_at);
CREATE INDEX sources_address ON sources (address_norm, occurred_at);
CREATE INDEX sources_persons ON sources USING gin (person_hashes);
CREATE INDEX sources_incident ON sources (incident_id);
CREATE INDEX sources_unresolved ON sources (received_at) WHERE NOT address_resolved;

-- Everything that happened to an incident, in order.
CREATE TABLE timeline (
    seq         bigserial PRIMARY KEY,
    incident_id text        NOT NULL REFERENCES incidents (id),
    at          timestamptz NOT NULL,
    what        text        NOT NULL,
    actor       text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}',
    event_id    text UNIQUE
);
CREATE INDEX timeline_incident ON timeline (incident_id, seq);

CREATE TABLE mediations (
    id          text PRIMARY KEY,
    incident_id text        NOT NULL REFERENCES incidents (id),
    mediators   text[]      NOT NULL,
    method      text        NOT NULL,
    held_at     timestamptz NOT NULL,
    outcome     text        NOT NULL,
    agreement   text,
    notes       text        NOT NULL DEFAULT '',
    recorded_by text        NOT NULL,
    recorded_at timestamptz NOT NULL
);
CREATE INDEX mediations_incident ON mediations (incident_id, held_at);
