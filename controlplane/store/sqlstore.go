package store

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"attache.dev/attache/internal/auditlog"
)

// sqlStore implements Store on both engines with one set of SQL statements.
type sqlStore struct {
	d   dialect
	db  *sql.DB // writes (on SQLite: the single writer connection)
	rdb *sql.DB // reads outside transactions (on PostgreSQL the same pool)
	log *slog.Logger
	now func() time.Time
}

var _ Store = (*sqlStore)(nil)

// queryer is what *sql.DB and *sql.Tx have in common.
type queryer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *sqlStore) Engine() string { return s.d.name }

func (s *sqlStore) Close() error {
	err := s.db.Close()
	if s.rdb != s.db {
		err = errors.Join(err, s.rdb.Close())
	}
	return err
}

// DB returns the underlying write pool. It is for tests and offline tooling
// (e.g. a backup or a forensic query), never for control-plane code: writing
// through it bypasses the audit trail.
func (s *sqlStore) DB() *sql.DB { return s.db }

func (s *sqlStore) timeNow() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

// q rebinds a query for the engine.
func (s *sqlStore) q(query string) string { return s.d.rebind(query) }

// inTx runs fn in a transaction and commits it. On PostgreSQL a deadlock or
// serialization failure is retried a few times; fn must be safe to re-run.
func (s *sqlStore) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := s.tryTx(ctx, fn)
		if err == nil || attempt == 4 || !retryable(err) || ctx.Err() != nil {
			return err
		}
		s.log.Debug("retrying transaction", "attempt", attempt, "err", err)
		time.Sleep(time.Duration(attempt*attempt) * 5 * time.Millisecond)
	}
}

func (s *sqlStore) tryTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback() //nolint:errcheck // the error that matters is fn's
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "40001", "40P01": // serialization_failure, deadlock_detected
			return true
		}
	}
	return false
}

// --- tenants ---

