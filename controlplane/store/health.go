package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Health report bounds. A message or drift detail longer than
// MaxHealthMessage bytes is cut (at a character boundary) rather than
// refused, so a verbose provider does not cost the report.
const (
	MaxHealthComponents = 1000
	MaxHealthName       = 200
	MaxHealthStatus     = 64
	MaxHealthMessage    = 1024
)

// defaultHealthEvents is HealthEvents' page size when limit is not positive.
const defaultHealthEvents = 100

// ComponentState is one component's health as an agent reported it. Drift
// is set when what the last applied plan put in place differs from what is
// live; DriftDetail says what drifted.
type ComponentState struct {
	Name        string
	Status      string
	Message     string
	Drift       bool
	DriftDetail string
}

// HealthEvent is a recorded change of a component's status or drift, with
// the component's state at the change.
type HealthEvent struct {
	AgentKey
	At          time.Time
	Component   string
	Status      string
	Message     string
	Drift       bool
	DriftDetail string
}

func validateHealth(k AgentKey, at time.Time, cs []ComponentState) ([]ComponentState, error) {
	switch {
	case k.Tenant == "" || k.ID == "":
		return nil, fmt.Errorf("health of agent %q: %w: tenant and agent ID are required", keyString(k), ErrInvalid)
	case !validTime(at):
		return nil, fmt.Errorf("health of agent %s: %w: time %v is zero or out of range", keyString(k), ErrInvalid, at)
	case len(cs) > MaxHealthComponents:
		return nil, fmt.Errorf("health of agent %s: %w: %d components, limit %d", keyString(k), ErrInvalid, len(cs), MaxHealthComponents)
	}
	out := make([]ComponentState, len(cs))
	seen := make(map[string]bool, len(cs))
	for i, c := range cs {
		var problem string
		switch {
		case c.Name == "" || len(c.Name) > MaxHealthName || !utf8.ValidString(c.Name):
			problem = fmt.Sprintf("name %q is empty, longer than %d bytes or not UTF-8", trimForError(c.Name), MaxHealthName)
		case seen[c.Name]:
			problem = fmt.Sprintf("name %q appears twice", c.Name)
		case c.Status == "" || len(c.Status) > MaxHealthStatus || !utf8.ValidString(c.Status):
			problem = fmt.Sprintf("status %q is empty, longer than %d bytes or not UTF-8", trimForError(c.Status), MaxHealthStatus)
		default:
			seen[c.Name] = true
			c.Message = cutUTF8(c.Message, MaxHealthMessage)
			c.DriftDetail = cutUTF8(c.DriftDetail, MaxHealthMessage)
			out[i] = c
			continue
		}
		return nil, fmt.Errorf("health of agent %s: %w: component %d: %s", keyString(k), ErrInvalid, i, problem)
	}
	return out, nil
}

// cutUTF8 returns s cut to at most n bytes of valid UTF-8.
func cutUTF8(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// RecordHealth stores the agent's component states and appends a health
// event for each component whose status or drift differs from the last
// recorded one (a component seen for the first time counts as a change). A
// report older than the component's last stored change does not change it
// (a snapshot replayed after a newer one); a change of message or drift
// detail alone updates the stored state without an event. Components
// missing from cs keep their state. ErrNotFound for an unknown agent.
func (s *sqlStore) RecordHealth(ctx context.Context, k AgentKey, at time.Time, cs []ComponentState) error {
	cs, err := validateHealth(k, at, cs)
	if err != nil {
		return err
	}
	at = normTime(at)
	return s.inTx(ctx, func(tx *sql.Tx) error {
		// Serializes reports for one agent across replicas. NO KEY UPDATE
		// does not block the foreign key checks of usage ingestion.
		lock := ""
		if s.d.pg {
			lock = " FOR NO KEY UPDATE"
		}
		var one int
		err := tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM agents WHERE tenant = ? AND id = ?`+lock), k.Tenant, k.ID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("agent %s: %w", keyString(k), ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: record health of agent %s: %w", keyString(k), err)
		}
		if len(cs) == 0 {
			return nil
		}
		type state struct {
			status, message, driftDetail string
			drift                        bool
			updated                      time.Time
		}
		cur := make(map[string]state)
		rows, err := tx.QueryContext(ctx, s.q(`SELECT component, status, message, drift, drift_detail, updated_at FROM health_components
			WHERE tenant = ? AND agent_id = ?`), k.Tenant, k.ID)
		if err != nil {
			return fmt.Errorf("store: record health of agent %s: %w", keyString(k), err)
		}
		for rows.Next() {
			var (
				name string
				st   state
			)
			if err := rows.Scan(&name, &st.status, &st.message, &st.drift, &st.driftDetail, timeCol{&st.updated}); err != nil {
				rows.Close()
				return fmt.Errorf("store: record health of agent %s: %w", keyString(k), err)
			}
			cur[name] = st
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("store: record health of agent %s: %w", keyString(k), err)
		}
		for _, c := range cs {
			old, known := cur[c.Name]
			changed := !known || old.status != c.Status || old.drift != c.Drift
			switch {
			case known && at.Before(old.updated):
				continue // stale
			case !changed && old.message == c.Message && old.driftDetail == c.DriftDetail:
				continue // nothing to store
			}
			if changed {
				if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO health_events
					(tenant, agent_id, at, component, status, message, drift, drift_detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
					k.Tenant, k.ID, s.d.ts(at), c.Name, c.Status, c.Message, c.Drift, c.DriftDetail); err != nil {
					return fmt.Errorf("store: record health of agent %s: component %q: %w", keyString(k), c.Name, err)
				}
			}
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO health_components
				(tenant, agent_id, component, status, message, drift, drift_detail, changed_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (tenant, agent_id, component) DO UPDATE SET
					changed_at = CASE WHEN health_components.status = excluded.status AND health_components.drift = excluded.drift
						THEN health_components.changed_at ELSE excluded.changed_at END,
					status = excluded.status, message = excluded.message, drift = excluded.drift, drift_detail = excluded.drift_detail,
					updated_at = excluded.updated_at`),
				k.Tenant, k.ID, c.Name, c.Status, c.Message, c.Drift, c.DriftDetail, s.d.ts(at), s.d.ts(at)); err != nil {
				return fmt.Errorf("store: record health of agent %s: component %q: %w", keyString(k), c.Name, err)
			}
		}
		return nil
	})
}

// HealthEvents lists agent k's health events newest first, up to limit
// (100 when limit is not positive).
func (s *sqlStore) HealthEvents(ctx context.Context, k AgentKey, limit int) ([]HealthEvent, error) {
	if limit <= 0 {
		limit = defaultHealthEvents
	}
	rows, err := s.rdb.QueryContext(ctx, s.q(`SELECT tenant, agent_id, at, component, status, message, drift, drift_detail FROM health_events
		WHERE tenant = ? AND agent_id = ? ORDER BY at DESC, id DESC LIMIT ?`), k.Tenant, k.ID, limit)
	if err != nil {
		return nil, fmt.Errorf("store: health events of agent %s: %w", keyString(k), err)
	}
	defer rows.Close()
	var out []HealthEvent
	for rows.Next() {
		var e HealthEvent
		if err := rows.Scan(&e.Tenant, &e.ID, timeCol{&e.At}, &e.Component, &e.Status, &e.Message, &e.Drift, &e.DriftDetail); err != nil {
			return nil, fmt.Errorf("store: health events of agent %s: %w", keyString(k), err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: health events of agent %s: %w", keyString(k), err)
	}
	return out, nil
}
