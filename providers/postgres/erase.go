package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"github.com/jackc/pgx/v5"
)

func init() {
	register(&providerv1.ActionInfo{
		Name:    "tenant.erase",
		Summary: "erase tenants: pool (delete their rows in foreign-key order, one transaction each), bridge (drop schema and role), silo (drop database and role); then prove nothing remains",
		Params: []*providerv1.ParamInfo{
			{Name: "model", Type: "string", Required: true, Description: "pool, bridge or silo"},
			{Name: "tenants", Type: "array<string>", Description: "tenant ids (default: the step's tenant)"},
		},
	}, parseErase, planErase, applyErase)
}

// eraseSpec is a validated tenant.erase step.
type eraseSpec struct {
	model   Model
	tenants []tenantRef
}

func parseErase(e *env, step *providerv1.Step) (*eraseSpec, error) {
	p := sdk.NewParams(step.GetParams())
	spec := &eraseSpec{model: readModel(p)}
	spec.tenants = readTenants(p, &e.s, step, true)
	if err := p.Err(); err != nil {
		return nil, err
	}
	return spec, nil
}

// erasePlan is what tenant.erase will do.
type erasePlan struct {
	cs     changes
	order  []tenantTable               // pool: the tenant tables, children first
	rows   map[string]map[string]int64 // pool: tenant id → table → rows
	exists map[string]bool             // bridge/silo: schema or database by name
	roles  map[string]roleState
	reg    map[string]Model
}

// exportsOf reports whether tenant id has an export directory,
// <export_dir>/<id> (false without export_dir).
func (e *env) exportsOf(id string) (bool, error) {
	if e.s.ExportDir == "" {
		return false, nil
	}
	_, err := os.Lstat(filepath.Join(e.s.ExportDir, id))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("export directory of tenant %s: %w", id, err)
}

// addExportChange lists a tenant's export directory for erasure: its
// exports are full copies of its data.
func (e *env) addExportChange(cs *changes, id string) error {
	if e.s.ExportDir == "" {
		return nil
	}
	has, err := e.exportsOf(id)
	if err != nil {
		return err
	}
	kind, res := filepath.Join(e.s.ExportDir, "*"), filepath.Join(e.s.ExportDir, id)
	if has {
		cs.add(kind, res, opDelete, "delete the exports of tenant %s (%s)", id, res)
	} else {
		cs.add(kind, res, opNoop, "no export of tenant %s", id)
	}
	return nil
}

// removeExports deletes tenant id's export directory, <export_dir>/<id>,
// and everything in it (a symbolic link is removed, not followed).
func (e *env) removeExports(id string) error {
	if e.s.ExportDir == "" {
		return nil
	}
	root, err := os.OpenRoot(e.s.ExportDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete the exports: %w", err)
	}
	defer root.Close()
	if err := root.RemoveAll(id); err != nil {
		return fmt.Errorf("delete the exports in %s: %w", filepath.Join(e.s.ExportDir, id), err)
	}
	return nil
}

// verifyExports says whether any of tenants still has an export
// directory.
func (e *env) verifyExports(tenants []tenantRef) (string, bool, error) {
	var left []string
	for _, t := range tenants {
		has, err := e.exportsOf(t.id)
		if err != nil {
			return "", false, err
		}
		if has {
			left = append(left, filepath.Join(e.s.ExportDir, t.id))
		}
	}
	if len(left) > 0 {
		return fmt.Sprintf("%s remain: %s", count(int64(len(left)), "export directory"), listNames(left)), false, nil
	}
	if len(tenants) == 1 {
		return "no export directory " + filepath.Join(e.s.ExportDir, tenants[0].id), true, nil
	}
	return fmt.Sprintf("no export directory under %s for %s", e.s.ExportDir, listNames(ids(tenants))), true, nil
}

func planErase(ctx context.Context, e *env, spec *eraseSpec) (changes, error) {
	pl, err := e.planErase(ctx, spec)
	if err != nil {
		return nil, err
	}
	return pl.cs, nil
}

