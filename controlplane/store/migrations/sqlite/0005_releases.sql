-- Releases and rollouts (SQLite): what tenants carry for rollouts (tier,
-- cell, maintenance windows, version pin, current release, feature flags),
-- signed releases (immutable), rollouts with their per-tenant targets and
-- the lease that lets one control-plane replica drive each, and settings
-- (the fleet-wide freeze).

ALTER TABLE tenants ADD COLUMN tier TEXT NOT NULL DEFAULT 'pool';
ALTER TABLE tenants ADD COLUMN cell TEXT NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN windows TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tenants ADD COLUMN pin TEXT NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN release TEXT NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN flags TEXT NOT NULL DEFAULT '{}';

CREATE TABLE releases (
	version    TEXT    NOT NULL PRIMARY KEY,
	name       TEXT    NOT NULL,
	envelope   BLOB    NOT NULL,
	digest     TEXT    NOT NULL,
	pushed_by  TEXT    NOT NULL DEFAULT '',
	created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE rollouts (
	id          TEXT    NOT NULL PRIMARY KEY,
	release     TEXT    NOT NULL REFERENCES releases (version),
	spec        TEXT    NOT NULL,
	state       TEXT    NOT NULL,
	control     TEXT    NOT NULL DEFAULT '',
	wave        INTEGER NOT NULL DEFAULT 0,
	reason      TEXT    NOT NULL DEFAULT '',
	message     TEXT    NOT NULL DEFAULT '',
	gate        TEXT    NOT NULL DEFAULT '{}',
	wave_done_at INTEGER,
	created_by  TEXT    NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	updated_at  INTEGER NOT NULL,
	finished_at INTEGER,
	lease_owner TEXT    NOT NULL DEFAULT '',
	lease_until INTEGER
) STRICT;

CREATE INDEX rollouts_active ON rollouts (created_at) WHERE finished_at IS NULL;

CREATE TABLE rollout_targets (
	rollout_id       TEXT    NOT NULL REFERENCES rollouts (id),
	tenant           TEXT    NOT NULL REFERENCES tenants (name),
	wave             INTEGER NOT NULL,
	position         INTEGER NOT NULL,
	state            TEXT    NOT NULL,
	plan_id          TEXT    NOT NULL DEFAULT '',
	previous_release TEXT    NOT NULL DEFAULT '',
	rollback_plan_id TEXT    NOT NULL DEFAULT '',
	message          TEXT    NOT NULL DEFAULT '',
	updated_at       INTEGER NOT NULL,
	PRIMARY KEY (rollout_id, tenant)
) STRICT;

CREATE TABLE settings (
	key        TEXT    NOT NULL PRIMARY KEY,
	value      TEXT    NOT NULL,
	updated_at INTEGER NOT NULL
) STRICT;
