package metrics_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"attache.dev/attache/controlplane/httpapi"
	"attache.dev/attache/controlplane/metrics"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a real SQLite store behind the real ops API, serving a collector
// at /metrics.
type env struct {
	t     *testing.T
	st    store.Store
	clock *clock
	srv   *httptest.Server
	col   *metrics.Collector
	token string // an API token: /metrics needs one
}

func newEnv(t *testing.T, cfg metrics.Config) *env {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "cp.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	// Mid-hour, so the current and previous hours are clear.
	e := &env{t: t, st: st, clock: &clock{t: time.Now().UTC().Truncate(time.Hour).Add(30 * time.Minute)}}
	cfg.Store, cfg.Now = st, e.clock.Now
	e.col, err = metrics.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := httpapi.New(httpapi.Config{
		Store: st, Logger: slog.New(slog.DiscardHandler), TrustDomain: "attache.test", AgentAddr: "cp:7444",
		CAKeySHA256: func() [32]byte { return [32]byte{} }, TrustRootSHA256: func() [32]byte { return [32]byte{} },
		Now: e.clock.Now, Metrics: e.col.Handler(),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if _, err := httpapi.Bootstrap(ctx, st, tokenFile, time.Now()); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	e.token = strings.TrimSpace(string(raw))
	return e
}

func (e *env) tenant(name string) {
	e.t.Helper()
	if err := e.st.CreateTenant(context.Background(), store.Tenant{Name: name}, auditlog.Entry{Actor: "test", Role: "admin", Action: "tenant.create", Tenant: name, Outcome: auditlog.OutcomeSuccess}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) agent(tenant, id string) store.AgentKey {
	e.t.Helper()
	ctx := context.Background()
	now := e.clock.Now()
	secret := sha256.Sum256([]byte(tenant + "/" + id))
	tokID := fmt.Sprintf("%x", secret[:8])
	entry := auditlog.Entry{Actor: "test", Role: "admin", Action: "x", Tenant: tenant, Outcome: auditlog.OutcomeSuccess}
	if err := e.st.CreateJoinToken(ctx, store.JoinToken{ID: tokID, Tenant: tenant, SecretHash: secret[:], CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, entry); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.st.Enroll(ctx, tokID, secret[:], now, store.Agent{Tenant: tenant, ID: id, SPIFFEID: "spiffe://attache.test/tenant/" + tenant + "/agent/" + id,
		CertSerial: "01", CertExpiresAt: now.Add(time.Hour)}, entry); err != nil {
		e.t.Fatal(err)
	}
	return store.AgentKey{Tenant: tenant, ID: id}
}

// beat records an open session and a heartbeat at the given age.
func (e *env) beat(k store.AgentKey, age time.Duration, health string) {
	e.t.Helper()
	ctx := context.Background()
	at := e.clock.Now().Add(-age)
	if err := e.st.RecordSessions(ctx, []store.SessionUpdate{{AgentKey: k, SessionID: "s", Connected: true, At: at}}); err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.RecordHeartbeats(ctx, []store.Heartbeat{{AgentKey: k, At: at, Health: []byte(health)}}); err != nil {
		e.t.Fatal(err)
	}
}

var seqs sync.Map

func (e *env) usage(k store.AgentKey, recs ...store.UsageRecord) {
	e.t.Helper()
	n, _ := seqs.LoadOrStore(k, new(uint64))
	p := n.(*uint64)
	*p++
	if _, err := e.st.IngestUsage(context.Background(), k, *p, recs); err != nil {
		e.t.Fatal(err)
	}
}

// scrape GETs /metrics with an API token and returns every sample as
// `name{label="value",…}` (labels sorted) → value.
func (e *env) scrape() map[string]float64 {
	e.t.Helper()
	req, err := http.NewRequest("GET", e.srv.URL+"/metrics", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.parse(resp)
}

// scrapeCollector GETs the collector's own handler, without the ops API in
// front (whose token check needs the store).
func (e *env) scrapeCollector() map[string]float64 {
	e.t.Helper()
	rec := httptest.NewRecorder()
	e.col.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return e.parse(rec.Result())
}

func (e *env) parse(resp *http.Response) map[string]float64 {
	e.t.Helper()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		e.t.Fatalf("GET /metrics: %d %s", resp.StatusCode, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		if !strings.HasPrefix(name, "attache_") {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.GetGauge() != nil:
				out[key] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func want(t *testing.T, got map[string]float64, exp map[string]float64) {
	t.Helper()
	for k, v := range exp {
		g, ok := got[k]
		if !ok {
			t.Errorf("missing %s (want %v)", k, v)
			continue
		}
		if diff := g - v; diff > 1e-9 || diff < -1e-9 {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
}

func absent(t *testing.T, got map[string]float64, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if v, ok := got[k]; ok {
			t.Errorf("%s = %v, want no such series", k, v)
		}
	}
}

const (
	healthy   = `[{"name":"agent","status":"HEALTH_STATUS_HEALTHY"}]`
	degraded  = `[{"name":"agent","status":"HEALTH_STATUS_HEALTHY"},{"name":"spool","status":"HEALTH_STATUS_DEGRADED","message":"back-pressure"}]`
	unhealthy = `[{"name":"provider/pg","status":"HEALTH_STATUS_UNHEALTHY"}]`
)

func TestSeries(t *testing.T) {
	e := newEnv(t, metrics.Config{})
	for _, n := range []string{"acme", "globex", "initech"} {
		e.tenant(n)
	}
	a1, a2, a3 := e.agent("acme", "a1"), e.agent("acme", "a2"), e.agent("acme", "a3")
	g1, g2 := e.agent("globex", "g1"), e.agent("globex", "g2")
	e.beat(a1, 10*time.Second, healthy)
	e.beat(a2, 20*time.Second, degraded)
	e.beat(a3, 5*time.Second, unhealthy)
	e.beat(g1, time.Hour, healthy) // connected by the store, but silent: its age shows
	if _, err := e.st.RevokeAgent(context.Background(), g2, "test", e.clock.Now(), auditlog.Entry{Actor: "t", Role: "admin", Action: "agent.revoke", Tenant: "globex", Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}

	now := e.clock.Now()
	cur := now.Truncate(time.Hour)
	prev := cur.Add(-time.Hour)
	e.usage(a1,
		store.UsageRecord{Meter: "app.http_requests", Value: 3600, At: prev.Add(time.Minute)},
		store.UsageRecord{Meter: "app.http_errors", Value: 18, At: prev.Add(time.Minute)},
		store.UsageRecord{Meter: "app.http_latency_p95_seconds", Value: 0.2, At: prev.Add(time.Minute)},
		store.UsageRecord{Meter: "api.requests", Value: 10, At: prev.Add(time.Minute)},
		store.UsageRecord{Meter: "api.requests", Value: 5, At: cur.Add(time.Minute)},
		store.UsageRecord{Meter: "api.requests", Value: 1000, At: prev.Add(-time.Minute)}, // two hours ago: not counted
		store.UsageRecord{Meter: "app.http_requests", Value: 99999, At: cur},              // current hour: not in the rate
	)
	e.usage(a2,
		store.UsageRecord{Meter: "admin.http_requests", Value: 3600, At: prev.Add(30 * time.Minute)},
		store.UsageRecord{Meter: "app.http_errors", Value: 18, At: prev.Add(30 * time.Minute)},
		store.UsageRecord{Meter: "app.http_latency_p95_seconds", Value: 0.35, At: prev.Add(40 * time.Minute)},
		store.UsageRecord{Meter: "app.http_latency_p95_seconds", Value: 0.1, At: prev.Add(50 * time.Minute)},
	)
	e.usage(g1, store.UsageRecord{Meter: "api.requests", Value: 7, At: cur})

	got := e.scrape()
	want(t, got, map[string]float64{
		`attache_agents{state="unhealthy"}`:                                        1,
		`attache_agents{state="silent"}`:                                           1,
		`attache_agents{state="degraded"}`:                                         1,
		`attache_agents{state="healthy"}`:                                          1,
		`attache_agents{state="revoked"}`:                                          1,
		`attache_tenant_agents{state="unhealthy",tenant="acme"}`:                   1,
		`attache_tenant_agents{state="degraded",tenant="acme"}`:                    1,
		`attache_tenant_agents{state="healthy",tenant="acme"}`:                     1,
		`attache_tenant_agents{state="silent",tenant="acme"}`:                      0,
		`attache_tenant_agents{state="silent",tenant="globex"}`:                    1,
		`attache_tenant_agents{state="revoked",tenant="globex"}`:                   1,
		`attache_tenant_agents{state="healthy",tenant="initech"}`:                  0,
		`attache_tenant_heartbeat_age_seconds{tenant="acme"}`:                      20,
		`attache_tenant_heartbeat_age_seconds{tenant="globex"}`:                    3600,
		`attache_tenant_usage{meter="api.requests",tenant="acme"}`:                 15,
		`attache_tenant_usage{meter="app.http_requests",tenant="acme"}`:            3600 + 99999,
		`attache_tenant_usage{meter="api.requests",tenant="globex"}`:               7,
		`attache_tenant_request_rate{tenant="acme"}`:                               2,
		`attache_tenant_error_rate{tenant="acme"}`:                                 0.01,
		`attache_tenant_latency_p95_seconds{tenant="acme"}`:                        0.35,
		`attache_metrics_tenants_folded`:                                           0,
		`attache_metrics_usage_meters_dropped`:                                     0,
		`attache_metrics_snapshot_errors_total`:                                    0,
		`attache_metrics_snapshot_age_seconds`:                                     0,
		`attache_tenant_usage{meter="app.http_latency_p95_seconds",tenant="acme"}`: 0.65,
	})
	absent(t, got,
		`attache_tenant_heartbeat_age_seconds{tenant="initech"}`,
		`attache_tenant_request_rate{tenant="globex"}`,
		`attache_tenant_error_rate{tenant="globex"}`,
		`attache_tenant_latency_p95_seconds{tenant="globex"}`,
	)

	// Scrapes within the cache TTL do not read the store again; the age of
	// the snapshot and of heartbeats still move with the clock.
	e.usage(g1, store.UsageRecord{Meter: "api.requests", Value: 1, At: cur})
	e.clock.Advance(5 * time.Second)
	got = e.scrape()
	want(t, got, map[string]float64{
		`attache_tenant_usage{meter="api.requests",tenant="globex"}`: 7,
		`attache_metrics_snapshot_age_seconds`:                       5,
		`attache_tenant_heartbeat_age_seconds{tenant="acme"}`:        25,
	})
	e.clock.Advance(metrics.DefaultCacheTTL)
	got = e.scrape()
	want(t, got, map[string]float64{
		`attache_tenant_usage{meter="api.requests",tenant="globex"}`: 8,
		`attache_metrics_snapshot_age_seconds`:                       0,
		`attache_agents{state="silent"}`:                             1,
	})
	// Past the connected window, acme's agents are silent too.
	e.clock.Advance(httpapi.ConnectedWindow(0))
	want(t, e.scrape(), map[string]float64{
		`attache_agents{state="silent"}`:                      4,
		`attache_tenant_agents{state="silent",tenant="acme"}`: 3,
		`attache_tenant_heartbeat_age_seconds{tenant="acme"}`: 20 + 15 + httpapi.ConnectedWindow(0).Seconds(),
	})
}

func TestCardinalityBound(t *testing.T) {
	e := newEnv(t, metrics.Config{MaxTenantSeries: 2})
	for _, n := range []string{"acme", "globex", "hooli", "initech"} {
		e.tenant(n)
	}
	a1 := e.agent("acme", "a1")
	e.agent("acme", "a2")
	e.agent("acme", "a3")
	g1 := e.agent("globex", "g1")
	h1 := e.agent("hooli", "h1") // ties globex at one agent; globex wins by name
	e.beat(a1, 10*time.Second, healthy)
	e.beat(g1, 5*time.Second, healthy)
	e.beat(h1, 30*time.Second, unhealthy)

	prev := e.clock.Now().Truncate(time.Hour).Add(-time.Hour)
	var recs []store.UsageRecord
	for i := range metrics.MaxMetersPerTenant + 5 {
		recs = append(recs, store.UsageRecord{Meter: fmt.Sprintf("m%03d", i), Value: 1, At: prev})
	}
	e.usage(a1, recs...)
	e.usage(h1,
		store.UsageRecord{Meter: "m000", Value: 2, At: prev},
		store.UsageRecord{Meter: "web.http_requests", Value: 360, At: prev},
		store.UsageRecord{Meter: "web.http_latency_p95_seconds", Value: 1.5, At: prev},
	)

	got := e.scrape()
	want(t, got, map[string]float64{
		`attache_metrics_tenants_folded`:                           2, // hooli and initech
		`attache_metrics_usage_meters_dropped`:                     5,
		`attache_tenant_agents{state="silent",tenant="acme"}`:      2,
		`attache_tenant_agents{state="healthy",tenant="globex"}`:   1,
		`attache_tenant_agents{state="unhealthy",tenant="_other"}`: 1,
		`attache_tenant_heartbeat_age_seconds{tenant="_other"}`:    30,
		`attache_tenant_usage{meter="m000",tenant="_other"}`:       2,
		`attache_tenant_usage{meter="m049",tenant="acme"}`:         1,
		`attache_tenant_request_rate{tenant="_other"}`:             0.1,
		`attache_tenant_latency_p95_seconds{tenant="_other"}`:      1.5,
	})
	absent(t, got,
		`attache_tenant_usage{meter="m050",tenant="acme"}`,
		`attache_tenant_agents{state="healthy",tenant="hooli"}`,
		`attache_tenant_agents{state="healthy",tenant="initech"}`,
	)
	tenants := map[string]bool{}
	for k := range got {
		if i := strings.Index(k, `tenant="`); i >= 0 {
			tenants[strings.SplitN(k[i+8:], `"`, 2)[0]] = true
		}
	}
	if len(tenants) != 3 {
		t.Fatalf("tenant labels %v, want acme, globex and _other", tenants)
	}
}

// TestStoreFailure: a failed read serves the previous snapshot and counts
// the error; without any snapshot the scrape fails.
func TestStoreFailure(t *testing.T) {
	e := newEnv(t, metrics.Config{})
	e.tenant("acme")
	e.agent("acme", "a1")
	if got := e.scrape(); got[`attache_agents{state="silent"}`] != 1 {
		t.Fatalf("before: %v", got)
	}
	e.st.Close()
	e.clock.Advance(time.Minute)
	got := e.scrapeCollector()
	want(t, got, map[string]float64{
		`attache_agents{state="silent"}`:        1,
		`attache_metrics_snapshot_errors_total`: 1,
		`attache_metrics_snapshot_age_seconds`:  60,
	})

	fresh := newEnv(t, metrics.Config{})
	fresh.st.Close()
	rec := httptest.NewRecorder()
	fresh.col.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	resp := rec.Result()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("scrape without any snapshot: %d, want 500", resp.StatusCode)
	}
}

func TestConfig(t *testing.T) {
	if _, err := metrics.New(metrics.Config{}); err == nil {
		t.Fatal("no store accepted")
	}
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "cp.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := metrics.New(metrics.Config{Store: st, MaxTenantSeries: -1}); err == nil {
		t.Fatal("negative bound accepted")
	}
}
