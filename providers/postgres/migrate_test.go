package postgres_test

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestMigrateAction: targets default to every tenant registered with the
// model; progress per target; the result's message and outputs; a failure
// in one tenant halts the run (FAILED with the counts); a named tenant that
// is not registered with the model, or a changed migration, is refused.
func TestMigrateAction(t *testing.T) {
	t.Parallel()
	for _, model := range []string{"bridge", "silo"} {
		t.Run(model, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			p := e.provider(t)
			mustApply(t, p, step("prov", "tenant.provision", "a", map[string]any{"model": model, "tenants": []any{"a", "b", "c"}}))
			other := map[string]string{"bridge": "silo", "silo": "bridge"}[model]
			mustApply(t, p, step("prov", "tenant.provision", "z", map[string]any{"model": other}))

			v1 := migrations("create_tables", tenantSchemaSQL)
			s := step("mig", "migrate", "a", map[string]any{"model": model, "migrations": v1, "concurrency": 1.0})
			changes, err := p.Plan(t.Context(), s)
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) != 3 {
				t.Errorf("plan lists %d changes, want one per tenant a, b, c (not z): %v", len(changes), changes)
			}
			var mu sync.Mutex
			var progress []string
			res, err := p.Apply(t.Context(), s, func(pr *providerv1.Progress) {
				mu.Lock()
				progress = append(progress, pr.GetMessage())
				mu.Unlock()
			})
			if err != nil || res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
				t.Fatalf("Apply: %v %s", err, res.GetMessage())
			}
			if res.GetMessage() != "3 targets at version 1: 3 migrated, 0 already current" {
				t.Errorf("message %q", res.GetMessage())
			}
			for k, v := range map[string]string{"targets": "3", "migrated": "3", "current": "0", "failed": "0", "not_started": "0", "version": "1"} {
				if output(res, k) != v {
					t.Errorf("output %s = %q, want %s", k, output(res, k), v)
				}
			}
			if last := progress[len(progress)-1]; !regexp.MustCompile(`^tenant [abc] at version 1 \(3/3 targets\)$`).MatchString(last) {
				t.Errorf("last progress %q (all: %q)", last, progress)
			}

			// Version 2 fails in b only: with one target at a time, a is
			// migrated, b failed, c not started; a rerun after the fix resumes.
			breakB := fmt.Sprintf(`DO $$ BEGIN IF current_schema() = %s OR current_database() = %s THEN RAISE EXCEPTION 'boom in b'; END IF; END $$;
ALTER TABLE customers ADD COLUMN email text;`, "'"+e.name("b")+"'", "'"+e.name("b")+"'")
			bad := step("mig2", "migrate", "a", map[string]any{"model": model, "migrations": append(v1, map[string]any{"version": 2.0, "name": "add_email", "sql": breakB}), "concurrency": 1.0})
			res = apply(t, p, bad)
			if res.GetState() != providerv1.StepState_STEP_STATE_FAILED || !strings.Contains(res.GetMessage(), "tenant b") || !strings.Contains(res.GetMessage(), "boom in b") ||
				!strings.Contains(res.GetMessage(), "3 targets: 1 migrated, 0 already current, 1 failed, 1 not started") {
				t.Errorf("failing run: %s %q", res.GetState(), res.GetMessage())
			}
			if output(res, "failed") != "1" || output(res, "not_started") != "1" || output(res, "migrated") != "1" {
				t.Errorf("failing run outputs %v", res.GetOutputs())
			}
			fixed := step("mig3", "migrate", "a", map[string]any{"model": model, "migrations": append(v1, map[string]any{"version": 2.0, "name": "add_email", "sql": "ALTER TABLE customers ADD COLUMN email text;"})})
			// The fix changes version 2's SQL: a already ran the old one.
			if _, err := p.Plan(t.Context(), fixed); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "sha256:") {
				t.Errorf("changed checksum: Plan %v", err)
			}
			res = apply(t, p, fixed)
			if res.GetState() != providerv1.StepState_STEP_STATE_FAILED || !strings.Contains(res.GetMessage(), "tenant a: migration 2 add_email was applied with sha256:") {
				t.Errorf("changed checksum: %s %q", res.GetState(), res.GetMessage())
			}
			// Named tenants must be registered with the model.
			s = step("mig4", "migrate", "a", map[string]any{"model": model, "migrations": v1, "tenants": []any{"a", "z", "ghost"}})
			if _, err := p.Plan(t.Context(), s); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "params.tenants[1]: tenant z is registered with model "+other) {
				t.Errorf("Plan with unregistered tenants: %v", err)
			}
			res = apply(t, p, s)
			if res.GetState() != providerv1.StepState_STEP_STATE_FAILED || !strings.Contains(res.GetMessage(), "params.tenants[2]: tenant ghost is not registered") {
				t.Errorf("Apply with unregistered tenants: %s %q", res.GetState(), res.GetMessage())
			}
			// Only the named ones are migrated.
			res = mustApply(t, p, step("mig5", "migrate", "a", map[string]any{"model": model, "migrations": v1, "tenants": []any{"c"}}))
			if res.GetMessage() != "1 targets at version 1: 0 migrated, 1 already current" {
				t.Errorf("named tenant: %q", res.GetMessage())
			}
		})
	}
}

