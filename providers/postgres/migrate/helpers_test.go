package migrate_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"attache.dev/attache/providers/postgres/migrate"
	"attache.dev/attache/testenv/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// db is a fresh database with a pool and a log table that migrations with a
// side effect insert into: public.migration_log(schema, version).
type db struct {
	dsn  string
	name string
	pool *pgxpool.Pool

	active, peak, calls atomic.Int64 // connections handed out by targets' Connect
}

// newDB opens a fresh database; params are extra session settings for the
// pool's connections (e.g. statement_timeout).
func newDB(tb testing.TB, maxConns int32, params map[string]string) *db {
	tb.Helper()
	dsn := pgtest.DSN(tb)
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = maxConns
	for k, v := range params {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	d := &db{dsn: dsn, name: cfg.ConnConfig.Database, pool: pool}
	d.exec(tb, `CREATE TABLE public.migration_log (schema text NOT NULL, version bigint NOT NULL)`)
	return d
}

func (d *db) exec(tb testing.TB, sql string, args ...any) {
	tb.Helper()
	if _, err := d.pool.Exec(context.Background(), sql, args...); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
}

func (d *db) count(tb testing.TB, sql string, args ...any) int {
	tb.Helper()
	var n int
	if err := d.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return n
}

// connect hands out pool connections, counting how many are out at once.
func (d *db) connect(ctx context.Context) (*pgx.Conn, func(), error) {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	d.calls.Add(1)
	n := d.active.Add(1)
	for {
		p := d.peak.Load()
		if n <= p || d.peak.CompareAndSwap(p, n) {
			break
		}
	}
	var once sync.Once
	return c.Conn(), func() { once.Do(func() { d.active.Add(-1); c.Release() }) }, nil
}

// targets creates n schemas tenant_t00… (unless create is false) and
// returns their targets, named t00….
func (d *db) targets(tb testing.TB, n int, create bool) []migrate.Target {
	tb.Helper()
	ts := make([]migrate.Target, n)
	var b strings.Builder
	for i := range ts {
		name := fmt.Sprintf("t%02d", i)
		schema := "tenant_" + name
		ts[i] = migrate.Target{Name: name, Schema: schema, Connect: d.connect, LockKey: migrate.KeyFor(d.name, schema)}
		fmt.Fprintf(&b, "CREATE SCHEMA %s;\n", schema)
	}
	if create && n > 0 {
		if _, err := d.pool.Exec(context.Background(), b.String()); err != nil {
			tb.Fatal(err)
		}
	}
	return ts
}

// versions returns the versions recorded in schema's state table.
func (d *db) versions(tb testing.TB, schema string) []int64 {
	tb.Helper()
	rows, err := d.pool.Query(context.Background(), `SELECT version FROM `+pgx.Identifier{schema, migrate.StateTable}.Sanitize()+` ORDER BY version`)
	if err != nil {
		tb.Fatalf("versions of %s: %v", schema, err)
	}
	vs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		tb.Fatal(err)
	}
	return vs
}

// logged returns "schema:version" for every row of the log table, sorted.
func (d *db) logged(tb testing.TB) []string {
	tb.Helper()
	rows, err := d.pool.Query(context.Background(), `SELECT schema || ':' || version FROM public.migration_log ORDER BY 1`)
	if err != nil {
		tb.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// columns describes schema's tables other than the state table as
// "table.column,…" (sorted), with "+check" when items_n_positive exists.
func (d *db) columns(tb testing.TB, schema string) string {
	tb.Helper()
	rows, err := d.pool.Query(context.Background(), `SELECT table_name || '.' || column_name FROM information_schema.columns
		WHERE table_schema = $1 AND table_name <> $2 ORDER BY 1`, schema, migrate.StateTable)
	if err != nil {
		tb.Fatal(err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		tb.Fatal(err)
	}
	sort.Strings(cols)
	s := strings.Join(cols, ",")
	if d.count(tb, `SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
		WHERE n.nspname = $1 AND c.conname = 'items_n_positive'`, schema) > 0 {
		s += "+check"
	}
	return s
}

func logSQL(version int) string {
	return fmt.Sprintf("INSERT INTO public.migration_log VALUES (current_schema(), %d);", version)
}

func mustRun(tb testing.TB, ts []migrate.Target, ms []migrate.Migration, opts migrate.Options) migrate.Result {
	tb.Helper()
	res, err := migrate.Run(context.Background(), ts, ms, opts)
	if err != nil {
		tb.Fatalf("Run: %v", err)
	}
	return res
}
