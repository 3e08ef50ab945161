-- Drift flags in the health history (PostgreSQL): a component drifts when
-- what the last applied plan put in place differs from what is live. A
-- change of drift appends a health_events row like a change of status, and
-- moves health_components.changed_at; drift_detail (what drifted, for
-- humans) changing alone does neither. Rows written before this migration
-- have no drift. (Adding a column with a constant default rewrites no rows.)

ALTER TABLE health_components
	ADD COLUMN drift        boolean NOT NULL DEFAULT false,
	ADD COLUMN drift_detail text    NOT NULL DEFAULT '';

ALTER TABLE health_events
	ADD COLUMN drift        boolean NOT NULL DEFAULT false,
	ADD COLUMN drift_detail text    NOT NULL DEFAULT '';