// TestMigratePoolIsolatesNewTables: a pool migration that adds a tenant
// table gets it row level security, the policy and the index.
func TestMigratePoolIsolatesNewTables(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "migrations": schemaMigrations("pool")}))
	ms := append(schemaMigrations("pool"), map[string]any{"version": 3.0, "name": "invoices", "sql": "CREATE TABLE invoices (id bigint PRIMARY KEY, tenant_id text NOT NULL, amount numeric)"})
	s := step("mig", "migrate", "acme", map[string]any{"model": "pool", "migrations": ms})
	changes, err := p.Plan(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for _, c := range changes {
		if c.GetOperation() != providerv1.Operation_OPERATION_NOOP {
			plan = append(plan, c.GetOperation().String()+" "+c.GetResource())
		}
	}
	db := e.dsn[strings.LastIndex(e.dsn, "/")+1 : strings.Index(e.dsn, "?")]
	want := []string{"OPERATION_CREATE postgres/" + db + "/public/migrations/3", "OPERATION_UPDATE postgres/" + db + "/public/rls"}
	if strings.Join(plan, ",") != strings.Join(want, ",") {
		t.Errorf("plan %v, want %v", plan, want)
	}
	mustApply(t, p, s)
	var rls, force bool
	var policies, indexes int64
	admin := e.conn(t, "", "")
	if err := admin.QueryRow(t.Context(), `SELECT relrowsecurity, relforcerowsecurity,
		(SELECT count(*) FROM pg_policy WHERE polrelid = 'invoices'::regclass AND polname = 'attache_tenant_isolation'),
		(SELECT count(*) FROM pg_indexes WHERE tablename = 'invoices' AND indexdef LIKE '%(tenant_id, id)')
		FROM pg_class WHERE oid = 'invoices'::regclass`).Scan(&rls, &force, &policies, &indexes); err != nil {
		t.Fatal(err)
	}
	if !rls || !force || policies != 1 || indexes != 1 {
		t.Errorf("invoices: rls %v force %v policies %d indexes %d", rls, force, policies, indexes)
	}
}

// TestPoolRefusesPermissivePolicy: another permissive policy on a tenant
// table would be OR-ed with the isolation policy; provisioning refuses it.
func TestPoolRefusesPermissivePolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "migrations": schemaMigrations("pool")}))
	mustExec(t, e.conn(t, "", ""), "CREATE POLICY everyone ON orders USING (true)")
	_, err := p.Plan(t.Context(), step("prov", "tenant.provision", "beta", map[string]any{"model": "pool"}))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "public.orders has permissive row level security policies besides attache_tenant_isolation (everyone)") {
		t.Fatalf("got %v", err)
	}
}

// TestPoolRepairsIsolation: RLS switched off, FORCE dropped or the policy
// replaced by hand are put back by the next provision.
func TestPoolRepairsIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "migrations": schemaMigrations("pool")}))
	want := e.snapshot(t)
	mustExec(t, e.conn(t, "", ""), `ALTER TABLE orders DISABLE ROW LEVEL SECURITY; ALTER TABLE customers NO FORCE ROW LEVEL SECURITY;
DROP POLICY attache_tenant_isolation ON order_notes; CREATE POLICY attache_tenant_isolation ON order_notes USING (true)`)
	res := mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "migrations": schemaMigrations("pool")}))
	var updates []string
	for _, c := range res.GetChanges() {
		if c.GetOperation() == providerv1.Operation_OPERATION_UPDATE {
			updates = append(updates, c.GetResource()[strings.LastIndex(c.GetResource()[:strings.LastIndex(c.GetResource(), "/")], "/")+1:]+": "+c.GetSummary())
		}
	}
	wantUpdates := []string{
		"public.customers/rls: force row level security",
		"public.order_notes/rls: recreate policy attache_tenant_isolation (its USING expression is true, not (tenant_id = NULLIF(current_setting('app.tenant_id'::text, true), ''::text)))",
		"public.orders/rls: enable row level security",
	}
	if strings.Join(updates, "\n") != strings.Join(wantUpdates, "\n") {
		t.Errorf("updates:\n%s\nwant:\n%s", strings.Join(updates, "\n"), strings.Join(wantUpdates, "\n"))
	}
	if got := e.snapshot(t); string(got) != string(want) {
		t.Errorf("isolation not restored:\n%s\nwant:\n%s", got, want)
	}
}
