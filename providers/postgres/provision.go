package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/postgres/migrate"
	"attache.dev/attache/providers/sdk"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"
)

func init() {
	register(&providerv1.ActionInfo{
		Name:    "tenant.provision",
		Summary: "create tenants in a tenancy model: pool (registry row; row level security on every tenant table), bridge (schema and role), silo (database and role); then apply the migrations",
		Params: []*providerv1.ParamInfo{
			{Name: "model", Type: "string", Required: true, Description: "pool, bridge or silo"},
			{Name: "tenants", Type: "array<string>", Description: "tenant ids (DNS labels, distinct, at most 100000); default: the step's tenant"},
			{Name: "migrations", Type: "array<object>", Description: "{version (integer > 0, strictly increasing), name, sql}: applied once to the pool schema, or to each new schema or database"},
			{Name: "password_secret", Type: "string", Description: "bridge and silo: a file in config.secrets_dir holding the new tenant role's password ({tenant} is replaced by the tenant id); without it the role has no password"},
			{Name: "metered", Type: "array<string>", Description: "the model's metered tables (replaces the list; Usage reports rows.<table>)"},
		},
	}, parseProvision, planProvision, applyProvision)
}

// provisionSpec is a validated tenant.provision step.
type provisionSpec struct {
	model          Model
	tenants        []tenantRef
	migrations     []migrate.Migration
	passwordSecret string
	metered        []string
	setMetered     bool
}

