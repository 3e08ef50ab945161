package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"attache.dev/attache/providers/sdk"
	"github.com/jackc/pgx/v5"
)

// tenantTable is a pool table: a table of pool_schema with a tenant_id
// column, and the state of its isolation.
type tenantTable struct {
	name  string
	kind  string // "r" table, "p" partitioned table
	part  bool   // a partition (its rows are also its parent's)
	typ   string // tenant_id's type, as format_type prints it
	hasID bool   // it has an id column
	rls   bool   // row level security enabled
	force bool   // and forced (applies to the owner too)
	// policy is "" (no policy named policyName), "present" (not judged:
	// see rlsTables), "ok" (exactly the provider's) or "wrong" (why says
	// how).
	policy   string
	why      string
	shape    bool    // the policy is FOR ALL, PERMISSIVE, TO PUBLIC
	using    *string // its USING expression, as pg_get_expr prints it
	check    *string // its WITH CHECK expression
	others   []string
	hasIndex bool // a valid, full index starts with (tenant_id, id)
}

// tenantTablesSQL lists the tenant tables of schema $1 with their state.
const tenantTablesSQL = `
SELECT c.relname, c.relkind::text, c.relispartition, format_type(a.atttypid, a.atttypmod),
  idc.attnum IS NOT NULL, c.relrowsecurity, c.relforcerowsecurity,
  p.oid IS NOT NULL,
  coalesce(p.polcmd = '*' AND p.polpermissive AND p.polroles = '{0}'::oid[], false),
  pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),
  ARRAY(SELECT o.polname::text FROM pg_policy o
        WHERE o.polrelid = c.oid AND o.polpermissive AND o.polname <> 'attache_tenant_isolation' ORDER BY 1),
  idc.attnum IS NOT NULL AND EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisvalid
    AND x.indpred IS NULL AND x.indnkeyatts >= 2 AND x.indkey[0] = a.attnum AND x.indkey[1] = idc.attnum)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attribute idc ON idc.attrelid = c.oid AND idc.attname = 'id' AND idc.attnum > 0 AND NOT idc.attisdropped
LEFT JOIN pg_policy p ON p.polrelid = c.oid AND p.polname = 'attache_tenant_isolation'
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
ORDER BY c.relname`

