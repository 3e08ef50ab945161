package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"attache.dev/attache/providers/sdk"
	"github.com/jackc/pgx/v5"
)

// tenantTable is a pool table: a table of pool_schema with a tenant_id
// column, and the state of its isolation.
type tenantTable struct {
	name     string
	kind     string // "r" table, "p" partitioned table
	part     bool   // a partition (its rows are also its parent's)
	typ      string // tenant_id's type, as format_type prints it
	hasID    bool   // it has an id column
	rls      bool   // row level security enabled
	force    bool   // and forced (applies to the owner too)
	policy   string // "" none, "ok", "wrong"
	others   []string
	hasIndex bool // a valid, full index starts with (tenant_id, id)
}

// tenantTablesSQL lists the tenant tables of schema $1 with their state.
const tenantTablesSQL = `
SELECT c.relname, c.relkind::text, c.relispartition, format_type(a.atttypid, a.atttypmod),
  idc.attnum IS NOT NULL, c.relrowsecurity, c.relforcerowsecurity,
  (SELECT CASE WHEN p.polcmd = '*' AND p.polpermissive AND p.polroles = '{0}'::oid[]
            AND pg_get_expr(p.polqual, p.polrelid) = pg_get_expr(p.polwithcheck, p.polrelid)
            AND starts_with(pg_get_expr(p.polqual, p.polrelid), '(tenant_id = ')
            AND strpos(pg_get_expr(p.polqual, p.polrelid), 'current_setting(''app.tenant_id''::text, true)') > 0
          THEN 'ok' ELSE 'wrong' END
     FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'attache_tenant_isolation'),
  ARRAY(SELECT p.polname::text FROM pg_policy p
        WHERE p.polrelid = c.oid AND p.polpermissive AND p.polname <> 'attache_tenant_isolation' ORDER BY 1),
  idc.attnum IS NOT NULL AND EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisvalid
    AND x.indpred IS NULL AND x.indnkeyatts >= 2 AND x.indkey[0] = a.attnum AND x.indkey[1] = idc.attnum)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attribute idc ON idc.attrelid = c.oid AND idc.attname = 'id' AND idc.attnum > 0 AND NOT idc.attisdropped
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
ORDER BY c.relname`

