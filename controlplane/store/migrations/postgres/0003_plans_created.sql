-- Unacknowledged plans by creation time (PostgreSQL), for the session
-- watcher that asks every poll which agents have new plans
-- (PlansCreatedSince).

CREATE INDEX plans_unacked_created ON plans (created_at) WHERE acked_at IS NULL;
