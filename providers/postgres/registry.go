package postgres

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"attache.dev/attache/providers/sdk"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// querier is what the pool, a connection and a transaction share.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// regTable is the registry's tenants table, quoted.
func (e *env) regTable() string { return qual(e.s.RegistrySchema, "tenants") }

// meteredTable is the registry's metered_tables table, quoted.
func (e *env) meteredTable() string { return qual(e.s.RegistrySchema, "metered_tables") }

// regResource names a tenant's registry row.
func (e *env) regResource(id string) string {
	return fmt.Sprintf("postgres/%s/%s.tenants/%s", e.db, e.s.RegistrySchema, id)
}

// regKind is regResource's pattern.
func (e *env) regKind() string {
	return fmt.Sprintf("postgres/%s/%s.tenants/*", e.db, e.s.RegistrySchema)
}

// registered returns the model each of ids is registered with (absent ids
// are not registered).
func (e *env) registered(ctx context.Context, q querier, ids []string) (map[string]Model, error) {
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT id, model FROM %s WHERE id = ANY($1)`, e.regTable()), ids)
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	out := map[string]Model{}
	var id, model string
	_, err = pgx.ForEachRow(rows, []any{&id, &model}, func() error {
		out[id] = Model(model)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	return out, nil
}

// registeredAll returns every registered tenant with its model, or only
// those of model if it is not empty, sorted by id.
func (e *env) registeredAll(ctx context.Context, q querier, model Model) ([]string, map[string]Model, error) {
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT id, model FROM %s WHERE $1 = '' OR model = $1 ORDER BY id`, e.regTable()), string(model))
	if err != nil {
		return nil, nil, fmt.Errorf("read registry: %w", err)
	}
	var ids []string
	models := map[string]Model{}
	var id, m string
	_, err = pgx.ForEachRow(rows, []any{&id, &m}, func() error {
		ids = append(ids, id)
		models[id] = Model(m)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read registry: %w", err)
	}
	return ids, models, nil
}

// checkModels refuses tenants registered with another model than model.
func checkModels(reg map[string]Model, tenants []tenantRef, model Model) error {
	for _, t := range tenants {
		if m, ok := reg[t.id]; ok && m != model {
			return sdk.FailedPrecondition("%s: tenant %q is registered with model %s, not %s", t.field, t.id, m, model)
		}
	}
	return nil
}

// register inserts the registry rows of ids with model (existing rows are
// left alone).
func (e *env) register(ctx context.Context, q querier, ids []string, model Model) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := q.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (id, model) SELECT unnest($1::text[]), $2 ON CONFLICT (id) DO NOTHING`, e.regTable()), ids, string(model))
	if err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	return nil
}

// ids returns the ids of tenants.
func ids(tenants []tenantRef) []string {
	out := make([]string, len(tenants))
	for i, t := range tenants {
		out[i] = t.id
	}
	return out
}

// names returns the PostgreSQL names of tenants.
func names(tenants []tenantRef) []string {
	out := make([]string, len(tenants))
	for i, t := range tenants {
		out[i] = t.name
	}
	return out
}

// meteredTables returns the tables declared metered for model, sorted.
func (e *env) meteredTables(ctx context.Context, q querier, model Model) ([]string, error) {
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT table_name FROM %s WHERE model = $1 ORDER BY table_name`, e.meteredTable()), string(model))
	if err != nil {
		return nil, fmt.Errorf("read metered tables: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read metered tables: %w", err)
	}
	return out, nil
}

// planMetered diffs the declared metered tables of model against want
// (which replaces them).
func (e *env) planMetered(ctx context.Context, model Model, want []string) (changes, error) {
	have, err := e.meteredTables(ctx, e.pool, model)
	if err != nil {
		return nil, err
	}
	kind := fmt.Sprintf("postgres/%s/%s.metered_tables/%s.*", e.db, e.s.RegistrySchema, model)
	res := func(t string) string {
		return fmt.Sprintf("postgres/%s/%s.metered_tables/%s.%s", e.db, e.s.RegistrySchema, model, t)
	}
	haveSet := map[string]bool{}
	for _, t := range have {
		haveSet[t] = true
	}
	wantSet := map[string]bool{}
	var cs changes
	sorted := append([]string(nil), want...)
	sort.Strings(sorted)
	for _, t := range sorted {
		wantSet[t] = true
		if haveSet[t] {
			cs.add(kind, res(t), opNoop, "table %s is metered for model %s", t, model)
		} else {
			cs.add(kind, res(t), opCreate, "meter table %s for model %s (rows.%s in Usage)", t, model, t)
		}
	}
	for _, t := range have {
		if !wantSet[t] {
			cs.add(kind, res(t), opDelete, "stop metering table %s for model %s", t, model)
		}
	}
	return cs, nil
}

// applyMetered makes the metered tables of model exactly want.
func (e *env) applyMetered(ctx context.Context, model Model, want []string) error {
	return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf(`DELETE FROM %s WHERE model = $1 AND NOT (table_name = ANY($2))`, e.meteredTable()), string(model), want); err != nil {
			return fmt.Errorf("write metered tables: %w", err)
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (model, table_name) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`, e.meteredTable()), string(model), want); err != nil {
			return fmt.Errorf("write metered tables: %w", err)
		}
		return nil
	})
}

// listNames formats up to five names and how many more there are.
func listNames(ns []string) string {
	if len(ns) <= 5 {
		return strings.Join(ns, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ns[:5], ", "), len(ns)-5)
}
