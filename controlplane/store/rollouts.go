package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"attache.dev/attache/internal/auditlog"
)

// Release is a signed release as pushed: the DSSE envelope byte for byte
// (verified against the trust root's releases role before it is stored).
type Release struct {
	Version   string
	Name      string
	Envelope  []byte
	Digest    string // hex SHA-256 of Envelope
	PushedBy  string
	CreatedAt time.Time
}

// Freeze is the fleet-wide incident switch: while it is set no rollout
// advances and no plan is offered to any agent.
type Freeze struct {
	By     string    `json:"by"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// RolloutState is a rollout's condition type.
type RolloutState string

// Rollout states. Progressing, Waiting and Halted are active (a driver works
// on them); Complete and Failed are final.
const (
	RolloutProgressing RolloutState = "Progressing"
	RolloutWaiting     RolloutState = "Waiting" // a maintenance window, the bake time or a freeze
	RolloutHalted      RolloutState = "Halted"  // paused, or a gate failed and the wave is rolling back
	RolloutComplete    RolloutState = "Complete"
	RolloutFailed      RolloutState = "Failed"
)

// Final reports whether s never changes again.
func (s RolloutState) Final() bool { return s == RolloutComplete || s == RolloutFailed }

// RolloutControl is what an operator asked of a rollout.
type RolloutControl string

// Operator controls; "" means run.
const (
	ControlRun   RolloutControl = ""
	ControlPause RolloutControl = "pause"
	ControlAbort RolloutControl = "abort"
)

// Wave is one wave of a rollout: Count tenants, or Percent of all selected
// tenants counted cumulatively (10%, 50%, 100%).
type Wave struct {
	Name    string `json:"name"`
	Count   int    `json:"count,omitempty"`
	Percent int    `json:"percent,omitempty"`
}

// RolloutSpec is what the operator asked for; it never changes.
type RolloutSpec struct {
	Selector      map[string]string `json:"selector,omitempty"` // tenant labels (and tier=…)
	Tenants       []string          `json:"tenants,omitempty"`  // explicit tenants (instead of or besides a selector)
	Waves         []Wave            `json:"waves"`
	Bake          time.Duration     `json:"bake"`
	MaxFailed     int               `json:"max_failed"`
	MaxErrorRate  float64           `json:"max_error_rate"` // fraction 0..1 of app requests that failed
	Concurrency   int               `json:"concurrency"`
	PlanTTL       time.Duration     `json:"plan_ttl"`
	IgnoreWindows bool              `json:"ignore_windows,omitempty"`
}

// Rollout is one release going out to a set of tenants in waves.
type Rollout struct {
	ID         string
	Release    string // version
	Spec       RolloutSpec
	State      RolloutState
	Control    RolloutControl
	Wave       int    // index of the current wave
	Reason     string // machine-readable cause of State: WaveInProgress, MaintenanceWindow, Bake, Frozen, Paused, GateFailed, Aborted, …
	Message    string // the underlying detail, never generic
	Gate       []byte // JSON: the driver's gate bookkeeping for the current wave
	WaveDoneAt *time.Time
	CreatedBy  string
	CreatedAt  time.Time
	UpdatedAt  time.Time
	FinishedAt *time.Time
	LeaseOwner string
	LeaseUntil *time.Time
}

// TargetState is where one tenant is in a rollout.
type TargetState string

// Target states.
const (
	TargetPending     TargetState = "pending"
	TargetWaiting     TargetState = "waiting" // outside its maintenance window
	TargetDispatched  TargetState = "dispatched"
	TargetSucceeded   TargetState = "succeeded"
	TargetFailed      TargetState = "failed"
	TargetSkipped     TargetState = "skipped" // pinned to another version, or no agent
	TargetRollingBack TargetState = "rolling_back"
	TargetRolledBack  TargetState = "rolled_back"
	TargetCancelled   TargetState = "cancelled" // the rollout stopped before reaching it
)

// Done reports whether the target needs nothing more in its wave.
func (s TargetState) Done() bool {
	switch s {
	case TargetSucceeded, TargetFailed, TargetSkipped, TargetRolledBack, TargetCancelled:
		return true
	}
	return false
}

// RolloutTarget is one tenant of a rollout.
type RolloutTarget struct {
	RolloutID       string
	Tenant          string
	Wave            int
	Position        int
	State           TargetState
	PlanID          string
	PreviousRelease string // the tenant's release when the rollout reached it
	RollbackPlanID  string
	Message         string
	UpdatedAt       time.Time
	// SetRelease, on a change made through UpdateRollout, also sets the
	// tenant's Release to this version (not stored on the target).
	SetRelease string
}

// --- releases ---

func (s *sqlStore) CreateRelease(ctx context.Context, r Release, audit auditlog.Entry) error {
	if r.Version == "" || len(r.Envelope) == 0 {
		return errors.New("store: release needs a version and an envelope")
	}
	if r.CreatedAt.IsZero() {
		r.CreatedAt = s.timeNow()
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO releases (version, name, envelope, digest, pushed_by, created_at)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`),
			r.Version, r.Name, r.Envelope, r.Digest, r.PushedBy, s.d.ts(r.CreatedAt))
		if err != nil {
			return fmt.Errorf("store: create release %q: %w", r.Version, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("release %q: %w (releases are immutable; push a new version)", r.Version, ErrAlreadyExists)
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
}

const releaseCols = `version, name, envelope, digest, pushed_by, created_at`

func scanRelease(sc interface{ Scan(...any) error }) (Release, error) {
	var r Release
	err := sc.Scan(&r.Version, &r.Name, &r.Envelope, &r.Digest, &r.PushedBy, timeCol{&r.CreatedAt})
	return r, err
}

func (s *sqlStore) GetRelease(ctx context.Context, version string) (Release, error) {
	r, err := scanRelease(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+releaseCols+` FROM releases WHERE version = ?`), version))
	if errors.Is(err, sql.ErrNoRows) {
		return Release{}, fmt.Errorf("release %q: %w", version, ErrNotFound)
	}
	if err != nil {
		return Release{}, fmt.Errorf("store: get release %q: %w", version, err)
	}
	return r, nil
}

