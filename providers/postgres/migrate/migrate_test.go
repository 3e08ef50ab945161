package migrate_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"attache.dev/attache/providers/postgres/migrate"
	"github.com/jackc/pgx/v5"
)

func TestNewSetsChecksum(t *testing.T) {
	m := migrate.New(3, "add_orders", "CREATE TABLE orders (id bigint)")
	sum := sha256.Sum256([]byte("CREATE TABLE orders (id bigint)"))
	if want := "sha256:" + hex.EncodeToString(sum[:]); m.Checksum != want {
		t.Fatalf("checksum %s, want %s", m.Checksum, want)
	}
	if m.Version != 3 || m.Name != "add_orders" || m.SQL != "CREATE TABLE orders (id bigint)" {
		t.Fatalf("New changed its fields: %+v", m)
	}
}

func TestKeyFor(t *testing.T) {
	a := migrate.KeyFor("app", "tenant_acme")
	if a != migrate.KeyFor("app", "tenant_acme") {
		t.Fatal("KeyFor is not stable")
	}
	for _, other := range [][2]string{{"app", "tenant_acme2"}, {"app2", "tenant_acme"}, {"apptenant_", "acme"}, {"", "apptenant_acme"}} {
		if migrate.KeyFor(other[0], other[1]) == a {
			t.Errorf("KeyFor(%q, %q) equals KeyFor(app, tenant_acme)", other[0], other[1])
		}
	}
}

