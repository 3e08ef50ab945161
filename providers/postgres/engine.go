package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/postgres/migrate"
	"attache.dev/attache/providers/sdk"
	"github.com/jackc/pgx/v5"
)

// acquire hands the migration engine a connection of the main pool; the
// release resets what a migration may have set on the session (SET, SET
// ROLE) before the connection goes back, or destroys it if that fails.
func (e *env) acquire(ctx context.Context) (*pgx.Conn, func(), error) {
	c, err := e.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	release := func() {
		conn := c.Conn()
		if !conn.IsClosed() {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := conn.Exec(rctx, "SET SESSION AUTHORIZATION DEFAULT; RESET ALL"); err != nil {
				_ = conn.Close(rctx)
			}
			cancel()
		}
		c.Release()
	}
	return c.Conn(), release, nil
}

// connectDB opens a connection to database db (a silo tenant's) with the
// provider's credentials and settings.
func (e *env) connectDB(ctx context.Context, db string) (*pgx.Conn, error) {
	cc := e.base.Copy()
	cc.Database = db
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect to database %s: %w", db, err)
	}
	return conn, nil
}

// withDB runs fn on a new connection to database db and closes it.
func (e *env) withDB(ctx context.Context, db string, fn func(conn *pgx.Conn) error) error {
	conn, err := e.connectDB(ctx, db)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = conn.Close(cctx)
		cancel()
	}()
	return fn(conn)
}

// target is one migration target with the names its changes use.
type target struct {
	t        migrate.Target
	resource string // ".../migrations", e.g. postgres/app/tenant_acme/migrations
	kind     string // its pattern, e.g. postgres/app/tenant_*/migrations
}

// poolTarget is the pool model's one target: pool_schema in the main
// database.
func (e *env) poolTarget() target {
	return target{
		t:        migrate.Target{Name: "pool", Schema: e.s.PoolSchema, Connect: e.acquire, LockKey: migrate.KeyFor(e.db, e.s.PoolSchema)},
		resource: fmt.Sprintf("postgres/%s/%s/migrations", e.db, e.s.PoolSchema),
		kind:     fmt.Sprintf("postgres/%s/%s/migrations", e.db, e.s.PoolSchema),
	}
}

// bridgeTarget is a bridge tenant's schema in the main database.
func (e *env) bridgeTarget(t tenantRef) target {
	return target{
		t:        migrate.Target{Name: t.id, Schema: t.name, Connect: e.acquire, LockKey: migrate.KeyFor(e.db, t.name)},
		resource: fmt.Sprintf("postgres/%s/%s/migrations", e.db, t.name),
		kind:     fmt.Sprintf("postgres/%s/%s*/migrations", e.db, e.s.NamePrefix),
	}
}

// siloTarget is schema public of a silo tenant's database.
func (e *env) siloTarget(t tenantRef) target {
	connect := func(ctx context.Context) (*pgx.Conn, func(), error) {
		conn, err := e.connectDB(ctx, t.name)
		if err != nil {
			return nil, nil, err
		}
		return conn, func() {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = conn.Close(cctx)
			cancel()
		}, nil
	}
	return target{
		t:        migrate.Target{Name: t.id, Schema: "public", Connect: connect, LockKey: migrate.KeyFor(t.name, "public")},
		resource: fmt.Sprintf("postgres/%s/public/migrations", t.name),
		kind:     fmt.Sprintf("postgres/%s*/public/migrations", e.s.NamePrefix),
	}
}

// modelTarget is tenant t's target in model m (bridge or silo).
func (e *env) modelTarget(m Model, t tenantRef) target {
	if m == Silo {
		return e.siloTarget(t)
	}
	return e.bridgeTarget(t)
}

// engineOptions are the engine's options for this provider.
func (e *env) engineOptions(concurrency int, dry bool, progress func(migrate.Event)) migrate.Options {
	return migrate.Options{
		Concurrency:      concurrency,
		StatementTimeout: e.s.migrationTimeout,
		LockTimeout:      e.s.lockTimeout,
		Progress:         progress,
		Logger:           e.log,
		DryRun:           dry,
	}
}

