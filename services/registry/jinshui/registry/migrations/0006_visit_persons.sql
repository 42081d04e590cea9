-- The registered persons a visit met (registry person ids), beside the count of people present.
ALTER TABLE visits ADD COLUMN persons_present text[] NOT NULL DEFAULT '{}';
CREATE INDEX visits_persons ON visits USING gin (persons_present);
