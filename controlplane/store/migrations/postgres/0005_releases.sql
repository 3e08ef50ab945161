-- Releases and rollouts (PostgreSQL): what tenants carry for rollouts (tier,
-- cell, maintenance windows, version pin, current release, feature flags),
-- signed releases (immutable), rollouts with their per-tenant targets and
-- the lease that lets one control-plane replica drive each, and settings
-- (the fleet-wide freeze).

ALTER TABLE tenants ADD COLUMN tier text NOT NULL DEFAULT 'pool';
ALTER TABLE tenants ADD COLUMN cell text NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN windows text NOT NULL DEFAULT '[]';
ALTER TABLE tenants ADD COLUMN pin text NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN release text NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN flags text NOT NULL DEFAULT '{}';

CREATE TABLE releases (
	version    text    NOT NULL PRIMARY KEY,
	name       text    NOT NULL,
	envelope   bytea      NOT NULL,
	digest     text    NOT NULL,
	pushed_by  text    NOT NULL DEFAULT '',
	created_at timestamptz NOT NULL
);

CREATE TABLE rollouts (
	id          text    NOT NULL PRIMARY KEY,
	release     text    NOT NULL REFERENCES releases (version),
	spec        text    NOT NULL,
	state       text    NOT NULL,
	control     text    NOT NULL DEFAULT '',
	wave        integer NOT NULL DEFAULT 0,
	reason      text    NOT NULL DEFAULT '',
	message     text    NOT NULL DEFAULT '',
	gate        text    NOT NULL DEFAULT '{}',
	wave_done_at timestamptz,
	created_by  text    NOT NULL DEFAULT '',
	created_at  timestamptz NOT NULL,
	updated_at  timestamptz NOT NULL,
	finished_at timestamptz,
	lease_owner text    NOT NULL DEFAULT '',
	lease_until timestamptz
);

CREATE INDEX rollouts_active ON rollouts (created_at) WHERE finished_at IS NULL;

CREATE TABLE rollout_targets (
	rollout_id       text    NOT NULL REFERENCES rollouts (id),
	tenant           text    NOT NULL REFERENCES tenants (name),
	wave             integer NOT NULL,
	position         integer NOT NULL,
	state            text    NOT NULL,
	plan_id          text    NOT NULL DEFAULT '',
	previous_release text    NOT NULL DEFAULT '',
	rollback_plan_id text    NOT NULL DEFAULT '',
	message          text    NOT NULL DEFAULT '',
	updated_at       timestamptz NOT NULL,
	PRIMARY KEY (rollout_id, tenant)
);

CREATE TABLE settings (
	key        text    NOT NULL PRIMARY KEY,
	value      text    NOT NULL,
	updated_at timestamptz NOT NULL
);
