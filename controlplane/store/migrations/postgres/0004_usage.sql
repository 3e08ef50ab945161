-- Usage, health history and the billing export ledger (PostgreSQL).
--
-- usage_batches is the ingestion ledger: one row per agent batch, so a batch
-- re-sent after a lost acknowledgement is counted once. usage_hourly holds
-- the records folded per tenant, meter and UTC hour; export_pending is true
-- until the hour has a final billing_exports row (sent or skipped), and its
-- partial index keeps the exporter's scan to the hours still to export.
-- Sums are double precision: exact for integral values up to 2^53.

CREATE TABLE usage_batches (
	tenant      text        NOT NULL,
	agent_id    text        NOT NULL,
	seq         bigint      NOT NULL,
	records     integer     NOT NULL,
	received_at timestamptz NOT NULL,
	PRIMARY KEY (tenant, agent_id, seq),
	FOREIGN KEY (tenant, agent_id) REFERENCES agents (tenant, id)
);

CREATE TABLE usage_hourly (
	tenant         text             NOT NULL,
	meter          text             NOT NULL,
	hour           timestamptz      NOT NULL, -- start of the UTC hour
	sum            double precision NOT NULL,
	count          bigint           NOT NULL,
	max            double precision NOT NULL,
	last_value     double precision NOT NULL, -- value of the record with the latest time
	last_at        timestamptz      NOT NULL,
	export_pending boolean          NOT NULL DEFAULT true,
	PRIMARY KEY (tenant, meter, hour)
);

CREATE INDEX usage_hourly_export_pending ON usage_hourly (hour) WHERE export_pending;

-- The last recorded state of each of an agent's components; a row is
-- appended to health_events only when a component's status changes.
CREATE TABLE health_components (
	tenant     text        NOT NULL,
	agent_id   text        NOT NULL,
	component  text        NOT NULL,
	status     text        NOT NULL,
	message    text        NOT NULL DEFAULT '',
	changed_at timestamptz NOT NULL, -- when the status last changed
	updated_at timestamptz NOT NULL, -- time of the report last stored
	PRIMARY KEY (tenant, agent_id, component),
	FOREIGN KEY (tenant, agent_id) REFERENCES agents (tenant, id)
);

CREATE TABLE health_events (
	id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	tenant    text        NOT NULL,
	agent_id  text        NOT NULL,
	at        timestamptz NOT NULL,
	component text        NOT NULL,
	status    text        NOT NULL,
	message   text        NOT NULL DEFAULT '',
	FOREIGN KEY (tenant, agent_id) REFERENCES agents (tenant, id)
);

CREATE INDEX health_events_agent ON health_events (tenant, agent_id, at);

-- One row per (tenant, meter, hour) handed to the billing exporter.
-- status: sent and skipped are final; failed is retried.
CREATE TABLE billing_exports (
	tenant      text             NOT NULL,
	meter       text             NOT NULL,
	hour        timestamptz      NOT NULL,
	identifier  text             NOT NULL,
	value       double precision NOT NULL,
	status      text             NOT NULL CHECK (status IN ('sent', 'failed', 'skipped')),
	attempts    integer          NOT NULL DEFAULT 0,
	last_error  text             NOT NULL DEFAULT '',
	exported_at timestamptz      NOT NULL, -- time of the last attempt
	PRIMARY KEY (tenant, meter, hour)
);

CREATE INDEX billing_exports_hour ON billing_exports (hour);
