package postgres_test

import (
	"math"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
)

// usage returns tenant → meter → value.
func usage(t testing.TB, p sdk.Provider, tenants ...string) map[string]map[string]float64 {
	t.Helper()
	resp, err := p.Usage(t.Context(), &providerv1.UsageRequest{Tenants: tenants})
	if err != nil {
		t.Fatalf("Usage: %v", err)
	}
	out := map[string]map[string]float64{}
	for _, s := range resp.GetSamples() {
		if s.GetTime() == nil {
			t.Errorf("sample %s/%s has no time", s.GetTenant(), s.GetMeter())
		}
		if out[s.GetTenant()] == nil {
			out[s.GetTenant()] = map[string]float64{}
		}
		out[s.GetTenant()][s.GetMeter()] = s.GetValue()
	}
	return out
}

// TestUsage: per model, storage_bytes and rows.<table> of the metered
// tables per tenant, with the tenants filter.
func TestUsage(t *testing.T) {
	t.Parallel()
	for _, model := range []string{"pool", "bridge", "silo"} {
		t.Run(model, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			p := e.provider(t)
			mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": model, "tenants": []any{"acme", "beta"},
				"migrations": schemaMigrations(model), "metered": []any{"orders", "customers", "missing"}}))
			if model != "pool" { // give beta one more order
				c := e.conn(t, map[string]string{"bridge": "", "silo": e.name("beta")}[model], "")
				table := "orders"
				if model == "bridge" {
					table = e.name("beta") + ".orders"
				}
				mustExec(t, c, "INSERT INTO "+table+" (customer_id, total) VALUES (1, 1)")
			}
			got := usage(t, p)
			want := map[string]map[string]float64{
				"pool":   {"acme.rows.orders": 2, "acme.rows.customers": 2, "beta.rows.orders": 1, "beta.rows.customers": 1},
				"bridge": {"acme.rows.orders": 3, "acme.rows.customers": 2, "beta.rows.orders": 4, "beta.rows.customers": 2},
				"silo":   {"acme.rows.orders": 3, "acme.rows.customers": 2, "beta.rows.orders": 4, "beta.rows.customers": 2},
			}[model]
			for _, id := range []string{"acme", "beta"} {
				if len(got[id]) != 3 {
					t.Errorf("%s: meters %v, want storage_bytes, rows.orders, rows.customers", id, got[id])
				}
				for _, m := range []string{"rows.orders", "rows.customers"} {
					if got[id][m] != want[id+"."+m] {
						t.Errorf("%s %s = %v, want %v", id, m, got[id][m], want[id+"."+m])
					}
				}
				if got[id]["storage_bytes"] <= 0 {
					t.Errorf("%s storage_bytes = %v", id, got[id]["storage_bytes"])
				}
			}
			admin := e.conn(t, "", "")
			switch model {
			case "pool":
				// The tenant tables' size, shared out by rows: acme holds 2/3
				// of customers and orders and 1/2 of order_notes.
				total := float64(count(t, admin, `SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY['customers', 'orders', 'order_notes']::regclass[]) c`))
				if sum := got["acme"]["storage_bytes"] + got["beta"]["storage_bytes"]; math.Abs(sum-total) > 2 {
					t.Errorf("pool storage %v + %v = %v, want the tables' %v", got["acme"]["storage_bytes"], got["beta"]["storage_bytes"], sum, total)
				}
				if got["acme"]["storage_bytes"] <= got["beta"]["storage_bytes"] {
					t.Errorf("acme (more rows) has %v bytes, beta %v", got["acme"]["storage_bytes"], got["beta"]["storage_bytes"])
				}
			case "bridge":
				want := count(t, admin, `SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'r'`, e.name("acme"))
				if got["acme"]["storage_bytes"] != float64(want) {
					t.Errorf("bridge storage %v, want %d", got["acme"]["storage_bytes"], want)
				}
			case "silo":
				want := count(t, admin, `SELECT pg_database_size($1)`, e.name("acme"))
				if math.Abs(got["acme"]["storage_bytes"]-float64(want)) > 64<<10 {
					t.Errorf("silo storage %v, want about %d", got["acme"]["storage_bytes"], want)
				}
			}
			only := usage(t, p, "beta", "ghost")
			if len(only) != 1 || only["beta"]["rows.orders"] != want["beta.rows.orders"] {
				t.Errorf("filtered usage %v", only)
			}
		})
	}
}
