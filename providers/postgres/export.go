package postgres

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"github.com/jackc/pgx/v5"
)

func init() {
	register(&providerv1.ActionInfo{
		Name:    "tenant.export",
		Summary: "export all of one tenant's data from one consistent snapshot as CSV files with a manifest (row counts, SHA-256) under config.export_dir/<tenant>/<plan_id>-<step_id>/",
		Params: []*providerv1.ParamInfo{
			{Name: "model", Type: "string", Required: true, Description: "pool, bridge or silo"},
			{Name: "tenant", Type: "string", Description: "the tenant to export (default: the step's tenant)"},
		},
	}, parseExport, planExport, applyExport)
}

// ManifestFile is the name of an export's manifest.
const ManifestFile = "manifest.json"

// Manifest describes one export.
type Manifest struct {
	Tenant     string          `json:"tenant"`
	Model      string          `json:"model"`
	ExportedAt time.Time       `json:"exported_at"`
	Tables     []ManifestTable `json:"tables"`
}

// ManifestTable is one exported table.
type ManifestTable struct {
	Schema string `json:"schema"`
	Table  string `json:"table"`
	File   string `json:"file"`
	Rows   int64  `json:"rows"`
	SHA256 string `json:"sha256"`
}

var pathSafeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// exportSpec is a validated tenant.export step.
type exportSpec struct {
	model  Model
	tenant tenantRef
	dir    string // <plan_id>-<step_id>, below <export_dir>/<tenant>
}

func parseExport(e *env, step *providerv1.Step) (*exportSpec, error) {
	p := sdk.NewParams(step.GetParams())
	spec := &exportSpec{model: readModel(p)}
	id, field := step.GetTenant(), "tenant"
	if p.Has("tenant") {
		id, field = p.String("tenant", true), p.Field("tenant")
	}
	if err := checkTenant(e.s.NamePrefix, id); err != nil {
		p.FailPath(field, "%v", err)
	}
	spec.tenant = tenantRef{id: id, name: tenantName(e.s.NamePrefix, id), field: field}
	if !pathSafeRE.MatchString(step.GetPlanId()) {
		p.FailPath("plan_id", "names the export directory: must match %s, got %q", pathSafeRE, step.GetPlanId())
	}
	if !pathSafeRE.MatchString(step.GetId()) {
		p.FailPath("id", "names the export directory: must match %s, got %q", pathSafeRE, step.GetId())
	}
	spec.dir = step.GetPlanId() + "-" + step.GetId()
	if err := p.Err(); err != nil {
		return nil, err
	}
	return spec, nil
}

// path is the export's final directory.
func (e *env) exportPath(spec *exportSpec) string {
	return filepath.Join(e.s.ExportDir, spec.tenant.id, spec.dir)
}

// exportTable is one table an export copies.
type exportTable struct {
	schema, table string
	order         []string     // primary key columns, for a stable row order
	pool          *tenantTable // pool: the tenant table (its rows are filtered)
}

// checkExport refuses an export the configuration or the registry does not
// allow.
func (e *env) checkExport(ctx context.Context, spec *exportSpec) error {
	if e.s.ExportDir == "" {
		return sdk.FailedPrecondition("config.export_dir is not set; tenant.export needs it")
	}
	reg, err := e.registered(ctx, e.pool, []string{spec.tenant.id})
	if err != nil {
		return err
	}
	switch m, ok := reg[spec.tenant.id]; {
	case !ok:
		return sdk.FailedPrecondition("%s: tenant %s is not registered", spec.tenant.field, spec.tenant.id)
	case m != spec.model:
		return sdk.FailedPrecondition("%s: tenant %s is registered with model %s, not %s", spec.tenant.field, spec.tenant.id, m, spec.model)
	}
	return nil
}

// exported reports whether the export's directory holds a manifest.
func (e *env) exported(spec *exportSpec) (bool, error) {
	_, err := os.Lstat(filepath.Join(e.exportPath(spec), ManifestFile))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		if _, derr := os.Lstat(e.exportPath(spec)); derr == nil {
			return false, sdk.FailedPrecondition("%s exists without %s; move it away", e.exportPath(spec), ManifestFile)
		}
		return false, nil
	}
	return false, err
}

