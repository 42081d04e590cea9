-- The visits risk has seen, so that a visit the registry voids or re-dates stops counting (or counts at its right
-- time) for the household's last visit (rule 7).
CREATE TABLE visits_seen (
    visit_id       text PRIMARY KEY,
    household_code text        NOT NULL,
    visited_at     timestamptz NOT NULL,
    voided         boolean     NOT NULL DEFAULT false
);
CREATE INDEX visits_seen_household ON visits_seen (household_code) WHERE NOT voided;
