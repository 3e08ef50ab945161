package postgres

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// meters is one tenant's readings by meter name.
type meters map[string]float64

// Usage reports, for each registered tenant (only req.tenants if set),
// storage_bytes and rows.<table> for each metered table of its model.
// storage_bytes is the size of the tenant's schema (bridge: tables with
// their indexes and TOAST) or database (silo); for pool, each tenant table's
// total size shared out by the tenant's share of its rows.
func (p *Provider) Usage(ctx context.Context, req *providerv1.UsageRequest) (*providerv1.UsageResponse, error) {
	e, err := p.readyEnv(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := e.usage(ctx, req.GetTenants())
	if err != nil {
		return nil, e.scrubErr(err)
	}
	return resp, nil
}

func (e *env) usage(ctx context.Context, only []string) (*providerv1.UsageResponse, error) {
	all, models, err := e.registeredAll(ctx, e.pool, "")
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, t := range only {
		want[t] = true
	}
	byModel := map[Model][]tenantRef{}
	for _, id := range all {
		if len(want) > 0 && !want[id] {
			continue
		}
		m := models[id]
		byModel[m] = append(byModel[m], tenantRef{id: id, name: tenantName(e.s.NamePrefix, id)})
	}
	now := timestamppb.Now()
	resp := &providerv1.UsageResponse{}
	for _, m := range []Model{Pool, Bridge, Silo} {
		tenants := byModel[m]
		if len(tenants) == 0 {
			continue
		}
		metered, err := e.meteredTables(ctx, e.pool, m)
		if err != nil {
			return nil, err
		}
		var readings map[string]meters
		switch m {
		case Pool:
			readings, err = e.poolUsage(ctx, tenants, metered)
		case Bridge:
			readings, err = e.bridgeUsage(ctx, tenants, metered)
		case Silo:
			readings, err = e.siloUsage(ctx, tenants, metered)
		}
		if err != nil {
			return nil, fmt.Errorf("usage of %s tenants: %w", m, err)
		}
		for _, t := range tenants {
			r := readings[t.id]
			names := make([]string, 0, len(r))
			for k := range r {
				names = append(names, k)
			}
			sort.Strings(names)
			for _, k := range names {
				resp.Samples = append(resp.Samples, &providerv1.UsageSample{Tenant: t.id, Meter: k, Value: r[k], Time: now})
			}
		}
	}
	sort.SliceStable(resp.Samples, func(i, j int) bool { return resp.Samples[i].GetTenant() < resp.Samples[j].GetTenant() })
	return resp, nil
}

// tableSizeSQL is the total size of a table ($1, qualified name) and of
// its partitions, with indexes and TOAST (pg_partition_tree lists nothing
// for a table that is not partitioned).
const tableSizeSQL = `SELECT pg_total_relation_size($1::regclass) +
  coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree($1::regclass) WHERE relid <> $1::regclass), 0)::bigint`

// poolUsage: per tenant table, its size times the tenant's share of its
// rows; exact row counts of the metered tables.
func (e *env) poolUsage(ctx context.Context, tenants []tenantRef, metered []string) (map[string]meters, error) {
	out := map[string]meters{}
	for _, t := range tenants {
		out[t.id] = meters{"storage_bytes": 0}
	}
	isMetered := map[string]bool{}
	for _, t := range metered {
		isMetered[t] = true
	}
	// Shares are taken over every registered pool tenant, not only the
	// ones asked for.
	allPool, _, err := e.registeredAll(ctx, e.pool, Pool)
	if err != nil {
		return nil, err
	}
	err = pgx.BeginTxFunc(ctx, e.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		tables, err := tenantTables(ctx, tx, e.s.PoolSchema)
		if err != nil {
			return err
		}
		tables = dataTables(tables)
		counts := make([]map[string]int64, len(tables)) // per table: tenant → rows
		if e.bypass {
			// The provider's user sees every row: one grouped count per table.
			for i, t := range tables {
				counts[i] = map[string]int64{}
				rows, err := tx.Query(ctx, fmt.Sprintf("SELECT tenant_id::text, count(*) FROM %s GROUP BY 1", qual(e.s.PoolSchema, t.name)))
				if err != nil {
					return err
				}
				var id *string
				var n int64
				if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error {
					if id != nil {
						counts[i][*id] += n
					}
					return nil
				}); err != nil {
					return err
				}
			}
		} else if len(tables) > 0 {
			// Row level security applies to the provider's user too: count
			// tenant by tenant, with the context set.
			for i := range tables {
				counts[i] = map[string]int64{}
			}
			q := countSQL(e.s.PoolSchema, tables)
			for _, id := range allPool {
				ns, err := countIn(ctx, tx, q, id, len(tables))
				if err != nil {
					return err
				}
				for i, n := range ns {
					counts[i][id] = n
				}
			}
		}
		for i, t := range tables {
			var size int64
			if err := tx.QueryRow(ctx, tableSizeSQL, qual(e.s.PoolSchema, t.name)).Scan(&size); err != nil {
				return err
			}
			var total int64
			for _, n := range counts[i] {
				total += n
			}
			for _, tr := range tenants {
				n := counts[i][tr.id]
				if total > 0 {
					out[tr.id]["storage_bytes"] += float64(size) * float64(n) / float64(total)
				}
				if isMetered[t.name] {
					out[tr.id]["rows."+t.name] = float64(n)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, r := range out {
		r["storage_bytes"] = float64(int64(r["storage_bytes"] + 0.5))
	}
	return out, nil
}

// bridgeUsage: the size of each tenant's schema; exact row counts of the
// metered tables it has.
func (e *env) bridgeUsage(ctx context.Context, tenants []tenantRef, metered []string) (map[string]meters, error) {
	out := map[string]meters{}
	byName := map[string]string{}
	for _, t := range tenants {
		out[t.id] = meters{"storage_bytes": 0}
		byName[t.name] = t.id
	}
	ns := names(tenants)
	rows, err := e.pool.Query(ctx, `SELECT n.nspname::text, coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
WHERE n.nspname = ANY($1) GROUP BY 1`, ns)
	if err != nil {
		return nil, err
	}
	var name string
	var size int64
	if _, err := pgx.ForEachRow(rows, []any{&name, &size}, func() error {
		out[byName[name]]["storage_bytes"] = float64(size)
		return nil
	}); err != nil {
		return nil, err
	}
	if len(metered) == 0 {
		return out, nil
	}
	present, err := presentTables(ctx, e.pool, ns, metered)
	if err != nil {
		return nil, err
	}
	for _, t := range tenants {
		counts, err := countTables(ctx, e.pool, t.name, present[t.name])
		if err != nil {
			return nil, fmt.Errorf("tenant %s: %w", t.id, err)
		}
		for tbl, n := range counts {
			out[t.id]["rows."+tbl] = float64(n)
		}
	}
	return out, nil
}

// siloUsage: the size of each tenant's database; exact row counts of the
// metered tables in its schema public.
func (e *env) siloUsage(ctx context.Context, tenants []tenantRef, metered []string) (map[string]meters, error) {
	out := map[string]meters{}
	byName := map[string]string{}
	for _, t := range tenants {
		out[t.id] = meters{}
		byName[t.name] = t.id
	}
	rows, err := e.pool.Query(ctx, `SELECT datname::text, pg_database_size(oid) FROM pg_database WHERE datname = ANY($1)`, names(tenants))
	if err != nil {
		return nil, err
	}
	var name string
	var size int64
	if _, err := pgx.ForEachRow(rows, []any{&name, &size}, func() error {
		out[byName[name]]["storage_bytes"] = float64(size)
		return nil
	}); err != nil {
		return nil, err
	}
	if len(metered) == 0 {
		return out, nil
	}
	var mu sync.Mutex
	err = e.forEach(ctx, len(tenants), func(ctx context.Context, i int) error {
		t := tenants[i]
		if _, ok := out[t.id]["storage_bytes"]; !ok {
			return nil // no database
		}
		return e.withDB(ctx, t.name, func(conn *pgx.Conn) error {
			present, err := presentTables(ctx, conn, []string{"public"}, metered)
			if err != nil {
				return err
			}
			counts, err := countTables(ctx, conn, "public", present["public"])
			if err != nil {
				return fmt.Errorf("tenant %s: %w", t.id, err)
			}
			mu.Lock()
			defer mu.Unlock()
			for tbl, n := range counts {
				out[t.id]["rows."+tbl] = float64(n)
			}
			return nil
		})
	})
	return out, err
}

// presentTables returns, per schema of schemas, which of tables it has.
func presentTables(ctx context.Context, q querier, schemas, tables []string) (map[string][]string, error) {
	rows, err := q.Query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1) AND c.relname = ANY($2) AND c.relkind IN ('r', 'p') ORDER BY 1, 2`, schemas, tables)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	var s, t string
	_, err = pgx.ForEachRow(rows, []any{&s, &t}, func() error {
		out[s] = append(out[s], t)
		return nil
	})
	return out, err
}

// countTables counts the rows of tables in schema, in one query.
func countTables(ctx context.Context, q querier, schema string, tables []string) (map[string]int64, error) {
	if len(tables) == 0 {
		return nil, nil
	}
	parts := make([]string, len(tables))
	for i, t := range tables {
		parts[i] = "(SELECT count(*) FROM " + qual(schema, t) + ")"
	}
	counts := make([]int64, len(tables))
	dst := make([]any, len(tables))
	for i := range counts {
		dst[i] = &counts[i]
	}
	if err := q.QueryRow(ctx, "SELECT "+strings.Join(parts, ", ")).Scan(dst...); err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(tables))
	for i, t := range tables {
		out[t] = counts[i]
	}
	return out, nil
}
