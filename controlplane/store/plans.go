package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"attache.dev/attache/internal/auditlog"
)

// PlanState is where a plan is in its life.
type PlanState string

// Plan states. Pending plans are offered to the agent until it acknowledges
// them (accepted or refused); the terminal states never change again.
const (
	PlanPending   PlanState = "pending"
	PlanAccepted  PlanState = "accepted"
	PlanRunning   PlanState = "running"
	PlanSucceeded PlanState = "succeeded"
	PlanFailed    PlanState = "failed"
	PlanRefused   PlanState = "refused"
)

// Terminal reports whether no further update may change s.
func (s PlanState) Terminal() bool {
	return s == PlanSucceeded || s == PlanFailed || s == PlanRefused
}

// Valid reports whether s is a known state.
func (s PlanState) Valid() bool {
	switch s {
	case PlanPending, PlanAccepted, PlanRunning, PlanSucceeded, PlanFailed, PlanRefused:
		return true
	}
	return false
}

// Plan is a signed deployment plan for one agent.
type Plan struct {
	ID         string
	Tenant     string
	AgentID    string
	Sequence   uint64
	Release    string
	DryRun     bool
	Envelope   []byte // the signed DSSE envelope, byte for byte
	State      PlanState
	Message    string
	Steps      []byte // JSON: per-step status as last reported
	CreatedBy  string
	CreatedAt  time.Time
	ExpiresAt  time.Time
	UpdatedAt  time.Time
	AckedAt    *time.Time // the agent accepted or refused it
	FinishedAt *time.Time
}

// Agent is the key of the plan's agent.
func (p Plan) Agent() AgentKey { return AgentKey{Tenant: p.Tenant, ID: p.AgentID} }

// PlanFilter selects plans in ListPlans, newest first. Zero values select all.
type PlanFilter struct {
	Tenant  string
	AgentID string
	Limit   int // 0 means 100
}

// PlanUpdate is a status report from the agent.
type PlanUpdate struct {
	State   PlanState
	Message string
	Steps   []byte // nil keeps the previous value
	At      time.Time
}

const planCols = `id, tenant, agent_id, sequence, release_ref, dry_run, envelope, state, message, steps,
	created_by, created_at, expires_at, updated_at, acked_at, finished_at`

func scanPlan(sc interface{ Scan(...any) error }) (Plan, error) {
	var (
		p   Plan
		seq int64
	)
	err := sc.Scan(&p.ID, &p.Tenant, &p.AgentID, &seq, &p.Release, &p.DryRun, &p.Envelope, &p.State, &p.Message, &p.Steps,
		&p.CreatedBy, timeCol{&p.CreatedAt}, timeCol{&p.ExpiresAt}, timeCol{&p.UpdatedAt}, nullTimeCol{&p.AckedAt}, nullTimeCol{&p.FinishedAt})
	p.Sequence = uint64(seq)
	return p, err
}

// CreatePlan issues the agent's next sequence number, calls build with it
// (build signs the plan, which must carry the number), and stores the result
// with the audit entry, all in one transaction. A revoked agent gets none.
func (s *sqlStore) CreatePlan(ctx context.Context, k AgentKey, build func(seq uint64) (Plan, error), audit auditlog.Entry) (Plan, error) {
	var out Plan
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		p, err := s.createPlanTx(ctx, tx, k, build, audit)
		out = p
		return err
	})
	return out, err
}

