-- Lettings (租有登记，停有核销): registered while let, written off when stopped.
CREATE TABLE lettings (
    id             text PRIMARY KEY,
    household_code text        NOT NULL REFERENCES households (code),
    landlord       text        NOT NULL,
    starts_on      date        NOT NULL,
    expected_end   date,
    stopped_on     date,
    stop_reason    text,
    submission_id  text        NOT NULL,
    registered_at  timestamptz NOT NULL,
    CHECK (expected_end IS NULL OR expected_end > starts_on)
);
CREATE INDEX lettings_household ON lettings (household_code, starts_on DESC);

CREATE TABLE letting_tenants (
    letting_id text NOT NULL REFERENCES lettings (id),
    person_id  text NOT NULL REFERENCES persons (id),
    PRIMARY KEY (letting_id, person_id)
);
