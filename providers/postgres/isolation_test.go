package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// wantSQLState fails unless err is a PostgreSQL error with code.
func wantSQLState(t testing.TB, err error, code, what string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != code {
		t.Fatalf("%s: got %v, want SQLSTATE %s", what, err, code)
	}
}

// inTx runs fn in a transaction on c that is always rolled back, with
// app.tenant_id set to tenant unless it is empty.
func inTx(t testing.TB, c *pgx.Conn, tenant string, fn func(tx pgx.Tx)) {
	t.Helper()
	tx, err := c.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if tenant != "" {
		if _, err := tx.Exec(t.Context(), "SELECT set_config('app.tenant_id', $1, true)", tenant); err != nil {
			t.Fatal(err)
		}
	}
	fn(tx)
}

func count(t testing.TB, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// poolRowsOf counts, as the superuser, tenant's rows in each pool table.
func poolRowsOf(t testing.TB, admin *pgx.Conn, tenant string) string {
	t.Helper()
	var s string
	err := admin.QueryRow(t.Context(), `SELECT format('customers=%s orders=%s notes=%s totals=%s',
		(SELECT count(*) FROM customers WHERE tenant_id = $1), (SELECT count(*) FROM orders WHERE tenant_id = $1),
		(SELECT count(*) FROM order_notes WHERE tenant_id = $1), (SELECT sum(total) FROM orders WHERE tenant_id = $1))`, tenant).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPoolIsolation: a role that is neither superuser nor BYPASSRLS, with
// tenant acme's context, cannot reach beta's rows even with statements
// that lack a WHERE; without a context it sees and writes nothing; and the
// tables' owner (not a superuser) is held to the same, because row level
// security is forced.
func TestPoolIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "pool", "tenants": []any{"acme", "beta"}, "migrations": schemaMigrations("pool")}))
	admin := e.conn(t, "", "")
	app, owner := e.cfg.NamePrefix+"app", e.cfg.NamePrefix+"owner"
	mustExec(t, admin, fmt.Sprintf(`CREATE ROLE %[1]s LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA public TO %[1]s;
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders, order_notes TO %[1]s;
CREATE ROLE %[2]s LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA public TO %[2]s;
ALTER TABLE customers OWNER TO %[2]s; ALTER TABLE orders OWNER TO %[2]s; ALTER TABLE order_notes OWNER TO %[2]s`, app, owner))
	betaBefore := poolRowsOf(t, admin, "beta")
	acmeBefore := poolRowsOf(t, admin, "acme")

	for _, role := range []string{app, owner} {
		t.Run(role[len(e.cfg.NamePrefix):], func(t *testing.T) {
			c := e.conn(t, "", role)
			inTx(t, c, "acme", func(tx pgx.Tx) {
				if n := count(t, tx, "SELECT count(*) FROM orders"); n != 2 {
					t.Errorf("acme sees %d orders without WHERE, want its 2", n)
				}
				if n := count(t, tx, "SELECT count(*) FROM orders WHERE tenant_id = 'beta'"); n != 0 {
					t.Errorf("acme selects %d of beta's orders", n)
				}
				if n := count(t, tx, "SELECT count(*) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.tenant_id <> 'acme' OR c.tenant_id <> 'acme'"); n != 0 {
					t.Errorf("acme joins %d rows of beta", n)
				}
				tag, err := tx.Exec(t.Context(), "UPDATE orders SET total = total + 100")
				if err != nil || tag.RowsAffected() != 2 {
					t.Errorf("UPDATE without WHERE: %v rows, %v; want acme's 2", tag.RowsAffected(), err)
				}
				tag, err = tx.Exec(t.Context(), "UPDATE orders SET total = 0 WHERE tenant_id = 'beta'")
				if err != nil || tag.RowsAffected() != 0 {
					t.Errorf("UPDATE of beta's rows: %v rows, %v; want 0", tag.RowsAffected(), err)
				}
				tag, err = tx.Exec(t.Context(), "DELETE FROM order_notes")
				if err != nil || tag.RowsAffected() != 1 {
					t.Errorf("DELETE without WHERE: %v rows, %v; want acme's 1", tag.RowsAffected(), err)
				}
				tag, err = tx.Exec(t.Context(), "DELETE FROM order_notes WHERE tenant_id = 'beta'")
				if err != nil || tag.RowsAffected() != 0 {
					t.Errorf("DELETE of beta's rows: %v rows, %v; want 0", tag.RowsAffected(), err)
				}
			})
			inTx(t, c, "acme", func(tx pgx.Tx) {
				_, err := tx.Exec(t.Context(), "INSERT INTO customers VALUES (9, 'beta', 'Eve')")
				wantSQLState(t, err, "42501", "insert with beta's tenant_id") // new row violates row-level security policy
			})
			inTx(t, c, "acme", func(tx pgx.Tx) {
				_, err := tx.Exec(t.Context(), "UPDATE order_notes SET tenant_id = 'beta'")
				wantSQLState(t, err, "42501", "moving acme's rows to beta")
			})
			// No context: nothing visible, nothing writable (fail closed).
			inTx(t, c, "", func(tx pgx.Tx) {
				if n := count(t, tx, "SELECT count(*) FROM customers") + count(t, tx, "SELECT count(*) FROM orders"); n != 0 {
					t.Errorf("without a context the role sees %d rows", n)
				}
				tag, err := tx.Exec(t.Context(), "DELETE FROM orders")
				if err != nil || tag.RowsAffected() != 0 {
					t.Errorf("DELETE without a context: %v rows, %v", tag.RowsAffected(), err)
				}
			})
			inTx(t, c, "", func(tx pgx.Tx) {
				_, err := tx.Exec(t.Context(), "INSERT INTO customers VALUES (9, 'acme', 'Eve')")
				wantSQLState(t, err, "42501", "insert without a context")
			})
			// A context set for one transaction does not outlive it; an
			// empty one matches nothing.
			inTx(t, c, "acme", func(pgx.Tx) {})
			if n := count(t, c, "SELECT count(*) FROM orders"); n != 0 {
				t.Errorf("after a transaction with a context, the session sees %d rows", n)
			}
			inTx(t, c, "", func(tx pgx.Tx) {
				if _, err := tx.Exec(t.Context(), "SET LOCAL app.tenant_id = ''"); err != nil {
					t.Fatal(err)
				}
				if n := count(t, tx, "SELECT count(*) FROM orders"); n != 0 {
					t.Errorf("an empty context sees %d rows", n)
				}
			})
		})
	}
	if got := poolRowsOf(t, admin, "beta"); got != betaBefore {
		t.Errorf("beta's rows changed: %s, were %s", got, betaBefore)
	}
	if got := poolRowsOf(t, admin, "acme"); got != acmeBefore {
		t.Errorf("acme's rows changed although every transaction rolled back: %s, were %s", got, acmeBefore)
	}
}

