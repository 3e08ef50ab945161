package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"attache.dev/attache/providers/postgres/migrate"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// haltMigrations: v1 creates items(id, n); v2 adds a check constraint that
// fails where a row has n <= 0, a column, logs and takes 300 ms (so targets
// in flight are still running when a failing one fails); v3 adds a table and
// logs.
func haltMigrations() []migrate.Migration {
	return []migrate.Migration{
		migrate.New(1, "init", `CREATE TABLE items (id bigint PRIMARY KEY, n int NOT NULL);`),
		migrate.New(2, "add_check", `ALTER TABLE items ADD CONSTRAINT items_n_positive CHECK (n > 0);
ALTER TABLE items ADD COLUMN label text;
`+logSQL(2)+`
SELECT pg_sleep(0.3) -- slow, and a comment at the end`),
		migrate.New(3, "add_notes", `CREATE TABLE notes (id bigint PRIMARY KEY, body text);
`+logSQL(3)),
	}
}

// shapeAt is what a schema looks like at each version of haltMigrations.
var shapeAt = map[int64]string{
	1: "items.id,items.n",
	2: "items.id,items.label,items.n+check",
	3: "items.id,items.label,items.n,notes.body,notes.id+check",
}

// TestHaltAndResume: a migration failing in one of 50 schemas halts the
// run (targets in flight finish, no new one starts), every schema is at a
// whole version, the error names the target, the migration and the
// PostgreSQL error; a rerun after the fix resumes, skipping what is done
// (one log row per target per version).
func TestHaltAndResume(t *testing.T) {
	const n, bad, conc = 50, 20, 4
	d := newDB(t, 16, nil)
	ts := d.targets(t, n, true)
	ms := haltMigrations()
	if res := mustRun(t, ts, ms[:1], migrate.Options{Concurrency: 8}); res.Migrated != n {
		t.Fatalf("provision: %+v", res)
	}
	for i, tg := range ts {
		v := 1
		if i == bad {
			v = -1 // violates v2's check
		}
		d.exec(t, fmt.Sprintf("INSERT INTO %s.items VALUES (1, %d)", tg.Schema, v))
	}

	var mu sync.Mutex
	var events []migrate.Event
	res, err := migrate.Run(t.Context(), ts, ms, migrate.Options{Concurrency: conc, Progress: func(e migrate.Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}})
	if err == nil {
		t.Fatal("Run succeeded; want the failure of t20")
	}
	t.Logf("error: %v", err)
	for _, w := range []string{"tenant t20", "migration 2 add_check", "items_n_positive", "SQLSTATE 23514"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
	if strings.Contains(err.Error(), d.dsn) || strings.Contains(err.Error(), "postgres://") {
		t.Errorf("error holds the connection string: %v", err)
	}
	if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "23514" {
		t.Errorf("error does not wrap the *pgconn.PgError 23514: %#v", err)
	}

	// The failed target is at version 1 with 2 and 3 pending; targets after
	// it start only if claimed before the failure (at most conc-1 of them,
	// since the others take ≥300 ms and t20 fails at once); every started
	// target finished.
	f := res.Targets[bad]
	if f.State != migrate.StateFailed || f.From != 1 || f.To != 1 || !slices.Equal(f.Pending, []int64{2, 3}) || len(f.Applied) != 0 || f.Err == nil {
		t.Errorf("failed target: %+v", f)
	}
	started := 0
	for i, r := range res.Targets {
		if r.Target != ts[i].Name {
			t.Fatalf("result %d is %s, want %s (input order)", i, r.Target, ts[i].Name)
		}
		switch {
		case i == bad:
		case r.State == migrate.StateNotStarted:
			if i < bad {
				t.Errorf("%s before the failing target was not started", r.Target)
			}
		case r.State == migrate.StateMigrated:
			started++
			if i >= bad+conc {
				t.Errorf("%s (index %d) started after the failure of index %d with concurrency %d", r.Target, i, bad, conc)
			}
			if r.From != 1 || r.To != 3 || !slices.Equal(r.Applied, []int64{2, 3}) {
				t.Errorf("%s: %+v, want migrated from 1 to 3", r.Target, r)
			}
		default:
			t.Errorf("%s: state %s, err %v", r.Target, r.State, r.Err)
		}
	}
	if res.Failed != 1 || res.Migrated != started || res.NotStarted != n-1-started || res.Current != 0 {
		t.Errorf("counts %+v (started %d)", res, started)
	}
	if res.NotStarted < n-bad-conc {
		t.Errorf("%d targets not started, want at least %d", res.NotStarted, n-bad-conc)
	}
	var failedEvents int
	for _, e := range events {
		if e.Kind == migrate.EventFailed {
			failedEvents++
			if e.Target != "t20" || e.Version != 2 || e.Name != "add_check" || e.Err == nil || e.Total != n {
				t.Errorf("failed event %+v", e)
			}
		}
	}
	if failedEvents != 1 {
		t.Errorf("%d failed events, want 1", failedEvents)
	}

	// Every schema is at a whole version: its tables and columns are those
	// of its recorded version.
	checkWhole := func(want func(i int) int64) {
		t.Helper()
		for i, tg := range ts {
			vs := d.versions(t, tg.Schema)
			v := vs[len(vs)-1]
			if v != want(i) {
				t.Errorf("%s at version %d, want %d", tg.Schema, v, want(i))
			}
			if got := d.columns(t, tg.Schema); got != shapeAt[v] {
				t.Errorf("%s recorded at version %d looks like %q, want %q", tg.Schema, v, got, shapeAt[v])
			}
		}
	}
	checkWhole(func(i int) int64 {
		if res.Targets[i].State == migrate.StateMigrated {
			return 3
		}
		return 1
	})

	// Fix the data, run again: it resumes, and each version ran exactly once
	// per target.
	d.exec(t, "UPDATE tenant_t20.items SET n = 1")
	res2 := mustRun(t, ts, ms, migrate.Options{Concurrency: conc})
	if res2.Migrated != n-started || res2.Current != started || res2.Failed+res2.NotStarted != 0 {
		t.Errorf("rerun counts %+v, want %d migrated and %d current", res2, n-started, started)
	}
	for i, r := range res2.Targets {
		wantApplied := []int64{2, 3}
		if res.Targets[i].State == migrate.StateMigrated {
			wantApplied = nil
		}
		if r.To != 3 || !slices.Equal(r.Applied, wantApplied) {
			t.Errorf("rerun %s: %+v, want applied %v", r.Target, r, wantApplied)
		}
	}
	checkWhole(func(int) int64 { return 3 })
	var want []string
	for _, tg := range ts {
		want = append(want, tg.Schema+":2", tg.Schema+":3")
	}
	slices.Sort(want)
	if got := d.logged(t); !slices.Equal(got, want) {
		t.Errorf("log has %d rows, want one per target per version (%d):\n%v", len(got), len(want), got)
	}
}

// TestRefusals: a migration applied with another checksum, or a pending one
// older than the newest applied, is refused on that target (dry run too),
// and nothing new is applied.
func TestRefusals(t *testing.T) {
	v1 := migrate.New(1, "init", "CREATE TABLE items (id bigint);"+logSQL(1))
	v2 := migrate.New(2, "add_orders", "CREATE TABLE orders (id bigint);"+logSQL(2))
	v2edited := migrate.New(2, "add_orders", "CREATE TABLE orders (id bigint, total numeric);"+logSQL(2))
	v3 := migrate.New(3, "add_notes", "CREATE TABLE notes (id bigint);"+logSQL(3))
	for _, tc := range []struct {
		name  string
		setup []migrate.Migration
		run   []migrate.Migration
		err   error
		want  []string
	}{
		{"checksum mismatch", []migrate.Migration{v1, v2}, []migrate.Migration{v1, v2edited, v3}, migrate.ErrChecksumMismatch,
			[]string{"tenant t01: migration 2 add_orders was applied with " + v2.Checksum + ", the plan has " + v2edited.Checksum, "never edited: add a new one"}},
		{"out of order", []migrate.Migration{v1, v3}, []migrate.Migration{v1, v2, v3}, migrate.ErrOutOfOrder,
			[]string{"tenant t01: migration 2 add_orders is not applied but 3 add_notes is"}},
	} {
		for _, dry := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s dry=%v", tc.name, dry), func(t *testing.T) {
				d := newDB(t, 8, nil)
				ts := d.targets(t, 2, true)
				mustRun(t, ts[:1], tc.setup[:1], migrate.Options{}) // t00 only at v1: fine either way
				mustRun(t, ts[1:], tc.setup, migrate.Options{})
				before := d.logged(t)
				var events []migrate.Event
				res, err := migrate.Run(t.Context(), ts[1:], tc.run, migrate.Options{DryRun: dry, Progress: func(e migrate.Event) { events = append(events, e) }})
				if !errors.Is(err, tc.err) {
					t.Fatalf("Run: %v, want %v", err, tc.err)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				if r := res.Targets[0]; r.State != migrate.StateFailed || !errors.Is(r.Err, tc.err) || len(r.Applied) != 0 {
					t.Errorf("result %+v", r)
				}
				if len(events) != 1 || events[0].Kind != migrate.EventFailed || events[0].Version != 2 || events[0].Name != "add_orders" || !errors.Is(events[0].Err, tc.err) {
					t.Errorf("events %+v", events)
				}
				if got := d.logged(t); !slices.Equal(got, before) {
					t.Errorf("log changed: %v, was %v", got, before)
				}
				if got := d.versions(t, "tenant_t01"); !slices.Equal(got, []int64{tc.setup[0].Version, tc.setup[1].Version}) {
					t.Errorf("versions %v", got)
				}
			})
		}
	}
}