func (s *sqlStore) ListReleases(ctx context.Context) ([]Release, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+releaseCols+` FROM releases ORDER BY created_at DESC, version DESC`)
	if err != nil {
		return nil, fmt.Errorf("store: list releases: %w", err)
	}
	defer rows.Close()
	var out []Release
	for rows.Next() {
		r, err := scanRelease(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list releases: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// --- freeze ---

const freezeKey = "freeze"

func (s *sqlStore) GetFreeze(ctx context.Context) (*Freeze, error) {
	var v string
	err := s.rdb.QueryRowContext(ctx, s.q(`SELECT value FROM settings WHERE key = ?`), freezeKey).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: read freeze: %w", err)
	}
	var f Freeze
	if err := json.Unmarshal([]byte(v), &f); err != nil {
		return nil, fmt.Errorf("store: read freeze: %w", err)
	}
	return &f, nil
}

func (s *sqlStore) SetFreeze(ctx context.Context, f *Freeze, audit auditlog.Entry) error {
	now := s.timeNow()
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if f == nil {
			if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM settings WHERE key = ?`), freezeKey); err != nil {
				return fmt.Errorf("store: unfreeze: %w", err)
			}
		} else {
			v, err := json.Marshal(f)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)
				ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`),
				freezeKey, string(v), s.d.ts(now)); err != nil {
				return fmt.Errorf("store: freeze: %w", err)
			}
		}
		_, err := s.appendAudit(ctx, tx, audit)
		return err
	})
}

// --- rollouts ---

const rolloutCols = `id, release, spec, state, control, wave, reason, message, gate, wave_done_at,
	created_by, created_at, updated_at, finished_at, lease_owner, lease_until`

