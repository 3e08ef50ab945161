package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" driver

	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/testenv/pgtest"
)

// pgTenantsPlan provisions three tenants in each model: pool tenants share
// a notes table keyed by tenant_id; bridge and silo tenants get their own.
const pgTenantsPlan = `version: 1
release: notes@v1
expires_in: 1h
steps:
  - id: pool
    provider: postgres
    action: tenant.provision
    resource: pool
    params:
      model: pool
      tenants: [p1, p2, p3]
      migrations:
        - version: 1
          name: create_notes
          sql: |
            CREATE TABLE notes (tenant_id text NOT NULL, id bigint NOT NULL, body text NOT NULL,
                                PRIMARY KEY (tenant_id, id));
            CREATE TABLE note_tags (tenant_id text NOT NULL, id bigint NOT NULL, note_id bigint NOT NULL,
                                    tag text NOT NULL, PRIMARY KEY (tenant_id, id),
                                    FOREIGN KEY (tenant_id, note_id) REFERENCES notes (tenant_id, id));
  - id: bridge
    provider: postgres
    action: tenant.provision
    resource: bridge
    params:
      model: bridge
      tenants: [b1, b2, b3]
      migrations:
        - version: 1
          name: create_notes
          sql: CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)
  - id: silo
    provider: postgres
    action: tenant.provision
    resource: silo
    params:
      model: silo
      tenants: [s1, s2, s3]
      migrations:
        - version: 1
          name: create_notes
          sql: CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)
`

// pgMigratePlan brings every tenant of every model to version 2.
const pgMigratePlan = `version: 1
release: notes@v2
expires_in: 1h
steps:
  - id: pool
    provider: postgres
    action: migrate
    resource: pool
    params:
      model: pool
      migrations: &pool
        - version: 1
          name: create_notes
          sql: |
            CREATE TABLE notes (tenant_id text NOT NULL, id bigint NOT NULL, body text NOT NULL,
                                PRIMARY KEY (tenant_id, id));
            CREATE TABLE note_tags (tenant_id text NOT NULL, id bigint NOT NULL, note_id bigint NOT NULL,
                                    tag text NOT NULL, PRIMARY KEY (tenant_id, id),
                                    FOREIGN KEY (tenant_id, note_id) REFERENCES notes (tenant_id, id));
        - version: 2
          name: add_notes_created_at
          sql: ALTER TABLE notes ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()
  - id: bridge
    provider: postgres
    action: migrate
    resource: bridge
    params:
      model: bridge
      concurrency: 2
      migrations:
        - version: 1
          name: create_notes
          sql: CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)
        - version: 2
          name: add_notes_created_at
          sql: ALTER TABLE notes ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()
  - id: silo
    provider: postgres
    action: migrate
    resource: silo
    params:
      model: silo
      migrations:
        - version: 1
          name: create_notes
          sql: CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)
        - version: 2
          name: add_notes_created_at
          sql: ALTER TABLE notes ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()
`

// pgExportErasePlan exports one bridge tenant and erases a silo and a pool
// tenant.
const pgExportErasePlan = `version: 1
expires_in: 1h
steps:
  - id: export-b1
    provider: postgres
    action: tenant.export
    resource: b1
    params:
      model: bridge
      tenant: b1
  - id: erase-s3
    provider: postgres
    action: tenant.erase
    resource: s3
    params:
      model: silo
      tenants: [s3]
  - id: erase-p3
    provider: postgres
    action: tenant.erase
    resource: p3
    params:
      model: pool
      tenants: [p3]
`