func (s *sqlStore) CreateTenant(ctx context.Context, t Tenant, audit auditlog.Entry) error {
	if t.Name == "" {
		return errors.New("store: tenant name is empty")
	}
	labels := t.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	lj, err := json.Marshal(labels)
	if err != nil {
		return fmt.Errorf("tenant %q: labels: %w", t.Name, err)
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = s.timeNow()
	}
	if t.Tier == "" {
		t.Tier = "pool"
	}
	wj, fj, err := tenantJSON(t)
	if err != nil {
		return err
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO tenants (`+tenantCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`),
			t.Name, t.DisplayName, string(lj), s.d.ts(t.CreatedAt), t.Tier, t.Cell, wj, t.Pin, t.Release, fj)
		if err != nil {
			return fmt.Errorf("store: create tenant %q: %w", t.Name, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("tenant %q: %w", t.Name, ErrAlreadyExists)
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
}

const tenantCols = `name, display_name, labels, created_at, tier, cell, windows, pin, release, flags`

// tenantJSON encodes a tenant's windows and flags columns.
func tenantJSON(t Tenant) (windows, flags string, err error) {
	ws := t.Windows
	if ws == nil {
		ws = []Window{}
	}
	fs := t.Flags
	if fs == nil {
		fs = map[string]string{}
	}
	wj, err := json.Marshal(ws)
	if err != nil {
		return "", "", fmt.Errorf("tenant %q: windows: %w", t.Name, err)
	}
	fj, err := json.Marshal(fs)
	if err != nil {
		return "", "", fmt.Errorf("tenant %q: flags: %w", t.Name, err)
	}
	return string(wj), string(fj), nil
}

func scanTenant(sc interface{ Scan(...any) error }) (Tenant, error) {
	var (
		t                      Tenant
		labels, windows, flags string
	)
	if err := sc.Scan(&t.Name, &t.DisplayName, &labels, timeCol{&t.CreatedAt}, &t.Tier, &t.Cell, &windows, &t.Pin, &t.Release, &flags); err != nil {
		return Tenant{}, err
	}
	if err := json.Unmarshal([]byte(labels), &t.Labels); err != nil {
		return Tenant{}, fmt.Errorf("store: tenant %q: labels: %w", t.Name, err)
	}
	if err := json.Unmarshal([]byte(windows), &t.Windows); err != nil {
		return Tenant{}, fmt.Errorf("store: tenant %q: windows: %w", t.Name, err)
	}
	if err := json.Unmarshal([]byte(flags), &t.Flags); err != nil {
		return Tenant{}, fmt.Errorf("store: tenant %q: flags: %w", t.Name, err)
	}
	if len(t.Labels) == 0 {
		t.Labels = nil
	}
	if len(t.Windows) == 0 {
		t.Windows = nil
	}
	if len(t.Flags) == 0 {
		t.Flags = nil
	}
	return t, nil
}

func (s *sqlStore) UpdateTenant(ctx context.Context, name string, fn func(*Tenant) error, audit *auditlog.Entry) (Tenant, error) {
	var out Tenant
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		t, err := scanTenant(tx.QueryRowContext(ctx, s.q(`SELECT `+tenantCols+` FROM tenants WHERE name = ?`+s.d.forUpdate), name))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("tenant %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: update tenant %q: %w", name, err)
		}
		if err := fn(&t); err != nil {
			return err
		}
		t.Name = name
		if t.Tier == "" {
			t.Tier = "pool"
		}
		labels := t.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		lj, err := json.Marshal(labels)
		if err != nil {
			return fmt.Errorf("tenant %q: labels: %w", name, err)
		}
		wj, fj, err := tenantJSON(t)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE tenants SET display_name = ?, labels = ?, tier = ?, cell = ?, windows = ?, pin = ?,
			release = ?, flags = ? WHERE name = ?`), t.DisplayName, string(lj), t.Tier, t.Cell, wj, t.Pin, t.Release, fj, name); err != nil {
			return fmt.Errorf("store: update tenant %q: %w", name, err)
		}
		if audit != nil {
			if _, err := s.appendAudit(ctx, tx, *audit); err != nil {
				return err
			}
		}
		out = t
		return nil
	})
	return out, err
}

func (s *sqlStore) GetTenant(ctx context.Context, name string) (Tenant, error) {
	t, err := scanTenant(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+tenantCols+` FROM tenants WHERE name = ?`), name))
	if errors.Is(err, sql.ErrNoRows) {
		return Tenant{}, fmt.Errorf("tenant %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("store: get tenant %q: %w", name, err)
	}
	return t, nil
}

func (s *sqlStore) ListTenants(ctx context.Context) ([]Tenant, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+tenantCols+` FROM tenants ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("store: list tenants: %w", err)
	}
	defer rows.Close()
	var ts []Tenant
	for rows.Next() {
		t, err := scanTenant(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list tenants: %w", err)
		}
		ts = append(ts, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list tenants: %w", err)
	}
	return ts, nil
}

// tenantExists reports ErrNotFound for a missing tenant, inside tx.
func (s *sqlStore) tenantExists(ctx context.Context, tx queryer, name string) error {
	var one int
	err := tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM tenants WHERE name = ?`), name).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("tenant %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("store: tenant %q: %w", name, err)
	}
	return nil
}

// --- join tokens and enrollment ---

func (s *sqlStore) CreateJoinToken(ctx context.Context, t JoinToken, audit auditlog.Entry) error {
	if t.ID == "" || len(t.SecretHash) == 0 {
		return errors.New("store: join token needs an ID and a secret hash")
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = s.timeNow()
	}
	if t.ExpiresAt.IsZero() {
		return fmt.Errorf("store: join token %q: no expiry", t.ID)
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.tenantExists(ctx, tx, t.Tenant); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO join_tokens
			(id, tenant, secret_hash, created_by, created_at, expires_at, used_at, used_by)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`),
			t.ID, t.Tenant, t.SecretHash, t.CreatedBy, s.d.ts(t.CreatedAt), s.d.ts(t.ExpiresAt), s.d.tsp(t.UsedAt), t.UsedBy)
		if err != nil {
			return fmt.Errorf("store: create join token %q: %w", t.ID, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("join token %q: %w", t.ID, ErrAlreadyExists)
		}
		_, err = s.appendAudit(ctx, tx, audit)
		return err
	})
}

