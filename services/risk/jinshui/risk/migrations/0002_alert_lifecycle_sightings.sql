-- Alert lifecycle: raised -> acknowledged -> resolved | dismissed; one open alert per rule and subject.
ALTER TABLE alerts
    ADD COLUMN subject_key     text,
    ADD COLUMN attention       integer     NOT NULL DEFAULT 0,
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by text,
    ADD COLUMN closed_at       timestamptz,
    ADD COLUMN closed_by       text,
    ADD COLUMN close_reason    text,
    ADD COLUMN escalated_at    timestamptz,
    ADD COLUMN updated_at      timestamptz;
UPDATE alerts SET subject_key = coalesce(household_code, id), updated_at = raised_at;
ALTER TABLE alerts ALTER COLUMN subject_key SET NOT NULL, ALTER COLUMN updated_at SET NOT NULL;
CREATE UNIQUE INDEX alerts_one_open ON alerts (rule, subject_key) WHERE status IN ('raised', 'acknowledged');
CREATE INDEX alerts_status_raised ON alerts (status, raised_at DESC, id);

CREATE TABLE alert_history (
    alert_id text        NOT NULL REFERENCES alerts (id),
    at       timestamptz NOT NULL,
    what     text        NOT NULL,
    by       text,
    reason   text,
    evidence jsonb
);
CREATE INDEX alert_history_alert ON alert_history (alert_id, at);

-- Estate gates, and the watch-lists their sightings are matched against.
CREATE TABLE gates (
    code       text PRIMARY KEY,
    name       text        NOT NULL,
    grid       text        NOT NULL,
    beat       text        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE SEQUENCE watch_version;
CREATE TABLE watch_entries (
    id          text PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('plate', 'person')),
    match_key   text        NOT NULL,  -- the normalised plate, or the person's keyed hash
    masked      text        NOT NULL,
    level       text        NOT NULL,
    reason      text        NOT NULL,
    expires_at  timestamptz,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    removed_at  timestamptz,
    removed_by  text,
    version     bigint      NOT NULL DEFAULT nextval('watch_version')
);
CREATE INDEX watch_entries_version ON watch_entries (version);

-- Only matches are kept (with their evidence); a sighting that matches nothing is not stored at all.
CREATE TABLE watch_hits (
    id         text PRIMARY KEY,
    entry_id   text        NOT NULL REFERENCES watch_entries (id),
    alert_id   text        NOT NULL REFERENCES alerts (id),
    gate       text        NOT NULL,
    seen_at    timestamptz NOT NULL,
    confidence real        NOT NULL,
    event_id   text        NOT NULL
);
