-- Areas: grids (网格), police beats (警格), which beat covers which grid, who is assigned where.
CREATE TABLE grids (
    code       text PRIMARY KEY,
    name       text        NOT NULL,
    community  text        NOT NULL,
    defined_at timestamptz NOT NULL,
    defined_by text        NOT NULL
);

CREATE TABLE beats (
    code       text PRIMARY KEY,
    name       text        NOT NULL,
    defined_at timestamptz NOT NULL,
    defined_by text        NOT NULL
);

CREATE TABLE coverage (
    grid  text PRIMARY KEY REFERENCES grids (code),
    beat  text        NOT NULL REFERENCES beats (code),
    since timestamptz NOT NULL
);

CREATE TABLE assignments (
    id          text PRIMARY KEY,
    person      text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('grid_worker', 'officer')),
    area        text        NOT NULL,
    since       timestamptz NOT NULL,
    until       timestamptz,
    assigned_by text        NOT NULL
);
CREATE UNIQUE INDEX assignments_open ON assignments (person, role, area) WHERE until IS NULL;

-- Actual houses (实有房屋) at standard addresses.
CREATE TABLE houses (
    id            text PRIMARY KEY,
    address       text        NOT NULL UNIQUE,
    building      text,
    unit          text,
    floor         text,
    room          text,
    use           text,
    grid          text        NOT NULL,
    registered_at timestamptz NOT NULL
);

ALTER TABLE households ADD COLUMN house_id text REFERENCES houses (id);
CREATE INDEX households_grid ON households (grid);
CREATE INDEX households_address ON households (address text_pattern_ops);

-- Persons: the ID number and phone as the kit protects them (ciphertext, key id, masked), found by keyed hash.
CREATE TABLE persons (
    id            text PRIMARY KEY,
    name          text        NOT NULL,
    id_hash       text        NOT NULL UNIQUE,
    id_number     jsonb       NOT NULL,
    phone_hash    text,
    phone         jsonb,
    birth_date    date,
    sex           text,
    registered_at timestamptz NOT NULL
);
CREATE INDEX persons_name ON persons (name text_pattern_ops);
CREATE INDEX persons_phone ON persons (phone_hash);

-- Residencies (实有人口 / 流动人口): a person has at most one open residency.
CREATE TABLE residencies (
    id                   text PRIMARY KEY,
    person_id            text        NOT NULL REFERENCES persons (id),
    household_code       text        NOT NULL REFERENCES households (code),
    kind                 text        NOT NULL,
    arrived_at           timestamptz NOT NULL,
    expected_end         timestamptz,
    departed_at          timestamptz,
    departure_reason     text,
    arrival_submission   text        NOT NULL,
    departure_submission text,
    departure_check      boolean     NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX residencies_open ON residencies (person_id) WHERE departed_at IS NULL;
CREATE INDEX residencies_household ON residencies (household_code, arrived_at DESC);

-- Every change to a household's file, with who, when and through which submission.
CREATE TABLE history (
    seq            bigserial PRIMARY KEY,
    household_code text        NOT NULL,
    entity         text        NOT NULL,
    entity_id      text        NOT NULL,
    action         text        NOT NULL,
    data           jsonb       NOT NULL DEFAULT '{}',
    actor          text        NOT NULL,
    submission_id  text,
    at             timestamptz NOT NULL,
    UNIQUE (entity, entity_id, action)
);
CREATE INDEX history_household ON history (household_code, seq);

-- The registry's index of the AUDIT stream, for GET /v1/audit.
CREATE TABLE audit_reads (
    read_id     text PRIMARY KEY,
    reader      text        NOT NULL,
    reader_role text        NOT NULL,
    purpose     text        NOT NULL,
    person_ids  text[]      NOT NULL,
    fields      text[]      NOT NULL,
    resource    text        NOT NULL,
    read_at     timestamptz NOT NULL
);
CREATE INDEX audit_reads_at ON audit_reads (read_at DESC);
CREATE INDEX audit_reads_persons ON audit_reads USING gin (person_ids);