func scanRollout(sc interface{ Scan(...any) error }) (Rollout, error) {
	var (
		r    Rollout
		spec string
		gate string
	)
	err := sc.Scan(&r.ID, &r.Release, &spec, &r.State, &r.Control, &r.Wave, &r.Reason, &r.Message, &gate, nullTimeCol{&r.WaveDoneAt},
		&r.CreatedBy, timeCol{&r.CreatedAt}, timeCol{&r.UpdatedAt}, nullTimeCol{&r.FinishedAt}, &r.LeaseOwner, nullTimeCol{&r.LeaseUntil})
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(spec), &r.Spec); err != nil {
		return r, fmt.Errorf("rollout %q: spec: %w", r.ID, err)
	}
	r.Gate = []byte(gate)
	return r, nil
}

const targetCols = `rollout_id, tenant, wave, position, state, plan_id, previous_release, rollback_plan_id, message, updated_at`

func scanTarget(sc interface{ Scan(...any) error }) (RolloutTarget, error) {
	var t RolloutTarget
	err := sc.Scan(&t.RolloutID, &t.Tenant, &t.Wave, &t.Position, &t.State, &t.PlanID, &t.PreviousRelease, &t.RollbackPlanID, &t.Message, timeCol{&t.UpdatedAt})
	return t, err
}

func (s *sqlStore) CreateRollout(ctx context.Context, r Rollout, targets []RolloutTarget, audit auditlog.Entry) error {
	if r.ID == "" || r.Release == "" {
		return errors.New("store: rollout needs an ID and a release")
	}
	spec, err := json.Marshal(r.Spec)
	if err != nil {
		return fmt.Errorf("store: rollout spec: %w", err)
	}
	now := s.timeNow()
	if r.CreatedAt.IsZero() {
		r.CreatedAt = now
	}
	if r.State == "" {
		r.State = RolloutProgressing
	}
	if len(r.Gate) == 0 {
		r.Gate = []byte("{}")
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM releases WHERE version = ?`), r.Release).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("release %q: %w", r.Release, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: create rollout: %w", err)
		}
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO rollouts (`+rolloutCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, NULL, '', NULL) ON CONFLICT DO NOTHING`),
			r.ID, r.Release, string(spec), string(r.State), string(r.Control), r.Wave, r.Reason, r.Message, string(r.Gate),
			r.CreatedBy, s.d.ts(r.CreatedAt), s.d.ts(r.CreatedAt))
		if err != nil {
			return fmt.Errorf("store: create rollout %q: %w", r.ID, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("rollout %q: %w", r.ID, ErrAlreadyExists)
		}
		for _, t := range targets {
			if t.State == "" {
				t.State = TargetPending
			}
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO rollout_targets (`+targetCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
				r.ID, t.Tenant, t.Wave, t.Position, string(t.State), t.PlanID, t.PreviousRelease, t.RollbackPlanID, t.Message, s.d.ts(r.CreatedAt)); err != nil {
				return fmt.Errorf("store: create rollout %q: target %q: %w", r.ID, t.Tenant, err)
			}
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
}

func (s *sqlStore) GetRollout(ctx context.Context, id string) (Rollout, error) {
	return s.getRollout(ctx, s.rdb, id, "")
}

