package store_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/controlplane/store/storetest"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/testenv/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func openT(t testing.TB, dsn string) store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), dsn, nil)
	if err != nil {
		t.Fatalf("Open(%s): %v", dsn, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openT(t, filepath.Join(t.TempDir(), "attache.db"))
	})
}

func TestPostgres(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openT(t, pgtest.DSN(t))
	})
}

func rawDB(t testing.TB, s store.Store) *sql.DB {
	t.Helper()
	return s.(interface{ DB() *sql.DB }).DB()
}

func TestSQLiteFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "attache.db")
	s := openT(t, "sqlite://"+path)
	if s.Engine() != store.EngineSQLite {
		t.Errorf("Engine() = %q", s.Engine())
	}
	if err := s.CreateTenant(t.Context(), store.Tenant{Name: "acme"}, auditlog.Entry{Action: "tenant.create"}); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(path + "*")
	if len(files) < 2 {
		t.Errorf("expected the database and its WAL, found %v", files)
	}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	var mode string
	if err := rawDB(t, s).QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v", mode, err)
	}
	var fk int
	if err := rawDB(t, s).QueryRow("PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d, %v", fk, err)
	}
	s.Close()

	// Reopen: the data is there and the migrations are not re-applied.
	s2 := openT(t, path)
	if _, err := s2.GetTenant(t.Context(), "acme"); err != nil {
		t.Fatalf("after reopen: %v", err)
	}
	if _, err := store.Open(t.Context(), filepath.Join(dir, "what?.db"), nil); err == nil {
		t.Error("Open accepted a path with '?'")
	}
}

// TestNewerSchema: a binary refuses a database migrated by a newer one.
func TestNewerSchema(t *testing.T) {
	for _, engine := range []string{store.EngineSQLite, store.EnginePostgres} {
		t.Run(engine, func(t *testing.T) {
			dsn := filepath.Join(t.TempDir(), "attache.db")
			if engine == store.EnginePostgres {
				dsn = pgtest.DSN(t)
			}
			s := openT(t, dsn)
			q := fmt.Sprintf("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%d, 'future', %s)",
				store.SchemaVersion()+1, map[string]string{store.EngineSQLite: "0", store.EnginePostgres: "now()"}[engine])
			if _, err := rawDB(t, s).Exec(q); err != nil {
				t.Fatal(err)
			}
			s.Close()
			_, err := store.Open(t.Context(), dsn, nil)
			if err == nil || !strings.Contains(err.Error(), "newer than this binary") {
				t.Fatalf("Open on a newer schema: %v", err)
			}
		})
	}
}

// TestConcurrentOpenPostgres: replicas starting at once migrate once.
func TestConcurrentOpenPostgres(t *testing.T) {
	dsn := pgtest.DSN(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := store.Open(context.Background(), dsn, nil)
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: %v", i, err)
		}
	}
	s := openT(t, dsn)
	var n int
	if err := rawDB(t, s).QueryRow("SELECT count(*) FROM schema_migrations").Scan(&n); err != nil || n != store.SchemaVersion() {
		t.Errorf("schema_migrations has %d rows (%v), want %d", n, err, store.SchemaVersion())
	}
}

// TestUsageReplicas: two stores on one database (two control-plane
// replicas) ingesting the same batch at once count it once.
func TestUsageReplicas(t *testing.T) {
	for _, engine := range []string{store.EngineSQLite, store.EnginePostgres} {
		t.Run(engine, func(t *testing.T) {
			dsn := filepath.Join(t.TempDir(), "attache.db")
			if engine == store.EnginePostgres {
				dsn = pgtest.DSN(t)
			}
			s1, s2 := openT(t, dsn), openT(t, dsn)
			ctx := t.Context()
			if err := s1.CreateTenant(ctx, store.Tenant{Name: "acme"}, auditlog.Entry{Action: "tenant.create"}); err != nil {
				t.Fatal(err)
			}
			exp := time.Now().Add(time.Hour)
			tok := store.JoinToken{ID: "tok", Tenant: "acme", SecretHash: []byte("h"), ExpiresAt: exp}
			if err := s1.CreateJoinToken(ctx, tok, auditlog.Entry{Action: "jointoken.create"}); err != nil {
				t.Fatal(err)
			}
			a := store.Agent{Tenant: "acme", ID: "a1", SPIFFEID: "spiffe://example.org/tenant/acme/agent/a1", CertExpiresAt: exp}
			if _, err := s1.Enroll(ctx, "tok", []byte("h"), time.Now(), a, auditlog.Entry{Action: "agent.enroll"}); err != nil {
				t.Fatal(err)
			}
			storetest.IngestSameBatch(t, []store.Store{s1, s2}, store.AgentKey{Tenant: "acme", ID: "a1"})
		})
	}
}

