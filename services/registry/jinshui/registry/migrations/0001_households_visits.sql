CREATE TABLE households (
    code          text PRIMARY KEY,
    address       text        NOT NULL,
    grid          text        NOT NULL,
    beat          text        NOT NULL,
    registered_at timestamptz NOT NULL,
    registered_by text        NOT NULL
);

CREATE TABLE visits (
    id                  text PRIMARY KEY,
    household_code      text        NOT NULL REFERENCES households (code),
    grid_worker         text        NOT NULL,
    visited_at          timestamptz NOT NULL,
    concerns            text[]      NOT NULL DEFAULT '{}',
    people_present      integer     NOT NULL DEFAULT 0,
    follow_up_requested boolean     NOT NULL DEFAULT false,
    note                text        NOT NULL DEFAULT '',
    submission_id       text        NOT NULL,
    record_index        integer     NOT NULL,
    recorded_at         timestamptz NOT NULL
);
CREATE INDEX visits_household ON visits (household_code, visited_at DESC);