func (e *env) planErase(ctx context.Context, spec *eraseSpec) (*erasePlan, error) {
	reg, err := e.registered(ctx, e.pool, ids(spec.tenants))
	if err != nil {
		return nil, err
	}
	if err := checkModels(reg, spec.tenants, spec.model); err != nil {
		return nil, err
	}
	pl := &erasePlan{reg: reg}
	if spec.model == Pool {
		tables, err := tenantTables(ctx, e.pool, e.s.PoolSchema)
		if err != nil {
			return nil, err
		}
		if pl.order, err = e.deleteOrder(ctx, dataTables(tables)); err != nil {
			return nil, err
		}
		if pl.rows, err = e.countTenantRows(ctx, pl.order, ids(spec.tenants)); err != nil {
			return nil, err
		}
		kind := fmt.Sprintf("postgres/%s/%s.*/tenants/*", e.db, e.s.PoolSchema)
		for _, t := range spec.tenants {
			for _, tbl := range pl.order {
				res := fmt.Sprintf("postgres/%s/%s.%s/tenants/%s", e.db, e.s.PoolSchema, tbl.name, t.id)
				if n := pl.rows[t.id][tbl.name]; n > 0 {
					pl.cs.add(kind, res, opDelete, "delete %d rows of tenant %s", n, t.id)
				} else {
					pl.cs.add(kind, res, opNoop, "no rows of tenant %s", t.id)
				}
			}
			e.addUnregisterChange(&pl.cs, t.id, reg)
			if err := e.addExportChange(&pl.cs, t.id); err != nil {
				return nil, err
			}
		}
		return pl, nil
	}
	ns := names(spec.tenants)
	if spec.model == Bridge {
		pl.exists, err = existingSchemas(ctx, e.pool, ns)
	} else {
		pl.exists, err = existingDatabases(ctx, e.pool, ns)
	}
	if err != nil {
		return nil, err
	}
	if pl.roles, err = roleStates(ctx, e.pool, ns, e.s.AppRole); err != nil {
		return nil, err
	}
	for _, t := range spec.tenants {
		kind, res := e.containerResource(spec.model, e.s.NamePrefix+"*"), e.containerResource(spec.model, t.name)
		what := containerWord(spec.model)
		if pl.exists[t.name] {
			pl.cs.add(kind, res, opDelete, "drop %s %s and everything in it", what, t.name)
		} else {
			pl.cs.add(kind, res, opNoop, "no %s %s", what, t.name)
		}
		roleKind, roleRes := fmt.Sprintf("postgres/roles/%s*", e.s.NamePrefix), "postgres/roles/"+t.name
		if pl.roles[t.name].exists {
			pl.cs.add(roleKind, roleRes, opDelete, "drop role %s", t.name)
		} else {
			pl.cs.add(roleKind, roleRes, opNoop, "no role %s", t.name)
		}
		e.addUnregisterChange(&pl.cs, t.id, reg)
		if err := e.addExportChange(&pl.cs, t.id); err != nil {
			return nil, err
		}
	}
	return pl, nil
}

// addUnregisterChange lists a tenant's registry row for erasure.
func (e *env) addUnregisterChange(cs *changes, id string, reg map[string]Model) {
	if _, ok := reg[id]; ok {
		cs.add(e.regKind(), e.regResource(id), opDelete, "unregister tenant %s", id)
	} else {
		cs.add(e.regKind(), e.regResource(id), opNoop, "tenant %s is not registered", id)
	}
}

