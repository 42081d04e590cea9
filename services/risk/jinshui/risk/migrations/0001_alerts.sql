CREATE TABLE alerts (
    id             text PRIMARY KEY,
    rule           text        NOT NULL,
    level          text        NOT NULL,
    household_code text,
    grid           text        NOT NULL,
    beat           text        NOT NULL,
    explanation    text        NOT NULL,
    evidence       jsonb       NOT NULL,
    status         text        NOT NULL DEFAULT 'raised',
    raised_at      timestamptz NOT NULL
);
CREATE INDEX alerts_beat_raised ON alerts (beat, raised_at DESC);
