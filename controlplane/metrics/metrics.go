// Package metrics exposes the control plane's fleet and per-tenant figures
// in Prometheus format: a prometheus.Collector that reads the store when
// scraped (through a short cache, so frequent or concurrent scrapes cost
// one set of queries per CacheTTL) and the /metrics handler that serves it
// with the Go runtime and process collectors.
//
// Series (docs/operations.md, "Metrics", is the operator's reference):
//
//	attache_agents{state}                          agents per health state, fleet-wide
//	attache_tenant_agents{tenant,state}            agents per tenant and health state
//	attache_tenant_heartbeat_age_seconds{tenant}   oldest last-seen age of the tenant's connected agents
//	attache_tenant_usage{tenant,meter}             sum of the current and the previous UTC hour
//	attache_tenant_request_rate{tenant}            as reported: *.http_requests over the last complete hour / 3600
//	attache_tenant_error_rate{tenant}              as reported: *.http_errors over the last complete hour / 3600
//	attache_tenant_latency_p95_seconds{tenant}     as reported: largest *.http_latency_p95_seconds sample of the last complete hour
//	attache_metrics_tenants_folded                 tenants folded into tenant="_other"
//	attache_metrics_usage_meters_dropped           (tenant, meter) pairs left out of attache_tenant_usage
//	attache_metrics_snapshot_age_seconds           age of the store snapshot served
//	attache_metrics_snapshot_errors_total          store reads that failed
//
// States are those of GET /v1/health (httpapi.AgentHealth): unhealthy,
// silent, degraded, healthy, revoked.
//
// Cardinality is bounded: at most Config.MaxTenantSeries tenants (default
// 1000) get series of their own — those with the most agents, ties broken
// by name — and the others are folded into tenant="_other" (counts and
// usage added, heartbeat age and p95 latency the largest); each tenant
// label has at most MaxMetersPerTenant meters in attache_tenant_usage (the
// first by name). Tenant names are DNS labels and cannot be "_other".
//
// Only controlplane/server imports metrics.
package metrics

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"attache.dev/attache/controlplane/httpapi"
	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
)

// Defaults and bounds.
const (
	DefaultMaxTenantSeries = 1000
	// MaxMetersPerTenant bounds the meters of one tenant label in
	// attache_tenant_usage.
	MaxMetersPerTenant = 50
	DefaultCacheTTL    = 10 * time.Second
	DefaultTimeout     = 10 * time.Second
	// OtherTenant is the tenant label of the tenants beyond MaxTenantSeries.
	OtherTenant = "_other"
)

// Suffixes of the meters agents report from a vendor app's own metrics.
const (
	RequestsSuffix   = ".http_requests"
	ErrorsSuffix     = ".http_errors"
	LatencyP95Suffix = ".http_latency_p95_seconds"
)

// Store is what the collector reads.
type Store interface {
	ListTenants(ctx context.Context) ([]store.Tenant, error)
	ListAgents(ctx context.Context, f store.AgentFilter) ([]store.Agent, error)
	QueryUsage(ctx context.Context, f store.UsageFilter) ([]store.UsageHour, error)
}

// Config configures a Collector.
type Config struct {
	Store Store
	// HeartbeatInterval sets the connected window (httpapi.ConnectedWindow)
	// that separates silent agents from the others; 0 means the default.
	HeartbeatInterval time.Duration
	// MaxTenantSeries is how many tenants get series of their own (default
	// DefaultMaxTenantSeries).
	MaxTenantSeries int
	// CacheTTL is how long one read of the store serves scrapes (default
	// 10s).
	CacheTTL time.Duration
	// Timeout bounds one read of the store (default 10s).
	Timeout time.Duration
	Logger  *slog.Logger     // nil discards
	Now     func() time.Time // nil means time.Now
}

// Collector is a prometheus.Collector over the store; see the package
// documentation.
type Collector struct {
	cfg Config

	mu     sync.Mutex // held while refreshing, so concurrent scrapes share one read
	snap   *snapshot
	errors float64
}

// New validates cfg and returns a collector.
func New(cfg Config) (*Collector, error) {
	if cfg.Store == nil {
		return nil, errors.New("metrics: no store")
	}
	switch {
	case cfg.MaxTenantSeries < 0:
		return nil, fmt.Errorf("metrics: max tenant series %d is negative", cfg.MaxTenantSeries)
	case cfg.MaxTenantSeries == 0:
		cfg.MaxTenantSeries = DefaultMaxTenantSeries
	}
	if cfg.CacheTTL < 0 || cfg.Timeout < 0 || cfg.HeartbeatInterval < 0 {
		return nil, errors.New("metrics: negative cache TTL, timeout or heartbeat interval")
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Collector{cfg: cfg}, nil
}

// Handler serves the collector, with the Go runtime and process
// collectors, in the Prometheus exposition formats. A scrape fails (HTTP
// 500) only when the store could not be read and there is no earlier
// snapshot to serve.
func (c *Collector) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(c.cfg.Logger.Handler(), slog.LevelWarn),
		ErrorHandling:     promhttp.HTTPErrorOnError,
		Timeout:           c.cfg.Timeout + 5*time.Second,
		EnableOpenMetrics: true,
	})
}

