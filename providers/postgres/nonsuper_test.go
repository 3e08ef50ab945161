package postgres_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
)

// TestPoolAsTableOwner: run by a provider user that is neither superuser
// nor BYPASSRLS, the owner of the pool tables it creates (forced row level
// security applies to it too), provisioning, Usage, export and erase still
// see each tenant's rows, by setting app.tenant_id.
func TestPoolAsTableOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.conn(t, "", "")
	prov := e.cfg.NamePrefix[:len(e.cfg.NamePrefix)-1] + "x_provider"
	db := e.dsn[strings.LastIndex(e.dsn, "/")+1 : strings.Index(e.dsn, "?")]
	mustExec(t, admin, "CREATE ROLE "+prov+" LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE ON DATABASE "+db+" TO "+prov+"; GRANT CREATE ON SCHEMA public TO "+prov)
	dsnFile := filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(dsnFile, []byte(strings.Replace(e.dsn, "postgres@", prov+"@", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	e.cfg.DSNFile = dsnFile
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "tenants": []any{"acme", "beta"},
		"migrations": schemaMigrations("pool"), "metered": []any{"orders"}}))
	if n := count(t, admin, "SELECT count(*) FROM pg_class WHERE relname IN ('customers', 'orders', 'order_notes') AND relowner = $1::regrole AND relforcerowsecurity", prov); n != 3 {
		t.Fatalf("%d of 3 tables owned by %s with forced row level security", n, prov)
	}
	// Without a context the provider's user sees nothing itself.
	pc := e.conn(t, "", prov)
	if n := count(t, pc, "SELECT count(*) FROM orders"); n != 0 {
		t.Fatalf("the owner sees %d rows without a context", n)
	}

	u := usage(t, p)
	if u["acme"]["rows.orders"] != 2 || u["beta"]["rows.orders"] != 1 || u["acme"]["storage_bytes"] <= u["beta"]["storage_bytes"] {
		t.Errorf("usage %v", u)
	}
	res := mustApply(t, p, step("exp", "tenant.export", "acme", map[string]any{"model": "pool"}))
	if output(res, "rows") != "5" {
		t.Errorf("export of acme: %s rows, want 5 (2 customers, 2 orders, 1 note)", output(res, "rows"))
	}
	res = mustApply(t, p, step("erase", "tenant.erase", "acme", map[string]any{"model": "pool"}))
	var deletes int
	for _, c := range res.GetChanges() {
		if c.GetOperation() == providerv1.Operation_OPERATION_DELETE {
			deletes++
		}
	}
	// 3 tables, the registry row and the export made above.
	if deletes != 5 || output(res, "verification") != "tenant acme (pool): 0 rows in 3 tenant tables of schema public, no registry row, no export directory "+filepath.Join(e.exports, "acme") {
		t.Errorf("erase: %d deletes, verification %q", deletes, output(res, "verification"))
	}
	if got := poolRowsOf(t, admin, "acme"); got != "customers=0 orders=0 notes=0 totals=" {
		t.Errorf("acme after erase: %s", got)
	}
	if got := poolRowsOf(t, admin, "beta"); got != "customers=1 orders=1 notes=1 totals=9" {
		t.Errorf("beta after erase: %s", got)
	}
}
