package local

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

func init() {
	register(action{
		info: &providerv1.ActionInfo{
			Name:    "db.migrate",
			Summary: "apply versioned SQL migrations to the tenant's SQLite database <root>/tenants/<tenant>/app.db",
			Params: []*providerv1.ParamInfo{
				{Name: "migrations", Type: "array<object>", Required: true, Description: "{version (integer > 0, strictly increasing), name, sql}; each runs once, in its own transaction"},
			},
		},
		plan:  planMigrate,
		apply: applyMigrate,
	})
}

// stateTable records applied migrations next to the data.
const stateTable = `CREATE TABLE IF NOT EXISTS attache_schema_migrations (
	version     INTEGER PRIMARY KEY,
	name        TEXT NOT NULL,
	checksum    TEXT NOT NULL,
	applied_at  TEXT NOT NULL,
	duration_ms INTEGER NOT NULL
)`

// migration is one declared migration.
type migration struct {
	field    string // params.migrations[i]
	version  int64
	name     string
	sql      string
	checksum string // hex SHA-256 of sql
}

// applied is one row of the state table.
type applied struct {
	name, checksum string
}

// migrateParams validates db.migrate's parameters.
func migrateParams(e *env, step *providerv1.Step) ([]migration, string, error) {
	p := sdk.NewParams(step.GetParams())
	var ms []migration
	var last int64
	for i, o := range p.Objects("migrations", true) {
		m := migration{
			field:   fmt.Sprintf("params.migrations[%d]", i),
			version: o.Int("version", true),
			name:    o.String("name", true),
			sql:     o.String("sql", true),
		}
		if o.Has("version") && m.version <= last {
			o.Fail("version", "must be greater than the previous migration's (%d), got %d", last, m.version)
		}
		if m.version > last {
			last = m.version
		}
		sum := sha256.Sum256([]byte(m.sql))
		m.checksum = hex.EncodeToString(sum[:])
		ms = append(ms, m)
	}
	if err := p.Err(); err != nil {
		return nil, "", err
	}
	rel := tenantDir(step.GetTenant()) + "/app.db"
	if err := noSymlinks(e.root, "tenant", rel); err != nil {
		return nil, "", err
	}
	return ms, rel, nil
}

// readApplied reads the state table of the database at path, which must
// exist; it opens the database read-only.
func readApplied(ctx context.Context, path string) (map[int64]applied, error) {
	db, err := sql.Open("sqlite", path+"?mode=ro")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	return queryApplied(ctx, db)
}

