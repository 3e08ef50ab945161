package postgres_test

import (
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/providertest"
	"attache.dev/attache/providers/sdk"
	"attache.dev/attache/testenv/pgtest"
)

// writeSecrets writes a password file per tenant id into e's secrets dir.
func (e *env) writeSecrets(t testing.TB, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := writeFile(e.secrets, id+".pw", "pw-"+id+"-s3cret\n"); err != nil {
			t.Fatal(err)
		}
	}
}

// conformanceCases are the providertest cases: each action in each model.
func conformanceCases() []providertest.Case {
	var cases []providertest.Case
	two := []any{"acme", "beta"}
	for _, model := range []string{"pool", "bridge", "silo"} {
		prov := func(id string, extra map[string]any) *providerv1.Step {
			params := map[string]any{"model": model, "tenants": two}
			for k, v := range extra {
				params[k] = v
			}
			return step(id, "tenant.provision", "acme", params)
		}
		withData := map[string]any{"migrations": schemaMigrations(model)}
		provision := map[string]any{"migrations": schemaMigrations(model), "metered": []any{"orders"}}
		if model != "pool" {
			provision["password_secret"] = "{tenant}.pw"
		}
		bad := []providertest.BadStep{
			{Name: "no model", Field: "params.model", Step: step("b", "tenant.provision", "acme", map[string]any{"tenants": two})},
			{Name: "unknown model", Field: "params.model", Step: step("b", "tenant.provision", "acme", map[string]any{"model": "shared"})},
			{Name: "bad tenant id", Field: "params.tenants[1]", Step: prov("b", map[string]any{"tenants": []any{"acme", "Not_A_Label"}})},
			{Name: "duplicate tenant", Field: "params.tenants[1]", Step: prov("b", map[string]any{"tenants": []any{"acme", "acme"}})},
			{Name: "name too long", Field: "params.tenants[0]", Step: prov("b", map[string]any{"tenants": []any{strings.Repeat("a", 62)}})},
			{Name: "no sql", Field: "params.migrations[0].sql", Step: prov("b", map[string]any{"migrations": []any{map[string]any{"version": 1.0, "name": "x"}}})},
			{Name: "version order", Field: "params.migrations[1].version", Step: prov("b", map[string]any{"migrations": []any{
				map[string]any{"version": 2.0, "name": "a", "sql": "SELECT 1"}, map[string]any{"version": 1.0, "name": "b", "sql": "SELECT 1"}}})},
			{Name: "metered name", Field: "params.metered[0]", Step: prov("b", map[string]any{"metered": []any{"Orders; DROP"}})},
			{Name: "unknown param", Field: "params.colour", Step: prov("b", map[string]any{"colour": "red"})},
			{Name: "step tenant", Field: "tenant", Step: step("b", "tenant.provision", "Not_A_Label", map[string]any{"model": model})},
			{Name: "action", Field: "action", Step: step("b", "tenant.explode", "acme", map[string]any{"model": model})},
		}
		if model == "pool" {
			bad = append(bad, providertest.BadStep{Name: "password for pool", Field: "params.password_secret", Step: prov("b", map[string]any{"password_secret": "x"})})
		} else {
			bad = append(bad, providertest.BadStep{Name: "secret escapes", Field: "params.password_secret", Step: prov("b", map[string]any{"password_secret": "../etc/passwd"})})
		}
		cases = append(cases, providertest.Case{
			Name: "tenant.provision/" + model,
			Step: prov("prov", provision),
			Bad:  bad,
		})

		migrateStep := func(id string, extra map[string]any) *providerv1.Step {
			params := map[string]any{"model": model, "migrations": schemaMigrations(model)}
			for k, v := range extra {
				params[k] = v
			}
			return step(id, "migrate", "acme", params)
		}
		slow := migrations("create_tables", tenantSchemaSQL, "slow", "SELECT pg_sleep(30)")
		if model == "pool" {
			slow = migrations("create_tables", poolSchemaSQL, "slow", "SELECT pg_sleep(30)")
		}
		cases = append(cases, providertest.Case{
			Name:  "migrate/" + model,
			Setup: []*providerv1.Step{prov("setup", nil)},
			Step:  migrateStep("mig", map[string]any{"metered": []any{"orders", "customers"}}),
			Bad: []providertest.BadStep{
				{Name: "no migrations", Field: "params.migrations", Step: step("b", "migrate", "acme", map[string]any{"model": model})},
				{Name: "bad name", Field: "params.migrations[0].name", Step: migrateStep("b", map[string]any{"migrations": []any{map[string]any{"version": 1.0, "name": "Bad Name", "sql": "SELECT 1"}}})},
				{Name: "fractional version", Field: "params.migrations[0].version", Step: migrateStep("b", map[string]any{"migrations": []any{map[string]any{"version": 1.5, "name": "x", "sql": "SELECT 1"}}})},
				{Name: "concurrency", Field: "params.concurrency", Step: migrateStep("b", map[string]any{"concurrency": 0.0})},
				{Name: "tenants", Field: "params.tenants[0]", Step: migrateStep("b", map[string]any{"tenants": []any{"-x"}})},
				{Name: "model", Field: "params.model", Step: migrateStep("b", map[string]any{"model": 3.0})},
			},
			Slow: migrateStep("slow", map[string]any{"migrations": slow}),
		})

		cases = append(cases, providertest.Case{
			Name:  "tenant.export/" + model,
			Setup: []*providerv1.Step{prov("setup", withData)},
			Step:  step("export", "tenant.export", "acme", map[string]any{"model": model}),
			Bad: []providertest.BadStep{
				{Name: "model", Field: "params.model", Step: step("b", "tenant.export", "acme", map[string]any{"model": "silos"})},
				{Name: "tenant", Field: "params.tenant", Step: step("b", "tenant.export", "acme", map[string]any{"model": model, "tenant": "../beta"})},
				{Name: "tenants is not a param", Field: "params.tenants", Step: step("b", "tenant.export", "acme", map[string]any{"model": model, "tenants": two})},
				{Name: "plan id", Field: "plan_id", Step: func() *providerv1.Step {
					s := step("b", "tenant.export", "acme", map[string]any{"model": model})
					s.PlanId = "../x"
					return s
				}()},
			},
		})

		cases = append(cases, providertest.Case{
			Name:  "tenant.erase/" + model,
			Setup: []*providerv1.Step{prov("setup", withData)},
			Step:  step("erase", "tenant.erase", "acme", map[string]any{"model": model}),
			Bad: []providertest.BadStep{
				{Name: "model", Field: "params.model", Step: step("b", "tenant.erase", "acme", map[string]any{"model": ""})},
				{Name: "tenants", Field: "params.tenants[1]", Step: step("b", "tenant.erase", "acme", map[string]any{"model": model, "tenants": []any{"acme", 7.0}})},
				{Name: "empty tenants", Field: "params.tenants", Step: step("b", "tenant.erase", "acme", map[string]any{"model": model, "tenants": []any{}})},
			},
		})
	}
	return cases
}

// TestConformanceInProcess runs the providertest suite against the provider
// served in-process over real gRPC, against a fresh database per fixture.
func TestConformanceInProcess(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	providertest.Run(t, func(t *testing.T) providertest.Fixture {
		t.Parallel() // each fixture has its own schemas and name prefix
		e := newSharedEnv(t, dsn)
		e.writeSecrets(t, "acme", "beta")
		ip, err := sdk.ServeInProcess(e.provider(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ip.Close() })
		return providertest.Fixture{Provider: ip, Snapshot: func(t *testing.T) []byte { return e.snapshot(t) }}
	}, conformanceCases())
}
