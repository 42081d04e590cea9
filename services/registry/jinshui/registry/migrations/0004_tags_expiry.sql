-- Tags (标签化管理): the kinds a community uses (the six of the practice, and others it configures), and each tag
-- on a person or a household with since / until, who set it and why, and how it ended.
CREATE TABLE tag_kinds (
    code       text PRIMARY KEY,
    label      text        NOT NULL,
    sensitive  boolean     NOT NULL,
    defined_at timestamptz NOT NULL DEFAULT now(),
    defined_by text        NOT NULL DEFAULT 'registry'
);
INSERT INTO tag_kinds (code, label, sensitive) VALUES
    ('disabled', '残疾人', false),
    ('family_in_difficulty', '困难家庭', false),
    ('elderly_alone', '空巢老人', false),
    ('mental_illness', '严重精神障碍', true),
    ('unstable_person', '不稳定人员', true),
    ('community_correction', '社区矫正', true);

CREATE TABLE tags (
    id             text PRIMARY KEY,
    tag            text        NOT NULL REFERENCES tag_kinds (code),
    person_id      text REFERENCES persons (id),
    household_code text        NOT NULL REFERENCES households (code),
    since          date        NOT NULL,
    until          date,
    reason         text        NOT NULL,
    set_by         text        NOT NULL,
    set_at         timestamptz NOT NULL,
    submission_id  text        NOT NULL,
    ended_on       date,
    end_reason     text,
    ended_by       text,
    end_submission text,
    CHECK (until IS NULL OR until >= since)
);
CREATE UNIQUE INDEX tags_open_person ON tags (tag, person_id) WHERE ended_on IS NULL AND person_id IS NOT NULL;
CREATE UNIQUE INDEX tags_open_household ON tags (tag, household_code) WHERE ended_on IS NULL AND person_id IS NULL;
CREATE INDEX tags_household ON tags (household_code);
CREATE INDEX tags_person ON tags (person_id) WHERE person_id IS NOT NULL;

-- Floating residencies whose expected end passed with neither departure nor renewal.
ALTER TABLE residencies ADD COLUMN expired_at timestamptz;