func parseProvision(e *env, step *providerv1.Step) (*provisionSpec, error) {
	p := sdk.NewParams(step.GetParams())
	spec := &provisionSpec{model: readModel(p)}
	spec.tenants = readTenants(p, &e.s, step, true)
	spec.migrations = readMigrations(p, false)
	spec.passwordSecret = p.String("password_secret", false)
	spec.metered, spec.setMetered = readMetered(p)
	if spec.passwordSecret != "" {
		switch {
		case spec.model == Pool:
			p.Fail("password_secret", "pool tenants have no role of their own (bridge and silo only)")
		case e.s.SecretsDir == "":
			p.Fail("password_secret", "needs config.secrets_dir")
		default:
			if err := checkSecretName(spec.passwordSecret); err != nil {
				p.Fail("password_secret", "%v", err)
			}
		}
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	return spec, nil
}

// tenantPlan is one bridge or silo tenant's state before provisioning.
type tenantPlan struct {
	t          tenantRef
	role       roleState
	container  bool // its schema (bridge) or database (silo) exists
	grants     bool // its rights are as wanted
	member     bool // granted to app_role (true when there is none)
	registered bool
	target     target
	migrate    bool // the engine has work on it
}

// needsSetup reports whether phase one (role, container, grants) has work.
func (tp *tenantPlan) needsSetup() bool {
	return !tp.role.exists || !tp.role.ok || !tp.container || !tp.grants
}

// provisionPlan is what tenant.provision will do.
type provisionPlan struct {
	cs      changes
	tenants []*tenantPlan
	// pool
	poolSchemaMissing bool
	poolTarget        *target
	poolPending       bool
}

func planProvision(ctx context.Context, e *env, spec *provisionSpec) (changes, error) {
	pl, err := e.planProvision(ctx, spec)
	if err != nil {
		return nil, err
	}
	return pl.cs, nil
}

func (e *env) planProvision(ctx context.Context, spec *provisionSpec) (*provisionPlan, error) {
	reg, err := e.registered(ctx, e.pool, ids(spec.tenants))
	if err != nil {
		return nil, err
	}
	if err := checkModels(reg, spec.tenants, spec.model); err != nil {
		return nil, err
	}
	var pl *provisionPlan
	if spec.model == Pool {
		pl, err = e.planPoolProvision(ctx, spec, reg)
	} else {
		pl, err = e.planTenantProvision(ctx, spec, reg)
	}
	if err != nil {
		return nil, err
	}
	if spec.setMetered {
		mc, err := e.planMetered(ctx, spec.model, spec.metered)
		if err != nil {
			return nil, err
		}
		pl.cs = append(pl.cs, mc...)
	}
	return pl, nil
}

// planPoolProvision: the pool schema, the migrations, isolation of every
// tenant table, then the registry rows.
func (e *env) planPoolProvision(ctx context.Context, spec *provisionSpec, reg map[string]Model) (*provisionPlan, error) {
	pl := &provisionPlan{}
	exists, err := existingSchemas(ctx, e.pool, []string{e.s.PoolSchema})
	if err != nil {
		return nil, err
	}
	pl.poolSchemaMissing = !exists[e.s.PoolSchema]
	schemaRes := fmt.Sprintf("postgres/%s/schemas/%s", e.db, e.s.PoolSchema)
	if pl.poolSchemaMissing {
		pl.cs.add(schemaRes, schemaRes, opCreate, "create pool schema %s", e.s.PoolSchema)
	}
	if len(spec.migrations) > 0 {
		t := e.poolTarget()
		pl.poolTarget = &t
		if pl.poolSchemaMissing {
			pl.cs = append(pl.cs, newMigrationChanges(t, spec.migrations)...)
			pl.poolPending = true
		} else {
			res, err := e.runEngine(ctx, []target{t}, spec.migrations, 1, true, nil)
			if err != nil {
				return nil, engineError(err)
			}
			pl.cs = append(pl.cs, migrationChanges([]target{t}, res, spec.migrations, true)...)
			pl.poolPending = res.Pending > 0
		}
	}
	ps, err := e.readPool(ctx)
	if err != nil {
		return nil, err
	}
	if err := e.checkPool(ps); err != nil {
		return nil, err
	}
	if pl.poolPending {
		res := fmt.Sprintf("postgres/%s/%s/rls", e.db, e.s.PoolSchema)
		pl.cs.add(res, res, opUpdate, "after the migrations, isolate every table of %s with a tenant_id column (row level security, policy %s, index on (tenant_id, id))", e.s.PoolSchema, policyName)
	}
	pl.cs = append(pl.cs, e.planRLS(ps)...)
	for _, t := range spec.tenants {
		_, ok := reg[t.id]
		pl.tenants = append(pl.tenants, &tenantPlan{t: t, registered: ok, member: true})
		e.addRegistryChange(&pl.cs, t.id, ok, Pool)
	}
	return pl, nil
}

// addRegistryChange lists a tenant's registry row.
func (e *env) addRegistryChange(cs *changes, id string, registered bool, model Model) {
	if registered {
		cs.add(e.regKind(), e.regResource(id), opNoop, "tenant %s is registered (%s)", id, model)
	} else {
		cs.add(e.regKind(), e.regResource(id), opCreate, "register tenant %s (%s)", id, model)
	}
}

// planTenantProvision: per tenant its role, schema or database and rights,
// then the migrations, then app_role membership and the registry row.
func (e *env) planTenantProvision(ctx context.Context, spec *provisionSpec, reg map[string]Model) (*provisionPlan, error) {
	if err := e.checkAppRole(ctx); err != nil {
		return nil, err
	}
	ns := names(spec.tenants)
	roles, err := roleStates(ctx, e.pool, ns, e.s.AppRole)
	if err != nil {
		return nil, err
	}
	var refused []string
	for _, t := range spec.tenants {
		if st := roles[t.name]; st.exists {
			if why := st.refusal(t, e.s.AppRole); why != "" {
				refused = append(refused, why)
			}
		}
	}
	if n := len(refused); n > 5 {
		refused = append(refused[:5], fmt.Sprintf("and %d more tenants", n-5))
	}
	if len(refused) > 0 {
		return nil, sdk.FailedPrecondition("%s", strings.Join(refused, "; "))
	}
	var containers, grants map[string]bool
	if spec.model == Bridge {
		if containers, err = existingSchemas(ctx, e.pool, ns); err != nil {
			return nil, err
		}
		if grants, err = schemaGrantsOK(ctx, e.pool, ns, ns); err != nil {
			return nil, err
		}
	} else {
		if containers, err = existingDatabases(ctx, e.pool, ns); err != nil {
			return nil, err
		}
		if grants, err = e.siloGrantsOK(ctx, spec.tenants, containers); err != nil {
			return nil, err
		}
	}
	isMember := map[string]bool{}
	if e.s.AppRole != "" {
		if isMember, err = members(ctx, e.pool, e.s.AppRole, ns, e.version); err != nil {
			return nil, err
		}
	}
	pl := &provisionPlan{}
	var existingTargets []target
	var existingIdx []int
	for _, t := range spec.tenants {
		_, registered := reg[t.id]
		tp := &tenantPlan{
			t: t, role: roles[t.name], container: containers[t.name], grants: grants[t.name],
			member: e.s.AppRole == "" || isMember[t.name], registered: registered,
			target: e.modelTarget(spec.model, t),
		}
		if !tp.role.exists && spec.passwordSecret != "" {
			if _, err := e.s.readPassword(spec.passwordSecret, t.id); err != nil {
				return nil, sdk.FailedPrecondition("params.password_secret: %v", err)
			}
		}
		if len(spec.migrations) > 0 && tp.container {
			existingTargets = append(existingTargets, tp.target)
			existingIdx = append(existingIdx, len(pl.tenants))
		}
		tp.migrate = len(spec.migrations) > 0 && !tp.container
		pl.tenants = append(pl.tenants, tp)
	}
	// Migrations of the tenants whose schema or database exists: ask the
	// engine; the others get them all.
	migrationCS := map[int]changes{}
	if len(existingTargets) > 0 {
		res, err := e.runEngine(ctx, existingTargets, spec.migrations, e.s.defaultConcurrency(), true, nil)
		if err != nil {
			return nil, engineError(err)
		}
		for j, tr := range res.Targets {
			i := existingIdx[j]
			pl.tenants[i].migrate = tr.State == migrate.StatePending
			migrationCS[i] = migrationChanges(existingTargets[j:j+1], migrate.Result{Targets: []migrate.TargetResult{tr}}, spec.migrations, true)
		}
	}
	for _, tp := range pl.tenants {
		e.addSetupChanges(&pl.cs, spec, tp)
	}
	for i, tp := range pl.tenants {
		if cs, ok := migrationCS[i]; ok {
			pl.cs = append(pl.cs, cs...)
		} else if tp.migrate {
			pl.cs = append(pl.cs, newMigrationChanges(tp.target, spec.migrations)...)
		}
	}
	for _, tp := range pl.tenants {
		if e.s.AppRole != "" {
			kind := fmt.Sprintf("postgres/roles/%s/members/%s*", e.s.AppRole, e.s.NamePrefix)
			res := fmt.Sprintf("postgres/roles/%s/members/%s", e.s.AppRole, tp.t.name)
			if tp.member {
				pl.cs.add(kind, res, opNoop, "role %s is granted to %s", tp.t.name, e.s.AppRole)
			} else {
				pl.cs.add(kind, res, opCreate, "grant role %s to %s (so it can SET ROLE %s)", tp.t.name, e.s.AppRole, tp.t.name)
			}
		}
		e.addRegistryChange(&pl.cs, tp.t.id, tp.registered, spec.model)
	}
	return pl, nil
}

// addSetupChanges lists a bridge or silo tenant's role, container and
// rights.
func (e *env) addSetupChanges(cs *changes, spec *provisionSpec, tp *tenantPlan) {
	name := tp.t.name
	roleKind := fmt.Sprintf("postgres/roles/%s*", e.s.NamePrefix)
	roleRes := "postgres/roles/" + name
	switch {
	case !tp.role.exists && spec.passwordSecret != "":
		cs.add(roleKind, roleRes, opCreate, "create role %s LOGIN NOINHERIT with the password in secret %s", name, secretFile(spec.passwordSecret, tp.t.id))
	case !tp.role.exists:
		cs.add(roleKind, roleRes, opCreate, "create role %s LOGIN NOINHERIT (no password)", name)
	case !tp.role.ok:
		cs.add(roleKind, roleRes, opUpdate, "make role %s LOGIN NOINHERIT NOSUPERUSER", name)
	default:
		cs.add(roleKind, roleRes, opNoop, "role %s exists", name)
	}
	res, what := e.containerResource(spec.model, name), containerWord(spec.model)
	kind := e.containerResource(spec.model, e.s.NamePrefix+"*")
	if tp.container {
		cs.add(kind, res, opNoop, "%s %s exists", what, name)
	} else {
		cs.add(kind, res, opCreate, "create %s %s", what, name)
	}
	grantsWhat := fmt.Sprintf("role %s alone may use schema %s: USAGE, SELECT/INSERT/UPDATE/DELETE on its tables, USAGE/SELECT on its sequences (now and by default), only SELECT on the migration state table %s; nothing for PUBLIC", name, name, stateTable)
	if spec.model == Silo {
		grantsWhat = fmt.Sprintf("role %s alone may connect to database %s (CONNECT, TEMPORARY; nothing for PUBLIC) and use its schema public: USAGE, SELECT/INSERT/UPDATE/DELETE on tables, USAGE/SELECT on sequences (now and by default), only SELECT on the migration state table %s", name, name, stateTable)
	}
	switch {
	case tp.grants:
		cs.add(kind+"/grants", res+"/grants", opNoop, "%s", grantsWhat)
	case tp.container:
		cs.add(kind+"/grants", res+"/grants", opUpdate, "%s", grantsWhat)
	default:
		cs.add(kind+"/grants", res+"/grants", opCreate, "%s", grantsWhat)
	}
}

// checkAppRole refuses a configured app_role that does not exist, or that
// inherits on a server where a membership cannot be made non-inheriting
// (before PostgreSQL 16): it would hold every tenant's rights at once.
func (e *env) checkAppRole(ctx context.Context) error {
	if e.s.AppRole == "" {
		return nil
	}
	var inherit bool
	err := e.pool.QueryRow(ctx, `SELECT rolinherit FROM pg_roles WHERE rolname = $1`, e.s.AppRole).Scan(&inherit)
	if errors.Is(err, pgx.ErrNoRows) {
		return sdk.FailedPrecondition("config.app_role: role %s does not exist; create it first (NOINHERIT)", e.s.AppRole)
	}
	if err != nil {
		return fmt.Errorf("read app_role: %w", err)
	}
	if inherit && e.version < 160000 {
		return sdk.FailedPrecondition("config.app_role: role %s has INHERIT; on PostgreSQL before 16 it would hold every tenant role's rights at once: ALTER ROLE %s NOINHERIT", e.s.AppRole, e.s.AppRole)
	}
	return nil
}

// siloGrantsOK returns, per silo tenant whose database exists, whether the
// database's and its schema public's rights are as wanted.
func (e *env) siloGrantsOK(ctx context.Context, tenants []tenantRef, exists map[string]bool) (map[string]bool, error) {
	var dbs []string
	for _, t := range tenants {
		if exists[t.name] {
			dbs = append(dbs, t.name)
		}
	}
	out, err := databaseGrantsOK(ctx, e.pool, dbs)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	err = e.forEach(ctx, len(dbs), func(ctx context.Context, i int) error {
		db := dbs[i]
		mu.Lock()
		ok := out[db]
		mu.Unlock()
		if !ok {
			return nil
		}
		return e.withDB(ctx, db, func(conn *pgx.Conn) error {
			in, err := schemaGrantsOK(ctx, conn, []string{"public"}, []string{db})
			if err != nil {
				return fmt.Errorf("database %s: %w", db, err)
			}
			mu.Lock()
			out[db] = in["public"]
			mu.Unlock()
			return nil
		})
	})
	return out, err
}

// forEach runs fn for 0..n-1, at most the default concurrency at once,
// stopping at the first error.
func (e *env) forEach(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(e.s.defaultConcurrency())
	for i := range n {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(gctx, i) })
	}
	return g.Wait()
}

