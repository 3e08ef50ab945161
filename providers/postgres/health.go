package postgres

import (
	"context"
	"fmt"
	"strings"
	"sync"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/status"
)

// Health statuses, short.
const (
	healthy   = providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY
	degraded  = providerv1.ComponentStatus_COMPONENT_STATUS_DEGRADED
	unhealthy = providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY
)

// maxTenantHealth bounds the per-tenant entries one Health lists.
const maxTenantHealth = 100

// Health reports component "postgres" (the server, its version, the
// database and the tenants per model) and, when there are silo tenants,
// "postgres/silo" (whether each silo database accepts a connection) with a
// "postgres/silo/<tenant>" entry per database that does not. Messages never
// hold the connection string or a password.
func (p *Provider) Health(ctx context.Context) (*providerv1.HealthResponse, error) {
	e, err := p.getEnv()
	if err != nil {
		return &providerv1.HealthResponse{Components: []*providerv1.ComponentHealth{{
			Name: "postgres", Status: unhealthy, Message: "not configured",
		}}}, nil
	}
	bound := e.s.connectTimeout + e.s.statementTimeout
	cctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	main := &providerv1.ComponentHealth{Name: "postgres", Status: healthy}
	resp := &providerv1.HealthResponse{Components: []*providerv1.ComponentHealth{main}}
	var silos []string
	err = e.ensureReady(cctx)
	if err == nil {
		var version string
		var byModel map[Model][]string
		version, byModel, err = e.serverFacts(cctx)
		if err == nil {
			n := len(byModel[Pool]) + len(byModel[Bridge]) + len(byModel[Silo])
			main.Message = fmt.Sprintf("PostgreSQL %s, database %s, %d tenants (pool %d, bridge %d, silo %d)",
				version, e.db, n, len(byModel[Pool]), len(byModel[Bridge]), len(byModel[Silo]))
			silos = byModel[Silo]
		}
	}
	if err != nil {
		main.Status, main.Message = unhealthy, scrub(errMessage(err), e.secrets)
		return resp, nil
	}
	if len(silos) > 0 {
		resp.Components = append(resp.Components, e.siloHealth(ctx, silos)...)
	}
	return resp, nil
}

// errMessage is err's message without the gRPC status decoration.
func errMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

// serverFacts reads the server version and the registered tenants by model.
func (e *env) serverFacts(ctx context.Context) (string, map[Model][]string, error) {
	var version string
	if err := e.pool.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&version); err != nil {
		return "", nil, fmt.Errorf("query the server: %w", err)
	}
	if f := strings.Fields(version); len(f) > 0 {
		version = f[0]
	}
	ids, models, err := e.registeredAll(ctx, e.pool, "")
	if err != nil {
		return "", nil, err
	}
	byModel := map[Model][]string{}
	for _, id := range ids {
		byModel[models[id]] = append(byModel[models[id]], id)
	}
	return version, byModel, nil
}

// siloHealth connects to every silo database (bounded in concurrency and
// time) and reports those that refuse.
func (e *env) siloHealth(ctx context.Context, silos []string) []*providerv1.ComponentHealth {
	ctx, cancel := context.WithTimeout(ctx, 2*e.s.connectTimeout)
	defer cancel()
	var mu sync.Mutex
	bad := map[string]string{}
	sem := make(chan struct{}, e.s.defaultConcurrency())
	var wg sync.WaitGroup
	for _, id := range silos {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				mu.Lock()
				bad[id] = "not checked within " + (2 * e.s.connectTimeout).String()
				mu.Unlock()
				return
			}
			err := e.withDB(ctx, tenantName(e.s.NamePrefix, id), func(c *pgx.Conn) error { return c.Ping(ctx) })
			if err != nil {
				mu.Lock()
				bad[id] = scrub(err.Error(), e.secrets)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	comp := &providerv1.ComponentHealth{Name: "postgres/silo", Status: healthy,
		Message: fmt.Sprintf("%d silo databases accept connections", len(silos))}
	out := []*providerv1.ComponentHealth{comp}
	if len(bad) == 0 {
		return out
	}
	var failing []string
	for _, id := range silos {
		if _, ok := bad[id]; ok {
			failing = append(failing, id)
		}
	}
	comp.Status = degraded
	comp.Message = fmt.Sprintf("%d of %d silo databases do not accept connections: %s", len(failing), len(silos), listNames(failing))
	for i, id := range failing {
		if i == maxTenantHealth {
			break
		}
		out = append(out, &providerv1.ComponentHealth{Name: "postgres/silo/" + id, Tenant: id, Status: unhealthy, Message: bad[id]})
	}
	return out
}
