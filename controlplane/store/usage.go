package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// MaxUsageBatch is the most records IngestUsage takes in one batch.
const MaxUsageBatch = 10000

// UsageRecord is one usage sample an agent reported.
type UsageRecord struct {
	Meter string
	Value float64
	At    time.Time
}

// UsageFilter selects hourly usage in QueryUsage. Zero values select all;
// From and To bound the hours: From <= Hour < To.
type UsageFilter struct {
	Tenant string
	Meter  string
	From   time.Time
	To     time.Time
}

// UsageHour is one tenant's meter folded over one UTC hour (or, from
// UsageTotals, over all time, with Hour zero).
type UsageHour struct {
	Tenant string
	Meter  string
	Hour   time.Time // start of the UTC hour
	Sum    float64   // exact for integral values while below 2^53
	Count  int64
	Max    float64
	Last   float64   // value of the record with the latest time
	LastAt time.Time // that record's time
}

// ValidMeter reports whether name is a meter name: ^[a-z][a-z0-9_.]{0,99}$.
func ValidMeter(name string) bool {
	if len(name) == 0 || len(name) > 100 || name[0] < 'a' || name[0] > 'z' {
		return false
	}
	for i := 1; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validTime reports whether t is a time both engines store: not zero, and
// within the years RFC 3339 can write.
func validTime(t time.Time) bool {
	if t.IsZero() {
		return false
	}
	y := t.UTC().Year()
	return y >= 1 && y <= 9999
}

func validateUsage(k AgentKey, seq uint64, recs []UsageRecord) error {
	switch {
	case k.Tenant == "" || k.ID == "":
		return fmt.Errorf("usage batch of agent %q: %w: tenant and agent ID are required", keyString(k), ErrInvalid)
	case seq == 0 || seq > math.MaxInt64:
		return fmt.Errorf("usage batch of agent %s: %w: sequence %d is out of range (1 to 2^63-1)", keyString(k), ErrInvalid, seq)
	case len(recs) > MaxUsageBatch:
		return fmt.Errorf("usage batch %d of agent %s: %w: %d records, limit %d", seq, keyString(k), ErrInvalid, len(recs), MaxUsageBatch)
	}
	for i, r := range recs {
		var problem string
		switch {
		case !ValidMeter(r.Meter):
			problem = fmt.Sprintf("meter %q does not match ^[a-z][a-z0-9_.]{0,99}$", trimForError(r.Meter))
		case math.IsNaN(r.Value) || math.IsInf(r.Value, 0) || r.Value < 0:
			problem = fmt.Sprintf("value %v is not a finite, non-negative number", r.Value)
		case !validTime(r.At):
			problem = fmt.Sprintf("at %v is zero or out of range", r.At)
		default:
			continue
		}
		return fmt.Errorf("usage batch %d of agent %s: %w: record %d: %s", seq, keyString(k), ErrInvalid, i, problem)
	}
	return nil
}

// trimForError keeps agent-supplied text in error messages short.
func trimForError(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

// foldUsage folds records into one row per meter and hour, sorted by meter
// and hour (so concurrent ingestions lock hourly rows in the same order).
// Of records with the same time, the later one in the batch is the last.
func foldUsage(tenant string, recs []UsageRecord) []UsageHour {
	type key struct {
		meter string
		hour  int64
	}
	idx := make(map[key]int)
	var out []UsageHour
	for _, r := range recs {
		at := normTime(r.At)
		hour := at.Truncate(time.Hour)
		k := key{r.Meter, hour.UnixMicro()}
		i, ok := idx[k]
		if !ok {
			idx[k] = len(out)
			out = append(out, UsageHour{Tenant: tenant, Meter: r.Meter, Hour: hour, Sum: r.Value, Count: 1, Max: r.Value, Last: r.Value, LastAt: at})
			continue
		}
		h := &out[i]
		h.Sum += r.Value
		h.Count++
		h.Max = max(h.Max, r.Value)
		if !at.Before(h.LastAt) {
			h.Last, h.LastAt = r.Value, at
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Meter != out[j].Meter {
			return out[i].Meter < out[j].Meter
		}
		return out[i].Hour.Before(out[j].Hour)
	})
	return out
}

// sqliteConstraintForeignKey is SQLITE_CONSTRAINT_FOREIGNKEY.
const sqliteConstraintForeignKey = 787

// foreignKeyViolation reports whether err is a foreign key violation on
// either engine.
func foreignKeyViolation(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23503"
	}
	var coded interface{ Code() int }
	return errors.As(err, &coded) && coded.Code() == sqliteConstraintForeignKey
}

// IngestUsage stores the batch once: the ledger row and the hourly folds
// are written in one transaction, and a batch already in the ledger changes
// nothing (duplicate is true). On PostgreSQL a replica ingesting the same
// batch at the same moment waits for the other's transaction, then finds
// the ledger row. ErrNotFound for an unknown agent; a revoked agent's
// batches are still stored (the session layer stops revoked agents).
func (s *sqlStore) IngestUsage(ctx context.Context, k AgentKey, seq uint64, recs []UsageRecord) (bool, error) {
	if err := validateUsage(k, seq, recs); err != nil {
		return false, err
	}
	hours := foldUsage(k.Tenant, recs)
	now := s.timeNow()
	var duplicate bool
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		duplicate = false
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO usage_batches (tenant, agent_id, seq, records, received_at)
			VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`), k.Tenant, k.ID, int64(seq), len(recs), s.d.ts(now))
		if foreignKeyViolation(err) {
			return fmt.Errorf("agent %s: %w", keyString(k), ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: usage batch %d of agent %s: %w", seq, keyString(k), err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			duplicate = true
			return nil
		}
		if err := s.foldHours(ctx, tx, hours); err != nil {
			return fmt.Errorf("store: usage batch %d of agent %s: %w", seq, keyString(k), err)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	return duplicate, nil
}

// foldHours adds the hours into usage_hourly, inside tx. The SET
// expressions all see the row as it was.
func (s *sqlStore) foldHours(ctx context.Context, tx *sql.Tx, hours []UsageHour) error {
	if len(hours) == 0 {
		return nil
	}
	const set = ` ON CONFLICT (tenant, meter, hour) DO UPDATE SET
		sum = h.sum + excluded.sum,
		count = h.count + excluded.count,
		max = %[1]s(h.max, excluded.max),
		last_value = CASE WHEN excluded.last_at >= h.last_at THEN excluded.last_value ELSE h.last_value END,
		last_at = %[1]s(h.last_at, excluded.last_at)`
	if s.d.pg {
		// One statement for the whole batch.
		var (
			meters = make([]string, len(hours))
			hrs    = make([]time.Time, len(hours))
			sums   = make([]float64, len(hours))
			counts = make([]int64, len(hours))
			maxes  = make([]float64, len(hours))
			lasts  = make([]float64, len(hours))
			lastAt = make([]time.Time, len(hours))
		)
		for i, h := range hours {
			meters[i], hrs[i], sums[i], counts[i], maxes[i], lasts[i], lastAt[i] = h.Meter, h.Hour, h.Sum, h.Count, h.Max, h.Last, h.LastAt
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO usage_hourly AS h (tenant, meter, hour, sum, count, max, last_value, last_at)
			SELECT $1::text, u.meter, u.hour, u.sum, u.count, u.max, u.last_value, u.last_at
			FROM unnest($2::text[], $3::timestamptz[], $4::float8[], $5::bigint[], $6::float8[], $7::float8[], $8::timestamptz[])
				AS u(meter, hour, sum, count, max, last_value, last_at)
			ORDER BY u.meter, u.hour`+fmt.Sprintf(set, s.d.greatest),
			hours[0].Tenant, meters, hrs, sums, counts, maxes, lasts, lastAt)
		return err
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO usage_hourly AS h (tenant, meter, hour, sum, count, max, last_value, last_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`+fmt.Sprintf(set, s.d.greatest))
	if err != nil {
		return err
	}
	defer stmt.Close()
	for _, h := range hours {
		if _, err := stmt.ExecContext(ctx, h.Tenant, h.Meter, s.d.ts(h.Hour), h.Sum, h.Count, h.Max, h.Last, s.d.ts(h.LastAt)); err != nil {
			return err
		}
	}
	return nil
}

const usageHourCols = `tenant, meter, hour, sum, count, max, last_value, last_at`

func scanUsageHour(sc interface{ Scan(...any) error }) (UsageHour, error) {
	var h UsageHour
	err := sc.Scan(&h.Tenant, &h.Meter, timeCol{&h.Hour}, &h.Sum, &h.Count, &h.Max, &h.Last, timeCol{&h.LastAt})
	return h, err
}

func (s *sqlStore) queryUsageHours(ctx context.Context, what, query string, args ...any) ([]UsageHour, error) {
	rows, err := s.rdb.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("store: %s: %w", what, err)
	}
	defer rows.Close()
	var out []UsageHour
	for rows.Next() {
		h, err := scanUsageHour(rows)
		if err != nil {
			return nil, fmt.Errorf("store: %s: %w", what, err)
		}
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: %s: %w", what, err)
	}
	return out, nil
}

// QueryUsage lists hourly usage ordered by tenant, meter and hour.
func (s *sqlStore) QueryUsage(ctx context.Context, f UsageFilter) ([]UsageHour, error) {
	if !f.From.IsZero() && !f.To.IsZero() && !f.To.After(f.From) {
		return nil, fmt.Errorf("usage query: %w: to (%s) is not after from (%s)", ErrInvalid, f.To.Format(time.RFC3339), f.From.Format(time.RFC3339))
	}
	query, args := `SELECT `+usageHourCols+` FROM usage_hourly WHERE 1 = 1`, []any(nil)
	if f.Tenant != "" {
		query += ` AND tenant = ?`
		args = append(args, f.Tenant)
	}
	if f.Meter != "" {
		query += ` AND meter = ?`
		args = append(args, f.Meter)
	}
	if !f.From.IsZero() {
		query += ` AND hour >= ?`
		args = append(args, s.d.ts(f.From))
	}
	if !f.To.IsZero() {
		query += ` AND hour < ?`
		args = append(args, s.d.ts(f.To))
	}
	return s.queryUsageHours(ctx, "query usage", query+` ORDER BY tenant, meter, hour`, args...)
}

// UsageTotals folds each of the tenant's meters (every tenant's when tenant
// is empty) over all time, ordered by tenant and meter. Hour is zero.
func (s *sqlStore) UsageTotals(ctx context.Context, tenant string) ([]UsageHour, error) {
	where, args := ``, []any(nil)
	if tenant != "" {
		where, args = ` WHERE tenant = ?`, []any{tenant}
	}
	// The hour column is NULL (the zero time); last_value comes from the
	// row holding the latest record.
	return s.queryUsageHours(ctx, "usage totals", `SELECT g.tenant, g.meter, NULL, g.sum, g.count, g.max,
			(SELECT l.last_value FROM usage_hourly l WHERE l.tenant = g.tenant AND l.meter = g.meter
			 ORDER BY l.last_at DESC, l.hour DESC LIMIT 1),
			g.last_at
		FROM (SELECT tenant, meter, SUM(sum) AS sum, CAST(SUM(count) AS BIGINT) AS count, MAX(max) AS max, MAX(last_at) AS last_at
			FROM usage_hourly`+where+` GROUP BY tenant, meter) g
		ORDER BY g.tenant, g.meter`, args...)
}
