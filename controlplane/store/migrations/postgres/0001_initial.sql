-- Initial schema (PostgreSQL). Timestamps are timestamptz (microsecond
-- precision; the store truncates to microseconds on both engines). Hashes and
-- opaque JSON documents are bytea so they round-trip byte for byte.

CREATE TABLE tenants (
	name         text        NOT NULL PRIMARY KEY,
	display_name text        NOT NULL DEFAULT '',
	labels       jsonb       NOT NULL DEFAULT '{}',
	created_at   timestamptz NOT NULL
);

CREATE TABLE join_tokens (
	id          text        NOT NULL PRIMARY KEY,
	tenant      text        NOT NULL REFERENCES tenants (name),
	secret_hash bytea       NOT NULL, -- sha256 of the secret; the secret is never stored
	created_by  text        NOT NULL DEFAULT '',
	created_at  timestamptz NOT NULL,
	expires_at  timestamptz NOT NULL,
	used_at     timestamptz,
	used_by     text        NOT NULL DEFAULT ''
);

CREATE INDEX join_tokens_tenant ON join_tokens (tenant);

CREATE TABLE agents (
	tenant             text        NOT NULL REFERENCES tenants (name),
	id                 text        NOT NULL,
	spiffe_id          text        NOT NULL UNIQUE,
	hostname           text        NOT NULL DEFAULT '',
	version            text        NOT NULL DEFAULT '',
	capability_version bigint      NOT NULL DEFAULT 0,
	inventory          bytea,
	health             bytea,
	enrolled_at        timestamptz NOT NULL,
	cert_serial        text        NOT NULL DEFAULT '',
	cert_expires_at    timestamptz,
	last_seen_at       timestamptz,
	connected          boolean     NOT NULL DEFAULT false,
	session_id         text        NOT NULL DEFAULT '',
	revoked_at         timestamptz,
	revoked_by         text        NOT NULL DEFAULT '',
	PRIMARY KEY (tenant, id)
);

CREATE INDEX agents_revoked_at ON agents (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE api_tokens (
	id          text        NOT NULL PRIMARY KEY,
	name        text        NOT NULL,
	role        text        NOT NULL,
	secret_hash bytea       NOT NULL UNIQUE, -- sha256 of the secret
	created_by  text        NOT NULL DEFAULT '',
	created_at  timestamptz NOT NULL,
	revoked_at  timestamptz
);

CREATE TABLE audit_log (
	seq        bigint      NOT NULL PRIMARY KEY,
	time       timestamptz NOT NULL,
	actor      text        NOT NULL DEFAULT '',
	role       text        NOT NULL DEFAULT '',
	action     text        NOT NULL DEFAULT '',
	tenant     text        NOT NULL DEFAULT '',
	target     text        NOT NULL DEFAULT '',
	request_id text        NOT NULL DEFAULT '',
	outcome    text        NOT NULL DEFAULT '',
	source     text        NOT NULL DEFAULT '',
	detail     bytea,
	prev_hash  bytea       NOT NULL,
	hash       bytea       NOT NULL
);

CREATE INDEX audit_log_tenant ON audit_log (tenant, seq);

-- The chain's head, kept apart from audit_log so that deleting the last
-- records is detected. Appenders lock this row (SELECT ... FOR UPDATE).
CREATE TABLE audit_head (
	id   integer NOT NULL PRIMARY KEY CHECK (id = 1),
	seq  bigint  NOT NULL,
	hash bytea   NOT NULL
);

INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