func planExport(ctx context.Context, e *env, spec *exportSpec) (changes, error) {
	if err := e.checkExport(ctx, spec); err != nil {
		return nil, err
	}
	path := e.exportPath(spec)
	kind := filepath.Join(e.s.ExportDir, "*")
	done, err := e.exported(spec)
	if err != nil {
		return nil, err
	}
	var cs changes
	if done {
		cs.add(kind, path, opNoop, "tenant %s was exported to %s", spec.tenant.id, path)
		return cs, nil
	}
	var n int
	err = e.inSnapshot(ctx, spec, func(tx pgx.Tx) error {
		tables, err := e.exportTables(ctx, tx, spec)
		n = len(tables)
		return err
	})
	if err != nil {
		return nil, err
	}
	cs.add(kind, path, opCreate, "export %d tables of tenant %s (%s) as CSV with %s", n, spec.tenant.id, spec.model, ManifestFile)
	return cs, nil
}

// inSnapshot runs fn in one REPEATABLE READ READ ONLY transaction on the
// tenant's database, with app.tenant_id set to the tenant.
func (e *env) inSnapshot(ctx context.Context, spec *exportSpec, fn func(tx pgx.Tx) error) error {
	run := func(b interface {
		BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
	}) error {
		return pgx.BeginTxFunc(ctx, b, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, setTenantSQL, spec.tenant.id); err != nil {
				return err
			}
			return fn(tx)
		})
	}
	if spec.model == Silo {
		return e.withDB(ctx, spec.tenant.name, func(conn *pgx.Conn) error { return run(conn) })
	}
	return run(e.pool)
}

// exportTables lists the tables of the tenant: pool, its tenant tables;
// bridge, every table of its schema; silo, every table of every
// non-system schema of its database. Partitions are exported with their
// parent.
func (e *env) exportTables(ctx context.Context, tx pgx.Tx, spec *exportSpec) ([]exportTable, error) {
	var where string
	var args []any
	switch spec.model {
	case Pool:
		where, args = "n.nspname = $1", []any{e.s.PoolSchema}
	case Bridge:
		where, args = "n.nspname = $1", []any{spec.tenant.name}
	case Silo:
		where = "n.nspname NOT IN ('information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
	}
	rows, err := tx.Query(ctx, `SELECT n.nspname::text, c.relname::text,
  ARRAY(SELECT a.attname::text FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
        WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND `+where+`
ORDER BY 1, 2`, args...)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	var out []exportTable
	var t exportTable
	if _, err := pgx.ForEachRow(rows, []any{&t.schema, &t.table, &t.order}, func() error {
		out = append(out, t)
		t = exportTable{}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	if spec.model != Pool {
		return out, nil
	}
	tenant, err := tenantTables(ctx, tx, e.s.PoolSchema)
	if err != nil {
		return nil, err
	}
	byName := map[string]tenantTable{}
	for _, tt := range dataTables(tenant) {
		byName[tt.name] = tt
	}
	var pool []exportTable
	for _, t := range out {
		if tt, ok := byName[t.table]; ok {
			t.pool = &tt
			pool = append(pool, t)
		}
	}
	return pool, nil
}

// fileName is a table's CSV file name: schema.table.csv, with characters
// other than letters, digits, '_' and '-' replaced (and a hash added so
// names stay distinct).
func fileName(schema, table string) string {
	safe := func(s string) string {
		out := strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
				return r
			}
			return '_'
		}, s)
		if out != s || out == "" {
			sum := sha256.Sum256([]byte(s))
			out += "-" + hex.EncodeToString(sum[:4])
		}
		return out
	}
	return safe(schema) + "." + safe(table) + ".csv"
}

func applyExport(ctx context.Context, e *env, spec *exportSpec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	cs, err := planExport(ctx, e, spec)
	if err != nil {
		return nil, err
	}
	path := e.exportPath(spec)
	if cs.count() == 0 {
		out, err := readExport(path)
		if err != nil {
			return nil, err
		}
		return succeeded(fmt.Sprintf("tenant %s was already exported to %s", spec.tenant.id, path), cs, out), nil
	}
	m, err := e.writeExport(ctx, spec, progress)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return failed(fmt.Sprintf("export of tenant %s failed (nothing was left in %s): %v", spec.tenant.id, e.s.ExportDir, err), nil, nil), nil
	}
	out, err := readExport(path)
	if err != nil {
		return nil, err
	}
	return succeeded(fmt.Sprintf("tenant %s (%s) exported to %s: %d tables", spec.tenant.id, spec.model, path, len(m.Tables)), cs, out), nil
}

// readExport returns the outputs of the export in dir, from its manifest.
func readExport(dir string) (map[string]any, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	var rows int64
	for _, t := range m.Tables {
		rows += t.Rows
	}
	sum := sha256.Sum256(b)
	return map[string]any{
		"path":            dir,
		"tables":          len(m.Tables),
		"rows":            rows,
		"manifest_sha256": hex.EncodeToString(sum[:]),
		"verification":    fmt.Sprintf("exported %d rows in %d tables; each file's row count equals the table's count in the same snapshot", rows, len(m.Tables)),
	}, nil
}

