package store

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"time"
)

// Billing export statuses. Sent and skipped are final: RecordExport does not
// change such a row again, and its hour is no longer an export candidate.
const (
	ExportSent    = "sent"
	ExportFailed  = "failed"  // retried by later export passes
	ExportSkipped = "skipped" // deliberately not exported (meter not billed, tenant without a customer)
)

// Billing export bounds.
const (
	MaxExportIdentifier = 200
	MaxExportError      = 1024 // longer errors are cut
)

// defaultExportCandidates is ExportCandidates' page size when limit is not
// positive.
const defaultExportCandidates = 500

// BillingExport is the ledger row of one (tenant, meter, hour) handed to
// the billing sink.
type BillingExport struct {
	Tenant     string
	Meter      string
	Hour       time.Time
	Identifier string // the idempotency identifier sent with the event
	Value      float64
	Status     string // ExportSent, ExportFailed or ExportSkipped
	// Attempts: in RecordExport, the attempts made this time; stored and
	// listed, the total over all passes.
	Attempts   int
	LastError  string
	ExportedAt time.Time // time of the last attempt
}

// ExportCandidates lists hourly rows with Hour < before that have no export
// row or a failed one, up to limit (500 when limit is not positive): first
// the hours never tried, oldest first, then the failed ones, least recently
// tried first, so that failures that keep failing do not starve new hours
// and take turns being retried.
func (s *sqlStore) ExportCandidates(ctx context.Context, before time.Time, limit int) ([]UsageHour, error) {
	if !validTime(before) {
		return nil, fmt.Errorf("export candidates: %w: before %v is zero or out of range", ErrInvalid, before)
	}
	if limit <= 0 {
		limit = defaultExportCandidates
	}
	return s.queryUsageHours(ctx, "export candidates", `SELECT h.tenant, h.meter, h.hour, h.sum, h.count, h.max, h.last_value, h.last_at
		FROM usage_hourly h LEFT JOIN billing_exports e ON e.tenant = h.tenant AND e.meter = h.meter AND e.hour = h.hour
		WHERE h.export_pending AND h.hour < ?
		ORDER BY CASE WHEN e.exported_at IS NULL THEN 0 ELSE 1 END, e.exported_at, h.hour, h.tenant, h.meter
		LIMIT ?`, s.d.ts(before), limit)
}

func validateExport(e BillingExport) error {
	name := fmt.Sprintf("billing export %s/%s@%s", e.Tenant, trimForError(e.Meter), e.Hour.UTC().Format(time.RFC3339))
	var problem string
	switch {
	case e.Tenant == "":
		problem = "tenant is empty"
	case !ValidMeter(e.Meter):
		problem = "meter does not match ^[a-z][a-z0-9_.]{0,99}$"
	case !validTime(e.Hour) || !e.Hour.Equal(e.Hour.Truncate(time.Hour)):
		problem = "hour is zero or not the start of an hour"
	case e.Identifier == "" || len(e.Identifier) > MaxExportIdentifier:
		problem = fmt.Sprintf("identifier is empty or longer than %d bytes", MaxExportIdentifier)
	case e.Status != ExportSent && e.Status != ExportFailed && e.Status != ExportSkipped:
		problem = fmt.Sprintf("status %q is not %s, %s or %s", trimForError(e.Status), ExportSent, ExportFailed, ExportSkipped)
	case math.IsNaN(e.Value) || math.IsInf(e.Value, 0):
		problem = fmt.Sprintf("value %v is not finite", e.Value)
	case e.Attempts < 0:
		problem = fmt.Sprintf("attempts %d is negative", e.Attempts)
	default:
		return nil
	}
	return fmt.Errorf("%s: %w: %s", name, ErrInvalid, problem)
}

// RecordExport upserts the ledger row of (tenant, meter, hour). A failed
// row is replaced (its attempts add up); a sent or skipped row is final and
// left as it is, so a second exporter's late failure cannot undo a success.
// Once the row is final the hour stops being an export candidate.
func (s *sqlStore) RecordExport(ctx context.Context, e BillingExport) error {
	if err := validateExport(e); err != nil {
		return err
	}
	if e.ExportedAt.IsZero() {
		e.ExportedAt = s.timeNow()
	}
	e.LastError = cutUTF8(e.LastError, MaxExportError)
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO billing_exports AS b
			(tenant, meter, hour, identifier, value, status, attempts, last_error, exported_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (tenant, meter, hour) DO UPDATE SET
				identifier = excluded.identifier, value = excluded.value, status = excluded.status,
				attempts = b.attempts + excluded.attempts, last_error = excluded.last_error, exported_at = excluded.exported_at
			WHERE b.status = 'failed'`),
			e.Tenant, e.Meter, s.d.ts(e.Hour), e.Identifier, e.Value, e.Status, e.Attempts, e.LastError, s.d.ts(e.ExportedAt)); err != nil {
			return fmt.Errorf("store: record billing export %s/%s@%s: %w", e.Tenant, e.Meter, e.Hour.UTC().Format(time.RFC3339), err)
		}
		if e.Status == ExportFailed {
			return nil
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE usage_hourly SET export_pending = ? WHERE tenant = ? AND meter = ? AND hour = ?`),
			false, e.Tenant, e.Meter, s.d.ts(e.Hour)); err != nil {
			return fmt.Errorf("store: record billing export %s/%s@%s: %w", e.Tenant, e.Meter, e.Hour.UTC().Format(time.RFC3339), err)
		}
		return nil
	})
}

// ListExports lists the ledger rows of the tenant (every tenant's when
// tenant is empty) with from <= Hour < to (zero times: unbounded), ordered
// by hour, tenant and meter.
func (s *sqlStore) ListExports(ctx context.Context, tenant string, from, to time.Time) ([]BillingExport, error) {
	query, args := `SELECT tenant, meter, hour, identifier, value, status, attempts, last_error, exported_at
		FROM billing_exports WHERE 1 = 1`, []any(nil)
	if tenant != "" {
		query += ` AND tenant = ?`
		args = append(args, tenant)
	}
	if !from.IsZero() {
		query += ` AND hour >= ?`
		args = append(args, s.d.ts(from))
	}
	if !to.IsZero() {
		query += ` AND hour < ?`
		args = append(args, s.d.ts(to))
	}
	rows, err := s.rdb.QueryContext(ctx, s.q(query+` ORDER BY hour, tenant, meter`), args...)
	if err != nil {
		return nil, fmt.Errorf("store: list billing exports: %w", err)
	}
	defer rows.Close()
	var out []BillingExport
	for rows.Next() {
		var e BillingExport
		if err := rows.Scan(&e.Tenant, &e.Meter, timeCol{&e.Hour}, &e.Identifier, &e.Value, &e.Status, &e.Attempts,
			&e.LastError, timeCol{&e.ExportedAt}); err != nil {
			return nil, fmt.Errorf("store: list billing exports: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list billing exports: %w", err)
	}
	return out, nil
}
