package postgres

import (
	"context"
	"fmt"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/postgres/migrate"
	"attache.dev/attache/providers/sdk"
)

func init() {
	register(&providerv1.ActionInfo{
		Name:    "migrate",
		Summary: "apply versioned SQL migrations to every target of a model (the pool schema once; each bridge schema; each silo database) under a concurrency cap, halting at the first failure",
		Params: []*providerv1.ParamInfo{
			{Name: "model", Type: "string", Required: true, Description: "pool, bridge or silo"},
			{Name: "tenants", Type: "array<string>", Description: "bridge and silo: only these registered tenants (default: every tenant registered with the model); ignored for pool"},
			{Name: "migrations", Type: "array<object>", Required: true, Description: "{version (integer > 0, strictly increasing), name, sql}; each runs once per target, in its own transaction"},
			{Name: "concurrency", Type: "number", Description: "targets migrated at once, 1..config.max_connections (default min(8, max_connections))"},
			{Name: "metered", Type: "array<string>", Description: "the model's metered tables (replaces the list)"},
		},
	}, parseMigrate, planMigrate, applyMigrate)
}

// migrateSpec is a validated migrate step.
type migrateSpec struct {
	model       Model
	tenants     []tenantRef // nil: every registered tenant of the model
	migrations  []migrate.Migration
	concurrency int
	metered     []string
	setMetered  bool
}

func parseMigrate(e *env, step *providerv1.Step) (*migrateSpec, error) {
	p := sdk.NewParams(step.GetParams())
	spec := &migrateSpec{model: readModel(p)}
	spec.tenants = readTenants(p, &e.s, step, false)
	spec.migrations = readMigrations(p, true)
	spec.concurrency = e.s.defaultConcurrency()
	if p.Has("concurrency") {
		n := p.Int("concurrency", false)
		if n < 1 || n > int64(e.s.MaxConnections) {
			p.Fail("concurrency", "must be between 1 and config.max_connections (%d), got %d", e.s.MaxConnections, n)
		}
		spec.concurrency = int(n)
	}
	spec.metered, spec.setMetered = readMetered(p)
	if err := p.Err(); err != nil {
		return nil, err
	}
	return spec, nil
}

// migrateTargets returns the step's targets, or the tenants it names that
// are not registered with its model (with why).
func (e *env) migrateTargets(ctx context.Context, spec *migrateSpec) ([]target, []string, error) {
	if spec.model == Pool {
		return []target{e.poolTarget()}, nil, nil
	}
	tenants := spec.tenants
	if tenants == nil {
		all, _, err := e.registeredAll(ctx, e.pool, spec.model)
		if err != nil {
			return nil, nil, err
		}
		for _, id := range all {
			tenants = append(tenants, tenantRef{id: id, name: tenantName(e.s.NamePrefix, id)})
		}
	} else {
		reg, err := e.registered(ctx, e.pool, ids(tenants))
		if err != nil {
			return nil, nil, err
		}
		var missing []string
		for _, t := range tenants {
			switch m, ok := reg[t.id]; {
			case !ok:
				missing = append(missing, fmt.Sprintf("%s: tenant %s is not registered", t.field, t.id))
			case m != spec.model:
				missing = append(missing, fmt.Sprintf("%s: tenant %s is registered with model %s, not %s", t.field, t.id, m, spec.model))
			}
		}
		if len(missing) > 0 {
			return nil, missing, nil
		}
	}
	targets := make([]target, len(tenants))
	for i, t := range tenants {
		targets[i] = e.modelTarget(spec.model, t)
	}
	return targets, nil, nil
}

func planMigrate(ctx context.Context, e *env, spec *migrateSpec) (changes, error) {
	targets, missing, err := e.migrateTargets(ctx, spec)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		return nil, sdk.FailedPrecondition("%s (provision it first)", listNames(missing))
	}
	var tables []tenantTable
	if spec.model == Pool {
		if tables, err = e.poolTables(ctx); err != nil {
			return nil, err
		}
	}
	res, err := e.runEngine(ctx, targets, spec.migrations, spec.concurrency, true, nil)
	if err != nil {
		return nil, engineError(err)
	}
	cs := migrationChanges(targets, res, spec.migrations, true)
	if spec.model == Pool {
		cs = append(cs, e.poolRLSChanges(res.Pending > 0, tables)...)
	}
	if spec.setMetered {
		mc, err := e.planMetered(ctx, spec.model, spec.metered)
		if err != nil {
			return nil, err
		}
		cs = append(cs, mc...)
	}
	return cs, nil
}