// queryApplied reads the state table; a missing table reads as empty.
func queryApplied(ctx context.Context, db *sql.DB) (map[int64]applied, error) {
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'attache_schema_migrations'`).Scan(&n); err != nil {
		return nil, fmt.Errorf("read migration state: %w", err)
	}
	out := map[int64]applied{}
	if n == 0 {
		return out, nil
	}
	rows, err := db.QueryContext(ctx, `SELECT version, name, checksum FROM attache_schema_migrations`)
	if err != nil {
		return nil, fmt.Errorf("read migration state: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v int64
		var a applied
		if err := rows.Scan(&v, &a.name, &a.checksum); err != nil {
			return nil, err
		}
		out[v] = a
	}
	return out, rows.Err()
}

// diffMigrations decides each migration's fate against the applied state:
// done with the same checksum is NOOP, done with another checksum is refused,
// a gap below the newest applied version is refused, the rest are CREATE.
func diffMigrations(ms []migration, done map[int64]applied, dbRel string) ([]*providerv1.Change, error) {
	var newest int64
	for v := range done {
		newest = max(newest, v)
	}
	var changes []*providerv1.Change
	for _, m := range ms {
		res := fmt.Sprintf("%s#%d", dbRel, m.version)
		a, ok := done[m.version]
		switch {
		case ok && a.checksum != m.checksum:
			return nil, sdk.FailedPrecondition("%s: migration %d (%s) was applied with checksum %s, the plan's has checksum %s; applied migrations must not change",
				m.field, m.version, a.name, a.checksum, m.checksum)
		case ok:
			changes = append(changes, change(res, providerv1.Operation_OPERATION_NOOP, "migration %d %s already applied", m.version, m.name))
		case m.version < newest:
			return nil, sdk.FailedPrecondition("%s: migration %d (%s) is not applied but %d is; out-of-order migrations are refused",
				m.field, m.version, m.name, newest)
		default:
			changes = append(changes, change(res, providerv1.Operation_OPERATION_CREATE, "apply migration %d %s", m.version, m.name))
		}
	}
	return changes, nil
}

func planMigrate(ctx context.Context, e *env, step *providerv1.Step) ([]*providerv1.Change, error) {
	ms, rel, err := migrateParams(e, step)
	if err != nil {
		return nil, err
	}
	done := map[int64]applied{}
	if _, err := e.root.Lstat(rel); err == nil {
		if done, err = readApplied(ctx, filepath.Join(e.rootDir, rel)); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return diffMigrations(ms, done, rel)
}

func applyMigrate(ctx context.Context, e *env, step *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	ms, rel, err := migrateParams(e, step)
	if err != nil {
		return nil, err
	}
	// Plan first: when everything is applied, the database is not even
	// opened for writing.
	changes, err := planMigrate(ctx, e, step)
	if err != nil {
		return nil, err
	}
	if countChanges(changes) == 0 {
		return succeeded(fmt.Sprintf("tenant %s: all %d migrations already applied", step.GetTenant(), len(ms)), changes), nil
	}
	if err := e.root.MkdirAll(tenantDir(step.GetTenant()), 0o750); err != nil {
		return nil, err
	}
	f, err := e.root.OpenFile(rel, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	_ = f.Close()
	db, err := sql.Open("sqlite", filepath.Join(e.rootDir, rel)+"?_pragma=busy_timeout(10000)&_txlock=immediate")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, stateTable); err != nil {
		return nil, fmt.Errorf("create migration state table: %w", err)
	}
	for i, m := range ms {
		if changes[i].GetOperation() == providerv1.Operation_OPERATION_NOOP {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		sdk.Report(progress, changes[i].GetResource(), fmt.Sprintf("applying migration %d %s", m.version, m.name))
		took, err := runMigration(ctx, db, m)
		if errors.Is(err, ctx.Err()) && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			applied := 0
			for _, c := range changes[:i] {
				if c.GetOperation() == providerv1.Operation_OPERATION_CREATE {
					applied++
				}
			}
			return &providerv1.ApplyResult{
				State: providerv1.StepState_STEP_STATE_FAILED,
				Message: fmt.Sprintf("tenant %s: migration %d %s failed and was rolled back: %v (%d earlier migrations of this step stay applied; a retry resumes here)",
					step.GetTenant(), m.version, m.name, err, applied),
				Changes: changes[:i],
			}, nil
		}
		sdk.Report(progress, changes[i].GetResource(), fmt.Sprintf("applied migration %d %s in %s", m.version, m.name, took.Round(time.Millisecond)))
	}
	return succeeded(fmt.Sprintf("tenant %s: applied %d of %d migrations", step.GetTenant(), countChanges(changes), len(ms)), changes), nil
}

// runMigration runs m and records it in one IMMEDIATE transaction, so a
// concurrent runner waits and then sees it done. A migration that another
// runner applied meanwhile is skipped (or refused on a checksum mismatch).
func runMigration(ctx context.Context, db *sql.DB, m migration) (time.Duration, error) {
	start := time.Now()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback() }()
	var sum string
	err = tx.QueryRowContext(ctx, `SELECT checksum FROM attache_schema_migrations WHERE version = ?`, m.version).Scan(&sum)
	switch {
	case err == nil && sum == m.checksum:
		return 0, nil
	case err == nil:
		return 0, fmt.Errorf("applied meanwhile with checksum %s, not %s", sum, m.checksum)
	case !errors.Is(err, sql.ErrNoRows):
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if _, err := tx.ExecContext(ctx, `INSERT INTO attache_schema_migrations (version, name, checksum, applied_at, duration_ms) VALUES (?, ?, ?, ?, ?)`,
		m.version, m.name, m.checksum, time.Now().UTC().Format(time.RFC3339Nano), took.Milliseconds()); err != nil {
		return 0, err
	}
	return took, tx.Commit()
}