func applyProvision(ctx context.Context, e *env, spec *provisionSpec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	pl, err := e.planProvision(ctx, spec)
	if err != nil {
		return nil, err
	}
	outputs := map[string]any{"model": string(spec.model), "tenants": len(spec.tenants)}
	subject := fmt.Sprintf("%d %s tenant(s) (%s)", len(spec.tenants), spec.model, listNames(ids(spec.tenants)))
	if pl.cs.count() == 0 {
		return succeeded(subject+" already provisioned", pl.cs, outputs), nil
	}
	var fail string
	if spec.model == Pool {
		fail, err = e.applyPoolProvision(ctx, spec, pl, progress)
	} else {
		fail, err = e.applyTenantProvision(ctx, spec, pl, progress)
	}
	if err != nil {
		return nil, err
	}
	if fail != "" {
		return failed(fail, nil, outputs), nil
	}
	if spec.setMetered {
		if err := e.applyMetered(ctx, spec.model, spec.metered); err != nil {
			return failed(fmt.Sprintf("%s provisioned, but the metered tables were not recorded: %v", subject, err), pl.cs, outputs), nil
		}
	}
	return succeeded(fmt.Sprintf("%s provisioned: %d changes", subject, pl.cs.count()), pl.cs, outputs), nil
}

// stepFailure turns an error met while acting into a FAILED message, or
// returns the context's error (the step did not finish; it is retried).
func stepFailure(ctx context.Context, what string, err error) (string, error) {
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	return fmt.Sprintf("%s: %v", what, err), nil
}