// poolTables reads the pool's tenant tables and refuses extra permissive
// policies.
func (e *env) poolTables(ctx context.Context) ([]tenantTable, error) {
	tables, err := tenantTables(ctx, e.pool, e.s.PoolSchema)
	if err != nil {
		return nil, err
	}
	return tables, checkPolicies(e.s.PoolSchema, tables)
}

// poolRLSChanges lists the pool's isolation work around a migration run:
// the tables the migrations may add (when they ran or will run), and each
// tenant table that existed before.
func (e *env) poolRLSChanges(migrated bool, before []tenantTable) changes {
	var cs changes
	if migrated {
		res := fmt.Sprintf("postgres/%s/%s/rls", e.db, e.s.PoolSchema)
		cs.add(res, res, opUpdate, "after the migrations, isolate every table of %s with a tenant_id column (row level security, policy %s, index on (tenant_id, id))", e.s.PoolSchema, policyName)
	}
	return append(cs, e.planRLS(before)...)
}

func applyMigrate(ctx context.Context, e *env, spec *migrateSpec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	targets, missing, err := e.migrateTargets(ctx, spec)
	if err != nil {
		return nil, err
	}
	version := spec.migrations[len(spec.migrations)-1].Version
	if len(missing) > 0 {
		return failed(fmt.Sprintf("%s; nothing was migrated (provision it first)", listNames(missing)), nil, nil), nil
	}
	var before []tenantTable
	if spec.model == Pool {
		if before, err = e.poolTables(ctx); err != nil {
			return nil, err
		}
	}
	byName := make(map[string]string, len(targets))
	for _, t := range targets {
		byName[t.t.Name] = t.resource
	}
	rep := &progressReporter{progress: progress, interval: progressInterval, resource: func(n string) string { return byName[n] }}
	sdk.Report(progress, "", fmt.Sprintf("migrating %d %s targets to version %d, %d at a time", len(targets), spec.model, version, spec.concurrency))
	res, runErr := e.runEngine(ctx, targets, spec.migrations, spec.concurrency, false, rep.event)
	if runErr != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	cs := migrationChanges(targets, res, spec.migrations, false)
	outputs := map[string]any{
		"targets": len(targets), "migrated": res.Migrated, "current": res.Current,
		"failed": res.Failed, "not_started": res.NotStarted, "version": version,
	}
	counts := fmt.Sprintf("%d targets: %d migrated, %d already current, %d failed, %d not started",
		len(targets), res.Migrated, res.Current, res.Failed, res.NotStarted)
	// The engine created the state table where a target had none: leave the
	// tenant role only SELECT on it.
	if spec.model != Pool {
		for i, tr := range res.Targets {
			if tr.From != 0 || tr.State == migrate.StateNotStarted || tr.State == migrate.StateCurrent {
				continue
			}
			t := tenantRef{id: tr.Target, name: tenantName(e.s.NamePrefix, tr.Target)}
			if err := e.lockDownTenantState(ctx, spec.model, t); err != nil && runErr == nil {
				runErr = fmt.Errorf("%s: restrict the migration state table: %w", targets[i].resource, err)
			}
		}
	}
	if runErr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return failed(fmt.Sprintf("%v; %s; a rerun resumes", runErr, counts), cs, outputs), nil
	}
	if spec.model == Pool {
		cs = append(cs, e.poolRLSChanges(res.Migrated > 0, before)...)
		if _, err := e.ensureRLS(ctx); err != nil {
			msg, err := stepFailure(ctx, fmt.Sprintf("migrated (%s), then isolating the pool tables failed", counts), err)
			if err != nil {
				return nil, err
			}
			return failed(msg, cs, outputs), nil
		}
	}
	if spec.setMetered {
		mc, err := e.planMetered(ctx, spec.model, spec.metered)
		if err != nil {
			return nil, err
		}
		if err := e.applyMetered(ctx, spec.model, spec.metered); err != nil {
			return failed(fmt.Sprintf("migrated (%s), but the metered tables were not recorded: %v", counts, err), cs, outputs), nil
		}
		cs = append(cs, mc...)
	}
	return succeeded(fmt.Sprintf("%d targets at version %d: %d migrated, %d already current", len(targets), version, res.Migrated, res.Current), cs, outputs), nil
}
