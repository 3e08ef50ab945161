package postgres

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestSCRAMVerifier checks the verifier against one computed independently
// (Python's hashlib and hmac) for RFC 7677's password and salt.
func TestSCRAMVerifier(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	got, err := scramVerifierSalt("pencil", salt)
	if err != nil {
		t.Fatal(err)
	}
	want := "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	a, _ := scramVerifier("pencil")
	b, _ := scramVerifier("pencil")
	if a == b || !strings.HasPrefix(a, "SCRAM-SHA-256$4096:") {
		t.Errorf("salts are not random: %s %s", a, b)
	}
}

func TestTenantNames(t *testing.T) {
	tests := []struct {
		prefix, id, name string
		ok               bool
	}{
		{"tenant_", "acme", "tenant_acme", true},
		{"tenant_", "acme-eu-1", "tenant_acme_eu_1", true},
		{"t_", strings.Repeat("a", 61), "t_" + strings.Repeat("a", 61), true},
		{"tenant_", strings.Repeat("a", 57), "", false}, // 64 bytes: PostgreSQL would truncate
		{"tenant_", "Acme", "", false},
		{"tenant_", "-acme", "", false},
		{"tenant_", "acme_eu", "", false}, // '_' would make names ambiguous
		{"template", "1", "", false},      // template1
		{"p", "g-x", "", false},           // pg_x: PostgreSQL's
		{"p", "gx", "pgx", true},          // not pg_
		{"information_", "schema", "", false},
		{"pub", "lic", "", false},
	}
	for _, tt := range tests {
		err := checkTenant(tt.prefix, tt.id)
		if (err == nil) != tt.ok {
			t.Errorf("checkTenant(%q, %q) = %v, want ok=%v", tt.prefix, tt.id, err, tt.ok)
		}
		if tt.ok && tenantName(tt.prefix, tt.id) != tt.name {
			t.Errorf("tenantName(%q, %q) = %q, want %q", tt.prefix, tt.id, tenantName(tt.prefix, tt.id), tt.name)
		}
	}
}

func TestIndexAndFileNames(t *testing.T) {
	if got := indexName("orders"); got != "orders_tenant_id_id_idx" {
		t.Errorf("indexName = %q", got)
	}
	long := strings.Repeat("x", 63)
	if got := indexName(long); len(got) != 63 || got == indexName(long[:62]+"y") {
		t.Errorf("indexName of a long table: %q (%d bytes)", got, len(got))
	}
	if got := fileName("public", "orders"); got != "public.orders.csv" {
		t.Errorf("fileName = %q", got)
	}
	a, b := fileName("a.b", "c"), fileName("a", "b.c")
	if a == b || strings.ContainsAny(a+b, "/") || strings.Count(a, ".") != 2 {
		t.Errorf("fileName collides or is unsafe: %q %q", a, b)
	}
	if got := fileName("s", "../../etc/passwd"); strings.Contains(got, "/") {
		t.Errorf("fileName = %q", got)
	}
}

// TestChangesCompacted: past maxListedChanges, changes are listed per kind
// and operation, and say how many they stand for.
func TestChangesCompacted(t *testing.T) {
	var cs changes
	for i := range 3 {
		cs.add("k/*", fmt.Sprintf("k/%d", i), opCreate, "create %d", i)
	}
	if got := cs.proto(); len(got) != 3 || got[2].GetResource() != "k/2" {
		t.Fatalf("short list: %v", got)
	}
	cs = nil
	for i := range maxListedChanges {
		cs.add("postgres/roles/t_*", fmt.Sprintf("postgres/roles/t_%d", i), opCreate, "create role t_%d", i)
		cs.add("postgres/reg/*", fmt.Sprintf("postgres/reg/%d", i), opNoop, "registered")
	}
	cs.add("postgres/roles/t_*", "postgres/roles/t_x", opNoop, "exists")
	got := cs.proto()
	var lines []string
	for _, c := range got {
		lines = append(lines, fmt.Sprintf("%s %s: %s", c.GetOperation(), c.GetResource(), c.GetSummary()))
	}
	want := []string{
		"OPERATION_CREATE postgres/roles/t_*: 1000 resources, postgres/roles/t_0 … postgres/roles/t_999; first: create role t_0",
		"OPERATION_NOOP postgres/reg/*: 1000 resources, postgres/reg/0 … postgres/reg/999; first: registered",
		"OPERATION_NOOP postgres/roles/t_*: exists",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("compacted:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if cs.count() != maxListedChanges {
		t.Errorf("count %d", cs.count())
	}
}

// TestScrub: secrets leave errors, results and outputs, codes stay.
func TestScrub(t *testing.T) {
	e := &env{secrets: []string{"postgres://u:hunter2@db/app", "hunter2"}}
	err := e.scrubErr(status.Error(codes.Unavailable, "connect postgres://u:hunter2@db/app: bad password hunter2"))
	if status.Code(err) != codes.Unavailable || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("status error: %v", err)
	}
	if err := e.scrubErr(errors.New("x hunter2")); status.Code(err) != codes.Internal || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("plain error: %v", err)
	}
	if err := e.scrubErr(fmt.Errorf("wrapped: %w", context.Canceled)); !errors.Is(err, context.Canceled) {
		t.Errorf("context error: %v", err)
	}
	r := e.scrubResult(failed("saw hunter2", changes{{resource: "r", op: opNoop, summary: "hunter2"}}, map[string]any{"verification": "hunter2 here", "rows": 3}))
	if strings.Contains(r.String(), "hunter2") || r.GetOutputs().GetFields()["rows"].GetNumberValue() != 3 {
		t.Errorf("result: %v", r)
	}
}
