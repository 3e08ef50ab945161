package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"attache.dev/attache/internal/auditlog"
)

// defaultAuditPage is ListAudit's page size when the filter sets none.
const defaultAuditPage = 1000

// appendAudit seals e after the current head and stores it, inside tx. The
// head row is locked (PostgreSQL) or the transaction already holds the only
// write lock (SQLite), so appenders form a single chain.
//
// e.Time is set to now if zero, and truncated to microseconds in UTC before
// sealing, so the record read back from either engine hashes identically.
func (s *sqlStore) appendAudit(ctx context.Context, tx *sql.Tx, e auditlog.Entry) (auditlog.Record, error) {
	if e.Time.IsZero() {
		e.Time = s.timeNow()
	}
	e.Time = normTime(e.Time)
	if len(e.Detail) == 0 {
		e.Detail = nil
	}
	var (
		headSeq  uint64
		headHash []byte
	)
	if err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`+s.d.forUpdate).Scan(&headSeq, &headHash); err != nil {
		return auditlog.Record{}, fmt.Errorf("store: audit: read head: %w", err)
	}
	r := auditlog.Seal(headSeq, headHash, e)
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO audit_log
		(seq, time, actor, role, action, tenant, target, request_id, outcome, source, detail, prev_hash, hash)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		int64(r.Seq), s.d.ts(r.Time), r.Actor, r.Role, r.Action, r.Tenant, r.Target, r.RequestID, r.Outcome, r.Source,
		blob(r.Detail), r.PrevHash, r.Hash); err != nil {
		return auditlog.Record{}, fmt.Errorf("store: audit: append record %d: %w", r.Seq, err)
	}
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1`), int64(r.Seq), r.Hash); err != nil {
		return auditlog.Record{}, fmt.Errorf("store: audit: update head: %w", err)
	}
	return r, nil
}

func (s *sqlStore) AppendAudit(ctx context.Context, e auditlog.Entry) (auditlog.Record, error) {
	var r auditlog.Record
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		r, err = s.appendAudit(ctx, tx, e)
		return err
	})
	return r, err
}

func (s *sqlStore) ListAudit(ctx context.Context, f AuditFilter) ([]auditlog.Record, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = defaultAuditPage
	}
	query := `SELECT seq, time, actor, role, action, tenant, target, request_id, outcome, source, detail, prev_hash, hash
		FROM audit_log WHERE seq > ?`
	args := []any{int64(f.AfterSeq)}
	if f.Tenant != "" {
		query += ` AND tenant = ?`
		args = append(args, f.Tenant)
	}
	query += ` ORDER BY seq LIMIT ?`
	args = append(args, limit)
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("store: list audit: %w", err)
	}
	defer rows.Close()
	var rs []auditlog.Record
	for rows.Next() {
		var (
			r   auditlog.Record
			at  time.Time
			det []byte
		)
		if err := rows.Scan(&r.Seq, timeCol{&at}, &r.Actor, &r.Role, &r.Action, &r.Tenant, &r.Target, &r.RequestID,
			&r.Outcome, &r.Source, &det, &r.PrevHash, &r.Hash); err != nil {
			return nil, fmt.Errorf("store: list audit: %w", err)
		}
		r.Time = at
		if len(det) > 0 {
			r.Detail = det
		}
		rs = append(rs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list audit: %w", err)
	}
	return rs, nil
}

func (s *sqlStore) AuditHead(ctx context.Context) (uint64, []byte, error) {
	var (
		seq  uint64
		hash []byte
	)
	if err := s.rdb.QueryRowContext(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`).Scan(&seq, &hash); err != nil {
		return 0, nil, fmt.Errorf("store: audit head: %w", err)
	}
	return seq, hash, nil
}