// TestPostgresTenancy runs the PostgreSQL provider end to end: control plane
// → agent → attache-provider-postgres (a go-plugin process whose connection
// string reaches it only through pass_env) → a real PostgreSQL server.
// Three tenants in each model are provisioned and migrated, one is
// exported and two are erased, with the erasure's verification in the
// control plane's audit trail.
func TestPostgresTenancy(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	exportDir := filepath.Join(t.TempDir(), "exports")
	config := env.AgentConfig(t, harness.Provider{
		Name: "postgres", Bin: harness.PostgresProviderBin, PassEnv: []string{"ATTACHE_POSTGRES_DSN"},
		Config: map[string]any{"dsn_env": "ATTACHE_POSTGRES_DSN", "export_dir": exportDir, "name_prefix": "e2e_"},
	})
	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme"), Config: config,
		Env: []string{"ATTACHE_POSTGRES_DSN=" + dsn}})
	a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	cp.AwaitAgent(t, "acme", "the agent to be connected", 20*time.Second, isConnected(id))

	submit := func(yaml string) {
		t.Helper()
		p, stderr, code := cp.SubmitPlanWait(t, "acme", yaml)
		if code != 0 || p.State != harness.PlanSucceeded {
			t.Fatalf("plan %s: %s (exit %d): %s%s\nstderr: %s\nagent log:\n%s", p.ID, p.State, code, p.Message, harness.StepSummary(p), stderr, a.Log())
		}
	}
	submit(pgTenantsPlan)

	ctx := t.Context()
	exec := func(target *sql.DB, q string, args ...any) {
		t.Helper()
		if _, err := target.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, tenant := range []string{"p1", "p2", "p3"} {
		for i := 1; i <= 3; i++ {
			exec(db, "INSERT INTO notes (tenant_id, id, body) VALUES ($1, $2, $3)", tenant, i, "note of "+tenant)
			exec(db, "INSERT INTO note_tags (tenant_id, id, note_id, tag) VALUES ($1, $2, $2, 'x')", tenant, i)
		}
	}
	for _, tenant := range []string{"b1", "b2", "b3"} {
		exec(db, fmt.Sprintf("INSERT INTO e2e_%s.notes (body) VALUES ('one'), ('two')", tenant))
	}
	for _, tenant := range []string{"s1", "s2", "s3"} {
		exec(siloDB(t, dsn, "e2e_"+tenant), "INSERT INTO notes (body) VALUES ('one')")
	}

	submit(pgMigratePlan)
	version := func(target *sql.DB, schema string) int64 {
		t.Helper()
		var v int64
		if err := target.QueryRowContext(ctx, fmt.Sprintf("SELECT max(version) FROM %s.attache_schema_migrations", schema)).Scan(&v); err != nil {
			t.Fatalf("version of %s: %v", schema, err)
		}
		return v
	}
	if v := version(db, "public"); v != 2 {
		t.Errorf("pool at version %d, want 2", v)
	}
	for _, tenant := range []string{"b1", "b2", "b3"} {
		if v := version(db, "e2e_"+tenant); v != 2 {
			t.Errorf("bridge tenant %s at version %d, want 2", tenant, v)
		}
	}
	for _, tenant := range []string{"s1", "s2", "s3"} {
		if v := version(siloDB(t, dsn, "e2e_"+tenant), "public"); v != 2 {
			t.Errorf("silo tenant %s at version %d, want 2", tenant, v)
		}
	}

	p, stderr, code := cp.SubmitPlanWait(t, "acme", pgExportErasePlan)
	if code != 0 || p.State != harness.PlanSucceeded {
		t.Fatalf("plan %s: %s (exit %d): %s%s\nstderr: %s", p.ID, p.State, code, p.Message, harness.StepSummary(p), stderr)
	}

	// The export: a manifest whose row counts are the tenant's.
	manifests, _ := filepath.Glob(filepath.Join(exportDir, "b1", "*", "manifest.json"))
	if len(manifests) != 1 {
		t.Fatalf("export manifests for b1: %v", manifests)
	}
	raw, err := os.ReadFile(manifests[0])
	if err != nil {
		t.Fatal(err)
	}
	var manifest struct {
		Tenant string `json:"tenant"`
		Tables []struct {
			Table string `json:"table"`
			Rows  int64  `json:"rows"`
		} `json:"tables"`
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatalf("manifest: %v\n%s", err, raw)
	}
	if manifest.Tenant != "b1" || !slices.ContainsFunc(manifest.Tables, func(tb struct {
		Table string `json:"table"`
		Rows  int64  `json:"rows"`
	}) bool {
		return tb.Table == "notes" && tb.Rows == 2
	}) {
		t.Errorf("manifest of b1: %s", raw)
	}
	if st, err := os.Stat(manifests[0]); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("manifest mode: %v %v", st.Mode(), err)
	}

	// The erasures: nothing of s3 or p3 remains, the others are untouched.
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := db.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	if n := count("SELECT count(*) FROM pg_database WHERE datname IN ('e2e_s3')"); n != 0 {
		t.Errorf("silo database of s3 still exists")
	}
	if n := count("SELECT count(*) FROM pg_roles WHERE rolname = 'e2e_s3'"); n != 0 {
		t.Errorf("role of s3 still exists")
	}
	if n := count("SELECT count(*) FROM pg_database WHERE datname IN ('e2e_s1', 'e2e_s2')"); n != 2 {
		t.Errorf("%d of the other silo databases remain, want 2", n)
	}
	if n := count("SELECT count(*) FROM notes WHERE tenant_id = 'p3'") + count("SELECT count(*) FROM note_tags WHERE tenant_id = 'p3'"); n != 0 {
		t.Errorf("%d rows of p3 remain", n)
	}
	if n := count("SELECT count(*) FROM notes WHERE tenant_id IN ('p1', 'p2')"); n != 6 {
		t.Errorf("%d rows of p1 and p2 remain, want 6", n)
	}

	// The verification is shown by plan show and is in the audit trail.
	for _, step := range []string{"erase-s3", "erase-p3"} {
		if v := harness.Step(t, p, step).Outputs["verification"]; v == "" {
			t.Errorf("step %s has no verification output: %+v", step, harness.Step(t, p, step))
		}
	}
	if !slices.ContainsFunc(cp.Audit(t), func(r auditlog.Record) bool {
		return r.Action == "plan.succeeded" && r.Target == p.ID &&
			strings.Contains(string(r.Detail), `"verification.erase-s3"`) && strings.Contains(string(r.Detail), `"verification.erase-p3"`)
	}) {
		t.Errorf("the audit trail has no plan.succeeded record of %s with the erasures' verification", p.ID)
	}
	if show := cp.CLI(t, "plan", "show", p.ID); !strings.Contains(show, "verification") {
		t.Errorf("plan show does not list the verification:\n%s", show)
	}
	// The connection string never reached the agent's log.
	if strings.Contains(a.Log(), dsn) {
		t.Errorf("the agent's log contains the connection string")
	}
}

// siloDB opens a tenant's own database on the server of dsn.
func siloDB(t *testing.T, dsn, name string) *sql.DB {
	t.Helper()
	i := strings.LastIndex(dsn, "/")
	j := strings.Index(dsn[i:], "?")
	target := dsn[:i+1] + name
	if j >= 0 {
		target += dsn[i+j:]
	}
	db, err := sql.Open("pgx", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("connect to %s: %v", name, err)
	}
	return db
}
