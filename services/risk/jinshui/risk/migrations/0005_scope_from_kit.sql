-- Assignments now live in the kit's scope_assignments (one copy, one way for every service).
DROP TABLE assignments;