// deleteOrder orders the pool's tenant tables so that every table comes
// before the tables its foreign keys reference (children first). A cycle
// is refused, naming its tables.
func (e *env) deleteOrder(ctx context.Context, tables []tenantTable) ([]tenantTable, error) {
	byName := map[string]tenantTable{}
	for _, t := range tables {
		byName[t.name] = t
	}
	rows, err := e.pool.Query(ctx, `SELECT DISTINCT ch.relname::text, pa.relname::text FROM pg_constraint c
JOIN pg_class ch ON ch.oid = c.conrelid JOIN pg_namespace chn ON chn.oid = ch.relnamespace
JOIN pg_class pa ON pa.oid = c.confrelid JOIN pg_namespace pan ON pan.oid = pa.relnamespace
WHERE c.contype = 'f' AND c.conrelid <> c.confrelid AND chn.nspname = $1 AND pan.nspname = $1`, e.s.PoolSchema)
	if err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	children := map[string][]string{} // parent → tables referencing it
	var child, parent string
	if _, err := pgx.ForEachRow(rows, []any{&child, &parent}, func() error {
		if _, ok := byName[child]; !ok {
			return nil
		}
		if _, ok := byName[parent]; !ok {
			return nil
		}
		children[parent] = append(children[parent], child)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	// waiting[t]: tables referencing t not yet ordered; t can go once 0.
	waiting := map[string]int{}
	refs := map[string][]string{} // child → its parents
	for p, cs := range children {
		waiting[p] = len(cs)
		for _, c := range cs {
			refs[c] = append(refs[c], p)
		}
	}
	var ready []string
	for _, t := range tables {
		if waiting[t.name] == 0 {
			ready = append(ready, t.name)
		}
	}
	sort.Strings(ready)
	var out []tenantTable
	for len(ready) > 0 {
		n := ready[0]
		ready = ready[1:]
		out = append(out, byName[n])
		var next []string
		for _, p := range refs[n] {
			waiting[p]--
			if waiting[p] == 0 {
				next = append(next, p)
			}
		}
		ready = append(ready, next...)
		sort.Strings(ready)
	}
	if len(out) < len(tables) {
		var cycle []string
		for _, t := range tables {
			if waiting[t.name] > 0 {
				cycle = append(cycle, t.name)
			}
		}
		return nil, sdk.FailedPrecondition("foreign keys among the tenant tables of %s form a cycle (%s): no order deletes children first; make one of them ON DELETE CASCADE or DEFERRABLE and erase by hand",
			e.s.PoolSchema, strings.Join(cycle, ", "))
	}
	return out, nil
}

// countTenantRows counts each tenant's rows in each table, in one
// read-only transaction, with app.tenant_id set to the tenant.
func (e *env) countTenantRows(ctx context.Context, tables []tenantTable, tenants []string) (map[string]map[string]int64, error) {
	out := map[string]map[string]int64{}
	if len(tables) == 0 {
		for _, id := range tenants {
			out[id] = map[string]int64{}
		}
		return out, nil
	}
	q := countSQL(e.s.PoolSchema, tables)
	err := pgx.BeginTxFunc(ctx, e.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		for _, id := range tenants {
			counts, err := countIn(ctx, tx, q, id, len(tables))
			if err != nil {
				return err
			}
			m := make(map[string]int64, len(tables))
			for i, t := range tables {
				m[t.name] = counts[i]
			}
			out[id] = m
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count tenant rows: %w", err)
	}
	return out, nil
}

// countSQL counts the rows of the tenant in app.tenant_id in each table.
func countSQL(schema string, tables []tenantTable) string {
	parts := make([]string, len(tables))
	for i, t := range tables {
		parts[i] = fmt.Sprintf("(SELECT count(*) FROM %s WHERE %s)", qual(schema, t.name), t.tenantFilter())
	}
	return "SELECT " + strings.Join(parts, ", ")
}

// countIn sets app.tenant_id to id in tx and runs countSQL's query.
func countIn(ctx context.Context, tx pgx.Tx, q, id string, n int) ([]int64, error) {
	if _, err := tx.Exec(ctx, setTenantSQL, id); err != nil {
		return nil, err
	}
	counts := make([]int64, n)
	dst := make([]any, n)
	for i := range counts {
		dst[i] = &counts[i]
	}
	if err := tx.QueryRow(ctx, q).Scan(dst...); err != nil {
		return nil, err
	}
	return counts, nil
}

func applyErase(ctx context.Context, e *env, spec *eraseSpec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	pl, err := e.planErase(ctx, spec)
	if err != nil {
		return nil, err
	}
	outputs := map[string]any{"model": string(spec.model), "tenants": len(spec.tenants)}
	var mu sync.Mutex
	done := 0
	err = e.forEach(ctx, len(spec.tenants), func(ctx context.Context, i int) error {
		t := spec.tenants[i]
		var err error
		switch spec.model {
		case Pool:
			err = e.erasePool(ctx, pl, t)
		case Bridge:
			err = e.eraseBridge(ctx, pl, t)
		case Silo:
			err = e.eraseSilo(ctx, pl, t)
		}
		if err == nil {
			// Only once its data is gone from the database: until then an
			// export may be all the tenant has.
			err = e.removeExports(t.id)
		}
		if err != nil {
			return fmt.Errorf("tenant %s: %w", t.id, err)
		}
		mu.Lock()
		done++
		sdk.Report(progress, e.regResource(t.id), fmt.Sprintf("tenant %s erased (%d/%d)", t.id, done, len(spec.tenants)))
		mu.Unlock()
		return nil
	})
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	verification, clean, verr := e.verifyErased(ctx, spec, pl)
	if verr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		verification = "verification query failed: " + verr.Error()
	}
	outputs["verification"] = verification
	if err != nil {
		return failed(fmt.Sprintf("%d of %d tenants erased, then %v; %s", done, len(spec.tenants), err, verification), nil, outputs), nil
	}
	if verr != nil || !clean {
		return failed("erase did not remove everything: "+verification, pl.cs, outputs), nil
	}
	return succeeded(verification, pl.cs, outputs), nil
}

// errRowsRemain: rows of the tenant were still there after the deletes.
var errRowsRemain = errors.New("rows of the tenant remain after the deletes")

// erasePool deletes a pool tenant's rows, children first, and its registry
// row in one transaction with app.tenant_id set, and checks inside it that
// no row of the tenant remains.
func (e *env) erasePool(ctx context.Context, pl *erasePlan, t tenantRef) error {
	return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, setTenantSQL, t.id); err != nil {
			return err
		}
		for _, tbl := range pl.order {
			if _, err := tx.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE %s", qual(e.s.PoolSchema, tbl.name), tbl.tenantFilter())); err != nil {
				return fmt.Errorf("delete from %s.%s: %w", e.s.PoolSchema, tbl.name, err)
			}
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE id = $1", e.regTable()), t.id); err != nil {
			return fmt.Errorf("unregister: %w", err)
		}
		if len(pl.order) == 0 {
			return nil
		}
		counts, err := countIn(ctx, tx, countSQL(e.s.PoolSchema, pl.order), t.id, len(pl.order))
		if err != nil {
			return err
		}
		for i, n := range counts {
			if n != 0 {
				return fmt.Errorf("%w: %d in %s.%s (rolled back)", errRowsRemain, n, e.s.PoolSchema, pl.order[i].name)
			}
		}
		return nil
	})
}

