package postgres_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/postgres"
	"attache.dev/attache/providers/sdk"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// appRole creates a login role that is neither superuser nor BYPASSRLS,
// as a pool app connects, with the rights on pool tables or views given.
func (e *env) appRole(t testing.TB, name string, relations ...string) string {
	t.Helper()
	role := strings.TrimSuffix(e.cfg.NamePrefix, "_") + "x_" + name
	mustExec(t, e.conn(t, "", ""), fmt.Sprintf("CREATE ROLE %[1]s LOGIN NOSUPERUSER NOBYPASSRLS; GRANT USAGE ON SCHEMA public TO %[1]s; GRANT SELECT, INSERT, UPDATE, DELETE ON %[2]s TO %[1]s",
		role, strings.Join(relations, ", ")))
	return role
}

// migration is one entry of a migrations parameter.
func migration(version int, name, sql string) any {
	return map[string]any{"version": float64(version), "name": name, "sql": sql}
}

// updates lists a result's or plan's non-NOOP changes as "op resource: summary".
func updates(cs []*providerv1.Change) []string {
	var out []string
	for _, c := range cs {
		if c.GetOperation() != providerv1.Operation_OPERATION_NOOP {
			out = append(out, strings.TrimPrefix(c.GetOperation().String(), "OPERATION_")+" "+c.GetResource()+": "+c.GetSummary())
		}
	}
	return out
}

