-- Incidents' own copy of the registry's households (reference data travels by event).
CREATE TABLE households (
    code          text PRIMARY KEY,
    address       text        NOT NULL,
    grid          text        NOT NULL,
    beat          text        NOT NULL,
    registered_at timestamptz NOT NULL
);