// tenantTables reads the tenant tables of schema. Their policies are not
// judged (policy is "" or "present"); rlsTables does that.
func tenantTables(ctx context.Context, q querier, schema string) ([]tenantTable, error) {
	rows, err := q.Query(ctx, tenantTablesSQL, schema)
	if err != nil {
		return nil, fmt.Errorf("read tenant tables of schema %s: %w", schema, err)
	}
	var out []tenantTable
	var t tenantTable
	var hasPolicy bool
	_, err = pgx.ForEachRow(rows, []any{&t.name, &t.kind, &t.part, &t.typ, &t.hasID, &t.rls, &t.force,
		&hasPolicy, &t.shape, &t.using, &t.check, &t.others, &t.hasIndex}, func() error {
		t.policy = ""
		if hasPolicy {
			t.policy = "present"
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

// rlsTables reads the tenant tables of the pool schema and judges each
// one's policy: it is "ok" only if it is FOR ALL, PERMISSIVE, TO PUBLIC and
// both its USING and its WITH CHECK expression print exactly as the
// provider's own predicate does (see policyExprs). Anything else is
// "wrong" and gets recreated: a policy that merely looks like the
// provider's, such as tenant_id = COALESCE(<the setting>, tenant_id), may
// let a session without a context see every row.
func (e *env) rlsTables(ctx context.Context) ([]tenantTable, error) {
	tables, err := tenantTables(ctx, e.pool, e.s.PoolSchema)
	if err != nil {
		return nil, err
	}
	var types []string
	seen := map[string]bool{}
	for _, t := range tables {
		if t.policy != "" && !seen[t.typ] {
			seen[t.typ] = true
			types = append(types, t.typ)
		}
	}
	want, err := e.policyExprs(ctx, types)
	if err != nil {
		return nil, err
	}
	for i := range tables {
		t := &tables[i]
		if t.policy == "" {
			continue
		}
		w := want[t.typ]
		switch {
		case !t.shape:
			t.policy, t.why = "wrong", "it is not FOR ALL, PERMISSIVE, TO PUBLIC"
		case t.using == nil || *t.using != w:
			t.policy, t.why = "wrong", fmt.Sprintf("its USING expression is %s, not %s", exprText(t.using), w)
		case t.check == nil || *t.check != w:
			t.policy, t.why = "wrong", fmt.Sprintf("its WITH CHECK expression is %s, not %s", exprText(t.check), w)
		default:
			t.policy, t.why = "ok", ""
		}
	}
	return tables, nil
}

// exprText shows a policy expression that may be missing.
func exprText(s *string) string {
	if s == nil {
		return "missing"
	}
	return *s
}

// errProbeDone rolls policyExprs's transaction back.
var errProbeDone = errors.New("policy probe done")

// policyExprs returns, per tenant_id type, the text pg_get_expr prints for
// the provider's predicate (tenantPredicate) on a column of that type: it
// creates, in a transaction it always rolls back, a table of one tenant_id
// column in the pool schema with the policy the provider would create, and
// reads the expression back. Comparing that text with an existing policy's
// compares what PostgreSQL will evaluate, whatever the spelling the policy
// was created with.
func (e *env) policyExprs(ctx context.Context, types []string) (map[string]string, error) {
	out := make(map[string]string, len(types))
	if len(types) == 0 {
		return out, nil
	}
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		for i, typ := range types {
			tbl := qual(e.s.PoolSchema, fmt.Sprintf("attache_policy_probe_%d", i))
			pred := tenantPredicate(typ)
			if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (tenant_id %s);\nCREATE POLICY %s ON %s AS PERMISSIVE FOR ALL TO PUBLIC USING (%s) WITH CHECK (%s)",
				tbl, typ, ident(policyName), tbl, pred, pred)); err != nil {
				return fmt.Errorf("compute the policy expression for tenant_id of type %s: %w", typ, err)
			}
			var using, check string
			if err := tx.QueryRow(ctx, `SELECT pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) FROM pg_policy WHERE polrelid = $1::regclass`, tbl).Scan(&using, &check); err != nil {
				return fmt.Errorf("compute the policy expression for tenant_id of type %s: %w", typ, err)
			}
			if using != check {
				return fmt.Errorf("compute the policy expression for tenant_id of type %s: USING prints %s, WITH CHECK %s", typ, using, check)
			}
			out[typ] = using
		}
		return errProbeDone
	})
	if !errors.Is(err, errProbeDone) {
		return nil, err
	}
	return out, nil
}

// poolView is a view or materialized view of the pool schema.
type poolView struct {
	name    string
	kind    string   // "v" view, "m" materialized view
	invoker bool     // security_invoker is set
	reads   []string // the tenant tables it reads, directly or through other views
}

// poolViewsSQL lists the views and materialized views of schema $1, with
// the tenant tables of $1 each reads (through the dependencies of its
// rewrite rule, following views it reads in turn).
const poolViewsSQL = `
WITH RECURSIVE reads(view, rel) AS (
  SELECT v.oid, d.refobjid
  FROM pg_class v
  JOIN pg_namespace n ON n.oid = v.relnamespace
  JOIN pg_rewrite r ON r.ev_class = v.oid
  JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> v.oid
  WHERE n.nspname = $1 AND v.relkind IN ('v', 'm')
UNION
  SELECT reads.view, d.refobjid
  FROM reads
  JOIN pg_class m ON m.oid = reads.rel AND m.relkind IN ('v', 'm')
  JOIN pg_rewrite r ON r.ev_class = m.oid
  JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> m.oid
)
SELECT v.relname::text, v.relkind::text,
  coalesce((SELECT o.option_value::boolean FROM pg_options_to_table(v.reloptions) o WHERE o.option_name = 'security_invoker'), false),
  ARRAY(SELECT DISTINCT t.relname::text FROM reads
        JOIN pg_class t ON t.oid = reads.rel AND t.relkind IN ('r', 'p')
        JOIN pg_namespace tn ON tn.oid = t.relnamespace AND tn.nspname = $1
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attname = 'tenant_id' AND a.attnum > 0 AND NOT a.attisdropped
        WHERE reads.view = v.oid ORDER BY 1)
FROM pg_class v JOIN pg_namespace n ON n.oid = v.relnamespace
WHERE n.nspname = $1 AND v.relkind IN ('v', 'm')
ORDER BY 1`