// runEngine runs the engine on targets (DryRun: only computes).
func (e *env) runEngine(ctx context.Context, targets []target, ms []migrate.Migration, concurrency int, dry bool, progress func(migrate.Event)) (migrate.Result, error) {
	ts := make([]migrate.Target, len(targets))
	for i, t := range targets {
		ts[i] = t.t
	}
	return migrate.Run(ctx, ts, ms, e.engineOptions(concurrency, dry, progress))
}

// migrationChanges lists, per target, a CREATE for each version applied
// (or pending, in a dry run) and a NOOP for a target that was current.
func migrationChanges(targets []target, res migrate.Result, ms []migrate.Migration, dry bool) changes {
	byVersion := map[int64]string{}
	for _, m := range ms {
		byVersion[m.Version] = m.Name
	}
	var cs changes
	for i, tr := range res.Targets {
		t := targets[i]
		versions := tr.Applied
		if dry {
			versions = tr.Pending
		}
		for _, v := range versions {
			cs.add(fmt.Sprintf("%s/%d", t.kind, v), fmt.Sprintf("%s/%d", t.resource, v), opCreate, "apply migration %d %s", v, byVersion[v])
		}
		if tr.State == migrate.StateCurrent {
			cs.add(t.kind, t.resource, opNoop, "at version %d, nothing pending", tr.To)
		}
	}
	return cs
}

// newMigrationChanges lists every migration as a CREATE for targets that do
// not exist yet (their schema or database is still to be created).
func newMigrationChanges(t target, ms []migrate.Migration) changes {
	var cs changes
	for _, m := range ms {
		cs.add(fmt.Sprintf("%s/%d", t.kind, m.Version), fmt.Sprintf("%s/%d", t.resource, m.Version), opCreate, "apply migration %d %s", m.Version, m.Name)
	}
	return cs
}

// engineError turns an engine refusal met while planning into
// FailedPrecondition; other errors pass.
func engineError(err error) error {
	if err == nil {
		return nil
	}
	if ctxErr := contextError(err); ctxErr != nil {
		return ctxErr
	}
	return sdk.FailedPrecondition("%v", err)
}

// progressReporter turns engine events into progress messages, at most one
// per interval except failures and the last target, which always go out.
type progressReporter struct {
	progress sdk.ProgressFunc
	interval time.Duration
	resource func(target string) string

	mu   sync.Mutex
	last time.Time
}

// progressInterval is the minimum time between two progress messages of a
// migration run (failures are always reported).
const progressInterval = 200 * time.Millisecond

func (r *progressReporter) event(ev migrate.Event) {
	if r.progress == nil {
		return
	}
	finished := ev.Kind == migrate.EventDone || ev.Kind == migrate.EventCurrent || ev.Kind == migrate.EventFailed
	if !finished {
		return
	}
	r.mu.Lock()
	now := time.Now()
	if ev.Kind != migrate.EventFailed && ev.Done != ev.Total && now.Sub(r.last) < r.interval {
		r.mu.Unlock()
		return
	}
	r.last = now
	r.mu.Unlock()
	who := "tenant " + ev.Target
	if ev.Target == "pool" {
		who = "pool"
	}
	var msg string
	if ev.Kind == migrate.EventFailed {
		at := ""
		if ev.Version != 0 {
			at = fmt.Sprintf(" at migration %d %s", ev.Version, ev.Name)
		}
		msg = fmt.Sprintf("%s failed%s: %v (%d/%d targets)", who, at, ev.Err, ev.Done, ev.Total)
	} else {
		msg = fmt.Sprintf("%s at version %d (%d/%d targets)", who, ev.Version, ev.Done, ev.Total)
	}
	r.progress(&providerv1.Progress{Resource: r.resource(ev.Target), Message: msg})
}

// lockDownState leaves a tenant role only SELECT on its migration state
// table (default privileges gave it DML when the engine created it).
func lockDownState(ctx context.Context, q querier, schema, role string) error {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, qual(schema, stateTable)).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return nil
	}
	_, err := q.Exec(ctx, fmt.Sprintf("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM %s; GRANT SELECT ON %s TO %s",
		qual(schema, stateTable), ident(role), qual(schema, stateTable), ident(role)))
	return err
}