func TestValidate(t *testing.T) {
	ok := func(v int64, name string) migrate.Migration { return migrate.New(v, name, "SELECT 1") }
	edited := ok(2, "two")
	edited.SQL = "SELECT 2"
	noSum := ok(1, "one")
	noSum.Checksum = ""
	for _, tc := range []struct {
		name string
		ms   []migrate.Migration
		want []string // substrings of the error; none: valid
	}{
		{"empty list", nil, nil},
		{"valid", []migrate.Migration{ok(1, "init"), ok(2, "add.orders-v2"), ok(10, "0_x")}, nil},
		{"zero version", []migrate.Migration{ok(0, "a")}, []string{"migrations[0].version: must be greater than 0, got 0"}},
		{"negative version", []migrate.Migration{ok(1, "a"), ok(-5, "b")}, []string{"migrations[1].version: must be greater than 0, got -5"}},
		{"duplicate version", []migrate.Migration{ok(1, "a"), ok(2, "b"), ok(2, "c")}, []string{"migrations[2].version: must be greater than the previous migration's (2), got 2"}},
		{"decreasing version", []migrate.Migration{ok(5, "a"), ok(3, "b")}, []string{"migrations[1].version: must be greater than the previous migration's (5), got 3"}},
		{"uppercase name", []migrate.Migration{ok(1, "Init")}, []string{`migrations[0].name: "Init" does not match`}},
		{"empty name", []migrate.Migration{ok(1, "")}, []string{`migrations[0].name: "" does not match`}},
		{"name with space", []migrate.Migration{ok(1, "a"), ok(2, "add orders")}, []string{`migrations[1].name: "add orders"`}},
		{"name starting with _", []migrate.Migration{ok(1, "_a")}, []string{"migrations[0].name"}},
		{"name too long", []migrate.Migration{ok(1, strings.Repeat("a", 101))}, []string{"migrations[0].name", "…"}},
		{"empty sql", []migrate.Migration{migrate.New(1, "a", "")}, []string{"migrations[0].sql: empty"}},
		{"blank sql", []migrate.Migration{migrate.New(1, "a", " \n\t")}, []string{"migrations[0].sql: empty"}},
		{"nul in sql", []migrate.Migration{migrate.New(1, "a", "SELECT '\x00'")}, []string{"migrations[0].sql: contains a NUL byte"}},
		{"invalid utf-8", []migrate.Migration{migrate.New(1, "a", "SELECT '\xff'")}, []string{"migrations[0].sql: not valid UTF-8"}},
		{"copy from stdin", []migrate.Migration{ok(1, "a"), migrate.New(2, "b", "COPY items (id) FROM\n  stdin;\n1\n\\.\n")}, []string{"migrations[1].sql: COPY … FROM STDIN"}},
		{"copy to stdout is fine", []migrate.Migration{migrate.New(1, "a", "COPY (SELECT 1) TO STDOUT; SELECT 'fromstdin'")}, nil},
		{"edited sql", []migrate.Migration{ok(1, "one"), edited}, []string{"migrations[1].checksum:", "does not match the SQL, whose checksum is sha256:"}},
		{"no checksum", []migrate.Migration{noSum}, []string{"migrations[0].checksum: empty (build migrations with migrate.New)"}},
		{"every problem reported", []migrate.Migration{ok(0, "A"), ok(0, "b")}, []string{"migrations[0].version", "migrations[0].name", "migrations[1].version"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := migrate.Validate(tc.ms)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestRunRefusesBadInput: invalid migrations, targets or options are refused
// naming the field, before any target is connected to.
func TestRunRefusesBadInput(t *testing.T) {
	connects := 0
	connect := func(context.Context) (*pgx.Conn, func(), error) {
		connects++
		return nil, nil, context.Canceled
	}
	good := migrate.Target{Name: "acme", Schema: "tenant_acme", Connect: connect}
	ms := []migrate.Migration{migrate.New(1, "init", "SELECT 1")}
	for _, tc := range []struct {
		name    string
		targets []migrate.Target
		ms      []migrate.Migration
		opts    migrate.Options
		want    string
	}{
		{"bad migration", []migrate.Target{good}, []migrate.Migration{migrate.New(1, "init", "")}, migrate.Options{}, "migrations[0].sql: empty"},
		{"empty schema", []migrate.Target{good, {Name: "b", Connect: connect}}, ms, migrate.Options{}, "targets[1].schema: empty"},
		{"long schema", []migrate.Target{{Name: "b", Schema: strings.Repeat("s", 64), Connect: connect}}, ms, migrate.Options{}, "targets[0].schema: longer than 63 bytes"},
		{"nul in schema", []migrate.Target{{Name: "b", Schema: "a\x00b", Connect: connect}}, ms, migrate.Options{}, "targets[0].schema: not valid UTF-8 or contains a NUL byte"},
		{"no name", []migrate.Target{{Schema: "s", Connect: connect}}, ms, migrate.Options{}, "targets[0].name: empty"},
		{"no connect", []migrate.Target{good, good, {Name: "c", Schema: "s"}}, ms, migrate.Options{}, "targets[2].connect: nil"},
		{"negative concurrency", []migrate.Target{good}, ms, migrate.Options{Concurrency: -1}, "options.concurrency: must be at least 1"},
		{"negative timeout", []migrate.Target{good}, ms, migrate.Options{StatementTimeout: -1}, "options.statement_timeout"},
		{"negative lock timeout", []migrate.Target{good}, ms, migrate.Options{LockTimeout: -1}, "options.lock_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := migrate.Run(t.Context(), tc.targets, tc.ms, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want an error containing %q", err, tc.want)
			}
			if connects != 0 {
				t.Fatalf("Connect called %d times for refused input", connects)
			}
		})
	}
}

var fuzzNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,99}$`)

// FuzzValidate: Validate never panics, accepts what New builds from a valid
// version, name and SQL, and refuses an edited SQL.
func FuzzValidate(f *testing.F) {
	f.Add(int64(1), "init", "CREATE TABLE a (id int)", int64(2), "b", "SELECT 1")
	f.Add(int64(0), "", "", int64(-1), "Ä", "\x00")
	f.Add(int64(5), "a.b-c_d", "  ", int64(5), "x", "SELECT '\xff'")
	f.Fuzz(func(t *testing.T, v1 int64, n1, s1 string, v2 int64, n2, s2 string) {
		ms := []migrate.Migration{migrate.New(v1, n1, s1), migrate.New(v2, n2, s2)}
		err := migrate.Validate(ms)
		valid := func(v int64, n, s string) bool {
			return v > 0 && fuzzNameRE.MatchString(n) && strings.TrimSpace(s) != "" && !strings.ContainsRune(s, 0) && utf8.ValidString(s) &&
				!regexp.MustCompile(`(?i)\bfrom\s+stdin\b`).MatchString(s)
		}
		want := valid(v1, n1, s1) && valid(v2, n2, s2) && v2 > v1
		if (err == nil) != want {
			t.Fatalf("Validate(%+v) = %v, want valid=%v", ms, err, want)
		}
		if err != nil && !strings.Contains(err.Error(), "migrations[") {
			t.Fatalf("error does not name the field: %v", err)
		}
		if want {
			ms[1].SQL += " "
			if err := migrate.Validate(ms); err == nil || !strings.Contains(err.Error(), "migrations[1].checksum") {
				t.Fatalf("edited SQL: %v", err)
			}
		}
	})
}
