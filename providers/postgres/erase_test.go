package postgres_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestErasePoolInForeignKeyOrder: the tenant's rows go children first
// (order_notes → orders → customers, which a single wrong order would
// refuse), other tenants' rows and global tables stay, and the result
// carries the verification.
func TestErasePoolInForeignKeyOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "tenants": []any{"acme", "beta"}, "migrations": schemaMigrations("pool")}))
	admin := e.conn(t, "", "")
	betaBefore := poolRowsOf(t, admin, "beta")

	res := mustApply(t, p, step("erase", "tenant.erase", "acme", map[string]any{"model": "pool"}))
	var order []string
	for _, c := range res.GetChanges() {
		if c.GetOperation() == providerv1.Operation_OPERATION_DELETE && strings.Contains(c.GetResource(), "/tenants/acme") {
			order = append(order, strings.Split(strings.Split(c.GetResource(), "/")[2], ".")[1])
		}
	}
	if want := []string{"order_notes", "orders", "customers"}; !slices.Equal(order, want) {
		t.Errorf("delete order %v, want %v (children first)", order, want)
	}
	want := "tenant acme (pool): 0 rows in 3 tenant tables of schema public, no registry row, no export directory " + filepath.Join(e.exports, "acme")
	if v := output(res, "verification"); v != want || res.GetMessage() != want {
		t.Errorf("verification %q, message %q; want %q", v, res.GetMessage(), want)
	}
	if got := poolRowsOf(t, admin, "acme"); got != "customers=0 orders=0 notes=0 totals=" {
		t.Errorf("acme's rows after erase: %s", got)
	}
	if got := poolRowsOf(t, admin, "beta"); got != betaBefore {
		t.Errorf("beta's rows changed: %s, were %s", got, betaBefore)
	}
	if n := count(t, admin, "SELECT count(*) FROM currencies"); n != 2 {
		t.Errorf("global table currencies has %d rows, want 2", n)
	}
	if n := count(t, admin, "SELECT count(*) FROM attache.tenants WHERE id = 'acme'"); n != 0 {
		t.Errorf("registry row of acme remains")
	}
}

// TestErasePoolRefusesForeignKeyCycle: no children-first order exists, and
// the refusal names the tables; nothing is deleted.
func TestErasePoolRefusesForeignKeyCycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	cycle := `CREATE TABLE a (id int PRIMARY KEY, tenant_id text NOT NULL, b_id int);
CREATE TABLE b (id int PRIMARY KEY, tenant_id text NOT NULL, a_id int REFERENCES a (id));
ALTER TABLE a ADD FOREIGN KEY (b_id) REFERENCES b (id) DEFERRABLE INITIALLY DEFERRED;
INSERT INTO a VALUES (1, 'acme', NULL); INSERT INTO b VALUES (1, 'acme', 1);`
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "migrations": migrations("cycle", cycle)}))
	s := step("erase", "tenant.erase", "acme", map[string]any{"model": "pool"})
	_, err := p.Plan(t.Context(), s)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "cycle (a, b)") {
		t.Fatalf("Plan: %v, want FailedPrecondition naming a, b", err)
	}
	if _, err := p.Apply(t.Context(), s, nil); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Apply: %v", err)
	}
	if n := count(t, e.conn(t, "", ""), "SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b)"); n != 2 {
		t.Errorf("%d rows left of 2", n)
	}
}

// TestEraseBridgeAndSiloLeaveNothing: no schema or database, no role, no
// registry row; the other tenant is untouched; erasing again (or a tenant
// that never existed) is a NOOP that still verifies.
func TestEraseBridgeAndSiloLeaveNothing(t *testing.T) {
	t.Parallel()
	for _, model := range []string{"bridge", "silo"} {
		t.Run(model, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			admin := e.conn(t, "", "")
			e.cfg.AppRole = strings.TrimSuffix(e.cfg.NamePrefix, "_") + "x_app"
			mustExec(t, admin, "CREATE ROLE "+e.cfg.AppRole+" NOINHERIT")
			p := e.provider(t)
			mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": model, "tenants": []any{"acme", "beta"}, "migrations": schemaMigrations(model)}))
			// A session of the tenant's app is open: erase disconnects it.
			if model == "silo" {
				e.conn(t, e.name("acme"), e.name("acme"))
			}
			res := mustApply(t, p, step("erase", "tenant.erase", "acme", map[string]any{"model": model}))
			catalog := map[string]string{"bridge": "no schema " + e.name("acme") + " (pg_namespace)", "silo": "no database " + e.name("acme") + " (pg_database)"}[model]
			want := "tenant acme (" + model + "): " + catalog + ", no role " + e.name("acme") + " (pg_roles), no registry row, no export directory " + filepath.Join(e.exports, "acme")
			if got := output(res, "verification"); got != want {
				t.Errorf("verification %q, want %q", got, want)
			}
			remains := count(t, admin, `SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1) + (SELECT count(*) FROM pg_database WHERE datname = $1)
				+ (SELECT count(*) FROM pg_roles WHERE rolname = $1) + (SELECT count(*) FROM attache.tenants WHERE id = 'acme')`, e.name("acme"))
			if remains != 0 {
				t.Errorf("%d things of acme remain", remains)
			}
			beta := count(t, admin, `SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1) + (SELECT count(*) FROM pg_database WHERE datname = $1)
				+ (SELECT count(*) FROM pg_roles WHERE rolname = $1) + (SELECT count(*) FROM attache.tenants WHERE id = 'beta')`, e.name("beta"))
			if beta != 3 {
				t.Errorf("beta lost something: %d of 3 left", beta)
			}
			for _, id := range []string{"acme", "ghost"} {
				res := mustApply(t, p, step("erase", "tenant.erase", id, map[string]any{"model": model}))
				for _, c := range res.GetChanges() {
					if c.GetOperation() != providerv1.Operation_OPERATION_NOOP {
						t.Errorf("erasing %s again: %s %s", id, c.GetOperation(), c.GetResource())
					}
				}
				if v := output(res, "verification"); !strings.HasPrefix(v, "tenant "+id+" ("+model+"): no ") {
					t.Errorf("erasing %s again: verification %q", id, v)
				}
			}
		})
	}
}

// TestEraseRefusesOtherModel: a tenant registered with another model is not
// erased as if it were of this one.
func TestEraseRefusesOtherModel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "bridge"}))
	_, err := p.Apply(t.Context(), step("erase", "tenant.erase", "acme", map[string]any{"model": "pool"}), nil)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "registered with model bridge") {
		t.Fatalf("got %v", err)
	}
	_, err = p.Apply(t.Context(), step("prov", "tenant.provision", "acme", map[string]any{"model": "silo"}), nil)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("provisioning as silo a bridge tenant: %v", err)
	}
}