var (
	descAgents = prometheus.NewDesc("attache_agents",
		"Agents per health state, fleet-wide (states of GET /v1/health).", []string{"state"}, nil)
	descTenantAgents = prometheus.NewDesc("attache_tenant_agents",
		"Agents per tenant and health state; tenants beyond the series bound are folded into tenant=\"_other\".", []string{"tenant", "state"}, nil)
	descHeartbeatAge = prometheus.NewDesc("attache_tenant_heartbeat_age_seconds",
		"Seconds since the least recently seen of the tenant's connected agents was last seen; absent when none is connected.", []string{"tenant"}, nil)
	descUsage = prometheus.NewDesc("attache_tenant_usage",
		"Usage reported by the tenant's agents: the meter's sum over the current and the previous UTC hour.", []string{"tenant", "meter"}, nil)
	descRequestRate = prometheus.NewDesc("attache_tenant_request_rate",
		"Requests per second as reported by the tenant's agents: meters ending in .http_requests, summed over the last complete UTC hour, / 3600.", []string{"tenant"}, nil)
	descErrorRate = prometheus.NewDesc("attache_tenant_error_rate",
		"Errors per second as reported by the tenant's agents: meters ending in .http_errors, summed over the last complete UTC hour, / 3600.", []string{"tenant"}, nil)
	descLatencyP95 = prometheus.NewDesc("attache_tenant_latency_p95_seconds",
		"p95 latency as reported by the tenant's agents: the largest sample of meters ending in .http_latency_p95_seconds in the last complete UTC hour.", []string{"tenant"}, nil)
	descFolded = prometheus.NewDesc("attache_metrics_tenants_folded",
		"Tenants folded into tenant=\"_other\" because of the per-tenant series bound.", nil, nil)
	descDropped = prometheus.NewDesc("attache_metrics_usage_meters_dropped",
		"(tenant, meter) pairs left out of attache_tenant_usage because of the per-tenant meter bound.", nil, nil)
	descSnapshotAge = prometheus.NewDesc("attache_metrics_snapshot_age_seconds",
		"Age of the store snapshot these metrics were computed from.", nil, nil)
	descSnapshotErrors = prometheus.NewDesc("attache_metrics_snapshot_errors_total",
		"Reads of the store for these metrics that failed (the previous snapshot was served).", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAgents, descTenantAgents, descHeartbeatAge, descUsage, descRequestRate,
		descErrorRate, descLatencyP95, descFolded, descDropped, descSnapshotAge, descSnapshotErrors} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s, errs, err := c.snapshot()
	ch <- prometheus.MustNewConstMetric(descSnapshotErrors, prometheus.CounterValue, errs)
	if s == nil {
		ch <- prometheus.NewInvalidMetric(descAgents, err)
		return
	}
	now := c.cfg.Now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, st := range apiv1.HealthStates {
		gauge(descAgents, float64(s.fleet[st]), st)
	}
	for _, t := range s.tenants {
		for _, st := range apiv1.HealthStates {
			gauge(descTenantAgents, float64(t.states[st]), t.name, st)
		}
		if !t.oldestSeen.IsZero() {
			gauge(descHeartbeatAge, max(0, now.Sub(t.oldestSeen).Seconds()), t.name)
		}
		for _, m := range slices.Sorted(maps.Keys(t.usage)) {
			gauge(descUsage, t.usage[m], t.name, m)
		}
		if t.hasRequests {
			gauge(descRequestRate, t.requests/3600, t.name)
		}
		if t.hasErrors {
			gauge(descErrorRate, t.errors/3600, t.name)
		}
		if t.hasP95 {
			gauge(descLatencyP95, t.p95, t.name)
		}
	}
	gauge(descFolded, float64(s.folded))
	gauge(descDropped, float64(s.metersDropped))
	gauge(descSnapshotAge, max(0, now.Sub(s.at).Seconds()))
}

// snapshot is one read of the store, folded into the series.
type snapshot struct {
	at            time.Time
	fleet         map[string]int
	tenants       []*tenantSeries // in label order
	folded        int
	metersDropped int
}

type tenantSeries struct {
	name                  string
	agents                int
	states                map[string]int
	oldestSeen            time.Time // zero: no connected agent
	usage                 map[string]float64
	requests, errors, p95 float64
	hasRequests           bool
	hasErrors             bool
	hasP95                bool
}