// TestPoolViewsReadAsInvoker: a view over a tenant table, owned by the
// provider's user (here a superuser, which bypasses row level security),
// shows the app role with tenant acme's context acme's rows only, and none
// without a context: the provider makes every view of the pool schema
// security_invoker. A materialized view over a tenant table (it stores
// every tenant's rows) is refused, naming it.
func TestPoolViewsReadAsInvoker(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	views := `CREATE VIEW order_totals AS SELECT tenant_id, id, total FROM orders;
CREATE VIEW big_orders AS SELECT * FROM order_totals WHERE total > 6;
CREATE VIEW currency_codes AS SELECT code FROM currencies;`
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "tenants": []any{"acme", "beta"},
		"migrations": append(schemaMigrations("pool"), migration(3, "views", views))}))
	app := e.appRole(t, "app", "orders", "order_totals", "big_orders")
	c := e.conn(t, "", app)
	inTx(t, c, "acme", func(tx pgx.Tx) {
		if n := count(t, tx, "SELECT count(*) FROM order_totals"); n != 2 {
			t.Errorf("acme sees %d rows through view order_totals, want its 2", n)
		}
		if n := count(t, tx, "SELECT count(*) FROM order_totals WHERE tenant_id <> 'acme'"); n != 0 {
			t.Errorf("acme sees %d rows of other tenants through view order_totals", n)
		}
		if n := count(t, tx, "SELECT count(*) FROM big_orders"); n != 1 {
			t.Errorf("acme sees %d rows through view big_orders (over a view), want its 1", n)
		}
	})
	inTx(t, c, "", func(tx pgx.Tx) {
		if n := count(t, tx, "SELECT count(*) FROM order_totals"); n != 0 {
			t.Errorf("without a context the view shows %d rows", n)
		}
	})
	admin := e.conn(t, "", "")
	if n := count(t, admin, `SELECT count(*) FROM pg_class WHERE relname IN ('order_totals', 'big_orders', 'currency_codes')
		AND 'security_invoker=true' = ANY(reloptions)`); n != 3 {
		t.Errorf("%d of 3 views are security_invoker", n)
	}
	// Put back by the next provision, which lists it.
	mustExec(t, admin, "ALTER VIEW order_totals RESET (security_invoker)")
	cs, err := p.Plan(t.Context(), step("prov", "tenant.provision", "acme", map[string]any{"model": "pool"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(updates(cs), "\n"); !strings.Contains(got, "public.order_totals/security_invoker: set security_invoker on view order_totals") {
		t.Errorf("plan does not restore security_invoker: %s", got)
	}
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool"}))
	inTx(t, c, "acme", func(tx pgx.Tx) {
		if n := count(t, tx, "SELECT count(*) FROM order_totals"); n != 2 {
			t.Errorf("after repair acme sees %d rows through the view, want 2", n)
		}
	})

	// A materialized view holds every tenant's rows: refused, named.
	res := apply(t, p, step("mig", "migrate", "acme", map[string]any{"model": "pool", "migrations": append(schemaMigrations("pool"),
		migration(3, "views", views), migration(4, "sums", "CREATE MATERIALIZED VIEW order_sums AS SELECT tenant_id, sum(total) FROM big_orders GROUP BY 1"))}))
	if res.GetState() != providerv1.StepState_STEP_STATE_FAILED || !strings.Contains(res.GetMessage(), "materialized views public.order_sums (reads orders)") {
		t.Errorf("materialized view over a tenant table: %s: %s", res.GetState(), res.GetMessage())
	}
	_, err = p.Plan(t.Context(), step("prov", "tenant.provision", "acme", map[string]any{"model": "pool"}))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "public.order_sums") {
		t.Errorf("plan with a materialized view over a tenant table: %v", err)
	}
}

// TestPoolMigrationFailureStillIsolates: migration 1 creates a tenant table
// and commits, migration 2 fails; the step fails, and the new table has
// row level security enabled and forced and the policy all the same, for
// tenant.provision and for migrate.
func TestPoolMigrationFailureStillIsolates(t *testing.T) {
	t.Parallel()
	ms := migrations("things", "CREATE TABLE things (id bigint PRIMARY KEY, tenant_id text NOT NULL, v text)", "broken", "SELECT 1/0")
	for _, action := range []string{"tenant.provision", "migrate"} {
		t.Run(action, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			p := e.provider(t)
			if action == "migrate" {
				mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool"}))
			}
			res := apply(t, p, step("s", action, "acme", map[string]any{"model": "pool", "migrations": ms}))
			if res.GetState() != providerv1.StepState_STEP_STATE_FAILED || !strings.Contains(res.GetMessage(), "22012") {
				t.Fatalf("%s: %s", res.GetState(), res.GetMessage())
			}
			if !strings.Contains(res.GetMessage(), "the pool tables are isolated") {
				t.Errorf("message does not say the tables are isolated: %s", res.GetMessage())
			}
			admin := e.conn(t, "", "")
			if n := count(t, admin, `SELECT count(*) FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid AND p.polname = 'attache_tenant_isolation'
				WHERE c.oid = 'public.things'::regclass AND c.relrowsecurity AND c.relforcerowsecurity`); n != 1 {
				t.Errorf("table things, created by a migration that committed, is not isolated")
			}
			app := e.appRole(t, "app", "things")
			_, err := e.conn(t, "", app).Exec(t.Context(), "INSERT INTO things VALUES (1, 'beta', 'x')")
			wantSQLState(t, err, "42501", "insert into things without a context")
		})
	}
}

