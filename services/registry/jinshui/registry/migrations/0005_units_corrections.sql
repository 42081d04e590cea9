-- Units (实有单位): restaurants, internet cafés, market stalls, shops, at a house; the operator's ID number and
-- phone as the kit protects them.
CREATE TABLE units (
    id                  text PRIMARY KEY,
    name                text        NOT NULL,
    category            text        NOT NULL,
    licence_number      text,
    household_code      text REFERENCES households (code),
    house_id            text        NOT NULL REFERENCES houses (id),
    grid                text        NOT NULL,
    beat                text        NOT NULL,
    operator_name       text,
    operator_id_hash    text,
    operator_id_number  jsonb,
    operator_phone_hash text,
    operator_phone      jsonb,
    registered_at       timestamptz NOT NULL,
    registered_by       text        NOT NULL,
    voided_at           timestamptz
);
CREATE UNIQUE INDEX units_licence ON units (licence_number) WHERE licence_number IS NOT NULL AND voided_at IS NULL;
CREATE INDEX units_house ON units (house_id);
CREATE INDEX units_grid ON units (grid);

-- Corrections and voids: a record entered by mistake no longer counts (it stays, marked, in the history).
ALTER TABLE visits ADD COLUMN voided_at timestamptz;
ALTER TABLE residencies ADD COLUMN voided_at timestamptz;
ALTER TABLE lettings ADD COLUMN voided_at timestamptz;
ALTER TABLE tags ADD COLUMN voided_at timestamptz;

-- Deaths, and person records found to be one (the merged one points to the kept one).
ALTER TABLE persons ADD COLUMN died_on date;
ALTER TABLE persons ADD COLUMN death_reason text;
ALTER TABLE persons ADD COLUMN merged_into text REFERENCES persons (id);

-- Household records found to be one.
ALTER TABLE households ADD COLUMN merged_into text REFERENCES households (code);
