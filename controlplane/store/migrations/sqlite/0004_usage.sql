-- Usage, health history and the billing export ledger (SQLite).
--
-- usage_batches is the ingestion ledger: one row per agent batch, so a batch
-- re-sent after a lost acknowledgement is counted once. usage_hourly holds
-- the records folded per tenant, meter and UTC hour; export_pending is 1
-- until the hour has a final billing_exports row (sent or skipped), and its
-- partial index keeps the exporter's scan to the hours still to export.

CREATE TABLE usage_batches (
	tenant      TEXT    NOT NULL,
	agent_id    TEXT    NOT NULL,
	seq         INTEGER NOT NULL,
	records     INTEGER NOT NULL,
	received_at INTEGER NOT NULL,
	PRIMARY KEY (tenant, agent_id, seq),
	FOREIGN KEY (tenant, agent_id) REFERENCES agents (tenant, id)
) STRICT;

CREATE TABLE usage_hourly (
	tenant         TEXT    NOT NULL,
	meter          TEXT    NOT NULL,
	hour           INTEGER NOT NULL, -- start of the UTC hour
	sum            REAL    NOT NULL,
	count          INTEGER NOT NULL,
	max            REAL    NOT NULL,
	last_value     REAL    NOT NULL, -- value of the record with the latest time
	last_at        INTEGER NOT NULL,
	export_pending INTEGER NOT NULL DEFAULT 1,
	PRIMARY KEY (tenant, meter, hour)
) STRICT;

CREATE INDEX usage_hourly_export_pending ON usage_hourly (hour) WHERE export_pending;

-- The last recorded state of each of an agent's components; a row is
-- appended to health_events only when a component's status changes.
CREATE TABLE health_components (
	tenant     TEXT    NOT NULL,
	agent_id   TEXT    NOT NULL,
	component  TEXT    NOT NULL,
	status     TEXT    NOT NULL,
	message    TEXT    NOT NULL DEFAULT '',
	changed_at INTEGER NOT NULL, -- when the status last changed
	updated_at INTEGER NOT NULL, -- time of the report last stored
	PRIMARY KEY (tenant, agent_id, component),
	FOREIGN KEY (tenant, agent_id) REFERENCES agents (tenant, id)
) STRICT;

CREATE TABLE health_events (
	id        INTEGER NOT NULL PRIMARY KEY,
	tenant    TEXT    NOT NULL,
	agent_id  TEXT    NOT NULL,
	at        INTEGER NOT NULL,
	component TEXT    NOT NULL,
	status    TEXT    NOT NULL,
	message   TEXT    NOT NULL DEFAULT '',
	FOREIGN KEY (tenant, agent_id) REFERENCES agents (tenant, id)
) STRICT;

CREATE INDEX health_events_agent ON health_events (tenant, agent_id, at);

-- One row per (tenant, meter, hour) handed to the billing exporter.
-- status: sent and skipped are final; failed is retried.
CREATE TABLE billing_exports (
	tenant      TEXT    NOT NULL,
	meter       TEXT    NOT NULL,
	hour        INTEGER NOT NULL,
	identifier  TEXT    NOT NULL,
	value       REAL    NOT NULL,
	status      TEXT    NOT NULL CHECK (status IN ('sent', 'failed', 'skipped')),
	attempts    INTEGER NOT NULL DEFAULT 0,
	last_error  TEXT    NOT NULL DEFAULT '',
	exported_at INTEGER NOT NULL, -- time of the last attempt
	PRIMARY KEY (tenant, meter, hour)
) STRICT;

CREATE INDEX billing_exports_hour ON billing_exports (hour);