// TestPoolRepairsFailOpenPolicy: a policy with the provider's name whose
// expression fails open (no context: every row) or whose shape differs
// (FOR SELECT only) is recreated by the next provision; afterwards a
// session without a context sees nothing.
func TestPoolRepairsFailOpenPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "tenants": []any{"acme", "beta"}, "migrations": schemaMigrations("pool")}))
	app := e.appRole(t, "app", "orders", "customers")
	want := e.snapshot(t)
	admin := e.conn(t, "", "")
	mustExec(t, admin, `DROP POLICY attache_tenant_isolation ON orders;
CREATE POLICY attache_tenant_isolation ON orders FOR ALL TO PUBLIC
  USING (tenant_id = COALESCE(NULLIF(current_setting('app.tenant_id', true), ''), tenant_id))
  WITH CHECK (tenant_id = COALESCE(NULLIF(current_setting('app.tenant_id', true), ''), tenant_id));
DROP POLICY attache_tenant_isolation ON customers;
CREATE POLICY attache_tenant_isolation ON customers FOR SELECT TO PUBLIC
  USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::text)`)
	c := e.conn(t, "", app)
	if n := count(t, c, "SELECT count(*) FROM orders"); n != 3 {
		t.Fatalf("the fail-open policy should show all 3 rows without a context, shows %d", n)
	}
	cs, err := p.Plan(t.Context(), step("prov", "tenant.provision", "acme", map[string]any{"model": "pool"}))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(updates(cs), "\n")
	for _, w := range []string{
		"public.orders/rls: recreate policy attache_tenant_isolation (its USING expression is (tenant_id = COALESCE(",
		"public.customers/rls: recreate policy attache_tenant_isolation (it is not FOR ALL, PERMISSIVE, TO PUBLIC)",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("plan lacks %q:\n%s", w, got)
		}
	}
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool"}))
	if n := count(t, c, "SELECT count(*) FROM orders") + count(t, c, "SELECT count(*) FROM customers"); n != 0 {
		t.Errorf("after the repair a session without a context sees %d rows", n)
	}
	inTx(t, c, "acme", func(tx pgx.Tx) {
		if n := count(t, tx, "SELECT count(*) FROM orders"); n != 2 {
			t.Errorf("acme sees %d orders, want 2", n)
		}
		_, err := tx.Exec(t.Context(), "INSERT INTO customers VALUES (7, 'acme', 'x')")
		if err != nil {
			t.Errorf("acme inserting its own row: %v", err)
		}
	})
	if got := e.snapshot(t); string(got) != string(want) {
		t.Errorf("isolation not restored:\n%s\nwant:\n%s", got, want)
	}
	// And the provider's own policy is judged right: nothing more to do.
	cs, err = p.Plan(t.Context(), step("prov", "tenant.provision", "acme", map[string]any{"model": "pool"}))
	if err != nil || len(updates(cs)) != 0 {
		t.Errorf("plan after the repair: %v %v", updates(cs), err)
	}
}

// TestTenantStateTableReadOnly: the tenant role may read its migration
// state table but not write it, right after a provision without
// migrations (the table is created then), and after a migrate run on a
// table whose rights had been widened although it was not new.
func TestTenantStateTableReadOnly(t *testing.T) {
	t.Parallel()
	for _, model := range []string{"bridge", "silo"} {
		t.Run(model, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			p := e.provider(t)
			mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": model}))
			acme := e.name("acme")
			db, schema := "", acme
			if model == "silo" {
				db, schema = acme, "public"
			}
			tbl := schema + ".attache_schema_migrations"
			writesRefused := func(when string) {
				t.Helper()
				c := e.conn(t, db, acme)
				for _, sql := range []string{
					"INSERT INTO " + tbl + " (version, name, checksum, duration_ms) VALUES (99, 'x', 'x', 0)",
					"DELETE FROM " + tbl,
					"UPDATE " + tbl + " SET name = 'x'",
					"TRUNCATE " + tbl,
				} {
					_, err := c.Exec(t.Context(), sql)
					wantSQLState(t, err, "42501", when+": as "+acme+": "+sql)
				}
				count(t, c, "SELECT count(*) FROM "+tbl) // reading is allowed
				_ = c.Close(t.Context())
			}
			writesRefused("after provisioning")

			mustApply(t, p, step("m1", "migrate", "acme", map[string]any{"model": model, "migrations": migrations("one", "CREATE TABLE a (x int)")}))
			writesRefused("after the first migrate")
			// Rights widened by hand (or by an older provider): the next
			// run takes them back although the table is not new.
			mustExec(t, e.conn(t, db, ""), "GRANT INSERT, UPDATE, DELETE, TRUNCATE ON "+tbl+" TO "+acme)
			mustApply(t, p, step("m2", "migrate", "acme", map[string]any{"model": model, "migrations": migrations("one", "CREATE TABLE a (x int)", "two", "CREATE TABLE b (x int)")}))
			writesRefused("after a migrate on an existing table")
		})
	}
}