func (e *env) applyPoolProvision(ctx context.Context, spec *provisionSpec, pl *provisionPlan, progress sdk.ProgressFunc) (string, error) {
	if pl.poolSchemaMissing {
		if _, err := e.pool.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+ident(e.s.PoolSchema)); err != nil {
			return stepFailure(ctx, "create pool schema "+e.s.PoolSchema, err)
		}
	}
	if pl.poolTarget != nil && pl.poolPending {
		rep := &progressReporter{progress: progress, interval: progressInterval, resource: func(string) string { return pl.poolTarget.resource }}
		res, err := e.runEngine(ctx, []target{*pl.poolTarget}, spec.migrations, 1, false, rep.event)
		if err != nil {
			// The migrations that did commit may have created tenant
			// tables: isolate them before reporting the failure.
			rlsErr := e.isolateAfterRun(ctx)
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			var version int64
			if len(res.Targets) > 0 {
				version = res.Targets[0].To
			}
			msg := fmt.Sprintf("pool migrations failed, no tenant was registered: %v (pool at version %d)", err, version)
			if rlsErr != nil {
				msg += fmt.Sprintf("; isolating the pool tables afterwards failed too: %v", rlsErr)
			} else {
				msg += "; the pool tables are isolated"
			}
			return msg, nil
		}
	}
	if _, err := e.ensureRLS(ctx, true); err != nil {
		return stepFailure(ctx, "isolate the pool tables (no tenant was registered)", err)
	}
	sdk.Report(progress, e.regKind(), fmt.Sprintf("registering %d pool tenant(s)", len(spec.tenants)))
	if err := e.register(ctx, e.pool, ids(spec.tenants), Pool); err != nil {
		return stepFailure(ctx, "register the tenants", err)
	}
	return "", nil
}