// createPlanTx is CreatePlan inside tx.
func (s *sqlStore) createPlanTx(ctx context.Context, tx *sql.Tx, k AgentKey, build func(seq uint64) (Plan, error), audit auditlog.Entry) (Plan, error) {
	var (
		last    int64
		revoked *time.Time
	)
	err := tx.QueryRowContext(ctx, s.q(`SELECT plan_seq, revoked_at FROM agents WHERE tenant = ? AND id = ?`+s.d.forUpdate),
		k.Tenant, k.ID).Scan(&last, nullTimeCol{&revoked})
	if errors.Is(err, sql.ErrNoRows) {
		return Plan{}, fmt.Errorf("agent %s/%s: %w", k.Tenant, k.ID, ErrNotFound)
	}
	if err != nil {
		return Plan{}, fmt.Errorf("store: create plan: read agent %s/%s: %w", k.Tenant, k.ID, err)
	}
	if revoked != nil {
		return Plan{}, fmt.Errorf("agent %s/%s: %w", k.Tenant, k.ID, ErrRevoked)
	}
	seq := uint64(last) + 1
	p, err := build(seq)
	if err != nil {
		return Plan{}, err
	}
	if p.Tenant != k.Tenant || p.AgentID != k.ID || p.Sequence != seq {
		return Plan{}, fmt.Errorf("store: create plan: built plan is for %s/%s #%d, want %s/%s #%d", p.Tenant, p.AgentID, p.Sequence, k.Tenant, k.ID, seq)
	}
	now := s.timeNow()
	if p.CreatedAt.IsZero() {
		p.CreatedAt = now
	}
	p.UpdatedAt, p.State = p.CreatedAt, PlanPending
	res, err := tx.ExecContext(ctx, s.q(`INSERT INTO plans (`+planCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT DO NOTHING`),
		p.ID, p.Tenant, p.AgentID, int64(p.Sequence), p.Release, p.DryRun, p.Envelope, string(p.State), p.Message, blob(p.Steps),
		p.CreatedBy, s.d.ts(p.CreatedAt), s.d.ts(p.ExpiresAt), s.d.ts(p.UpdatedAt))
	if err != nil {
		return Plan{}, fmt.Errorf("store: create plan %q: %w", p.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return Plan{}, fmt.Errorf("plan %q: %w", p.ID, ErrAlreadyExists)
	}
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE agents SET plan_seq = ? WHERE tenant = ? AND id = ?`), int64(seq), k.Tenant, k.ID); err != nil {
		return Plan{}, fmt.Errorf("store: create plan: advance sequence: %w", err)
	}
	if _, err := s.appendAudit(ctx, tx, audit); err != nil {
		return Plan{}, err
	}
	return scanPlan(tx.QueryRowContext(ctx, s.q(`SELECT `+planCols+` FROM plans WHERE id = ?`), p.ID))
}

// GetPlan returns a plan by ID.
func (s *sqlStore) GetPlan(ctx context.Context, id string) (Plan, error) {
	p, err := scanPlan(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+planCols+` FROM plans WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("plan %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return p, fmt.Errorf("store: get plan %q: %w", id, err)
	}
	return p, nil
}

// ListPlans lists plans newest first.
func (s *sqlStore) ListPlans(ctx context.Context, f PlanFilter) ([]Plan, error) {
	query, args := `SELECT `+planCols+` FROM plans WHERE 1 = 1`, []any(nil)
	if f.Tenant != "" {
		query += ` AND tenant = ?`
		args = append(args, f.Tenant)
	}
	if f.AgentID != "" {
		query += ` AND agent_id = ?`
		args = append(args, f.AgentID)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	query += ` ORDER BY created_at DESC, sequence DESC LIMIT ?`
	args = append(args, limit)
	return s.queryPlans(ctx, query, args...)
}

// PendingPlans lists the agent's plans it has not acknowledged yet and that
// have not expired at now, in sequence order: what to (re-)offer.
func (s *sqlStore) PendingPlans(ctx context.Context, k AgentKey, now time.Time) ([]Plan, error) {
	return s.queryPlans(ctx, `SELECT `+planCols+` FROM plans
		WHERE tenant = ? AND agent_id = ? AND acked_at IS NULL AND expires_at > ? ORDER BY sequence`,
		k.Tenant, k.ID, s.d.ts(now))
}

func (s *sqlStore) queryPlans(ctx context.Context, query string, args ...any) ([]Plan, error) {
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("store: list plans: %w", err)
	}
	defer rows.Close()
	var out []Plan
	for rows.Next() {
		p, err := scanPlan(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list plans: %w", err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// stateRank orders the states an agent reports: a report ranking below the
// plan's current state is stale (say, "accepted" relayed by an older session
// after "running" was stored) and changes nothing.
func stateRank(s PlanState) int {
	switch s {
	case PlanPending:
		return 0
	case PlanAccepted:
		return 1
	case PlanRunning:
		return 2
	default: // terminal
		return 3
	}
}

// UpdatePlan applies an agent's status report. The plan must belong to the
// agent k (a report about another agent's or tenant's plan is ErrNotFound);
// a plan in a terminal state is not changed again, and a report that would
// move the plan back (running → accepted) is ignored. Any report
// acknowledges the plan. A report identical to what is stored writes
// nothing. The audit entry, if given, is appended in the same transaction,
// and only when the report changes the plan's state: progress reports
// (running → running with new step states) and re-sent reports are not
// audited again.
func (s *sqlStore) UpdatePlan(ctx context.Context, k AgentKey, id string, u PlanUpdate, audit *auditlog.Entry) (Plan, error) {
	if !u.State.Valid() || u.State == PlanPending {
		return Plan{}, fmt.Errorf("plan %q: state %q is not a report an agent can make", id, u.State)
	}
	if u.At.IsZero() {
		u.At = s.timeNow()
	}
	var out Plan
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		cur, err := scanPlan(tx.QueryRowContext(ctx, s.q(`SELECT `+planCols+` FROM plans WHERE id = ? AND tenant = ? AND agent_id = ?`+s.d.forUpdate),
			id, k.Tenant, k.ID))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("plan %q of agent %s/%s: %w", id, k.Tenant, k.ID, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: update plan %q: %w", id, err)
		}
		steps := cur.Steps
		if u.Steps != nil {
			steps = u.Steps
		}
		if cur.State.Terminal() || stateRank(u.State) < stateRank(cur.State) ||
			(u.State == cur.State && u.Message == cur.Message && bytes.Equal(steps, cur.Steps)) {
			out = cur
			return nil
		}
		var finished any
		if u.State.Terminal() {
			finished = s.d.ts(u.At)
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE plans SET state = ?, message = ?, steps = ?, updated_at = ?,
			acked_at = COALESCE(acked_at, ?), finished_at = ? WHERE id = ?`),
			string(u.State), u.Message, blob(steps), s.d.ts(u.At), s.d.ts(u.At), finished, id); err != nil {
			return fmt.Errorf("store: update plan %q: %w", id, err)
		}
		if audit != nil && u.State != cur.State {
			if _, err := s.appendAudit(ctx, tx, *audit); err != nil {
				return err
			}
		}
		out, err = scanPlan(tx.QueryRowContext(ctx, s.q(`SELECT `+planCols+` FROM plans WHERE id = ?`), id))
		return err
	})
	return out, err
}