func (s *sqlStore) GetJoinToken(ctx context.Context, id string) (JoinToken, error) {
	var t JoinToken
	err := s.rdb.QueryRowContext(ctx, s.q(`SELECT id, tenant, secret_hash, created_by, created_at, expires_at, used_at, used_by
		FROM join_tokens WHERE id = ?`), id).
		Scan(&t.ID, &t.Tenant, &t.SecretHash, &t.CreatedBy, timeCol{&t.CreatedAt}, timeCol{&t.ExpiresAt}, nullTimeCol{&t.UsedAt}, &t.UsedBy)
	if errors.Is(err, sql.ErrNoRows) {
		return JoinToken{}, fmt.Errorf("join token %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return JoinToken{}, fmt.Errorf("store: get join token %q: %w", id, err)
	}
	return t, nil
}

func (s *sqlStore) Enroll(ctx context.Context, tokenID string, secretHash []byte, now time.Time, a Agent, audit auditlog.Entry) (Agent, error) {
	if now.IsZero() {
		now = s.timeNow()
	}
	if a.EnrolledAt.IsZero() {
		a.EnrolledAt = now
	}
	var out Agent
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var (
			tenant    string
			hash      []byte
			expiresAt time.Time
			usedAt    *time.Time
		)
		err := tx.QueryRowContext(ctx, s.q(`SELECT tenant, secret_hash, expires_at, used_at
			FROM join_tokens WHERE id = ?`+s.d.forUpdate), tokenID).
			Scan(&tenant, &hash, timeCol{&expiresAt}, nullTimeCol{&usedAt})
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("join token %q: %w", tokenID, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: enroll: read join token %q: %w", tokenID, err)
		}
		// A wrong secret looks exactly like a missing token.
		if subtle.ConstantTimeCompare(hash, secretHash) != 1 {
			return fmt.Errorf("join token %q: %w", tokenID, ErrNotFound)
		}
		if usedAt != nil {
			return fmt.Errorf("join token %q: %w", tokenID, ErrTokenUsed)
		}
		if !now.Before(expiresAt) {
			return fmt.Errorf("join token %q: %w", tokenID, ErrTokenExpired)
		}
		if a.Tenant != tenant {
			// Not revealing which tenant the token belongs to.
			return fmt.Errorf("join token %q is not for tenant %q: %w", tokenID, a.Tenant, ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE join_tokens SET used_at = ?, used_by = ? WHERE id = ?`),
			s.d.ts(now), a.ID, tokenID); err != nil {
			return fmt.Errorf("store: enroll: consume join token %q: %w", tokenID, err)
		}
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO agents
			(tenant, id, spiffe_id, hostname, version, capability_version, inventory, health,
			 enrolled_at, cert_serial, cert_expires_at, last_seen_at, connected, session_id, revoked_at, revoked_by)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, '') ON CONFLICT DO NOTHING`),
			a.Tenant, a.ID, a.SPIFFEID, a.Hostname, a.Version, int64(a.CapabilityVersion), blob(a.Inventory), blob(a.Health),
			s.d.ts(a.EnrolledAt), a.CertSerial, s.d.ts(a.CertExpiresAt), s.d.tsp(a.LastSeenAt), a.Connected, a.SessionID)
		if err != nil {
			return fmt.Errorf("store: enroll agent %s/%s: %w", a.Tenant, a.ID, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("agent %s/%s (or SPIFFE ID %s): %w", a.Tenant, a.ID, a.SPIFFEID, ErrAlreadyExists)
		}
		if _, err := s.appendAudit(ctx, tx, audit); err != nil {
			return err
		}
		out, err = s.getAgent(ctx, tx, AgentKey{Tenant: a.Tenant, ID: a.ID})
		return err
	})
	if err != nil {
		return Agent{}, err
	}
	return out, nil
}

// --- agents ---

const agentCols = `tenant, id, spiffe_id, hostname, version, capability_version, inventory, health,
	enrolled_at, cert_serial, cert_expires_at, last_seen_at, connected, session_id, revoked_at, revoked_by`

func scanAgent(sc interface{ Scan(...any) error }) (Agent, error) {
	var a Agent
	err := sc.Scan(&a.Tenant, &a.ID, &a.SPIFFEID, &a.Hostname, &a.Version, &a.CapabilityVersion, &a.Inventory, &a.Health,
		timeCol{&a.EnrolledAt}, &a.CertSerial, timeCol{&a.CertExpiresAt}, nullTimeCol{&a.LastSeenAt}, &a.Connected,
		&a.SessionID, nullTimeCol{&a.RevokedAt}, &a.RevokedBy)
	return a, err
}

// keyString names an agent in errors as tenant/id.
func keyString(k AgentKey) string { return k.Tenant + "/" + k.ID }