func (s *sqlStore) getRollout(ctx context.Context, q queryer, id, suffix string) (Rollout, error) {
	r, err := scanRollout(q.QueryRowContext(ctx, s.q(`SELECT `+rolloutCols+` FROM rollouts WHERE id = ?`+suffix), id))
	if errors.Is(err, sql.ErrNoRows) {
		return Rollout{}, fmt.Errorf("rollout %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Rollout{}, fmt.Errorf("store: get rollout %q: %w", id, err)
	}
	return r, nil
}

func (s *sqlStore) ListRollouts(ctx context.Context, active bool) ([]Rollout, error) {
	query := `SELECT ` + rolloutCols + ` FROM rollouts`
	if active {
		query += ` WHERE finished_at IS NULL`
	}
	query += ` ORDER BY created_at DESC, id DESC`
	rows, err := s.rdb.QueryContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("store: list rollouts: %w", err)
	}
	defer rows.Close()
	var out []Rollout
	for rows.Next() {
		r, err := scanRollout(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list rollouts: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *sqlStore) RolloutTargets(ctx context.Context, id string) ([]RolloutTarget, error) {
	return s.rolloutTargets(ctx, s.rdb, id)
}

func (s *sqlStore) rolloutTargets(ctx context.Context, q queryer, id string) ([]RolloutTarget, error) {
	rows, err := q.QueryContext(ctx, s.q(`SELECT `+targetCols+` FROM rollout_targets WHERE rollout_id = ? ORDER BY wave, position`), id)
	if err != nil {
		return nil, fmt.Errorf("store: rollout %q targets: %w", id, err)
	}
	defer rows.Close()
	var out []RolloutTarget
	for rows.Next() {
		t, err := scanTarget(rows)
		if err != nil {
			return nil, fmt.Errorf("store: rollout %q targets: %w", id, err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

func (s *sqlStore) SetRolloutControl(ctx context.Context, id string, c RolloutControl, audit auditlog.Entry) (Rollout, error) {
	var out Rollout
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		r, err := s.getRollout(ctx, tx, id, s.d.forUpdate)
		if err != nil {
			return err
		}
		if r.FinishedAt != nil {
			return fmt.Errorf("rollout %s is %s: %w", id, r.State, ErrFinished)
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE rollouts SET control = ?, updated_at = ? WHERE id = ?`),
			string(c), s.d.ts(s.timeNow()), id); err != nil {
			return fmt.Errorf("store: rollout %q control: %w", id, err)
		}
		if _, err := s.appendAudit(ctx, tx, audit); err != nil {
			return err
		}
		out, err = s.getRollout(ctx, tx, id, "")
		return err
	})
	return out, err
}

func (s *sqlStore) AcquireRolloutLease(ctx context.Context, id, owner string, now time.Time, ttl time.Duration) (bool, error) {
	if owner == "" || ttl <= 0 {
		return false, errors.New("store: a rollout lease needs an owner and a positive ttl")
	}
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE rollouts SET lease_owner = ?, lease_until = ?
		WHERE id = ? AND finished_at IS NULL AND (lease_owner = ? OR lease_owner = '' OR lease_until IS NULL OR lease_until < ?)`),
		owner, s.d.ts(now.Add(ttl)), id, owner, s.d.ts(now))
	if err != nil {
		return false, fmt.Errorf("store: rollout %q lease: %w", id, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func (s *sqlStore) ReleaseRolloutLease(ctx context.Context, id, owner string) error {
	_, err := s.db.ExecContext(ctx, s.q(`UPDATE rollouts SET lease_owner = '', lease_until = NULL WHERE id = ? AND lease_owner = ?`), id, owner)
	if err != nil {
		return fmt.Errorf("store: rollout %q release lease: %w", id, err)
	}
	return nil
}

// lockLeased reads the rollout for update inside tx and checks that owner
// holds an unexpired lease on it.
func (s *sqlStore) lockLeased(ctx context.Context, tx *sql.Tx, id, owner string) (Rollout, error) {
	r, err := s.getRollout(ctx, tx, id, s.d.forUpdate)
	if err != nil {
		return r, err
	}
	if r.LeaseOwner != owner || r.LeaseUntil == nil || !r.LeaseUntil.After(s.timeNow()) {
		return r, fmt.Errorf("rollout %s (held by %q): %w", id, r.LeaseOwner, ErrLeaseLost)
	}
	return r, nil
}

func (s *sqlStore) UpdateRollout(ctx context.Context, id, owner string, fn func(r *Rollout, ts []RolloutTarget) ([]RolloutTarget, []auditlog.Entry, error)) (Rollout, error) {
	var out Rollout
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		r, err := s.lockLeased(ctx, tx, id, owner)
		if err != nil {
			return err
		}
		ts, err := s.rolloutTargets(ctx, tx, id)
		if err != nil {
			return err
		}
		changed, audits, err := fn(&r, ts)
		if err != nil {
			return err
		}
		now := s.timeNow()
		spec, err := json.Marshal(r.Spec)
		if err != nil {
			return err
		}
		if len(r.Gate) == 0 {
			r.Gate = []byte("{}")
		}
		if r.State.Final() && r.FinishedAt == nil {
			r.FinishedAt = &now
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE rollouts SET spec = ?, state = ?, control = ?, wave = ?, reason = ?, message = ?, gate = ?,
			wave_done_at = ?, updated_at = ?, finished_at = ? WHERE id = ?`),
			string(spec), string(r.State), string(r.Control), r.Wave, r.Reason, r.Message, string(r.Gate),
			s.d.tsp(r.WaveDoneAt), s.d.ts(now), s.d.tsp(r.FinishedAt), id); err != nil {
			return fmt.Errorf("store: update rollout %q: %w", id, err)
		}
		for _, t := range changed {
			res, err := tx.ExecContext(ctx, s.q(`UPDATE rollout_targets SET state = ?, plan_id = ?, previous_release = ?, rollback_plan_id = ?,
				message = ?, updated_at = ? WHERE rollout_id = ? AND tenant = ?`),
				string(t.State), t.PlanID, t.PreviousRelease, t.RollbackPlanID, t.Message, s.d.ts(now), id, t.Tenant)
			if err != nil {
				return fmt.Errorf("store: update rollout %q target %q: %w", id, t.Tenant, err)
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return fmt.Errorf("rollout %q target %q: %w", id, t.Tenant, ErrNotFound)
			}
			if t.SetRelease != "" {
				if _, err := tx.ExecContext(ctx, s.q(`UPDATE tenants SET release = ? WHERE name = ?`), t.SetRelease, t.Tenant); err != nil {
					return fmt.Errorf("store: tenant %q release: %w", t.Tenant, err)
				}
			}
		}
		for _, a := range audits {
			if _, err := s.appendAudit(ctx, tx, a); err != nil {
				return err
			}
		}
		out, err = s.getRollout(ctx, tx, id, "")
		return err
	})
	return out, err
}

func (s *sqlStore) DispatchRolloutPlan(ctx context.Context, id, tenant, owner string, rollback bool, k AgentKey, build func(seq uint64) (Plan, error), audit auditlog.Entry) (Plan, error) {
	var out Plan
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := s.lockLeased(ctx, tx, id, owner); err != nil {
			return err
		}
		t, err := scanTarget(tx.QueryRowContext(ctx, s.q(`SELECT `+targetCols+` FROM rollout_targets WHERE rollout_id = ? AND tenant = ?`), id, tenant))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("rollout %q target %q: %w", id, tenant, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: rollout %q target %q: %w", id, tenant, err)
		}
		switch {
		case !rollback && (t.State == TargetPending || t.State == TargetWaiting) && t.PlanID == "":
		case rollback && t.State == TargetRollingBack && t.RollbackPlanID == "":
		default:
			return fmt.Errorf("rollout %q target %q is %s (plan %q, rollback plan %q): %w", id, tenant, t.State, t.PlanID, t.RollbackPlanID, ErrConflict)
		}
		p, err := s.createPlanTx(ctx, tx, k, build, audit)
		if err != nil {
			return err
		}
		query := `UPDATE rollout_targets SET state = ?, plan_id = ?, message = '', updated_at = ? WHERE rollout_id = ? AND tenant = ?`
		args := []any{string(TargetDispatched), p.ID, s.d.ts(s.timeNow()), id, tenant}
		if rollback {
			query = `UPDATE rollout_targets SET rollback_plan_id = ?, updated_at = ? WHERE rollout_id = ? AND tenant = ?`
			args = []any{p.ID, s.d.ts(s.timeNow()), id, tenant}
		}
		if _, err := tx.ExecContext(ctx, s.q(query), args...); err != nil {
			return fmt.Errorf("store: rollout %q target %q: record plan: %w", id, tenant, err)
		}
		out = p
		return nil
	})
	return out, err
}