func (e *env) applyTenantProvision(ctx context.Context, spec *provisionSpec, pl *provisionPlan, progress sdk.ProgressFunc) (string, error) {
	// 1. Role, schema or database, rights: per tenant, concurrently.
	var setup []*tenantPlan
	for _, tp := range pl.tenants {
		if tp.needsSetup() {
			setup = append(setup, tp)
		}
	}
	var mu sync.Mutex
	done := 0
	err := e.forEach(ctx, len(setup), func(ctx context.Context, i int) error {
		tp := setup[i]
		if err := e.setupTenant(ctx, spec, tp); err != nil {
			return fmt.Errorf("tenant %s: %w", tp.t.id, err)
		}
		mu.Lock()
		defer mu.Unlock()
		done++
		sdk.Report(progress, e.containerResource(spec.model, tp.t.name), fmt.Sprintf("tenant %s: role and %s ready (%d/%d)", tp.t.id, containerWord(spec.model), done, len(setup)))
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return fmt.Sprintf("%d of %d tenants set up, then %v; no tenant of this step was registered, a retry resumes", done, len(setup), err), nil
	}
	// 2. Migrations.
	ok := map[string]bool{}
	for _, tp := range pl.tenants {
		ok[tp.t.id] = true
	}
	var targets []target
	var migrating []*tenantPlan
	for _, tp := range pl.tenants {
		if tp.migrate {
			// The state table is created and locked down on the engine's
			// connection before it migrates (setup did so for new tenants).
			targets = append(targets, e.lockedTarget(spec.model, tp.t))
			migrating = append(migrating, tp)
		}
	}
	var engineErr error
	if len(targets) > 0 {
		byName := map[string]string{}
		for _, t := range targets {
			byName[t.t.Name] = t.resource
		}
		rep := &progressReporter{progress: progress, interval: progressInterval, resource: func(n string) string { return byName[n] }}
		res, err := e.runEngine(ctx, targets, spec.migrations, e.s.defaultConcurrency(), false, rep.event)
		if err != nil && ctx.Err() != nil {
			return "", ctx.Err()
		}
		engineErr = err
		for i, tr := range res.Targets {
			tp := migrating[i]
			if tr.State != migrate.StateMigrated && tr.State != migrate.StateCurrent {
				ok[tp.t.id] = false
			}
		}
	}
	// 3. app_role membership and the registry row, for the tenants that are
	// complete.
	var complete []tenantRef
	var grant []string
	for _, tp := range pl.tenants {
		if !ok[tp.t.id] {
			continue
		}
		complete = append(complete, tp.t)
		if !tp.member {
			grant = append(grant, tp.t.name)
		}
	}
	if err := e.grantToApp(ctx, grant); err != nil {
		return stepFailure(ctx, "grant the tenant roles to "+e.s.AppRole, err)
	}
	if err := e.register(ctx, e.pool, ids(complete), spec.model); err != nil {
		return stepFailure(ctx, "register the tenants", err)
	}
	if engineErr != nil {
		return fmt.Sprintf("migrations failed: %v; %d of %d tenants are provisioned and registered, a retry resumes the others", engineErr, len(complete), len(pl.tenants)), nil
	}
	return "", nil
}

// containerResource names a bridge tenant's schema or a silo tenant's
// database as a resource.
func (e *env) containerResource(m Model, name string) string {
	if m == Silo {
		return "postgres/databases/" + name
	}
	return fmt.Sprintf("postgres/%s/schemas/%s", e.db, name)
}

// containerWord names what holds a tenant's data in model m.
func containerWord(m Model) string {
	if m == Silo {
		return "database"
	}
	return "schema"
}

// setupTenant creates a bridge or silo tenant's role, schema or database
// and rights, each only if missing.
func (e *env) setupTenant(ctx context.Context, spec *provisionSpec, tp *tenantPlan) error {
	name := tp.t.name
	var roleSQL string
	switch {
	case !tp.role.exists:
		roleSQL = fmt.Sprintf("CREATE ROLE %s LOGIN NOINHERIT", ident(name))
		if spec.passwordSecret != "" {
			pw, err := e.s.readPassword(spec.passwordSecret, tp.t.id)
			if err != nil {
				return err
			}
			v, err := scramVerifier(pw)
			if err != nil {
				return err
			}
			roleSQL += " PASSWORD " + literal(v)
		}
	case !tp.role.ok:
		roleSQL = fmt.Sprintf("ALTER ROLE %s LOGIN NOINHERIT NOSUPERUSER", ident(name))
	}
	if spec.model == Bridge {
		return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			if roleSQL != "" {
				if _, err := tx.Exec(ctx, roleSQL); err != nil {
					return fmt.Errorf("role %s: %w", name, err)
				}
			}
			if !tp.container {
				if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+ident(name)); err != nil {
					return fmt.Errorf("schema %s: %w", name, err)
				}
			}
			if !tp.grants {
				if _, err := tx.Exec(ctx, grantSchemaSQL(name, name)); err != nil {
					return fmt.Errorf("rights on schema %s: %w", name, err)
				}
				if _, err := tx.Exec(ctx, e.stateLockdownSQL(name, name, tp.target.t.LockKey)); err != nil {
					return fmt.Errorf("migration state table of schema %s: %w", name, err)
				}
			}
			return nil
		})
	}
	if roleSQL != "" {
		if _, err := e.pool.Exec(ctx, roleSQL); err != nil {
			return fmt.Errorf("role %s: %w", name, err)
		}
	}
	if !tp.container {
		// CREATE DATABASE cannot run in a transaction; the provider's user
		// owns the database.
		if _, err := e.pool.Exec(ctx, "CREATE DATABASE "+ident(name)); err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42P04" { // duplicate_database: created meanwhile
				return fmt.Errorf("database %s: %w", name, err)
			}
		}
	}
	if !tp.grants {
		if _, err := e.pool.Exec(ctx, grantDatabaseSQL(name, name)); err != nil {
			return fmt.Errorf("rights on database %s: %w", name, err)
		}
		return e.withDB(ctx, name, func(conn *pgx.Conn) error {
			return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, grantSchemaSQL("public", name)); err != nil {
					return fmt.Errorf("rights on schema public of database %s: %w", name, err)
				}
				if _, err := tx.Exec(ctx, e.stateLockdownSQL("public", name, tp.target.t.LockKey)); err != nil {
					return fmt.Errorf("migration state table of database %s: %w", name, err)
				}
				return nil
			})
		})
	}
	return nil
}