// TestConcurrentRunners: two runs at once on the same 20 targets never
// apply a migration twice.
func TestConcurrentRunners(t *testing.T) {
	d := newDB(t, 24, nil)
	ts := d.targets(t, 20, true)
	ms := []migrate.Migration{
		migrate.New(1, "init", "CREATE TABLE items (id bigint);"+logSQL(1)+"SELECT pg_sleep(0.01);"),
		migrate.New(2, "add_a", "ALTER TABLE items ADD COLUMN a int;"+logSQL(2)+"SELECT pg_sleep(0.01);"),
		migrate.New(3, "add_b", "ALTER TABLE items ADD COLUMN b int;"+logSQL(3)),
	}
	reversed := slices.Clone(ts)
	slices.Reverse(reversed)
	var wg sync.WaitGroup
	var results [2]migrate.Result
	var errs [2]error
	for i, order := range [][]migrate.Target{ts, reversed} {
		wg.Go(func() {
			results[i], errs[i] = migrate.Run(t.Context(), order, ms, migrate.Options{Concurrency: 5})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("runner %d: %v", i, err)
		}
	}
	var want []string
	applied := map[string]int{}
	for _, tg := range ts {
		for v := 1; v <= 3; v++ {
			want = append(want, fmt.Sprintf("%s:%d", tg.Schema, v))
		}
	}
	for _, res := range results {
		for _, r := range res.Targets {
			if r.To != 3 {
				t.Errorf("%s at %d", r.Target, r.To)
			}
			for _, v := range r.Applied {
				applied[fmt.Sprintf("tenant_%s:%d", r.Target, v)]++
			}
		}
	}
	slices.Sort(want)
	if got := d.logged(t); !slices.Equal(got, want) {
		t.Errorf("log has %d rows, want exactly one per target per version (%d): %v", len(got), len(want), got)
	}
	for _, k := range want {
		if applied[k] != 1 {
			t.Errorf("%s reported applied %d times", k, applied[k])
		}
	}
}

// TestConcurrencyCap: never more targets at once than Concurrency, and the
// cap is used; Progress is never called concurrently and counts every
// target.
func TestConcurrencyCap(t *testing.T) {
	for _, limit := range []int{1, 3, 8} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			const n = 24
			d := newDB(t, 16, nil)
			ts := d.targets(t, n, true)
			ms := []migrate.Migration{migrate.New(1, "slow", "CREATE TABLE items (id bigint); SELECT pg_sleep(0.05)")}
			var inProgress, overlaps atomic.Int32
			kinds := map[string]int{}
			last := 0
			res := mustRun(t, ts, ms, migrate.Options{Concurrency: limit, Progress: func(e migrate.Event) {
				if inProgress.Add(1) != 1 {
					overlaps.Add(1)
				}
				time.Sleep(time.Millisecond)
				kinds[e.Kind]++
				if e.Total != n || e.Done < last {
					t.Errorf("event %+v after done=%d", e, last)
				}
				last = e.Done
				inProgress.Add(-1)
			}})
			if res.Migrated != n {
				t.Fatalf("%+v", res)
			}
			if p := d.peak.Load(); p != int64(limit) {
				t.Errorf("peak %d targets at once, want %d", p, limit)
			}
			if d.active.Load() != 0 || d.calls.Load() != n {
				t.Errorf("%d connections not released, %d Connect calls", d.active.Load(), d.calls.Load())
			}
			if overlaps.Load() != 0 {
				t.Errorf("Progress called concurrently %d times", overlaps.Load())
			}
			if kinds[migrate.EventApplied] != n || kinds[migrate.EventDone] != n || last != n {
				t.Errorf("events %v, last done %d", kinds, last)
			}
		})
	}
}

