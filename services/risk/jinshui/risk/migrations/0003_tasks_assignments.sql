-- Risk's own copy of who is assigned where (from REGISTRY), and the tasks rules give grid workers.
CREATE TABLE assignments (
    assignment_id text PRIMARY KEY,
    person        text        NOT NULL,
    role          text        NOT NULL,
    area          text        NOT NULL,
    active        boolean     NOT NULL,
    at            timestamptz NOT NULL
);
CREATE INDEX assignments_area ON assignments (area) WHERE active;

CREATE TABLE tasks (
    id              text PRIMARY KEY,
    rule            text        NOT NULL,
    title           text        NOT NULL,
    household_code  text,
    grid            text        NOT NULL,
    beat            text        NOT NULL,
    assignee        text,
    alert_id        text REFERENCES alerts (id),
    resolves_alert  boolean     NOT NULL DEFAULT false,
    status          text        NOT NULL DEFAULT 'open',
    due_at          timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    closed_at       timestamptz,
    closed_by_event text,
    evidence        jsonb       NOT NULL
);
CREATE INDEX tasks_open_household ON tasks (household_code) WHERE status = 'open';
CREATE INDEX tasks_grid ON tasks (grid, status, due_at);
