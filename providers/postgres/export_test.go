package postgres_test

import (
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
)

// TestExport: per model, the files and manifest are right (row counts,
// SHA-256 of each file and of the manifest), modes are 0600 and 0700, a
// pool export holds only the tenant's rows, and a rerun is a NOOP that
// leaves the files alone.
func TestExport(t *testing.T) {
	t.Parallel()
	want := map[string][]string{ // file: rows
		"pool":   {"public.customers.csv:2", "public.order_notes.csv:1", "public.orders.csv:2"},
		"bridge": {"SCHEMA.attache_schema_migrations.csv:2", "SCHEMA.customers.csv:2", "SCHEMA.orders.csv:3"},
		"silo":   {"public.attache_schema_migrations.csv:2", "public.customers.csv:2", "public.orders.csv:3"},
	}
	for _, model := range []string{"pool", "bridge", "silo"} {
		t.Run(model, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			p := e.provider(t)
			mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": model, "tenants": []any{"acme", "beta"}, "migrations": schemaMigrations(model)}))
			s := step("exp", "tenant.export", "beta", map[string]any{"model": model, "tenant": "acme"})
			res := mustApply(t, p, s)
			dir := filepath.Join(e.exports, "acme", "plan-test-exp")
			if output(res, "path") != dir {
				t.Fatalf("path %q, want %q", output(res, "path"), dir)
			}
			m := readManifest(t, dir)
			if m.Tenant != "acme" || m.Model != model || m.ExportedAt.IsZero() {
				t.Errorf("manifest %+v", m)
			}
			var got []string
			var rows int64
			for _, mt := range m.Tables {
				got = append(got, fmt.Sprintf("%s:%d", mt.File, mt.Rows))
				rows += mt.Rows
				b, err := os.ReadFile(filepath.Join(dir, mt.File))
				if err != nil {
					t.Fatal(err)
				}
				if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != mt.SHA256 {
					t.Errorf("%s: sha256 differs from the manifest's", mt.File)
				}
				recs, err := csv.NewReader(strings.NewReader(string(b))).ReadAll()
				if err != nil {
					t.Fatalf("%s: %v", mt.File, err)
				}
				if int64(len(recs)-1) != mt.Rows {
					t.Errorf("%s: %d CSV records after the header, manifest says %d", mt.File, len(recs)-1, mt.Rows)
				}
				if model == "pool" {
					col := slices.Index(recs[0], "tenant_id")
					for _, r := range recs[1:] {
						if r[col] != "acme" {
							t.Errorf("%s: a row of tenant %q in acme's export", mt.File, r[col])
						}
					}
				}
			}
			wantFiles := strings.Join(want[model], " ")
			wantFiles = strings.ReplaceAll(wantFiles, "SCHEMA", e.name("acme"))
			if strings.Join(got, " ") != wantFiles {
				t.Errorf("files %v, want %s", got, wantFiles)
			}
			if output(res, "rows") != fmt.Sprint(rows) || output(res, "tables") != fmt.Sprint(len(m.Tables)) {
				t.Errorf("outputs rows %s tables %s", output(res, "rows"), output(res, "tables"))
			}
			mb, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
			if sum := sha256.Sum256(mb); output(res, "manifest_sha256") != hex.EncodeToString(sum[:]) {
				t.Errorf("manifest_sha256 %s is not the manifest's", output(res, "manifest_sha256"))
			}
			if v := output(res, "verification"); v != fmt.Sprintf("exported %d rows in %d tables; each file's row count equals the table's count in the same snapshot", rows, len(m.Tables)) {
				t.Errorf("verification %q", v)
			}
			// Modes: directories 0700, files 0600; no temporary directory left.
			for _, d := range []string{e.exports, filepath.Join(e.exports, "acme"), dir} {
				if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
					t.Errorf("%s: mode %v (%v), want 0700", d, fi.Mode().Perm(), err)
				}
			}
			ents, _ := os.ReadDir(dir)
			for _, f := range ents {
				if fi, _ := f.Info(); fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: mode %v, want 0600", f.Name(), fi.Mode().Perm())
				}
			}
			if ents, _ := os.ReadDir(filepath.Join(e.exports, "acme")); len(ents) != 1 {
				t.Errorf("export dir holds %d entries, want only the export", len(ents))
			}
			// Rerun: NOOP, same outputs, files untouched.
			before := e.snapshot(t)
			again := mustApply(t, p, s)
			for _, c := range again.GetChanges() {
				if c.GetOperation() != providerv1.Operation_OPERATION_NOOP {
					t.Errorf("rerun: %s %s", c.GetOperation(), c.GetResource())
				}
			}
			if output(again, "manifest_sha256") != output(res, "manifest_sha256") || output(again, "rows") != output(res, "rows") {
				t.Errorf("rerun outputs differ: %v vs %v", again.GetOutputs(), res.GetOutputs())
			}
			if string(e.snapshot(t)) != string(before) {
				t.Error("rerun changed the files or the database")
			}
		})
	}
}

// TestExportRefusesUnregistered: a tenant that is not registered with the
// model is not exported (nothing is written).
func TestExportRefusesUnregistered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "bridge"}))
	for _, params := range []map[string]any{{"model": "bridge", "tenant": "ghost"}, {"model": "silo"}} {
		_, err := p.Apply(t.Context(), step("exp", "tenant.export", "acme", params), nil)
		if err == nil || !strings.Contains(err.Error(), "registered") {
			t.Errorf("%v: %v", params, err)
		}
	}
	if _, err := os.Stat(e.exports); !os.IsNotExist(err) {
		t.Errorf("export dir created: %v", err)
	}
}
