package postgres

import (
	"fmt"
	"regexp"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/postgres/migrate"
	"attache.dev/attache/providers/sdk"
)

// tenantRef is one tenant a step names: its id, PostgreSQL name and the
// field it came from (for errors).
type tenantRef struct {
	id, name, field string
}

// readModel reads the required model parameter.
func readModel(p *sdk.Params) Model {
	m := Model(p.String("model", true))
	switch m {
	case Pool, Bridge, Silo, "":
	default:
		p.Fail("model", "must be pool, bridge or silo, got %q", m)
	}
	return m
}

// readTenants reads the tenants parameter: a non-empty list of distinct
// tenant ids, each valid with the configured prefix. Absent, it is the
// step's tenant (field "tenant") if defaultToStep, else nil.
func readTenants(p *sdk.Params, s *settings, step *providerv1.Step, defaultToStep bool) []tenantRef {
	ids := p.Strings("tenants", false) // nil: absent, null or not a list
	if ids == nil {
		if p.Has("tenants") || !defaultToStep {
			return nil
		}
		id := step.GetTenant()
		if err := checkTenant(s.NamePrefix, id); err != nil {
			p.FailPath("tenant", "%v", err)
			return nil
		}
		return []tenantRef{{id: id, name: tenantName(s.NamePrefix, id), field: "tenant"}}
	}
	switch {
	case len(ids) == 0:
		p.Fail("tenants", "must not be empty (leave it out for the default)")
		return nil
	case len(ids) > maxTenants:
		p.Fail("tenants", "at most %d tenants per step, got %d", maxTenants, len(ids))
		return nil
	}
	seen := make(map[string]int, len(ids))
	out := make([]tenantRef, 0, len(ids))
	for i, id := range ids {
		field := fmt.Sprintf("%s[%d]", p.Field("tenants"), i)
		if err := checkTenant(s.NamePrefix, id); err != nil {
			p.FailPath(field, "%v", err)
			continue
		}
		if j, dup := seen[id]; dup {
			p.FailPath(field, "%q is listed twice (also at index %d)", id, j)
			continue
		}
		seen[id] = i
		out = append(out, tenantRef{id: id, name: tenantName(s.NamePrefix, id), field: field})
	}
	return out
}

var migrationNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,99}$`)

// readMigrations reads the migrations parameter: {version, name, sql}
// objects with versions > 0 strictly increasing.
func readMigrations(p *sdk.Params, required bool) []migrate.Migration {
	var out []migrate.Migration
	var last int64
	for _, o := range p.Objects("migrations", required) {
		version := o.Int("version", true)
		name := o.String("name", true)
		sql := o.String("sql", true)
		ok := true
		if o.Has("version") && version <= 0 {
			o.Fail("version", "must be greater than 0, got %d", version)
			ok = false
		} else if o.Has("version") && version <= last {
			o.Fail("version", "must be greater than the previous migration's (%d), got %d", last, version)
			ok = false
		}
		if version > last {
			last = version
		}
		if name != "" && !migrationNameRE.MatchString(name) {
			o.Fail("name", "must match ^[a-z0-9][a-z0-9_.-]{0,99}$, got %q", name)
			ok = false
		}
		if ok && version > 0 && name != "" && sql != "" {
			out = append(out, migrate.New(version, name, sql))
		}
	}
	return out
}

// readMetered reads the metered parameter: distinct table names. It
// returns nil and false when absent (the registry is left as it is).
func readMetered(p *sdk.Params) ([]string, bool) {
	if !p.Has("metered") {
		return nil, false
	}
	tables := p.Strings("metered", false)
	seen := map[string]bool{}
	out := []string{}
	for i, t := range tables {
		field := fmt.Sprintf("%s[%d]", p.Field("metered"), i)
		switch {
		case !tableRE.MatchString(t):
			p.FailPath(field, "must be a lower-case table name (^[a-z_][a-z0-9_]{0,62}$), got %q", t)
		case t == stateTable:
			p.FailPath(field, "%s is the migration state table, not a metered one", t)
		case seen[t]:
			p.FailPath(field, "%q is listed twice", t)
		default:
			seen[t] = true
			out = append(out, t)
		}
	}
	return out, true
}

// defaultConcurrency is the migration engine's concurrency unless the step
// sets one.
func (s *settings) defaultConcurrency() int { return min(8, s.MaxConnections) }