// TestBridgeIsolation: a bridge tenant's role reads and writes its own
// schema only; the app role reaches a tenant's schema only after SET ROLE.
func TestBridgeIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.conn(t, "", "")
	e.cfg.AppRole = e.cfg.NamePrefix[:len(e.cfg.NamePrefix)-1] + "x_app" // must not start with the prefix
	mustExec(t, admin, "CREATE ROLE "+e.cfg.AppRole+" LOGIN NOINHERIT")
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "bridge", "tenants": []any{"acme", "beta"}, "migrations": schemaMigrations("bridge")}))
	acme, beta := e.name("acme"), e.name("beta")

	c := e.conn(t, "", acme)
	if n := count(t, c, "SELECT count(*) FROM "+acme+".orders"); n != 3 {
		t.Errorf("acme reads %d of its orders, want 3", n)
	}
	mustExec(t, c, "INSERT INTO "+acme+".customers (name) VALUES ('new')")
	for _, sql := range []string{
		"SELECT count(*) FROM " + beta + ".orders",
		"INSERT INTO " + beta + ".customers (name) VALUES ('x')",
		"DELETE FROM " + beta + ".orders",
		"SELECT count(*) FROM attache.tenants",
		"CREATE TABLE " + acme + ".mine (x int)",
		"INSERT INTO " + acme + ".attache_schema_migrations (version, name, checksum, duration_ms) VALUES (99, 'x', 'x', 0)",
		"DELETE FROM " + acme + ".attache_schema_migrations",
	} {
		_, err := c.Exec(t.Context(), sql)
		wantSQLState(t, err, "42501", "as "+acme+": "+sql)
	}
	if n := count(t, c, "SELECT count(*) FROM "+acme+".attache_schema_migrations"); n != 2 {
		t.Errorf("acme reads %d versions, want 2", n)
	}

	a := e.conn(t, "", e.cfg.AppRole)
	_, err := a.Exec(t.Context(), "SELECT count(*) FROM "+acme+".orders")
	wantSQLState(t, err, "42501", "app role before SET ROLE")
	mustExec(t, a, "SET ROLE "+acme)
	if n := count(t, a, "SELECT count(*) FROM "+acme+".orders"); n != 3 {
		t.Errorf("app as acme reads %d orders, want 3", n)
	}
	_, err = a.Exec(t.Context(), "SELECT count(*) FROM "+beta+".orders")
	wantSQLState(t, err, "42501", "app as acme reading beta")
	mustExec(t, a, "RESET ROLE")
}

// TestSiloIsolation: a silo tenant's role connects to its own database
// only.
func TestSiloIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "silo", "tenants": []any{"acme", "beta"}, "migrations": schemaMigrations("silo")}))
	acme, beta := e.name("acme"), e.name("beta")
	c := e.conn(t, acme, acme)
	if n := count(t, c, "SELECT count(*) FROM orders"); n != 3 {
		t.Errorf("acme reads %d orders in its database, want 3", n)
	}
	_, err := e.connect(t.Context(), beta, acme)
	wantSQLState(t, err, "42501", "acme connecting to beta's database") // permission denied for database
	// Nor can any other role without the right, e.g. a fresh one.
	other := e.cfg.NamePrefix + "other"
	mustExec(t, e.conn(t, "", ""), "CREATE ROLE "+other+" LOGIN")
	_, err = e.connect(t.Context(), acme, other)
	wantSQLState(t, err, "42501", "another role connecting to acme's database")
}