func (s *sqlStore) getAgent(ctx context.Context, q queryer, k AgentKey) (Agent, error) {
	a, err := scanAgent(q.QueryRowContext(ctx, s.q(`SELECT `+agentCols+` FROM agents WHERE tenant = ? AND id = ?`), k.Tenant, k.ID))
	if errors.Is(err, sql.ErrNoRows) {
		return Agent{}, fmt.Errorf("agent %s: %w", keyString(k), ErrNotFound)
	}
	if err != nil {
		return Agent{}, fmt.Errorf("store: get agent %s: %w", keyString(k), err)
	}
	return a, nil
}

func (s *sqlStore) GetAgent(ctx context.Context, k AgentKey) (Agent, error) {
	return s.getAgent(ctx, s.rdb, k)
}

func (s *sqlStore) ListAgents(ctx context.Context, f AgentFilter) ([]Agent, error) {
	query, args := `SELECT `+agentCols+` FROM agents`, []any(nil)
	if f.Tenant != "" {
		query += ` WHERE tenant = ?`
		args = append(args, f.Tenant)
	}
	rows, err := s.rdb.QueryContext(ctx, s.q(query+` ORDER BY tenant, id`), args...)
	if err != nil {
		return nil, fmt.Errorf("store: list agents: %w", err)
	}
	defer rows.Close()
	var as []Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list agents: %w", err)
		}
		as = append(as, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list agents: %w", err)
	}
	return as, nil
}

func (s *sqlStore) RevokeAgent(ctx context.Context, k AgentKey, by string, at time.Time, audit auditlog.Entry) (Agent, error) {
	if at.IsZero() {
		at = s.timeNow()
	}
	var out Agent
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		// Both SET expressions see the row as it was: the first revocation wins.
		res, err := tx.ExecContext(ctx, s.q(`UPDATE agents
			SET revoked_by = CASE WHEN revoked_at IS NULL THEN ? ELSE revoked_by END,
			    revoked_at = COALESCE(revoked_at, ?)
			WHERE tenant = ? AND id = ?`), by, s.d.ts(at), k.Tenant, k.ID)
		if err != nil {
			return fmt.Errorf("store: revoke agent %s: %w", keyString(k), err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("agent %s: %w", keyString(k), ErrNotFound)
		}
		if _, err := s.appendAudit(ctx, tx, audit); err != nil {
			return err
		}
		out, err = s.getAgent(ctx, tx, k)
		return err
	})
	if err != nil {
		return Agent{}, err
	}
	return out, nil
}

func (s *sqlStore) RevokedSince(ctx context.Context, t time.Time) ([]AgentKey, error) {
	query, args := `SELECT tenant, id FROM agents WHERE revoked_at IS NOT NULL`, []any(nil)
	if !t.IsZero() {
		query += ` AND revoked_at >= ?`
		args = append(args, s.d.ts(t))
	}
	rows, err := s.rdb.QueryContext(ctx, s.q(query+` ORDER BY revoked_at, tenant, id`), args...)
	if err != nil {
		return nil, fmt.Errorf("store: revoked agents: %w", err)
	}
	defer rows.Close()
	var ks []AgentKey
	for rows.Next() {
		var k AgentKey
		if err := rows.Scan(&k.Tenant, &k.ID); err != nil {
			return nil, fmt.Errorf("store: revoked agents: %w", err)
		}
		ks = append(ks, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: revoked agents: %w", err)
	}
	return ks, nil
}

// liveAgentMiss explains why an update of a live (unrevoked) agent touched no
// row: ErrNotFound or ErrRevoked.
func (s *sqlStore) liveAgentMiss(ctx context.Context, q queryer, k AgentKey) error {
	var revoked bool
	err := q.QueryRowContext(ctx, s.q(`SELECT revoked_at IS NOT NULL FROM agents WHERE tenant = ? AND id = ?`), k.Tenant, k.ID).Scan(&revoked)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("agent %s: %w", keyString(k), ErrNotFound)
	case err != nil:
		return fmt.Errorf("store: agent %s: %w", keyString(k), err)
	case revoked:
		return fmt.Errorf("agent %s: %w", keyString(k), ErrRevoked)
	default:
		return nil
	}
}

