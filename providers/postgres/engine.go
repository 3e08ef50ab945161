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

// acquire hands the migration engine (or a long statement of the
// provider's) a connection of the main pool. Its release resets the whole
// session before the connection goes back, or destroys the connection if
// that fails; see resetSession.
func (e *env) acquire(ctx context.Context) (*pgx.Conn, func(), error) {
	c, err := e.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	release := func() {
		conn := c.Conn()
		if !conn.IsClosed() {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := resetSession(rctx, conn); err != nil {
				e.log.Warn("could not reset a pooled connection after a migration; closing it", "err", scrub(err.Error(), e.secrets))
				_ = conn.Close(rctx)
			}
			cancel()
		}
		c.Release()
	}
	return c.Conn(), release, nil
}

// resetSession undoes everything a migration may have left on conn's
// session: DISCARD ALL ends SET ROLE and SET SESSION AUTHORIZATION, resets
// every setting to its connection default (the pool's search_path and
// timeouts), releases session advisory locks, drops temporary tables and
// prepared statements, and stops LISTEN. It cannot run in a transaction: a
// connection left in one is refused (the caller closes it). pgx keeps its
// own cache of the statements it prepared on the connection, which DISCARD
// ALL has dropped on the server: DeallocateAll empties that cache too, so
// the next query prepares its statement again instead of failing with
// "prepared statement … does not exist".
func resetSession(ctx context.Context, conn *pgx.Conn) error {
	if st := conn.PgConn().TxStatus(); st != 'I' {
		return fmt.Errorf("connection left in a transaction (status %q)", st)
	}
	if _, err := conn.PgConn().Exec(ctx, "DISCARD ALL").ReadAll(); err != nil {
		return fmt.Errorf("DISCARD ALL: %w", err)
	}
	if err := conn.DeallocateAll(ctx); err != nil {
		return fmt.Errorf("reset the statement cache: %w", err)
	}
	return nil
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

// stateLockdownSQL creates the migration state table of schema if it is
// missing (the engine's definition, migrate.StateTableDDL) and leaves role
// only SELECT on it, so a tenant can read its version but never forge or
// erase it: the default privileges of a tenant schema would give the role
// INSERT, UPDATE and DELETE on a table the engine creates. It takes the
// target's advisory lock first (waiting as long as the caller's context
// allows, like the engine) so it never races the engine's own CREATE, and
// changes privileges only when they are not already right. Run it in a
// transaction; a multi-statement simple query is one.
func (e *env) stateLockdownSQL(schema, role string, key int64) string {
	tbl := qual(schema, stateTable)
	r := ident(role)
	return fmt.Sprintf(`SET LOCAL statement_timeout = 0;
SET LOCAL lock_timeout = 0;
SELECT pg_catalog.pg_advisory_xact_lock(%[1]d);
SET LOCAL statement_timeout = %[2]d;
SET LOCAL lock_timeout = %[3]d;
%[4]s;
DO $attache$BEGIN
IF pg_catalog.has_table_privilege(%[5]s, %[6]s, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
   OR NOT pg_catalog.has_table_privilege(%[5]s, %[6]s, 'SELECT') THEN
  REVOKE ALL ON %[7]s FROM PUBLIC;
  REVOKE ALL ON %[7]s FROM %[8]s;
  GRANT SELECT ON %[7]s TO %[8]s;
END IF;
END$attache$`, key, e.s.statementTimeout.Milliseconds(), e.s.lockTimeout.Milliseconds(),
		migrate.StateTableDDL(schema), literal(role), literal(tbl), tbl, r)
}

// lockDownTenantState runs stateLockdownSQL for tenant t's target in model
// m (bridge: its schema; silo: schema public of its database).
func (e *env) lockDownTenantState(ctx context.Context, m Model, t tenantRef) error {
	tg := e.modelTarget(m, t).t
	sql := e.stateLockdownSQL(tg.Schema, t.name, tg.LockKey)
	if m == Bridge {
		_, err := e.pool.Exec(ctx, sql)
		return err
	}
	return e.withDB(ctx, t.name, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql)
		return err
	})
}

// lockedTarget is tenant t's target in model m whose connections, before
// the engine uses them, get the migration state table created and locked
// down (stateLockdownSQL): whatever the target's version, and before any
// migration of this run, so the tenant role never holds more than SELECT
// on it. For runs that change things only (not Plan's dry runs).
func (e *env) lockedTarget(m Model, t tenantRef) target {
	tg := e.modelTarget(m, t)
	connect := tg.t.Connect
	sql := e.stateLockdownSQL(tg.t.Schema, t.name, tg.t.LockKey)
	tg.t.Connect = func(ctx context.Context) (*pgx.Conn, func(), error) {
		conn, release, err := connect(ctx)
		if err != nil {
			return nil, nil, err
		}
		if _, err := conn.Exec(ctx, sql); err != nil {
			release()
			return nil, nil, fmt.Errorf("restrict the migration state table of schema %s: %w", tg.t.Schema, err)
		}
		return conn, release, nil
	}
	return tg
}
