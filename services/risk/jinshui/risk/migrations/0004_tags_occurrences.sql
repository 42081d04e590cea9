-- Risk's copy of the registry's person tags (by keyed ID hash only), and the occurrences windowed rules count.
CREATE TABLE person_tags (
    tag_id         text PRIMARY KEY,
    id_hash        text,
    tag            text        NOT NULL,
    household_code text        NOT NULL,
    grid           text        NOT NULL,
    beat           text        NOT NULL,
    active         boolean     NOT NULL,
    at             timestamptz NOT NULL
);
CREATE INDEX person_tags_hash ON person_tags (id_hash) WHERE active;

CREATE TABLE rule_occurrences (
    rule     text        NOT NULL,
    key      text        NOT NULL,
    event_id text        NOT NULL,
    type     text        NOT NULL,
    at       timestamptz NOT NULL,
    PRIMARY KEY (rule, key, event_id)
);
CREATE INDEX rule_occurrences_window ON rule_occurrences (rule, key, at);