// TestReservedTenantNames: a prefix and an id that together form a name of
// PostgreSQL's (pg_*, information_schema, public) are refused, naming the
// field; so is app_role public.
func TestReservedTenantNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tt := range []struct{ prefix, id, name string }{
		{"p", "g-x", "pg_x"},
		{"information_", "schema", "information_schema"},
		{"pub", "lic", "public"},
	} {
		cfg := e.cfg
		cfg.NamePrefix = tt.prefix
		cfg.PoolSchema = "shared" // public would start with prefixes p and pub
		b, _ := sdk.ConfigJSON(cfg)
		pr := postgres.New(quiet(), "test")
		t.Cleanup(pr.Close)
		configure(t, pr, b)
		for _, s := range []*providerv1.Step{
			step("prov", "tenant.provision", "acme", map[string]any{"model": "silo", "tenants": []any{"acme", tt.id}}),
			step("prov", "tenant.provision", tt.id, map[string]any{"model": "bridge"}),
		} {
			field := "params.tenants[1]"
			if s.GetTenant() == tt.id {
				field = "tenant"
			}
			_, err := pr.Plan(t.Context(), s)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), `reserved name "`+tt.name+`"`) {
				t.Errorf("prefix %q, id %q: %v; want InvalidArgument naming %s", tt.prefix, tt.id, err, field)
			}
		}
	}
	cfg := e.cfg
	cfg.AppRole = "public"
	b, _ := sdk.ConfigJSON(cfg)
	err := postgres.New(quiet(), "test").Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: b})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "config.app_role") {
		t.Errorf("app_role public: %v", err)
	}
}

// TestAdoptRefusesPrivilegedRole: an existing role the provider would adopt
// as a tenant's is refused, naming what it must not have: CREATEROLE,
// CREATEDB, BYPASSRLS, REPLICATION, membership in another role, or another
// role (not app_role) being a member of it.
func TestAdoptRefusesPrivilegedRole(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.conn(t, "", "")
	base := strings.TrimSuffix(e.cfg.NamePrefix, "_")
	e.cfg.AppRole = base + "x_app"
	mustExec(t, admin, fmt.Sprintf("CREATE ROLE %[1]sx_app NOINHERIT; CREATE ROLE %[1]sx_powerful; CREATE ROLE %[1]sx_watcher", base))
	p := e.provider(t)
	for i, tt := range []struct {
		setup, want string
	}{
		{"CREATE ROLE %s LOGIN NOINHERIT CREATEDB", "has CREATEDB"},
		{"CREATE ROLE %s LOGIN NOINHERIT CREATEROLE", "has CREATEROLE"},
		{"CREATE ROLE %s LOGIN NOINHERIT BYPASSRLS", "has BYPASSRLS"},
		{"CREATE ROLE %s LOGIN NOINHERIT REPLICATION", "has REPLICATION"},
		{"CREATE ROLE %s LOGIN NOINHERIT CREATEDB BYPASSRLS", "has CREATEDB, BYPASSRLS (ALTER ROLE %s NOCREATEDB NOBYPASSRLS"},
		{"CREATE ROLE %s LOGIN NOINHERIT; GRANT " + base + "x_powerful TO %[1]s", "is a member of " + base + "x_powerful"},
		{"CREATE ROLE %s LOGIN NOINHERIT; GRANT %[1]s TO " + base + "x_watcher", "is granted to " + base + "x_watcher"},
	} {
		id := fmt.Sprintf("t%d", i)
		name := e.name(id)
		mustExec(t, admin, fmt.Sprintf(tt.setup, name))
		want := tt.want
		if strings.Contains(want, "%s") {
			want = fmt.Sprintf(want, name)
		}
		for _, model := range []string{"bridge", "silo"} {
			_, err := p.Apply(t.Context(), step("prov", "tenant.provision", id, map[string]any{"model": model}), nil)
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "tenant: role "+name+" exists and "+want) {
				t.Errorf("%s, %s: %v; want FailedPrecondition with %q", fmt.Sprintf(tt.setup, name), model, err, want)
			}
		}
		if n := count(t, admin, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", name); n != 0 {
			t.Errorf("%s: the schema was created although the role was refused", name)
		}
	}
	// A plain role is adopted (as before), and granted to app_role.
	mustExec(t, admin, "CREATE ROLE "+e.name("plain")+" LOGIN NOINHERIT")
	mustApply(t, p, step("prov", "tenant.provision", "plain", map[string]any{"model": "bridge"}))
	mustApply(t, p, step("prov", "tenant.provision", "plain", map[string]any{"model": "bridge"}))
}

