package migrate_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/providers/postgres/migrate"
)

func envInt(tb testing.TB, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// BenchmarkMigrateSchemas measures the engine on bridge-model schemas:
// ATTACHE_BENCH_SCHEMAS schemas (default 200) with 5 tables each, created
// through the engine (reported as provision-schemas/s), then each iteration
// migrates every schema with one migration that adds a column and an index
// on two tables, ATTACHE_BENCH_CONCURRENCY (default 8) targets at once,
// reported as schemas/s. The pgtest server runs with fsync off.
func BenchmarkMigrateSchemas(b *testing.B) {
	n := envInt(b, "ATTACHE_BENCH_SCHEMAS", 200)
	conc := envInt(b, "ATTACHE_BENCH_CONCURRENCY", 8)
	d := newDB(b, int32(conc), nil)
	ts := d.targets(b, n, true)
	// Drop the schemas before pgtest drops the database (which would take
	// longer than its timeout with thousands of schemas).
	b.Cleanup(func() {
		for i := 0; i < n; i += 100 {
			var q strings.Builder
			for _, t := range ts[i:min(i+100, n)] {
				fmt.Fprintf(&q, "DROP SCHEMA %s CASCADE;\n", t.Schema)
			}
			if _, err := d.pool.Exec(context.Background(), q.String()); err != nil {
				b.Errorf("drop schemas: %v", err)
				return
			}
		}
	})
	var init strings.Builder
	for i := 1; i <= 5; i++ {
		fmt.Fprintf(&init, "CREATE TABLE t%d (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());\n", i)
	}
	ms := []migrate.Migration{migrate.New(1, "init", init.String())}
	start := time.Now()
	if res := mustRun(b, ts, ms, migrate.Options{Concurrency: conc}); res.Migrated != n {
		b.Fatalf("provision: %+v", res)
	}
	provision := time.Since(start)
	b.Logf("provisioned %d schemas (5 tables each) in %s", n, provision.Round(time.Millisecond))

	migrated := 0
	for i := 0; b.Loop(); i++ {
		v := int64(i + 2)
		ms = append(ms, migrate.New(v, fmt.Sprintf("add_c%d", v), fmt.Sprintf(
			"ALTER TABLE t1 ADD COLUMN c%[1]d text;\nCREATE INDEX t1_c%[1]d ON t1 (c%[1]d);\n"+
				"ALTER TABLE t2 ADD COLUMN c%[1]d text;\nCREATE INDEX t2_c%[1]d ON t2 (c%[1]d);\n", v)))
		start := time.Now()
		res := mustRun(b, ts, ms, migrate.Options{Concurrency: conc})
		if res.Migrated != n {
			b.Fatalf("migrate: %+v", res)
		}
		migrated += n
		took := time.Since(start)
		b.Logf("migrated %d schemas to version %d in %s: %.0f schemas/s", n, v, took.Round(time.Millisecond), float64(n)/took.Seconds())
	}
	b.Logf("%.0f schemas/s", float64(migrated)/b.Elapsed().Seconds())
	b.ReportMetric(float64(migrated)/b.Elapsed().Seconds(), "schemas/s")
	b.ReportMetric(float64(n)/provision.Seconds(), "provision-schemas/s")
}
