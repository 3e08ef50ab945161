-- Initial schema (SQLite). Timestamps are INTEGER microseconds since the Unix
-- epoch, UTC (read them with datetime(col / 1000000, 'unixepoch')); NULL means
-- unset. Hashes and opaque JSON documents are BLOBs so they round-trip byte
-- for byte.

CREATE TABLE tenants (
	name         TEXT    NOT NULL PRIMARY KEY,
	display_name TEXT    NOT NULL DEFAULT '',
	labels       TEXT    NOT NULL DEFAULT '{}', -- JSON object
	created_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE join_tokens (
	id          TEXT    NOT NULL PRIMARY KEY,
	tenant      TEXT    NOT NULL REFERENCES tenants (name),
	secret_hash BLOB    NOT NULL, -- sha256 of the secret; the secret is never stored
	created_by  TEXT    NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	expires_at  INTEGER NOT NULL,
	used_at     INTEGER,
	used_by     TEXT    NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX join_tokens_tenant ON join_tokens (tenant);

CREATE TABLE agents (
	tenant             TEXT    NOT NULL REFERENCES tenants (name),
	id                 TEXT    NOT NULL,
	spiffe_id          TEXT    NOT NULL UNIQUE,
	hostname           TEXT    NOT NULL DEFAULT '',
	version            TEXT    NOT NULL DEFAULT '',
	capability_version INTEGER NOT NULL DEFAULT 0,
	inventory          BLOB,
	health             BLOB,
	enrolled_at        INTEGER NOT NULL,
	cert_serial        TEXT    NOT NULL DEFAULT '',
	cert_expires_at    INTEGER,
	last_seen_at       INTEGER,
	connected          INTEGER NOT NULL DEFAULT 0,
	session_id         TEXT    NOT NULL DEFAULT '',
	revoked_at         INTEGER,
	revoked_by         TEXT    NOT NULL DEFAULT '',
	PRIMARY KEY (tenant, id)
) STRICT;

CREATE INDEX agents_revoked_at ON agents (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE api_tokens (
	id          TEXT    NOT NULL PRIMARY KEY,
	name        TEXT    NOT NULL,
	role        TEXT    NOT NULL,
	secret_hash BLOB    NOT NULL UNIQUE, -- sha256 of the secret
	created_by  TEXT    NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	revoked_at  INTEGER
) STRICT;

CREATE TABLE audit_log (
	seq        INTEGER NOT NULL PRIMARY KEY,
	time       INTEGER NOT NULL,
	actor      TEXT    NOT NULL DEFAULT '',
	role       TEXT    NOT NULL DEFAULT '',
	action     TEXT    NOT NULL DEFAULT '',
	tenant     TEXT    NOT NULL DEFAULT '',
	target     TEXT    NOT NULL DEFAULT '',
	request_id TEXT    NOT NULL DEFAULT '',
	outcome    TEXT    NOT NULL DEFAULT '',
	source     TEXT    NOT NULL DEFAULT '',
	detail     BLOB,
	prev_hash  BLOB    NOT NULL,
	hash       BLOB    NOT NULL
) STRICT;

CREATE INDEX audit_log_tenant ON audit_log (tenant, seq);

-- The chain's head, kept apart from audit_log so that deleting the last
-- records is detected.
CREATE TABLE audit_head (
	id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
	seq  INTEGER NOT NULL,
	hash BLOB    NOT NULL
) STRICT;

INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));