// eraseBridge drops a bridge tenant's schema and role and its registry row
// in one transaction.
func (e *env) eraseBridge(ctx context.Context, pl *erasePlan, t tenantRef) error {
	return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf("DROP SCHEMA IF EXISTS %s CASCADE", ident(t.name))); err != nil {
			return fmt.Errorf("drop schema %s: %w", t.name, err)
		}
		if err := dropRole(ctx, tx, t.name); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE id = $1", e.regTable()), t.id)
		return err
	})
}

// eraseSilo drops a silo tenant's database (disconnecting its sessions),
// then its role and registry row in one transaction.
func (e *env) eraseSilo(ctx context.Context, pl *erasePlan, t tenantRef) error {
	force := " WITH (FORCE)"
	if e.version < 130000 {
		force = ""
	}
	if _, err := e.pool.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s%s", ident(t.name), force)); err != nil {
		return fmt.Errorf("drop database %s: %w", t.name, err)
	}
	return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if err := dropRole(ctx, tx, t.name); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE id = $1", e.regTable()), t.id)
		return err
	})
}

// dropRole drops role name, if it exists, with what it owns and was granted
// in this database.
func dropRole(ctx context.Context, tx pgx.Tx, name string) error {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, name).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return nil
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("DROP OWNED BY %s; DROP ROLE %s", ident(name), ident(name))); err != nil {
		return fmt.Errorf("drop role %s: %w", name, err)
	}
	return nil
}

// verifyErased proves, in a new transaction, that nothing of the tenants
// remains, and that they have no export directory left, and says so in one
// line.
func (e *env) verifyErased(ctx context.Context, spec *eraseSpec, pl *erasePlan) (line string, clean bool, err error) {
	subject := "tenant " + spec.tenants[0].id
	if len(spec.tenants) > 1 {
		subject = fmt.Sprintf("%d tenants (%s)", len(spec.tenants), listNames(ids(spec.tenants)))
	}
	clean = true
	err = pgx.BeginTxFunc(ctx, e.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var regRows int64
		if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE id = ANY($1)", e.regTable()), ids(spec.tenants)).Scan(&regRows); err != nil {
			return err
		}
		reg := "no registry row"
		if regRows > 0 {
			clean = false
			reg = fmt.Sprintf("%d registry rows", regRows)
		}
		switch spec.model {
		case Pool:
			tables, err := tenantTables(ctx, tx, e.s.PoolSchema)
			if err != nil {
				return err
			}
			tables = dataTables(tables)
			var total int64
			if len(tables) > 0 {
				q := countSQL(e.s.PoolSchema, tables)
				for _, t := range spec.tenants {
					counts, err := countIn(ctx, tx, q, t.id, len(tables))
					if err != nil {
						return err
					}
					for _, n := range counts {
						total += n
					}
				}
			}
			if total > 0 {
				clean = false
			}
			line = fmt.Sprintf("%s (pool): %d rows in %d tenant tables of schema %s, %s", subject, total, len(tables), e.s.PoolSchema, reg)
		default:
			ns := names(spec.tenants)
			var containers, roles int64
			q := `SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)`
			if spec.model == Silo {
				q = `SELECT count(*) FROM pg_database WHERE datname = ANY($1)`
			}
			if err := tx.QueryRow(ctx, q, ns).Scan(&containers); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)`, ns).Scan(&roles); err != nil {
				return err
			}
			if containers > 0 || roles > 0 {
				clean = false
			}
			what := containerWord(spec.model)
			catalog := map[Model]string{Bridge: "pg_namespace", Silo: "pg_database"}[spec.model]
			nameList := listNames(ns)
			line = fmt.Sprintf("%s (%s): %s %s (%s), %s %s (pg_roles), %s",
				subject, spec.model, count(containers, what), nameList, catalog, count(roles, "role"), nameList, reg)
		}
		return nil
	})
	if err != nil || e.s.ExportDir == "" {
		return line, clean, err
	}
	exports, ok, err := e.verifyExports(spec.tenants)
	if err != nil {
		return line, false, err
	}
	return line + ", " + exports, clean && ok, nil
}

// count says "no <what>" or "<n> <what>s".
func count(n int64, what string) string {
	switch n {
	case 0:
		return "no " + what
	case 1:
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