// writeExport copies the tenant's tables into a temporary directory below
// <export_dir>/<tenant> (0700; files 0600), checks each file's row count
// against the table's count in the same snapshot, writes the manifest and
// renames the directory into place.
func (e *env) writeExport(ctx context.Context, spec *exportSpec, progress sdk.ProgressFunc) (*Manifest, error) {
	if err := os.MkdirAll(e.s.ExportDir, 0o700); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(e.s.ExportDir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	tenantDir := spec.tenant.id
	if err := root.Mkdir(tenantDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	// Leftovers of an attempt that died halfway.
	tmpPrefix := ".tmp-" + spec.dir + "-"
	if ents, err := fs.ReadDir(root.FS(), tenantDir); err == nil {
		for _, d := range ents {
			if strings.HasPrefix(d.Name(), tmpPrefix) {
				_ = root.RemoveAll(tenantDir + "/" + d.Name())
			}
		}
	}
	tmp := tenantDir + "/" + tmpPrefix + rand.Text()[:8]
	if err := root.Mkdir(tmp, 0o700); err != nil {
		return nil, err
	}
	keep := false
	defer func() {
		if !keep {
			_ = root.RemoveAll(tmp)
		}
	}()
	m := &Manifest{Tenant: spec.tenant.id, Model: string(spec.model)}
	err = e.inSnapshot(ctx, spec, func(tx pgx.Tx) error {
		m.ExportedAt = time.Now().UTC().Truncate(time.Second)
		tables, err := e.exportTables(ctx, tx, spec)
		if err != nil {
			return err
		}
		for i, t := range tables {
			mt, err := copyTable(ctx, tx, root, tmp, t)
			if err != nil {
				return fmt.Errorf("table %s.%s: %w", t.schema, t.table, err)
			}
			m.Tables = append(m.Tables, mt)
			sdk.Report(progress, e.exportPath(spec), fmt.Sprintf("exported %s.%s: %d rows (%d/%d tables)", t.schema, t.table, mt.Rows, i+1, len(tables)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if m.Tables == nil {
		m.Tables = []ManifestTable{}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeSynced(root, tmp+"/"+ManifestFile, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	}); err != nil {
		return nil, err
	}
	if err := syncDir(root, tmp); err != nil {
		return nil, err
	}
	if err := root.Rename(tmp, tenantDir+"/"+spec.dir); err != nil {
		return nil, err
	}
	keep = true
	return m, syncDir(root, tenantDir)
}

// copyTable copies one table (pool: the tenant's rows) as CSV with a
// header to a new 0600 file in dir, and checks that COPY wrote as many rows
// as count(*) sees in the same snapshot.
func copyTable(ctx context.Context, tx pgx.Tx, root *os.Root, dir string, t exportTable) (ManifestTable, error) {
	mt := ManifestTable{Schema: t.schema, Table: t.table, File: fileName(t.schema, t.table)}
	from := qual(t.schema, t.table)
	where := ""
	if t.pool != nil {
		where = " WHERE " + t.pool.tenantFilter()
	}
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+from+where).Scan(&mt.Rows); err != nil {
		return mt, err
	}
	query := "SELECT * FROM " + from + where
	if len(t.order) > 0 {
		cols := make([]string, len(t.order))
		for i, c := range t.order {
			cols[i] = ident(c)
		}
		query += " ORDER BY " + strings.Join(cols, ", ")
	}
	h := sha256.New()
	var copied int64
	err := writeSynced(root, dir+"/"+mt.File, func(w io.Writer) error {
		tag, err := tx.Conn().PgConn().CopyTo(ctx, io.MultiWriter(w, h), "COPY ("+query+") TO STDOUT WITH (FORMAT csv, HEADER)")
		copied = tag.RowsAffected()
		return err
	})
	if err != nil {
		return mt, err
	}
	if copied != mt.Rows {
		return mt, fmt.Errorf("COPY wrote %d rows, count(*) in the same snapshot says %d", copied, mt.Rows)
	}
	mt.SHA256 = hex.EncodeToString(h.Sum(nil))
	return mt, nil
}

// writeSynced creates name (0600, must not exist) below root, fills it with
// write and syncs it.
func writeSynced(root *os.Root, name string, write func(w io.Writer) error) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o600); err != nil { // the umask may have narrowed it, never widened: make it exact
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir syncs directory name below root.
func syncDir(root *os.Root, name string) error {
	d, err := root.Open(name)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
