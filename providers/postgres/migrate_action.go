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
// are not registered with its model (with why). With locked, bridge and
// silo targets lock down their migration state table before the engine
// uses them (lockedTarget; for Apply, never for Plan).
func (e *env) migrateTargets(ctx context.Context, spec *migrateSpec, locked bool) ([]target, []string, error) {
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
		if locked {
			targets[i] = e.lockedTarget(spec.model, t)
		} else {
			targets[i] = e.modelTarget(spec.model, t)
		}
	}
	return targets, nil, nil
}

func planMigrate(ctx context.Context, e *env, spec *migrateSpec) (changes, error) {
	targets, missing, err := e.migrateTargets(ctx, spec, false)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		return nil, sdk.FailedPrecondition("%s (provision it first)", listNames(missing))
	}
	var ps poolState
	if spec.model == Pool {
		if ps, err = e.poolTables(ctx); err != nil {
			return nil, err
		}
	}
	res, err := e.runEngine(ctx, targets, spec.migrations, spec.concurrency, true, nil)
	if err != nil {
		return nil, engineError(err)
	}
	cs := migrationChanges(targets, res, spec.migrations, true)
	if spec.model == Pool {
		cs = append(cs, e.poolRLSChanges(res.Pending > 0, ps)...)
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

// poolTables reads the pool's isolation and refuses what the provider
// cannot make safe (checkPool).
func (e *env) poolTables(ctx context.Context) (poolState, error) {
	ps, err := e.readPool(ctx)
	if err != nil {
		return poolState{}, err
	}
	return ps, e.checkPool(ps)
}

// poolRLSChanges lists the pool's isolation work around a migration run:
// the tables the migrations may add (when they ran or will run), and each
// tenant table and view that existed before.
func (e *env) poolRLSChanges(migrated bool, before poolState) changes {
	var cs changes
	if migrated {
		res := fmt.Sprintf("postgres/%s/%s/rls", e.db, e.s.PoolSchema)
		cs.add(res, res, opUpdate, "after the migrations, isolate every table of %s with a tenant_id column (row level security, policy %s, index on (tenant_id, id))", e.s.PoolSchema, policyName)
	}
	return append(cs, e.planRLS(before)...)
}

func applyMigrate(ctx context.Context, e *env, spec *migrateSpec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	targets, missing, err := e.migrateTargets(ctx, spec, true)
	if err != nil {
		return nil, err
	}
	version := spec.migrations[len(spec.migrations)-1].Version
	if len(missing) > 0 {
		return failed(fmt.Sprintf("%s; nothing was migrated (provision it first)", listNames(missing)), nil, nil), nil
	}
	var before poolState
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
	// Pool: whatever the outcome, a migration that committed may have added
	// a tenant table; isolate it now.
	var rlsErr error
	if spec.model == Pool {
		rlsErr = e.isolateAfterRun(ctx)
	}
	if ctx.Err() != nil && (runErr != nil || rlsErr != nil) {
		return nil, ctx.Err()
	}
	// Bridge and silo: every target the engine reached had its state table
	// locked down first (lockedTarget); do the targets a halted run did not
	// reach too.
	var lockErr error
	if spec.model != Pool {
		var rest []tenantRef
		for _, tr := range res.Targets {
			if tr.State == migrate.StateNotStarted {
				rest = append(rest, tenantRef{id: tr.Target, name: tenantName(e.s.NamePrefix, tr.Target)})
			}
		}
		lockErr = e.forEach(ctx, len(rest), func(ctx context.Context, i int) error {
			if err := e.lockDownTenantState(ctx, spec.model, rest[i]); err != nil {
				return fmt.Errorf("tenant %s: restrict the migration state table: %w", rest[i].id, err)
			}
			return nil
		})
		if lockErr != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	cs := migrationChanges(targets, res, spec.migrations, false)
	outputs := map[string]any{
		"targets": len(targets), "migrated": res.Migrated, "current": res.Current,
		"failed": res.Failed, "not_started": res.NotStarted, "version": version,
	}
	counts := fmt.Sprintf("%d targets: %d migrated, %d already current, %d failed, %d not started",
		len(targets), res.Migrated, res.Current, res.Failed, res.NotStarted)
	if runErr != nil {
		msg := fmt.Sprintf("%v; %s; a rerun resumes", runErr, counts)
		if rlsErr != nil {
			msg += fmt.Sprintf("; isolating the pool tables afterwards failed too: %v", rlsErr)
		} else if spec.model == Pool {
			msg += "; the pool tables are isolated"
		}
		if lockErr != nil {
			msg += fmt.Sprintf("; %v", lockErr)
		}
		return failed(msg, cs, outputs), nil
	}
	if spec.model == Pool {
		cs = append(cs, e.poolRLSChanges(res.Migrated > 0, before)...)
		if rlsErr != nil {
			return failed(fmt.Sprintf("migrated (%s), then isolating the pool tables failed: %v", counts, rlsErr), cs, outputs), nil
		}
	}
	if lockErr != nil {
		return failed(fmt.Sprintf("migrated (%s), then %v", counts, lockErr), cs, outputs), nil
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