// TestEraseRemovesExports: erasing a tenant deletes its export directory
// (full copies of its data) and the verification says none remains; other
// tenants' exports stay.
func TestEraseRemovesExports(t *testing.T) {
	t.Parallel()
	for _, model := range []string{"pool", "bridge"} {
		t.Run(model, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			p := e.provider(t)
			mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": model, "tenants": []any{"acme", "beta"}, "migrations": schemaMigrations(model)}))
			for _, id := range []string{"acme", "beta"} {
				mustApply(t, p, step("exp", "tenant.export", id, map[string]any{"model": model}))
			}
			acmeDir, betaDir := filepath.Join(e.exports, "acme"), filepath.Join(e.exports, "beta")
			cs, err := p.Plan(t.Context(), step("erase", "tenant.erase", "acme", map[string]any{"model": model}))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(updates(cs), "\n"); !strings.Contains(got, "DELETE "+acmeDir+": delete the exports of tenant acme") {
				t.Errorf("plan does not list the export directory:\n%s", got)
			}
			res := mustApply(t, p, step("erase", "tenant.erase", "acme", map[string]any{"model": model}))
			if _, err := os.Lstat(acmeDir); !os.IsNotExist(err) {
				t.Errorf("%s remains after erase: %v", acmeDir, err)
			}
			if _, err := os.Stat(filepath.Join(betaDir, "plan-test-exp", postgres.ManifestFile)); err != nil {
				t.Errorf("beta's export is gone: %v", err)
			}
			if v := output(res, "verification"); !strings.HasSuffix(v, ", no export directory "+acmeDir) {
				t.Errorf("verification %q does not say that no export remains", v)
			}
			// A leftover export of a tenant that is gone is still removed.
			if err := os.MkdirAll(filepath.Join(acmeDir, "old"), 0o700); err != nil {
				t.Fatal(err)
			}
			res = mustApply(t, p, step("erase", "tenant.erase", "acme", map[string]any{"model": model}))
			if _, err := os.Lstat(acmeDir); !os.IsNotExist(err) || !strings.HasSuffix(output(res, "verification"), ", no export directory "+acmeDir) {
				t.Errorf("leftover export: %v, %s", err, output(res, "verification"))
			}
		})
	}
}

// TestMigrationSessionStateDoesNotLeak: a pool migration that takes a
// session advisory lock, creates a temporary table and prepares a
// statement does not leave them on the pooled connection it ran on; and
// the provider's next queries on that very connection (max_connections 1)
// work, its statement cache having been reset too.
func TestMigrationSessionStateDoesNotLeak(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.MaxConnections = 1
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "migrations": append(schemaMigrations("pool"),
		migration(3, "leaky", "SELECT pg_advisory_lock(4242); CREATE TEMP TABLE leftover (x int); PREPARE leftover_stmt AS SELECT 1"))}))
	admin := e.conn(t, "", "")
	var got bool
	if err := admin.QueryRow(t.Context(), "SELECT pg_try_advisory_lock(4242)").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if !got {
		t.Errorf("the migration's session advisory lock is still held by the provider's pooled connection")
	} else {
		mustExec(t, admin, "SELECT pg_advisory_unlock(4242)")
	}
	if n := count(t, admin, "SELECT count(*) FROM pg_class WHERE relname = 'leftover' AND relpersistence = 't'"); n != 0 {
		t.Errorf("the migration's temporary table survived the connection's return")
	}
	// The same connection again: statements pgx had prepared before the
	// reset are prepared anew.
	for i := range 2 {
		mustApply(t, p, step(fmt.Sprintf("again%d", i), "tenant.provision", "acme", map[string]any{"model": "pool", "tenants": []any{"acme", "beta"}}))
		usage(t, p)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes (a log sink).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDSNFileMode: a dsn_file other users may read is refused, naming the
// field and the mode; a group-readable one is accepted with a warning.
func TestDSNFileMode(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tt := range []struct {
		mode    os.FileMode
		refused bool
		warning bool
	}{
		{0o644, true, false},
		{0o604, true, false},
		{0o602, true, false},
		{0o640, false, true},
		{0o440, false, true},
		{0o600, false, false},
		{0o400, false, false},
	} {
		if err := os.Chmod(e.cfg.DSNFile, tt.mode); err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		pr := postgres.New(slog.New(slog.NewTextHandler(&logs, nil)), "test")
		err := pr.Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: e.configJSON(t)})
		pr.Close()
		mode := fmt.Sprintf("%04o", tt.mode)
		switch {
		case tt.refused:
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "config.dsn_file") || !strings.Contains(err.Error(), "mode "+mode) {
				t.Errorf("mode %s: %v; want InvalidArgument naming config.dsn_file and the mode", mode, err)
			}
			if strings.Contains(fmt.Sprint(err), "postgres://") {
				t.Errorf("the error shows the DSN: %v", err)
			}
		case err != nil:
			t.Errorf("mode %s: %v", mode, err)
		case tt.warning != strings.Contains(logs.String(), "has mode "+mode):
			t.Errorf("mode %s: warning logged %v, want %v:\n%s", mode, !tt.warning, tt.warning, logs.String())
		}
	}
	_ = os.Chmod(e.cfg.DSNFile, 0o600)
}

