-- Signed deployment plans (PostgreSQL). One row per plan; the signed envelope
-- is kept byte for byte. agents.plan_seq is the last sequence number issued
-- to an agent, so numbering is per agent and gap-free.

ALTER TABLE agents ADD COLUMN plan_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE plans (
	id          text        NOT NULL PRIMARY KEY,
	tenant      text        NOT NULL,
	agent_id    text        NOT NULL,
	sequence    bigint      NOT NULL,
	release_ref text        NOT NULL DEFAULT '',
	dry_run     boolean     NOT NULL DEFAULT false,
	envelope    bytea       NOT NULL,
	state       text        NOT NULL,
	message     text        NOT NULL DEFAULT '',
	steps       bytea,
	created_by  text        NOT NULL DEFAULT '',
	created_at  timestamptz NOT NULL,
	expires_at  timestamptz NOT NULL,
	updated_at  timestamptz NOT NULL,
	acked_at    timestamptz,
	finished_at timestamptz,
	UNIQUE (tenant, agent_id, sequence),
	FOREIGN KEY (tenant, agent_id) REFERENCES agents (tenant, id)
);

CREATE INDEX plans_pending ON plans (tenant, agent_id, sequence) WHERE acked_at IS NULL;
CREATE INDEX plans_tenant ON plans (tenant, created_at);