// PlansCreatedSince lists, once each, the agents that have a plan created
// at or after t that they have not acknowledged yet (the zero t: any time),
// for the session watcher that tells sessions on other replicas about new
// plans. Expired plans are included; PendingPlans filters them.
func (s *sqlStore) PlansCreatedSince(ctx context.Context, t time.Time) ([]AgentKey, error) {
	query, args := `SELECT DISTINCT tenant, agent_id FROM plans WHERE acked_at IS NULL`, []any(nil)
	if !t.IsZero() {
		query += ` AND created_at >= ?`
		args = append(args, s.d.ts(t))
	}
	rows, err := s.rdb.QueryContext(ctx, s.q(query+` ORDER BY tenant, agent_id`), args...)
	if err != nil {
		return nil, fmt.Errorf("store: agents with new plans: %w", err)
	}
	defer rows.Close()
	var ks []AgentKey
	for rows.Next() {
		var k AgentKey
		if err := rows.Scan(&k.Tenant, &k.ID); err != nil {
			return nil, fmt.Errorf("store: agents with new plans: %w", err)
		}
		ks = append(ks, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: agents with new plans: %w", err)
	}
	return ks, nil
}

// UpdatePlanEnvelope replaces the signed envelope of a plan its agent has
// not acknowledged yet (the plans service re-signs a pending plan whose
// signing key was rotated away) and appends the audit entry, in one
// transaction. ErrNotFound for an unknown plan; ErrPlanAcknowledged once the
// agent accepted or refused it: what it verified is kept.
func (s *sqlStore) UpdatePlanEnvelope(ctx context.Context, id string, env []byte, audit auditlog.Entry) error {
	if len(env) == 0 {
		return fmt.Errorf("plan %q: empty envelope", id)
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var acked *time.Time
		err := tx.QueryRowContext(ctx, s.q(`SELECT acked_at FROM plans WHERE id = ?`+s.d.forUpdate), id).Scan(nullTimeCol{&acked})
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("plan %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: update plan envelope %q: %w", id, err)
		}
		if acked != nil {
			return fmt.Errorf("plan %q (acknowledged at %s): %w", id, acked.Format(time.RFC3339), ErrPlanAcknowledged)
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE plans SET envelope = ?, updated_at = ? WHERE id = ?`),
			env, s.d.ts(s.timeNow()), id); err != nil {
			return fmt.Errorf("store: update plan envelope %q: %w", id, err)
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
}
