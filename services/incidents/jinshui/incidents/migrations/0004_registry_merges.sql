-- Households and persons the registry found to be one: the merged household points to the kept one, and a merged
-- person's keyed hash is an alias of the kept person's (so that correlation and rules see one person).
ALTER TABLE households ADD COLUMN merged_into text;

CREATE TABLE person_aliases (
    merged_hash text PRIMARY KEY,
    kept_hash   text        NOT NULL,
    merge_id    text        NOT NULL,
    merged_at   timestamptz NOT NULL
);
CREATE INDEX person_aliases_kept ON person_aliases (kept_hash);
