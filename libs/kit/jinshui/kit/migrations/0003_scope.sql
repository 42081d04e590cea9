-- Every service's copy of who is assigned where (from the registry's assignment events), for scoping rows.
CREATE TABLE scope_assignments (
    assignment_id text PRIMARY KEY,
    person        text        NOT NULL,
    role          text        NOT NULL,  -- grid_worker (area = a grid) or officer (area = a beat)
    area          text        NOT NULL,
    active        boolean     NOT NULL,
    at            timestamptz NOT NULL
);
CREATE INDEX scope_assignments_person ON scope_assignments (person) WHERE active;
CREATE INDEX scope_assignments_area ON scope_assignments (area) WHERE active;