// snapshot returns the cached snapshot, refreshing it when older than
// CacheTTL; on a failed refresh the previous one (nil if none) and the
// error.
func (c *Collector) snapshot() (*snapshot, float64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	if c.snap != nil && now.Sub(c.snap.at) < c.cfg.CacheTTL && !now.Before(c.snap.at) {
		return c.snap, c.errors, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	s, err := c.read(ctx, now)
	if err != nil {
		c.errors++
		c.cfg.Logger.Warn("metrics: read the store", "err", err)
		return c.snap, c.errors, err
	}
	c.snap = s
	return s, c.errors, nil
}

// read builds a snapshot as of now.
func (c *Collector) read(ctx context.Context, now time.Time) (*snapshot, error) {
	tenants, err := c.cfg.Store.ListTenants(ctx)
	if err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	agents, err := c.cfg.Store.ListAgents(ctx, store.AgentFilter{})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	cur := now.UTC().Truncate(time.Hour)
	prev := cur.Add(-time.Hour)
	usage, err := c.cfg.Store.QueryUsage(ctx, store.UsageFilter{From: prev, To: cur.Add(time.Hour)})
	if err != nil {
		return nil, fmt.Errorf("query usage: %w", err)
	}

	s := &snapshot{at: now, fleet: make(map[string]int, len(apiv1.HealthStates))}
	byName := make(map[string]*tenantSeries, len(tenants))
	get := func(name string) *tenantSeries {
		t, ok := byName[name]
		if !ok {
			t = newTenantSeries(name)
			byName[name] = t
		}
		return t
	}
	for _, t := range tenants {
		get(t.Name)
	}
	window := httpapi.ConnectedWindow(c.cfg.HeartbeatInterval)
	for _, a := range agents {
		h := httpapi.AgentHealth(a, now, window)
		s.fleet[h.State]++
		t := get(a.Tenant)
		t.agents++
		t.states[h.State]++
		if a.Connected && a.RevokedAt == nil && a.LastSeenAt != nil && (t.oldestSeen.IsZero() || a.LastSeenAt.Before(t.oldestSeen)) {
			t.oldestSeen = *a.LastSeenAt
		}
	}
	for _, u := range usage {
		t := get(u.Tenant)
		t.usage[u.Meter] += u.Sum
		if !u.Hour.Equal(prev) {
			continue
		}
		switch {
		case strings.HasSuffix(u.Meter, RequestsSuffix):
			t.requests += u.Sum
			t.hasRequests = true
		case strings.HasSuffix(u.Meter, ErrorsSuffix):
			t.errors += u.Sum
			t.hasErrors = true
		case strings.HasSuffix(u.Meter, LatencyP95Suffix):
			if !t.hasP95 || u.Max > t.p95 {
				t.p95 = u.Max
			}
			t.hasP95 = true
		}
	}

	all := slices.Collect(maps.Values(byName))
	slices.SortFunc(all, func(a, b *tenantSeries) int {
		return cmp.Or(cmp.Compare(b.agents, a.agents), cmp.Compare(a.name, b.name))
	})
	if len(all) > c.cfg.MaxTenantSeries {
		other := newTenantSeries(OtherTenant)
		for _, t := range all[c.cfg.MaxTenantSeries:] {
			other.fold(t)
		}
		s.folded = len(all) - c.cfg.MaxTenantSeries
		all = append(all[:c.cfg.MaxTenantSeries:c.cfg.MaxTenantSeries], other)
	}
	for _, t := range all {
		if len(t.usage) <= MaxMetersPerTenant {
			continue
		}
		for _, m := range slices.Sorted(maps.Keys(t.usage))[MaxMetersPerTenant:] {
			delete(t.usage, m)
			s.metersDropped++
		}
	}
	s.tenants = all
	return s, nil
}

func newTenantSeries(name string) *tenantSeries {
	return &tenantSeries{name: name, states: make(map[string]int, len(apiv1.HealthStates)), usage: make(map[string]float64)}
}

// fold adds t into o, the "_other" series.
func (o *tenantSeries) fold(t *tenantSeries) {
	o.agents += t.agents
	for st, n := range t.states {
		o.states[st] += n
	}
	if !t.oldestSeen.IsZero() && (o.oldestSeen.IsZero() || t.oldestSeen.Before(o.oldestSeen)) {
		o.oldestSeen = t.oldestSeen
	}
	for m, v := range t.usage {
		o.usage[m] += v
	}
	o.requests += t.requests
	o.hasRequests = o.hasRequests || t.hasRequests
	o.errors += t.errors
	o.hasErrors = o.hasErrors || t.hasErrors
	if t.hasP95 && (!o.hasP95 || t.p95 > o.p95) {
		o.p95 = t.p95
	}
	o.hasP95 = o.hasP95 || t.hasP95
}