// TestCancel: cancelling the context stops the run promptly, also on the
// server (the statement is cancelled, not left running), records nothing,
// and returns the context's error.
func TestCancel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sql      string
		holdLock bool // another session holds the targets' advisory locks
	}{
		{"in a migration", "CREATE TABLE items (id bigint); SELECT pg_sleep(30)", false},
		{"waiting for the lock", "CREATE TABLE items (id bigint)", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDB(t, 8, nil)
			ts := d.targets(t, 4, true)
			if tc.holdLock {
				c, err := d.pool.Acquire(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Release()
				for _, tg := range ts {
					if _, err := c.Exec(t.Context(), "SELECT pg_advisory_lock($1)", tg.LockKey); err != nil {
						t.Fatal(err)
					}
				}
				defer c.Exec(context.Background(), "SELECT pg_advisory_unlock_all()") //nolint:errcheck
			}
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(300*time.Millisecond, cancel)
			start := time.Now()
			res, err := migrate.Run(ctx, ts, []migrate.Migration{migrate.New(1, "slow", tc.sql)}, migrate.Options{Concurrency: 2})
			took := time.Since(start)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Run: %v, want context.Canceled", err)
			}
			if took > 2*time.Second {
				t.Errorf("Run took %s after a cancel at 300ms", took)
			}
			if res.Failed != 2 || res.NotStarted != 2 {
				t.Errorf("counts %+v", res)
			}
			for _, r := range res.Targets[:2] {
				if !errors.Is(r.Err, context.Canceled) || !strings.Contains(r.Err.Error(), "tenant "+r.Target) {
					t.Errorf("%s: %v", r.Target, r.Err)
				}
			}
			// The server side stopped too.
			deadline := time.Now().Add(2 * time.Second)
			for {
				n := d.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
					AND state = 'active'`)
				if n == 0 {
					t.Logf("server idle %s after start", time.Since(start))
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d statements still running on the server after the cancel", n)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if d.active.Load() != 0 {
				t.Errorf("%d connections not released", d.active.Load())
			}
			for _, tg := range ts {
				if n := d.count(t, "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'items'", tg.Schema); n != 0 {
					t.Errorf("%s has items after a cancelled run", tg.Schema)
				}
			}
		})
	}
}

// TestDryRun reports what would run and changes nothing, not even the state
// table of a schema never migrated, or a schema that does not exist yet.
func TestDryRun(t *testing.T) {
	d := newDB(t, 8, nil)
	ts := d.targets(t, 4, true)
	ts[3].Schema, ts[3].Name = "tenant_missing", "missing"
	ms := []migrate.Migration{
		migrate.New(1, "init", "CREATE TABLE items (id bigint);"+logSQL(1)),
		migrate.New(2, "add_a", "ALTER TABLE items ADD COLUMN a int;"+logSQL(2)),
	}
	mustRun(t, ts[1:2], ms[:1], migrate.Options{})
	mustRun(t, ts[2:3], ms, migrate.Options{})
	before := d.logged(t)
	var events []migrate.Event
	res := mustRun(t, ts, ms, migrate.Options{DryRun: true, Concurrency: 2, StatementTimeout: time.Second, Progress: func(e migrate.Event) { events = append(events, e) }})
	want := []migrate.TargetResult{
		{Target: "t00", State: migrate.StatePending, Pending: []int64{1, 2}},
		{Target: "t01", State: migrate.StatePending, From: 1, To: 1, Pending: []int64{2}},
		{Target: "t02", State: migrate.StateCurrent, From: 2, To: 2},
		{Target: "missing", State: migrate.StatePending, Pending: []int64{1, 2}},
	}
	for i, w := range want {
		g := res.Targets[i]
		if g.Target != w.Target || g.State != w.State || g.From != w.From || g.To != w.To || !slices.Equal(g.Pending, w.Pending) || g.Applied != nil || g.Err != nil {
			t.Errorf("target %d: %+v, want %+v", i, g, w)
		}
	}
	if res.Pending != 3 || res.Current != 1 || res.Migrated != 0 {
		t.Errorf("counts %+v", res)
	}
	if len(events) != 4 {
		t.Errorf("events %+v", events)
	}
	if got := d.logged(t); !slices.Equal(got, before) {
		t.Errorf("log changed: %v", got)
	}
	if n := d.count(t, "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_t00'"); n != 0 {
		t.Errorf("dry run created %d tables in tenant_t00", n)
	}
	if got := d.versions(t, "tenant_t01"); !slices.Equal(got, []int64{1}) {
		t.Errorf("tenant_t01 versions %v", got)
	}
}

// TestTimeouts: StatementTimeout and LockTimeout bound a migration; waiting
// for the advisory lock is bounded by neither (nor by the session's own
// timeouts), and 0 means no timeout even when the session has one.
func TestTimeouts(t *testing.T) {
	t.Run("statement timeout", func(t *testing.T) {
		d := newDB(t, 4, nil)
		ts := d.targets(t, 1, true)
		start := time.Now()
		_, err := migrate.Run(t.Context(), ts, []migrate.Migration{migrate.New(1, "slow", "CREATE TABLE items (id int); SELECT pg_sleep(5)")},
			migrate.Options{StatementTimeout: 200 * time.Millisecond})
		if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "57014" {
			t.Fatalf("Run: %v, want SQLSTATE 57014", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("took %s", took)
		}
		if n := d.count(t, "SELECT count(*) FROM tenant_t00.attache_schema_migrations"); n != 0 {
			t.Errorf("%d versions recorded", n)
		}
	})
	t.Run("lock timeout", func(t *testing.T) {
		d := newDB(t, 4, nil)
		ts := d.targets(t, 1, true)
		ms := []migrate.Migration{
			migrate.New(1, "init", "CREATE TABLE items (id int)"),
			migrate.New(2, "alter", "ALTER TABLE items ADD COLUMN a int"),
		}
		mustRun(t, ts, ms[:1], migrate.Options{})
		tx, err := d.pool.Begin(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(context.Background()) //nolint:errcheck
		if _, err := tx.Exec(t.Context(), "LOCK TABLE tenant_t00.items IN ACCESS SHARE MODE"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second) // without lock_timeout it would wait forever
		defer cancel()
		_, err = migrate.Run(ctx, ts, ms, migrate.Options{LockTimeout: 200 * time.Millisecond})
		if pe, ok := errors.AsType[*pgconn.PgError](err); !ok || pe.Code != "55P03" {
			t.Fatalf("Run: %v, want SQLSTATE 55P03", err)
		}
	})
	t.Run("advisory lock wait and none", func(t *testing.T) {
		// The session's own timeouts are short; the run's are 0 (none).
		d := newDB(t, 4, map[string]string{"statement_timeout": "200", "lock_timeout": "200"})
		ts := d.targets(t, 1, true)
		c, err := d.pool.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(t.Context(), "SELECT pg_advisory_lock($1)", ts[0].LockKey); err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(800*time.Millisecond, func() {
			c.Exec(context.Background(), "SELECT pg_advisory_unlock_all()") //nolint:errcheck
			c.Release()
		})
		start := time.Now()
		res := mustRun(t, ts, []migrate.Migration{migrate.New(1, "slow", "CREATE TABLE items (id int); SELECT pg_sleep(0.5)")}, migrate.Options{})
		if took := time.Since(start); took < 1200*time.Millisecond || res.Migrated != 1 {
			t.Errorf("took %s, %+v", took, res)
		}
	})
}

// TestMigrationEndingTransaction: a migration that commits or rolls back the
// engine's transaction fails its target and is not recorded.
func TestMigrationEndingTransaction(t *testing.T) {
	for _, stmt := range []string{"COMMIT", "ROLLBACK", "COMMIT; BEGIN"} {
		t.Run(stmt, func(t *testing.T) {
			d := newDB(t, 4, nil)
			ts := d.targets(t, 1, true)
			_, err := migrate.Run(t.Context(), ts, []migrate.Migration{migrate.New(1, "bad", "CREATE TABLE a (id int); "+stmt+"; SELECT 1")}, migrate.Options{})
			if err == nil || !strings.Contains(err.Error(), "tenant t00: migration 1 bad: the migration ended the engine's transaction") {
				t.Fatalf("Run: %v", err)
			}
			if n := d.count(t, "SELECT count(*) FROM tenant_t00.attache_schema_migrations"); n != 0 {
				t.Errorf("%d versions recorded", n)
			}
			var tx string
			if err := d.pool.QueryRow(t.Context(), "SELECT 'ok'").Scan(&tx); err != nil {
				t.Errorf("pool unusable afterwards: %v", err)
			}
		})
	}
}

// TestSearchPathAndState: migrations run with search_path set to the
// target's schema only; the state table records name, checksum and
// duration; a connection error names the target.
func TestSearchPathAndState(t *testing.T) {
	d := newDB(t, 4, nil)
	ts := d.targets(t, 2, true)
	d.exec(t, "CREATE TABLE public.items (id int)")
	m := migrate.New(1, "init", "CREATE TABLE items (id int); SELECT pg_sleep(0.05);\n-- trailing comment")
	mustRun(t, ts, []migrate.Migration{m}, migrate.Options{Concurrency: 2})
	for _, tg := range ts {
		var name, sum string
		var ms int64
		if err := d.pool.QueryRow(t.Context(), "SELECT name, checksum, duration_ms FROM "+tg.Schema+".attache_schema_migrations WHERE version = 1").Scan(&name, &sum, &ms); err != nil {
			t.Fatal(err)
		}
		if name != "init" || sum != m.Checksum || ms < 50 || ms > 5000 {
			t.Errorf("%s state row: %s %s %dms", tg.Schema, name, sum, ms)
		}
		if n := d.count(t, "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'items'", tg.Schema); n != 1 {
			t.Errorf("items not created in %s", tg.Schema)
		}
	}
	broken := []migrate.Target{{Name: "pool", Schema: "public", Connect: func(context.Context) (*pgx.Conn, func(), error) {
		return nil, nil, errors.New("dial refused")
	}}}
	_, err := migrate.Run(t.Context(), broken, []migrate.Migration{m}, migrate.Options{})
	if err == nil || err.Error() != "pool: connect: dial refused" {
		t.Errorf("Run: %v", err)
	}
}

// TestQuoting: a schema name with quotes, a space, a dollar-quote tag and
// upper case is quoted everywhere (state table, lock, search_path, DO
// blocks).
func TestQuoting(t *testing.T) {
	d := newDB(t, 4, nil)
	schema := `We"ird 'x' $attache$ ;--`
	d.exec(t, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize())
	ts := []migrate.Target{{Name: "odd", Schema: schema, Connect: d.connect, LockKey: migrate.KeyFor(d.name, schema)}}
	ms := []migrate.Migration{migrate.New(1, "init", "CREATE TABLE items (id int)"), migrate.New(2, "more", "ALTER TABLE items ADD COLUMN a int")}
	if res := mustRun(t, ts, ms[:1], migrate.Options{}); res.Migrated != 1 {
		t.Fatalf("%+v", res)
	}
	if res := mustRun(t, ts, ms, migrate.Options{DryRun: true}); !slices.Equal(res.Targets[0].Pending, []int64{2}) {
		t.Fatalf("dry run %+v", res)
	}
	if res := mustRun(t, ts, ms, migrate.Options{}); res.Migrated != 1 || res.Targets[0].To != 2 {
		t.Fatalf("%+v", res)
	}
	if got := d.versions(t, schema); !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("versions %v", got)
	}
	if got := d.columns(t, schema); got != "items.a,items.id" {
		t.Fatalf("columns %q", got)
	}
}
