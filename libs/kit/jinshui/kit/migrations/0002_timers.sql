-- Timers are rows: a restart loses none; firing writes the outbox in the same transaction.
CREATE TABLE timers (
    kind      text        NOT NULL,
    ref       text        NOT NULL,
    due_at    timestamptz NOT NULL,
    payload   jsonb       NOT NULL DEFAULT '{}',
    fired_at  timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, ref)
);
CREATE INDEX timers_due ON timers (due_at) WHERE fired_at IS NULL;