// UpdateAgentCert refuses revoked agents with ErrRevoked.
func (s *sqlStore) UpdateAgentCert(ctx context.Context, k AgentKey, serial string, expiresAt time.Time) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE agents SET cert_serial = ?, cert_expires_at = ?
		WHERE tenant = ? AND id = ? AND revoked_at IS NULL`), serial, s.d.ts(expiresAt), k.Tenant, k.ID)
	if err != nil {
		return fmt.Errorf("store: update agent %s certificate: %w", keyString(k), err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if err := s.liveAgentMiss(ctx, s.db, k); err != nil {
			return err
		}
	}
	return nil
}

// RecordSessions applies session openings and closings in order in one
// transaction (one commit for a whole reconnection storm). Updates for
// unknown or revoked agents, and closes already superseded by a newer
// session, change nothing.
func (s *sqlStore) RecordSessions(ctx context.Context, us []SessionUpdate) error {
	if len(us) == 0 {
		return nil
	}
	now := s.timeNow()
	return s.inTx(ctx, func(tx *sql.Tx) error {
		open, err := tx.PrepareContext(ctx, s.q(`UPDATE agents
			SET connected = ?, session_id = ?, version = ?, capability_version = ?,
			    inventory = COALESCE(?, inventory), last_seen_at = ?
			WHERE tenant = ? AND id = ? AND revoked_at IS NULL`))
		if err != nil {
			return fmt.Errorf("store: record sessions: %w", err)
		}
		defer open.Close()
		closing, err := tx.PrepareContext(ctx, s.q(`UPDATE agents SET connected = ?, last_seen_at = ?
			WHERE tenant = ? AND id = ? AND session_id = ?`))
		if err != nil {
			return fmt.Errorf("store: record sessions: %w", err)
		}
		defer closing.Close()
		for _, u := range us {
			at := u.At
			if at.IsZero() {
				at = now
			}
			if u.Connected {
				_, err = open.ExecContext(ctx, true, u.SessionID, u.Version, int64(u.CapabilityVersion), blob(u.Inventory), s.d.ts(at), u.Tenant, u.ID)
			} else {
				_, err = closing.ExecContext(ctx, false, s.d.ts(at), u.Tenant, u.ID, u.SessionID)
			}
			if err != nil {
				return fmt.Errorf("store: record session of agent %s: %w", keyString(u.AgentKey), err)
			}
		}
		return nil
	})
}

// --- API tokens ---

func (s *sqlStore) CreateAPIToken(ctx context.Context, t APIToken, audit *auditlog.Entry) error {
	switch t.Role {
	case RoleAdmin, RoleOperator, RoleAuditor:
	default:
		return fmt.Errorf("store: api token %q: unknown role %q", t.ID, t.Role)
	}
	if t.ID == "" || len(t.SecretHash) == 0 {
		return errors.New("store: api token needs an ID and a secret hash")
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = s.timeNow()
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO api_tokens (id, name, role, secret_hash, created_by, created_at, revoked_at)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`),
			t.ID, t.Name, string(t.Role), t.SecretHash, t.CreatedBy, s.d.ts(t.CreatedAt), s.d.tsp(t.RevokedAt))
		if err != nil {
			return fmt.Errorf("store: create api token %q: %w", t.ID, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("api token %q (or its secret): %w", t.ID, ErrAlreadyExists)
		}
		if audit != nil {
			_, err = s.appendAudit(ctx, tx, *audit)
		}
		return err
	})
}

const apiTokenCols = `id, name, role, secret_hash, created_by, created_at, revoked_at`

func scanAPIToken(sc interface{ Scan(...any) error }) (APIToken, error) {
	var t APIToken
	err := sc.Scan(&t.ID, &t.Name, &t.Role, &t.SecretHash, &t.CreatedBy, timeCol{&t.CreatedAt}, nullTimeCol{&t.RevokedAt})
	return t, err
}

func (s *sqlStore) APITokenByHash(ctx context.Context, secretHash []byte) (APIToken, error) {
	t, err := scanAPIToken(s.rdb.QueryRowContext(ctx, s.q(`SELECT `+apiTokenCols+` FROM api_tokens
		WHERE secret_hash = ? AND revoked_at IS NULL`), secretHash))
	if errors.Is(err, sql.ErrNoRows) {
		return APIToken{}, fmt.Errorf("api token: %w", ErrNotFound)
	}
	if err != nil {
		return APIToken{}, fmt.Errorf("store: api token: %w", err)
	}
	return t, nil
}

func (s *sqlStore) ListAPITokens(ctx context.Context) ([]APIToken, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+apiTokenCols+` FROM api_tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("store: list api tokens: %w", err)
	}
	defer rows.Close()
	var ts []APIToken
	for rows.Next() {
		t, err := scanAPIToken(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list api tokens: %w", err)
		}
		ts = append(ts, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list api tokens: %w", err)
	}
	return ts, nil
}