// TestMigrationsMatch: both engines have the same migrations.
func TestMigrationsMatch(t *testing.T) {
	names := func(engine string) []string {
		fs, err := filepath.Glob(filepath.Join("migrations", engine, "*.sql"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range fs {
			fs[i] = filepath.Base(fs[i])
		}
		return fs
	}
	sq, pg := names(store.EngineSQLite), names(store.EnginePostgres)
	if strings.Join(sq, ",") != strings.Join(pg, ",") || len(sq) != store.SchemaVersion() {
		t.Errorf("sqlite migrations %v, postgres migrations %v, SchemaVersion %d", sq, pg, store.SchemaVersion())
	}
}

func BenchmarkRecordHeartbeats(b *testing.B) {
	for _, engine := range []string{store.EngineSQLite, store.EnginePostgres} {
		b.Run(engine, func(b *testing.B) {
			dsn := filepath.Join(b.TempDir(), "attache.db")
			if engine == store.EnginePostgres {
				dsn = pgtest.DSN(b)
			}
			benchHeartbeats(b, openT(b, dsn))
		})
	}
}

func benchHeartbeats(b *testing.B, s store.Store) {
	const agents, batch = 10_000, 1000
	ctx := context.Background()
	if err := s.CreateTenant(ctx, store.Tenant{Name: "acme"}, auditlog.Entry{Action: "tenant.create"}); err != nil {
		b.Fatal(err)
	}
	// Bulk-load the agents with SQL: enrolling 10,000 one by one would
	// dominate the set-up time.
	db := s.(interface{ DB() *sql.DB }).DB()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	insert := `INSERT INTO agents (tenant, id, spiffe_id, enrolled_at) VALUES (?, ?, ?, 0)`
	if s.Engine() == store.EnginePostgres {
		insert = `INSERT INTO agents (tenant, id, spiffe_id, enrolled_at) VALUES ($1, $2, $3, now())`
	}
	for i := range agents {
		id := fmt.Sprintf("agent-%05d", i)
		if _, err := tx.Exec(insert, "acme", id, "spiffe://example.org/tenant/acme/agent/"+id); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	health := []byte(`[{"component":"api","status":"SERVING"},{"component":"db","status":"SERVING"}]`)
	batches := make([][]store.Heartbeat, agents/batch)
	for i := range batches {
		for j := range batch {
			k := store.AgentKey{Tenant: "acme", ID: fmt.Sprintf("agent-%05d", i*batch+j)}
			h := store.Heartbeat{AgentKey: k}
			if j%2 == 0 {
				h.Health = health
			}
			batches[i] = append(batches[i], h)
		}
	}
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		at := time.Now()
		for _, hs := range batches {
			for i := range hs {
				hs[i].At = at
			}
			if err := s.RecordHeartbeats(ctx, hs); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*agents)/time.Since(start).Seconds(), "heartbeats/s")
}

// BenchmarkIngestUsage reports usage records ingested per second, in
// batches of 500 (the agent spool's default batch) spread over 5 meters and
// 2 hours, from one session (serial) and from 8 sessions at once (parallel).
func BenchmarkIngestUsage(b *testing.B) {
	for _, engine := range []string{store.EngineSQLite, store.EnginePostgres} {
		for _, sessions := range []int{1, 8} {
			name := engine + "/serial"
			if sessions > 1 {
				name = fmt.Sprintf("%s/parallel-%d", engine, sessions)
			}
			b.Run(name, func(b *testing.B) {
				dsn := filepath.Join(b.TempDir(), "attache.db")
				if engine == store.EnginePostgres {
					dsn = pgtest.DSN(b)
				}
				benchIngest(b, openT(b, dsn), sessions)
			})
		}
	}
}

func benchIngest(b *testing.B, s store.Store, sessions int) {
	const perBatch = 500
	ctx := context.Background()
	if err := s.CreateTenant(ctx, store.Tenant{Name: "acme"}, auditlog.Entry{Action: "tenant.create"}); err != nil {
		b.Fatal(err)
	}
	insert := `INSERT INTO agents (tenant, id, spiffe_id, enrolled_at) VALUES (?, ?, ?, 0)`
	if s.Engine() == store.EnginePostgres {
		insert = `INSERT INTO agents (tenant, id, spiffe_id, enrolled_at) VALUES ($1, $2, $3, now())`
	}
	for i := range sessions {
		id := fmt.Sprintf("agent-%d", i)
		if _, err := rawDB(b, s).Exec(insert, "acme", id, "spiffe://example.org/tenant/acme/agent/"+id); err != nil {
			b.Fatal(err)
		}
	}
	base := time.Now().Truncate(time.Hour)
	recs := make([]store.UsageRecord, perBatch)
	for i := range recs {
		recs[i] = store.UsageRecord{Meter: fmt.Sprintf("meter_%d", i%5), Value: float64(i), At: base.Add(time.Duration(i%2)*time.Hour + time.Duration(i)*time.Millisecond)}
	}
	var seq atomic.Uint64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	per := b.N/sessions + 1
	for i := range sessions {
		k := store.AgentKey{Tenant: "acme", ID: fmt.Sprintf("agent-%d", i)}
		wg.Go(func() {
			for range per {
				if dup, err := s.IngestUsage(ctx, k, seq.Add(1), recs); err != nil || dup {
					b.Errorf("IngestUsage: %v, %v", dup, err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(per*sessions*perBatch)/time.Since(start).Seconds(), "records/s")
}