// grantToApp grants the roles to app_role, non-inheriting where the server
// allows it (PostgreSQL 16+), in chunks.
func (e *env) grantToApp(ctx context.Context, roles []string) error {
	if e.s.AppRole == "" || len(roles) == 0 {
		return nil
	}
	with := ""
	if e.version >= 160000 {
		with = " WITH INHERIT FALSE, SET TRUE"
	}
	for start := 0; start < len(roles); start += 1000 {
		chunk := roles[start:min(start+1000, len(roles))]
		quoted := make([]string, len(chunk))
		for i, r := range chunk {
			quoted[i] = ident(r)
		}
		if _, err := e.pool.Exec(ctx, fmt.Sprintf("GRANT %s TO %s%s", strings.Join(quoted, ", "), ident(e.s.AppRole), with)); err != nil {
			return err
		}
	}
	if e.version < 160000 {
		return nil
	}
	// Granting again changes only the provider's own grant: one made by
	// another grantor that lets app_role inherit the tenant's rights stays.
	bad, err := inheritingGrants(ctx, e.pool, e.s.AppRole, roles)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("app_role %s inherits the rights of %s: revoke those grants (REVOKE <role> FROM %s GRANTED BY <grantor>); the provider grants tenant roles WITH INHERIT FALSE", e.s.AppRole, listNames(bad), e.s.AppRole)
	}
	return nil
}