// tenantTables reads the tenant tables of schema.
func tenantTables(ctx context.Context, q querier, schema string) ([]tenantTable, error) {
	rows, err := q.Query(ctx, tenantTablesSQL, schema)
	if err != nil {
		return nil, fmt.Errorf("read tenant tables of schema %s: %w", schema, err)
	}
	var out []tenantTable
	var t tenantTable
	var policy *string
	_, err = pgx.ForEachRow(rows, []any{&t.name, &t.kind, &t.part, &t.typ, &t.hasID, &t.rls, &t.force, &policy, &t.others, &t.hasIndex}, func() error {
		t.policy = ""
		if policy != nil {
			t.policy = *policy
		}
		out = append(out, t)
		t = tenantTable{}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read tenant tables of schema %s: %w", schema, err)
	}
	return out, nil
}

// indexName is the name of the (tenant_id, id) index the provider creates
// on table, at most 63 bytes.
func indexName(table string) string {
	const suffix = "_tenant_id_id_idx"
	if len(table)+len(suffix) <= maxIdentLen {
		return table + suffix
	}
	sum := sha256.Sum256([]byte(table))
	return table[:maxIdentLen-len(suffix)-9] + "_" + hex.EncodeToString(sum[:4]) + suffix
}

// checkPolicies refuses tenant tables with another permissive policy:
// permissive policies are OR-ed, so it would let a tenant see other tenants'
// rows.
func checkPolicies(schema string, tables []tenantTable) error {
	for _, t := range tables {
		if len(t.others) > 0 {
			return sdk.FailedPrecondition("table %s.%s has permissive row level security policies besides %s (%s); permissive policies are OR-ed and would let a tenant reach other tenants' rows: make them AS RESTRICTIVE or drop them",
				schema, t.name, policyName, strings.Join(t.others, ", "))
		}
	}
	return nil
}

// planRLS diffs the isolation of the tenant tables of the pool schema.
func (e *env) planRLS(tables []tenantTable) changes {
	var cs changes
	schema := e.s.PoolSchema
	rlsKind := fmt.Sprintf("postgres/%s/%s.*/rls", e.db, schema)
	idxKind := fmt.Sprintf("postgres/%s/%s.*/index", e.db, schema)
	for _, t := range tables {
		res := fmt.Sprintf("postgres/%s/%s.%s/rls", e.db, schema, t.name)
		switch {
		case t.rls && t.force && t.policy == "ok":
			cs.add(rlsKind, res, opNoop, "row level security enabled and forced, policy %s on tenant_id", policyName)
		case !t.rls && !t.force && t.policy == "":
			cs.add(rlsKind, res, opCreate, "enable and force row level security; policy %s: tenant_id = app.tenant_id (%s)", policyName, t.typ)
		default:
			var fix []string
			if !t.rls {
				fix = append(fix, "enable row level security")
			}
			if !t.force {
				fix = append(fix, "force row level security")
			}
			switch t.policy {
			case "":
				fix = append(fix, "create policy "+policyName)
			case "wrong":
				fix = append(fix, "recreate policy "+policyName)
			}
			cs.add(rlsKind, res, opUpdate, "%s", strings.Join(fix, ", "))
		}
		if !t.hasID {
			continue
		}
		ires := fmt.Sprintf("postgres/%s/%s.%s/index", e.db, schema, t.name)
		if t.hasIndex {
			cs.add(idxKind, ires, opNoop, "an index starts with (tenant_id, id)")
		} else {
			cs.add(idxKind, ires, opCreate, "create index %s on (tenant_id, id)", indexName(t.name))
		}
	}
	return cs
}

// ensureRLS enables and forces row level security and creates the policy
// and the (tenant_id, id) index on every tenant table of the pool schema
// that lacks them; it returns what it did.
func (e *env) ensureRLS(ctx context.Context) (changes, error) {
	tables, err := tenantTables(ctx, e.pool, e.s.PoolSchema)
	if err != nil {
		return nil, err
	}
	if err := checkPolicies(e.s.PoolSchema, tables); err != nil {
		return nil, err
	}
	for _, t := range tables {
		if err := e.isolate(ctx, t); err != nil {
			return nil, err
		}
	}
	return e.planRLS(tables), nil
}

// isolate fixes one tenant table's isolation: row level security and the
// policy in one transaction, then the index (CONCURRENTLY, so the table
// stays writable, outside a transaction).
func (e *env) isolate(ctx context.Context, t tenantTable) error {
	tbl := qual(e.s.PoolSchema, t.name)
	if !(t.rls && t.force && t.policy == "ok") {
		var b strings.Builder
		if !t.rls {
			fmt.Fprintf(&b, "ALTER TABLE %s ENABLE ROW LEVEL SECURITY;\n", tbl)
		}
		if !t.force {
			fmt.Fprintf(&b, "ALTER TABLE %s FORCE ROW LEVEL SECURITY;\n", tbl)
		}
		if t.policy != "ok" {
			pred := tenantPredicate(t.typ)
			fmt.Fprintf(&b, "DROP POLICY IF EXISTS %s ON %s;\n", ident(policyName), tbl)
			fmt.Fprintf(&b, "CREATE POLICY %s ON %s AS PERMISSIVE FOR ALL TO PUBLIC USING (%s) WITH CHECK (%s);\n", ident(policyName), tbl, pred, pred)
		}
		if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, b.String())
			return err
		}); err != nil {
			return fmt.Errorf("row level security on %s.%s: %w", e.s.PoolSchema, t.name, err)
		}
	}
	if !t.hasID || t.hasIndex {
		return nil
	}
	idx := indexName(t.name)
	if t.kind == "p" {
		// Partitioned tables cannot be indexed concurrently; the index
		// cascades to the partitions.
		if _, err := e.pool.Exec(ctx, fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s ON %s (tenant_id, id)", ident(idx), tbl)); err != nil {
			return fmt.Errorf("index %s on %s.%s: %w", idx, e.s.PoolSchema, t.name, err)
		}
		return nil
	}
	// A concurrent build that failed leaves an invalid index behind. The
	// build may take long on a big table: it gets migration_timeout.
	conn, release, err := e.acquire(ctx)
	if err != nil {
		return fmt.Errorf("index %s on %s.%s: %w", idx, e.s.PoolSchema, t.name, err)
	}
	defer release()
	var valid *bool
	err = conn.QueryRow(ctx, `SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
		JOIN pg_namespace n ON n.oid = i.relnamespace WHERE n.nspname = $1 AND i.relname = $2`, e.s.PoolSchema, idx).Scan(&valid)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("index %s on %s.%s: %w", idx, e.s.PoolSchema, t.name, err)
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("SET statement_timeout = %d", e.s.migrationTimeout.Milliseconds())); err != nil {
		return fmt.Errorf("index %s on %s.%s: %w", idx, e.s.PoolSchema, t.name, err)
	}
	if valid != nil && !*valid {
		if _, err := conn.Exec(ctx, fmt.Sprintf("DROP INDEX CONCURRENTLY IF EXISTS %s", qual(e.s.PoolSchema, idx))); err != nil {
			return fmt.Errorf("drop invalid index %s: %w", idx, err)
		}
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE INDEX CONCURRENTLY IF NOT EXISTS %s ON %s (tenant_id, id)", ident(idx), tbl)); err != nil {
		return fmt.Errorf("index %s on %s.%s: %w", idx, e.s.PoolSchema, t.name, err)
	}
	return nil
}

// tenantFilter is the WHERE condition selecting the rows of the tenant set
// in app.tenant_id.
func (t tenantTable) tenantFilter() string { return tenantPredicate(t.typ) }

// setTenantSQL sets app.tenant_id for the current transaction ($1).
const setTenantSQL = `SELECT set_config('app.tenant_id', $1, true)`

// dataTables are the tenant tables that hold rows of their own: the
// partitions' rows are their parent's.
func dataTables(tables []tenantTable) []tenantTable {
	var out []tenantTable
	for _, t := range tables {
		if !t.part {
			out = append(out, t)
		}
	}
	return out
}