// TestProviderSearchPath: the provider's own statements run with
// search_path pg_catalog (then pg_temp), so nothing planted in public can
// be picked up by an unqualified name; a trigger fired by the provider's
// erase records the setting it ran under.
func TestProviderSearchPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	trigger := `CREATE TABLE seen_path (p text);
CREATE FUNCTION note_path() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN INSERT INTO public.seen_path VALUES (pg_catalog.current_setting('search_path')); RETURN OLD; END $f$;
CREATE TRIGGER note_path BEFORE DELETE ON order_notes FOR EACH ROW EXECUTE FUNCTION public.note_path();`
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "tenants": []any{"acme", "beta"},
		"migrations": append(schemaMigrations("pool"), migration(3, "trigger", trigger))}))
	mustApply(t, p, step("erase", "tenant.erase", "acme", map[string]any{"model": "pool"}))
	var seen string
	if err := e.conn(t, "", "").QueryRow(t.Context(), "SELECT string_agg(DISTINCT p, ' | ') FROM seen_path").Scan(&seen); err != nil {
		t.Fatal(err)
	}
	if seen != "pg_catalog, pg_temp" {
		t.Errorf("the provider's erase ran with search_path %q, want \"pg_catalog, pg_temp\"", seen)
	}
}

// TestRevokesPublicCreate: with pool_schema public, Configure takes CREATE
// on schema public away from PUBLIC (granted by default before PostgreSQL
// 15) and logs it; with another pool schema it leaves public alone.
func TestRevokesPublicCreate(t *testing.T) {
	t.Parallel()
	for _, poolSchema := range []string{"public", "pool"} {
		t.Run(poolSchema, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.cfg.PoolSchema = poolSchema
			admin := e.conn(t, "", "")
			mustExec(t, admin, "GRANT CREATE ON SCHEMA public TO PUBLIC")
			var logs syncBuffer
			pr := postgres.New(slog.New(slog.NewTextHandler(&logs, nil)), "test")
			t.Cleanup(pr.Close)
			configure(t, pr, e.configJSON(t))
			n := count(t, admin, `SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE'`)
			logged := strings.Contains(logs.String(), "revoked CREATE ON SCHEMA public FROM PUBLIC")
			switch {
			case poolSchema == "public" && (n != 0 || !logged):
				t.Errorf("PUBLIC keeps CREATE on schema public (%d) or it was not logged (%v):\n%s", n, logged, logs.String())
			case poolSchema != "public" && (n != 1 || logged):
				t.Errorf("pool_schema %s: CREATE on public changed (%d grants, logged %v)", poolSchema, n, logged)
			}
		})
	}
}
