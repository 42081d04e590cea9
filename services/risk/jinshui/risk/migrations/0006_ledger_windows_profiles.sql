-- The close-out ledger of key persons (销号式管理台账): entries, their history, the two signatures that close them.
CREATE TABLE ledger_entries (
    id                text PRIMARY KEY,
    rule              text        NOT NULL,
    person_hash       text        NOT NULL,
    household_code    text,
    grid              text        NOT NULL,
    beat              text        NOT NULL,
    reason            text        NOT NULL,
    interval_days     real        NOT NULL,
    status            text        NOT NULL DEFAULT 'open',
    opened_at         timestamptz NOT NULL,
    last_follow_up_at timestamptz,
    next_review_at    timestamptz,
    misses            integer     NOT NULL DEFAULT 0,
    closed_at         timestamptz,
    evidence          jsonb       NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE UNIQUE INDEX ledger_one_open ON ledger_entries (rule, person_hash) WHERE status = 'open';
CREATE INDEX ledger_household ON ledger_entries (household_code) WHERE status = 'open';
CREATE INDEX ledger_person ON ledger_entries (person_hash);

CREATE TABLE ledger_history (
    seq      bigserial PRIMARY KEY,
    entry_id text        NOT NULL REFERENCES ledger_entries (id),
    at       timestamptz NOT NULL,
    what     text        NOT NULL,
    by       text,
    reason   text,
    evidence jsonb
);
CREATE INDEX ledger_history_entry ON ledger_history (entry_id, at);

CREATE TABLE ledger_signatures (
    entry_id text        NOT NULL REFERENCES ledger_entries (id),
    role     text        NOT NULL,
    by       text        NOT NULL,
    reason   text        NOT NULL,
    at       timestamptz NOT NULL,
    PRIMARY KEY (entry_id, role)
);

-- Risk's copy of households and when each was last visited (rule 7), from REGISTRY.
CREATE TABLE households (
    code            text PRIMARY KEY,
    address         text,
    grid            text        NOT NULL,
    beat            text        NOT NULL,
    registered_at   timestamptz NOT NULL,
    last_visited_at timestamptz
);
CREATE INDEX households_address ON households (address);

-- The tenants of a stopped letting whose departure is awaited (rule 3): cleared by their departure events.
CREATE TABLE letting_checks (
    letting_id     text NOT NULL,
    person_id      text NOT NULL,
    household_code text NOT NULL,
    departed_at    timestamptz,
    PRIMARY KEY (letting_id, person_id)
);
CREATE INDEX letting_checks_person ON letting_checks (person_id, household_code) WHERE departed_at IS NULL;

-- What raised a person's or a household's score, and when: the score is their sum, each decayed by its half-life.
CREATE TABLE score_factors (
    id             text PRIMARY KEY,
    subject_kind   text        NOT NULL CHECK (subject_kind IN ('person', 'household')),
    subject_key    text        NOT NULL,
    rule           text        NOT NULL,
    points         real        NOT NULL,
    half_life_days real        NOT NULL,
    at             timestamptz NOT NULL,
    grid           text,
    beat           text,
    household_code text,
    explanation    text        NOT NULL,
    evidence       jsonb       NOT NULL
);
CREATE INDEX score_factors_subject ON score_factors (subject_kind, subject_key, at);
