package store

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"time"
)

// RecordHeartbeats applies the batch in one transaction. Several heartbeats
// for one agent collapse into the last one (keeping the last non-nil
// Health). Heartbeats of unknown agents are ignored: the agent may have been
// deleted while its heartbeat was queued.
func (s *sqlStore) RecordHeartbeats(ctx context.Context, hs []Heartbeat) error {
	hs = collapseHeartbeats(hs)
	if len(hs) == 0 {
		return nil
	}
	if s.d.pg {
		return s.recordHeartbeatsPG(ctx, hs)
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `UPDATE agents SET last_seen_at = ?, health = COALESCE(?, health)
			WHERE tenant = ? AND id = ?`)
		if err != nil {
			return fmt.Errorf("store: heartbeats: %w", err)
		}
		defer stmt.Close()
		for _, h := range hs {
			if _, err := stmt.ExecContext(ctx, s.d.ts(h.At), blob(h.Health), h.Tenant, h.ID); err != nil {
				return fmt.Errorf("store: heartbeat of agent %s: %w", keyString(h.AgentKey), err)
			}
		}
		return nil
	})
}

// recordHeartbeatsPG sends the whole batch as arrays in one statement.
func (s *sqlStore) recordHeartbeatsPG(ctx context.Context, hs []Heartbeat) error {
	var (
		tenants = make([]string, len(hs))
		ids     = make([]string, len(hs))
		ats     = make([]time.Time, len(hs))
		healths = make([][]byte, len(hs))
	)
	for i, h := range hs {
		tenants[i], ids[i] = h.Tenant, h.ID
		ats[i] = normTime(h.At)
		if len(h.Health) > 0 {
			healths[i] = h.Health
		}
	}
	// One statement is one implicit transaction. Batches from several
	// replicas may still deadlock (the join does not promise an order):
	// PostgreSQL aborts one of them, which is retried.
	for attempt := 1; ; attempt++ {
		_, err := s.db.ExecContext(ctx, `UPDATE agents AS a
			SET last_seen_at = u.at, health = COALESCE(u.health, a.health)
			FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bytea[]) AS u(tenant, id, at, health)
			WHERE a.tenant = u.tenant AND a.id = u.id`, tenants, ids, ats, healths)
		if err == nil {
			return nil
		}
		if attempt == 4 || !retryable(err) || ctx.Err() != nil {
			return fmt.Errorf("store: heartbeats: %w", err)
		}
		time.Sleep(time.Duration(attempt*attempt) * 5 * time.Millisecond)
	}
}

// collapseHeartbeats keeps one heartbeat per agent and sorts them by key, so
// that concurrent batches lock rows in the same order. Zero times become now.
func collapseHeartbeats(hs []Heartbeat) []Heartbeat {
	if len(hs) == 0 {
		return nil
	}
	now := time.Now()
	idx := make(map[AgentKey]int, len(hs))
	out := make([]Heartbeat, 0, len(hs))
	for _, h := range hs {
		if h.At.IsZero() {
			h.At = now
		}
		i, ok := idx[h.AgentKey]
		if !ok {
			idx[h.AgentKey] = len(out)
			out = append(out, h)
			continue
		}
		if len(h.Health) == 0 {
			h.Health = out[i].Health
		}
		out[i] = h
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Tenant != out[j].Tenant {
			return out[i].Tenant < out[j].Tenant
		}
		return out[i].ID < out[j].ID
	})
	return out
}
