package postgres_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/postgres"
	"attache.dev/attache/providers/sdk"
	"attache.dev/attache/testenv/pgtest"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestMain stops the test server and removes the plugin binary (built
// once, see pluginBinary) when the tests finish.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Stop()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func quiet() *slog.Logger {
	if testing.Verbose() && os.Getenv("PG_PROVIDER_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// prefixes hands out distinct name prefixes: roles and databases are
// cluster-wide, and the tests share one server.
var prefixes atomic.Int64

// env is one test's database, directories and configuration.
type env struct {
	dsn     string // superuser DSN of the test's main database
	cfg     postgres.Config
	exports string
	secrets string
	schemas []string // the schemas of the main database the provider uses
}

// newEnv creates a fresh database, a DSN file and the export and secrets
// directories, and a configuration using them with a prefix of its own.
func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvIn(t, pgtest.DSN(t))
}

// newSharedEnv is newEnv in an existing database (dsn): the pool and the
// registry get schemas of their own, so environments do not meet.
func newSharedEnv(t testing.TB, dsn string) *env {
	t.Helper()
	e := newEnvIn(t, dsn)
	n := strings.TrimSuffix(strings.TrimPrefix(e.cfg.NamePrefix, "t"), "_")
	e.cfg.PoolSchema, e.cfg.RegistrySchema = "pool"+n, "reg"+n
	e.schemas = []string{e.cfg.PoolSchema, e.cfg.RegistrySchema}
	return e
}

func newEnvIn(t testing.TB, dsn string) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{dsn: dsn, exports: filepath.Join(dir, "exports"), secrets: filepath.Join(dir, "secrets"), schemas: []string{"public", "attache"}}
	dsnFile := filepath.Join(dir, "dsn")
	if err := os.WriteFile(dsnFile, []byte(e.dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(e.secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	e.cfg = postgres.Config{
		DSNFile:    dsnFile,
		NamePrefix: fmt.Sprintf("t%d_", prefixes.Add(1)),
		ExportDir:  e.exports,
		SecretsDir: e.secrets,
	}
	return e
}

// configJSON is e's configuration as ConfigureRequest JSON.
func (e *env) configJSON(t testing.TB) []byte {
	t.Helper()
	b, err := sdk.ConfigJSON(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// provider returns a provider configured with e's configuration.
func (e *env) provider(t testing.TB) *postgres.Provider {
	t.Helper()
	p := postgres.New(quiet(), "test")
	t.Cleanup(p.Close)
	configure(t, p, e.configJSON(t))
	return p
}

func configure(t testing.TB, p sdk.Provider, cfg []byte) {
	t.Helper()
	err := p.Configure(t.Context(), &providerv1.ConfigureRequest{
		ConfigJson: cfg,
		Tenant:     &providerv1.TenantContext{Tenant: "acme", AgentId: "spiffe://example.org/tenant/acme/agent/a1", TrustDomain: "example.org"},
	})
	if err != nil {
		t.Fatalf("Configure: %v", err)
	}
}

// name is tenant id's PostgreSQL name.
func (e *env) name(id string) string { return e.cfg.NamePrefix + strings.ReplaceAll(id, "-", "_") }

// conn connects to the test's database as the superuser; db and user, if
// set, choose another database or role (trust authentication).
func (e *env) conn(t testing.TB, db, user string) *pgx.Conn {
	t.Helper()
	c, err := e.connect(t.Context(), db, user)
	if err != nil {
		t.Fatalf("connect (database %q, user %q): %v", db, user, err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func (e *env) connect(ctx context.Context, db, user string) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(e.dsn)
	if err != nil {
		return nil, err
	}
	if db != "" {
		cc.Database = db
	}
	if user != "" {
		cc.User = user
	}
	return pgx.ConnectConfig(ctx, cc)
}

// mustExec runs sql on c and fails the test on error.
func mustExec(t testing.TB, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// step builds a step; params is converted with structpb.NewStruct.
func step(id, action, tenant string, params map[string]any) *providerv1.Step {
	s, err := structpb.NewStruct(params)
	if err != nil {
		panic(err)
	}
	return &providerv1.Step{Id: id, Action: action, Resource: tenant, Params: s, Tenant: tenant, PlanId: "plan-test", Attempt: 1}
}

// apply applies s and fails the test on an error (not on FAILED).
func apply(t testing.TB, p sdk.Provider, s *providerv1.Step) *providerv1.ApplyResult {
	t.Helper()
	res, err := p.Apply(t.Context(), s, func(pr *providerv1.Progress) { t.Logf("progress %s: %s", pr.GetResource(), pr.GetMessage()) })
	if err != nil {
		t.Fatalf("Apply %s (%s): %v", s.GetId(), s.GetAction(), err)
	}
	return res
}

// mustApply applies s and fails the test unless it succeeded.
func mustApply(t testing.TB, p sdk.Provider, s *providerv1.Step) *providerv1.ApplyResult {
	t.Helper()
	res := apply(t, p, s)
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatalf("Apply %s (%s): %s: %s", s.GetId(), s.GetAction(), res.GetState(), res.GetMessage())
	}
	return res
}

// output returns a result output as a string (numbers formatted).
func output(res *providerv1.ApplyResult, key string) string {
	v := res.GetOutputs().GetFields()[key]
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return k.StringValue
	case *structpb.Value_NumberValue:
		return fmt.Sprint(k.NumberValue)
	}
	return ""
}

// Sample schema of the tests: customers and their orders, with a foreign
// key from orders to customers; pool tables carry tenant_id.
const (
	poolSchemaSQL = `CREATE TABLE customers (id bigint NOT NULL, tenant_id text NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE orders (id bigint NOT NULL, tenant_id text NOT NULL, customer_id bigint NOT NULL, total numeric NOT NULL,
  PRIMARY KEY (id), FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id));
CREATE TABLE order_notes (id bigint PRIMARY KEY, tenant_id text NOT NULL, order_id bigint NOT NULL REFERENCES orders (id), note text);
CREATE TABLE currencies (code text PRIMARY KEY);`
	tenantSchemaSQL = `CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers (id), total numeric NOT NULL);`
	poolDataSQL = `INSERT INTO customers VALUES (1, 'acme', 'Ann'), (2, 'acme', 'Al'), (1, 'beta', 'Bob');
INSERT INTO orders VALUES (10, 'acme', 1, 5), (11, 'acme', 2, 7), (20, 'beta', 1, 9);
INSERT INTO order_notes VALUES (100, 'acme', 10, 'fragile'), (200, 'beta', 20, 'gift');
INSERT INTO currencies VALUES ('EUR'), ('USD');`
	tenantDataSQL = `INSERT INTO customers (name) VALUES ('Ann'), ('Al');
INSERT INTO orders (customer_id, total) VALUES (1, 5), (2, 7), (2, 8);`
)

// migrations builds a migrations parameter from (name, sql) pairs numbered
// from 1.
func migrations(pairs ...string) []any {
	var out []any
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, map[string]any{"version": float64(i/2 + 1), "name": pairs[i], "sql": pairs[i+1]})
	}
	return out
}

// schemaMigrations are a model's migrations: the schema, then sample data.
func schemaMigrations(model string) []any {
	if model == "pool" {
		return migrations("create_tables", poolSchemaSQL, "sample_data", poolDataSQL)
	}
	return migrations("create_tables", tenantSchemaSQL, "sample_data", tenantDataSQL)
}

// snapshot is a deterministic dump of everything the provider manages for
// e: roles, memberships and databases with e's prefix; in the main database
// and every such database, the schemas the provider uses with their
// rights, default privileges, tables, columns, indexes, row level security
// and policies, and their rows (migration state without times); the files
// under the export directory with their modes and SHA-256.
func (e *env) snapshot(t testing.TB) []byte {
	t.Helper()
	c := e.conn(t, "", "")
	var lines []string
	add := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	query := func(c *pgx.Conn, prefix, sql string, args ...any) {
		t.Helper()
		rows, err := c.Query(t.Context(), sql, args...)
		if err != nil {
			t.Fatalf("snapshot %s: %v", sql, err)
		}
		defer rows.Close()
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			add("%s %v", prefix, vals)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("snapshot %s: %v", sql, err)
		}
	}
	p := e.cfg.NamePrefix
	query(c, "role", `SELECT rolname::text, rolcanlogin, rolinherit, rolsuper, rolpassword IS NOT NULL FROM pg_authid WHERE starts_with(rolname, $1) ORDER BY 1`, p)
	query(c, "member", `SELECT r.rolname::text, m.rolname::text FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
		WHERE starts_with(r.rolname, $1) ORDER BY 1, 2`, p)
	query(c, "database", `SELECT datname::text, pg_get_userbyid(datdba)::text, datacl::text FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1`, p)
	e.dumpDB(t, c, "main", query, `(n.nspname = ANY($1) OR starts_with(n.nspname, $2))`, e.schemas, p)
	rows, err := c.Query(t.Context(), `SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1`, p)
	if err != nil {
		t.Fatal(err)
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, db := range dbs {
		dc := e.conn(t, db, "")
		e.dumpDB(t, dc, db, query, `(n.nspname <> 'information_schema' AND NOT starts_with(n.nspname, 'pg_') AND $1::text[] IS NOT NULL AND $2::text IS NOT NULL)`, []string{}, "")
		_ = dc.Close(t.Context())
	}
	_ = filepath.WalkDir(e.exports, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(e.exports, path)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			add("file %s dir %v", rel, fi.Mode().Perm())
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		add("file %s %v %x", rel, fi.Mode().Perm(), sha256.Sum256(b))
		return nil
	})
	sort.Strings(lines)
	return []byte(strings.Join(lines, "\n"))
}

// dumpDB adds the schemas matched by where ($1, $2 its arguments) of the
// database c is connected to.
func (e *env) dumpDB(t testing.TB, c *pgx.Conn, db string, query func(*pgx.Conn, string, string, ...any), where string, a1 []string, a2 string) {
	t.Helper()
	query(c, db+" schema", `SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text, n.nspacl::text FROM pg_namespace n WHERE `+where+` ORDER BY 1`, a1, a2)
	query(c, db+" defacl", `SELECT n.nspname::text, pg_get_userbyid(d.defaclrole)::text, d.defaclobjtype::text, d.defaclacl::text
		FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace WHERE `+where+` ORDER BY 1, 2, 3`, a1, a2)
	query(c, db+" table", `SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity, c.relacl::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'S', 'v') AND `+where+` ORDER BY 1, 2`, a1, a2)
	query(c, db+" column", `SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND `+where+` ORDER BY 1, 2, a.attnum`, a1, a2)
	query(c, db+" index", `SELECT n.nspname::text, i.indexname::text, i.indexdef FROM pg_indexes i JOIN pg_namespace n ON n.nspname = i.schemaname WHERE `+where+` ORDER BY 1, 2`, a1, a2)
	query(c, db+" policy", `SELECT n.nspname::text, p.tablename::text, p.policyname::text, p.permissive, p.roles::text, p.cmd, p.qual, p.with_check
		FROM pg_policies p JOIN pg_namespace n ON n.nspname = p.schemaname WHERE `+where+` ORDER BY 1, 2, 3`, a1, a2)
	rows, err := c.Query(t.Context(), `SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND `+where+` ORDER BY 1, 2`, a1, a2)
	if err != nil {
		t.Fatal(err)
	}
	type tbl struct{ schema, name string }
	var tables []tbl
	for rows.Next() {
		var x tbl
		if err := rows.Scan(&x.schema, &x.name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, x)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, x := range tables {
		q := pgx.Identifier{x.schema, x.name}.Sanitize()
		switch x.name {
		case "attache_schema_migrations":
			query(c, db+" state "+x.schema, "SELECT version, name, checksum FROM "+q+" ORDER BY version")
		case "tenants":
			if x.schema == e.schemas[1] {
				query(c, db+" registry", "SELECT id, model FROM "+q+" ORDER BY id")
				continue
			}
			fallthrough
		default:
			query(c, db+" row "+x.schema+"."+x.name, "SELECT t::text FROM "+q+" t ORDER BY 1")
		}
	}
}

// readManifest reads an export's manifest.
func readManifest(t testing.TB, dir string) postgres.Manifest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, postgres.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m postgres.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// writeFile writes a 0600 file.
func writeFile(dir, name, content string) error {
	return os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600)
}