// poolViews reads the views and materialized views of schema.
func poolViews(ctx context.Context, q querier, schema string) ([]poolView, error) {
	rows, err := q.Query(ctx, poolViewsSQL, schema)
	if err != nil {
		return nil, fmt.Errorf("read the views of schema %s: %w", schema, err)
	}
	var out []poolView
	var v poolView
	_, err = pgx.ForEachRow(rows, []any{&v.name, &v.kind, &v.invoker, &v.reads}, func() error {
		out = append(out, v)
		v = poolView{}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the views of schema %s: %w", schema, err)
	}
	return out, nil
}

// poolState is the isolation of the pool schema: its tenant tables (with
// their policies judged) and its views.
type poolState struct {
	tables []tenantTable
	views  []poolView
}

// readPool reads the pool schema's isolation.
func (e *env) readPool(ctx context.Context) (poolState, error) {
	tables, err := e.rlsTables(ctx)
	if err != nil {
		return poolState{}, err
	}
	views, err := poolViews(ctx, e.pool, e.s.PoolSchema)
	if err != nil {
		return poolState{}, err
	}
	return poolState{tables: tables, views: views}, nil
}

// checkPool refuses what the provider cannot make safe: tenant tables with
// other permissive policies (checkPolicies), materialized views that read a
// tenant table (they hold every tenant's rows, and row level security does
// not apply to them), and, before PostgreSQL 15, which has no
// security_invoker, views that read a tenant table (they read with their
// owner's rights, which may bypass row level security).
func (e *env) checkPool(ps poolState) error {
	var msgs []string
	if err := checkPolicies(e.s.PoolSchema, ps.tables); err != nil {
		msgs = append(msgs, errMessage(err))
	}
	var mat, old []string
	for _, v := range ps.views {
		if len(v.reads) == 0 {
			continue
		}
		desc := fmt.Sprintf("%s.%s (reads %s)", e.s.PoolSchema, v.name, strings.Join(v.reads, ", "))
		switch {
		case v.kind == "m":
			mat = append(mat, desc)
		case !v.invoker && e.version < 150000:
			old = append(old, desc)
		}
	}
	if len(mat) > 0 {
		msgs = append(msgs, fmt.Sprintf("materialized views %s read tenant tables: a materialized view stores every tenant's rows and row level security does not apply to it; drop it, or make it a view", strings.Join(mat, ", ")))
	}
	if len(old) > 0 {
		msgs = append(msgs, fmt.Sprintf("views %s read tenant tables with their owner's rights, which may bypass row level security, and PostgreSQL before 15 cannot make them read with the querying role's (security_invoker): drop them, or upgrade", strings.Join(old, ", ")))
	}
	if len(msgs) == 0 {
		return nil
	}
	return sdk.FailedPrecondition("%s", strings.Join(msgs, "; "))
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

// planRLS diffs the isolation of the tenant tables and views of the pool
// schema.
func (e *env) planRLS(ps poolState) changes {
	var cs changes
	schema := e.s.PoolSchema
	rlsKind := fmt.Sprintf("postgres/%s/%s.*/rls", e.db, schema)
	idxKind := fmt.Sprintf("postgres/%s/%s.*/index", e.db, schema)
	for _, t := range ps.tables {
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
			case "ok":
			default:
				why := ""
				if t.why != "" {
					why = " (" + t.why + ")"
				}
				fix = append(fix, "recreate policy "+policyName+why)
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
	viewKind := fmt.Sprintf("postgres/%s/%s.*/security_invoker", e.db, schema)
	for _, v := range ps.views {
		if v.kind != "v" {
			continue
		}
		res := fmt.Sprintf("postgres/%s/%s.%s/security_invoker", e.db, schema, v.name)
		switch {
		case v.invoker:
			cs.add(viewKind, res, opNoop, "view %s reads with the querying role's rights, under row level security (security_invoker)", v.name)
		case e.version >= 150000:
			cs.add(viewKind, res, opUpdate, "set security_invoker on view %s: it reads with the querying role's rights, under row level security, not its owner's", v.name)
		default:
			cs.add(viewKind, res, opNoop, "view %s reads no tenant table", v.name)
		}
	}
	return cs
}

// ensureRLS makes the pool schema's isolation what it must be: row level
// security enabled and forced, the provider's exact policy (a different
// one is dropped and created again) and, with indexes, the (tenant_id, id)
// index on every tenant table, and security_invoker on every view (from
// PostgreSQL 15). It goes through every table even when one fails, then
// reports every failure and what checkPool refuses (those tables are left
// alone). It returns what it found to do.
func (e *env) ensureRLS(ctx context.Context, indexes bool) (changes, error) {
	ps, err := e.readPool(ctx)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, t := range ps.tables {
		if len(t.others) > 0 {
			continue // refused by checkPool
		}
		if err := e.isolate(ctx, t, indexes); err != nil {
			errs = append(errs, err)
		}
	}
	if e.version >= 150000 {
		for _, v := range ps.views {
			if v.kind != "v" || v.invoker {
				continue
			}
			if _, err := e.pool.Exec(ctx, fmt.Sprintf("ALTER VIEW %s SET (security_invoker = true)", qual(e.s.PoolSchema, v.name))); err != nil {
				errs = append(errs, fmt.Errorf("security_invoker on view %s.%s: %w", e.s.PoolSchema, v.name, err))
			}
		}
	}
	if err := e.checkPool(ps); err != nil {
		errs = append(errs, errors.New(errMessage(err))) // the refusal, without "rpc error: code = …"
	}
	return e.planRLS(ps), joinErrors(errs)
}

// isolateAfterRun ensures the pool's isolation after a migration run,
// whatever its outcome: a migration that committed before a later one
// failed, or before the run was cancelled, may have added a tenant table,
// which must not stay unprotected. After a cancellation it still protects
// the tables and views (not the indexes, which may take long), detached
// from the cancelled context but within a short bound, and logs the
// outcome (the step's result is the context's error).
func (e *env) isolateAfterRun(ctx context.Context) error {
	if ctx.Err() == nil {
		_, err := e.ensureRLS(ctx, true)
		return err
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.s.lockTimeout+10*time.Second)
	defer cancel()
	if _, err := e.ensureRLS(dctx, false); err != nil {
		e.log.Warn("the migration run was cancelled, and isolating the pool tables afterwards failed; the next provision or migrate step does it", "err", scrub(err.Error(), e.secrets))
		return err
	}
	e.log.Info("the migration run was cancelled; the pool tables it may have created are isolated (indexes are left to the next step)")
	return nil
}

// isolate fixes one tenant table's isolation: row level security and the
// policy in one transaction, then, with indexes, the index (CONCURRENTLY,
// so the table stays writable, outside a transaction).
func (e *env) isolate(ctx context.Context, t tenantTable, indexes bool) error {
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
	if !indexes || !t.hasID || t.hasIndex {
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

// multiError is several errors shown as one line.
type multiError []error

func (m multiError) Error() string {
	msgs := make([]string, len(m))
	for i, err := range m {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (m multiError) Unwrap() []error { return m }

// joinErrors is nil, the one error, or a multiError.
func joinErrors(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return multiError(errs)
}
