package store

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// dialect is what differs between the engines; the SQL is otherwise shared.
// Queries are written with ? placeholders and rebound for PostgreSQL.
type dialect struct {
	name      string
	pg        bool
	forUpdate string // row-lock suffix for SELECT, empty where the engine has one writer
	greatest  string // the two-argument maximum function
}

var (
	sqliteDialect   = dialect{name: EngineSQLite, greatest: "MAX"}
	postgresDialect = dialect{name: EnginePostgres, pg: true, forUpdate: " FOR UPDATE", greatest: "GREATEST"}
)

// rebind turns ? placeholders into $1, $2, … on PostgreSQL. Queries in this
// package never contain a literal '?'.
func (d dialect) rebind(q string) string {
	if !d.pg || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// ts converts a time for storage: truncated to microseconds (PostgreSQL's
// precision, applied on both engines so they agree), UTC; the zero time is
// NULL. SQLite stores INTEGER microseconds since the epoch.
func (d dialect) ts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	t = t.UTC().Truncate(time.Microsecond)
	if d.pg {
		return t
	}
	return t.UnixMicro()
}

// tsp is ts for optional times.
func (d dialect) tsp(t *time.Time) any {
	if t == nil {
		return nil
	}
	return d.ts(*t)
}

// normTime is what a time reads back as after ts.
func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Microsecond)
}

// blob stores empty byte slices as NULL.
func blob(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// timeCol scans a timestamp column of either engine; NULL is the zero time.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(v any) error {
	t, _, err := scanTime(v)
	*c.t = t
	return err
}

// nullTimeCol scans an optional timestamp column; NULL is nil.
type nullTimeCol struct{ t **time.Time }

func (c nullTimeCol) Scan(v any) error {
	t, ok, err := scanTime(v)
	if ok {
		*c.t = &t
	} else {
		*c.t = nil
	}
	return err
}

func scanTime(v any) (time.Time, bool, error) {
	switch v := v.(type) {
	case nil:
		return time.Time{}, false, nil
	case int64:
		return time.UnixMicro(v).UTC(), true, nil
	case time.Time:
		return v.UTC(), true, nil
	default:
		return time.Time{}, false, fmt.Errorf("store: unexpected timestamp value %T", v)
	}
}
