-- Signed deployment plans (SQLite). One row per plan; the signed envelope is
-- kept byte for byte. agents.plan_seq is the last sequence number issued to
-- an agent, so numbering is per agent and gap-free.

ALTER TABLE agents ADD COLUMN plan_seq INTEGER NOT NULL DEFAULT 0;

CREATE TABLE plans (
	id          TEXT    NOT NULL PRIMARY KEY,
	tenant      TEXT    NOT NULL,
	agent_id    TEXT    NOT NULL,
	sequence    INTEGER NOT NULL,
	release_ref TEXT    NOT NULL DEFAULT '',
	dry_run     INTEGER NOT NULL DEFAULT 0,
	envelope    BLOB    NOT NULL,
	state       TEXT    NOT NULL,
	message     TEXT    NOT NULL DEFAULT '',
	steps       BLOB,
	created_by  TEXT    NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	expires_at  INTEGER NOT NULL,
	updated_at  INTEGER NOT NULL,
	acked_at    INTEGER,
	finished_at INTEGER,
	UNIQUE (tenant, agent_id, sequence),
	FOREIGN KEY (tenant, agent_id) REFERENCES agents (tenant, id)
) STRICT;

CREATE INDEX plans_pending ON plans (tenant, agent_id, sequence) WHERE acked_at IS NULL;
CREATE INDEX plans_tenant ON plans (tenant, created_at);
