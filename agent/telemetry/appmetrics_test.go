package telemetry

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"attache.dev/attache/agent/spool"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
	"attache.dev/attache/providers/sdk"
)

// app is a vendor app's metrics endpoint whose answer the test sets.
type app struct {
	mu     sync.Mutex
	body   string
	status int
}

func (a *app) set(status int, body string) {
	a.mu.Lock()
	a.status, a.body = status, body
	a.mu.Unlock()
}

func (a *app) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	status, body := a.status, a.body
	a.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// setupApp returns a collector for tenant acme with one provider (the
// meters of telemetry_test.go, as "my-db") and app metrics scraped from h.
func setupApp(t *testing.T, h http.Handler, am AppMetrics) (*Collector, *meters, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	sp, err := spool.Open(filepath.Join(t.TempDir(), spool.FileName), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	m := &meters{}
	served, err := sdk.ServeInProcess(m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { served.Close() })
	if am.URL == "" {
		am.URL = srv.URL + "/metrics"
	}
	c, err := New(Config{Spool: sp, Providers: provs{"my-db": served.Client}, Tenant: "acme", AppMetrics: &am,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return c, m, srv.URL
}

// collect runs a round and returns the records it spooled by meter (and
// acknowledges them, so the next call sees only its own round's).
func collect(t *testing.T, c *Collector) map[string]float64 {
	t.Helper()
	c.Collect(t.Context())
	bs, err := c.Pending(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, b := range bs {
		for _, r := range b.GetRecords() {
			if r.GetTenant() != "acme" {
				t.Errorf("record for tenant %q: %v", r.GetTenant(), r)
			}
			if _, dup := out[r.GetMeter()]; dup {
				t.Errorf("meter %s twice in one round", r.GetMeter())
			}
			out[r.GetMeter()] = r.GetValue()
		}
		if err := c.Acked(b.GetSequence()); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func appComponent(t *testing.T, c *Collector) *agentv1.ComponentHealth {
	t.Helper()
	comp := find(c.Health(), AppMetricsComponent)
	if comp == nil {
		t.Fatalf("no %s component in %v", AppMetricsComponent, c.Health())
	}
	return comp
}

// exposition renders http_requests_total and http_request_duration_seconds
// series in the text format. reqs: "tenant,code" → value ("" tenant: no
// label); hists: tenant → cumulative counts for le 0.1, 0.25, 0.5, 1, +Inf.
func exposition(reqs map[string]float64, hists map[string][5]float64) string {
	var b strings.Builder
	b.WriteString("# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n")
	for k, v := range reqs {
		tenant, code, _ := strings.Cut(k, ",")
		labels := fmt.Sprintf(`code=%q`, code)
		if tenant != "" {
			labels = fmt.Sprintf(`tenant=%q,`, tenant) + labels
		}
		fmt.Fprintf(&b, "http_requests_total{%s} %v\n", labels, v)
	}
	b.WriteString("# HELP http_request_duration_seconds Latency.\n# TYPE http_request_duration_seconds histogram\n")
	for tenant, cs := range hists {
		sel := ""
		if tenant != "" {
			sel = fmt.Sprintf(`tenant=%q,`, tenant)
		}
		for i, le := range []string{"0.1", "0.25", "0.5", "1", "+Inf"} {
			fmt.Fprintf(&b, "http_request_duration_seconds_bucket{%sle=%q} %v\n", sel, le, cs[i])
		}
		fmt.Fprintf(&b, "http_request_duration_seconds_sum{%s} %v\n", strings.TrimSuffix(sel, ","), cs[4]*0.2)
		fmt.Fprintf(&b, "http_request_duration_seconds_count{%s} %v\n", strings.TrimSuffix(sel, ","), cs[4])
	}
	b.WriteString("# a comment\nprocess_open_fds 12\n")
	return b.String()
}

// TestAppMetricsIncreases: the first scrape is a baseline; the next reports
// the increases of the tenant's series (a series new since the baseline
// counts whole), 5xx as errors, and the p95 of the bucket increases; other
// tenants' series are ignored and counted in the usage component.
func TestAppMetricsIncreases(t *testing.T) {
	a := &app{}
	a.set(200, exposition(
		map[string]float64{"acme,200": 10, "acme,500": 2, "acme,404": 1, "globex,200": 100, "globex,503": 50},
		map[string][5]float64{"acme": {5, 8, 10, 10, 10}, "globex": {0, 0, 0, 0, 1000}}))
	c, m, _ := setupApp(t, a, AppMetrics{})
	m.set(sample("acme", "storage_bytes", 42))
	got := collect(t, c)
	if len(got) != 1 || got["my_db.storage_bytes"] != 42 {
		t.Fatalf("baseline round spooled %v, want only the provider's sample", got)
	}
	if comp := appComponent(t, c); comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY || !strings.Contains(comp.GetMessage(), "baseline") {
		t.Fatalf("after the baseline: %v", comp)
	}

	// Increases: 200 +15, 500 +3, 404 +0, a new 503 series +1; buckets
	// +40 (≤0.1), +90 (≤0.25), +98 (≤0.5), +100 (≤1), +100 (all).
	a.set(200, exposition(
		map[string]float64{"acme,200": 25, "acme,500": 5, "acme,404": 1, "acme,503": 1, "globex,200": 900, "globex,503": 70},
		map[string][5]float64{"acme": {45, 98, 108, 110, 110}, "globex": {0, 0, 0, 0, 5000}}))
	m.set()
	got = collect(t, c)
	// p95: rank 95 of 100 falls in (0.25, 0.5], which holds 8 of them from
	// rank 90: 0.25 + 0.25 × (95-90)/8.
	want := map[string]float64{MeterAppRequests: 19, MeterAppErrors: 4, MeterAppLatencyP95: 0.25 + 0.25*5/8}
	if !sameValues(got, want) {
		t.Fatalf("records %v, want %v", got, want)
	}
	comp := appComponent(t, c)
	if comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY || !strings.Contains(comp.GetMessage(), "3 series of other tenants ignored") {
		t.Errorf("app-metrics component %v", comp)
	}
	// 3 foreign series per scrape, two scrapes.
	if u := find(c.Health(), "usage"); !strings.Contains(u.GetMessage(), "6 samples named another tenant") {
		t.Errorf("usage component %v", u)
	}

	// Nothing served since: zero requests and errors, and no p95 without
	// observations.
	got = collect(t, c)
	if !sameValues(got, map[string]float64{MeterAppRequests: 0, MeterAppErrors: 0}) {
		t.Errorf("idle round: %v", got)
	}
}

// TestAppMetricsCounterReset: after the app restarts its counters start
// again; the new values are the increase.
func TestAppMetricsCounterReset(t *testing.T) {
	a := &app{}
	a.set(200, exposition(map[string]float64{"acme,200": 1000, "acme,502": 10}, map[string][5]float64{"acme": {100, 200, 300, 400, 500}}))
	c, _, _ := setupApp(t, a, AppMetrics{})
	collect(t, c)
	a.set(200, exposition(map[string]float64{"acme,200": 7}, map[string][5]float64{"acme": {0, 0, 1, 2, 2}}))
	got := collect(t, c)
	// p95 of 2 observations, one in (0.25, 0.5], one in (0.5, 1]: rank 1.9
	// is in (0.5, 1] from rank 1: 0.5 + 0.5 × 0.9.
	want := map[string]float64{MeterAppRequests: 7, MeterAppErrors: 0, MeterAppLatencyP95: 0.95}
	if !sameValues(got, want) {
		t.Fatalf("after a reset: %v, want %v", got, want)
	}
	a.set(200, exposition(map[string]float64{"acme,200": 9, "acme,502": 1}, map[string][5]float64{"acme": {0, 0, 1, 2, 2}}))
	want = map[string]float64{MeterAppRequests: 3, MeterAppErrors: 1}
	if got := collect(t, c); !sameValues(got, want) {
		t.Fatalf("after the reset: %v, want %v", got, want)
	}
}

// TestAppMetricsTenantLabel: without any tenant label every series counts;
// once some carry it, unlabelled series are ignored (and said so). A custom
// label name is honoured.
func TestAppMetricsTenantLabel(t *testing.T) {
	a := &app{}
	a.set(200, exposition(map[string]float64{",200": 1}, nil))
	c, _, _ := setupApp(t, a, AppMetrics{})
	collect(t, c)
	a.set(200, exposition(map[string]float64{",200": 4}, nil))
	if got := collect(t, c); !sameValues(got, map[string]float64{MeterAppRequests: 3, MeterAppErrors: 0}) {
		t.Fatalf("unlabelled: %v", got)
	}
	a.set(200, exposition(map[string]float64{",200": 10, "acme,200": 2}, nil))
	if got := collect(t, c); !sameValues(got, map[string]float64{MeterAppRequests: 2, MeterAppErrors: 0}) {
		t.Fatalf("mixed: %v", got)
	}
	if comp := appComponent(t, c); !strings.Contains(comp.GetMessage(), `1 series without the "tenant" label ignored`) {
		t.Errorf("component %v", comp)
	}

	b := &app{}
	b.set(200, "http_requests_total{customer=\"acme\",status=\"500\"} 1\nhttp_requests_total{customer=\"globex\",status=\"500\"} 1\n")
	c, _, _ = setupApp(t, b, AppMetrics{TenantLabel: "customer"})
	collect(t, c)
	b.set(200, "http_requests_total{customer=\"acme\",status=\"500\"} 3\nhttp_requests_total{customer=\"globex\",status=\"500\"} 9\n")
	if got := collect(t, c); !sameValues(got, map[string]float64{MeterAppRequests: 2, MeterAppErrors: 2}) {
		t.Fatalf("custom label, untyped family, status label: %v", got)
	}
}

// TestAppMetricsScrapeFailure: a failing scrape turns app-metrics unhealthy
// while the providers' usage is still collected; the next successful
// scrape reports everything since the last successful one.
func TestAppMetricsScrapeFailure(t *testing.T) {
	a := &app{}
	a.set(200, exposition(map[string]float64{"acme,200": 5}, nil))
	c, m, _ := setupApp(t, a, AppMetrics{})
	collect(t, c)

	a.set(500, "boom")
	m.set(sample("acme", "storage_bytes", 1))
	if got := collect(t, c); !sameValues(got, map[string]float64{"my_db.storage_bytes": 1}) {
		t.Fatalf("round with a failing scrape: %v", got)
	}
	comp := appComponent(t, c)
	if comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || !strings.Contains(comp.GetMessage(), "HTTP 500") {
		t.Fatalf("after HTTP 500: %v", comp)
	}

	a.set(200, "http_requests_total{tenant=\"acme\",code=\"200\"} 5\nnot a metric line\n")
	collect(t, c)
	if comp := appComponent(t, c); comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || !strings.Contains(comp.GetMessage(), "text format parsing error") {
		t.Fatalf("after a malformed body: %v", comp)
	}

	a.set(200, exposition(map[string]float64{"acme,200": 12}, nil))
	m.set()
	if got := collect(t, c); !sameValues(got, map[string]float64{MeterAppRequests: 7, MeterAppErrors: 0}) {
		t.Fatalf("after recovery: %v", got)
	}
	if comp := appComponent(t, c); comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY {
		t.Fatalf("after recovery: %v", comp)
	}
}

// TestAppMetricsUnreachable: nothing listening, and an endpoint slower than
// the timeout: unhealthy, and the provider is still collected.
func TestAppMetricsUnreachable(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL + "/metrics"
	dead.Close()
	c, m, _ := setupApp(t, http.NotFoundHandler(), AppMetrics{URL: deadURL})
	m.set(sample("acme", "storage_bytes", 3))
	if got := collect(t, c); !sameValues(got, map[string]float64{"my_db.storage_bytes": 3}) {
		t.Fatalf("spooled %v", got)
	}
	if comp := appComponent(t, c); comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || !strings.Contains(comp.GetMessage(), "connect") {
		t.Fatalf("unreachable: %v", comp)
	}

	release := make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	c, m, _ = setupApp(t, slow, AppMetrics{Timeout: time.Second})
	defer close(release)
	m.set(sample("acme", "storage_bytes", 4))
	start := time.Now()
	if got := collect(t, c); !sameValues(got, map[string]float64{"my_db.storage_bytes": 4}) {
		t.Fatalf("spooled %v", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("round took %s with a 1s scrape timeout", d)
	}
	if comp := appComponent(t, c); comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY ||
		!strings.Contains(comp.GetMessage(), "deadline exceeded") && !strings.Contains(comp.GetMessage(), "timeout") {
		t.Fatalf("slow endpoint: %v", comp)
	}
}

// TestAppMetricsOversized: a body over the bound is refused, whether it
// announces its length or not.
func TestAppMetricsOversized(t *testing.T) {
	a := &app{}
	a.set(200, exposition(map[string]float64{"acme,200": 5}, nil)+strings.Repeat("# padding\n", 200))
	c, _, _ := setupApp(t, a, AppMetrics{MaxBytes: 1024})
	collect(t, c)
	if comp := appComponent(t, c); comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || !strings.Contains(comp.GetMessage(), "larger than 1024 bytes") {
		t.Fatalf("small bound: %v", comp)
	}

	// The default bound, 8 MiB, against a streamed 9 MiB body.
	streamed := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		line := strings.Repeat("#", 1023) + "\n"
		for range 9 * 1024 {
			if _, err := io.WriteString(w, line); err != nil {
				return
			}
		}
	})
	c, _, _ = setupApp(t, streamed, AppMetrics{})
	collect(t, c)
	if comp := appComponent(t, c); comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || !strings.Contains(comp.GetMessage(), fmt.Sprintf("larger than %d bytes", DefaultAppMetricsMaxBytes)) {
		t.Fatalf("default bound: %v", comp)
	}
}

// TestAppMetricsClientGolang scrapes what client_golang serves (content
// negotiation, gzip, its bucket layout), as a vendor app would expose it.
func TestAppMetricsClientGolang(t *testing.T) {
	reg := prometheus.NewRegistry()
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "http_requests_total", Help: "Requests."}, []string{"tenant", "code"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "http_request_duration_seconds", Help: "Latency.", Buckets: prometheus.DefBuckets}, []string{"tenant"})
	reg.MustRegister(reqs, dur)
	observe := func(tenant string, n int, code string, seconds float64) {
		for range n {
			reqs.WithLabelValues(tenant, code).Inc()
			dur.WithLabelValues(tenant).Observe(seconds)
		}
	}
	c, _, _ := setupApp(t, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), AppMetrics{})
	if got := collect(t, c); len(got) != 0 {
		t.Fatalf("baseline of an app that served nothing: %v", got)
	}
	if comp := appComponent(t, c); !strings.Contains(comp.GetMessage(), "http_requests_total not exposed") {
		t.Errorf("component %v", comp)
	}
	// Everything after the baseline counts whole, the series being new.
	observe("acme", 90, "200", 0.01)
	observe("acme", 10, "500", 0.3)
	observe("globex", 1000, "200", 9)
	got := collect(t, c)
	// DefBuckets: 90 in ≤0.01, 10 in (0.25, 0.5]; rank 95 → 0.25 + 0.25 × 5/10.
	if want := map[string]float64{MeterAppRequests: 100, MeterAppErrors: 10, MeterAppLatencyP95: 0.375}; !sameValues(got, want) {
		t.Fatalf("records %v, want %v", got, want)
	}
	observe("acme", 19, "200", 0.04)
	observe("acme", 1, "503", 2)
	got = collect(t, c)
	// 19 in (0.025, 0.05], 1 in (1, 2.5]; rank 19 → 0.025 + 0.025 × 19/19.
	if want := map[string]float64{MeterAppRequests: 20, MeterAppErrors: 1, MeterAppLatencyP95: 0.05}; !sameValues(got, want) {
		t.Fatalf("records %v, want %v", got, want)
	}
}

// TestBucketQuantile checks the estimate against hand computations and
// PromQL's edge cases.
func TestBucketQuantile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		buckets map[float64]float64
		total   float64
		q, want float64
	}{
		{"first bucket from zero", map[float64]float64{1: 10, 2: 20}, 20, 0.25, 0.5},
		{"interpolated", map[float64]float64{1: 10, 2: 20}, 20, 0.95, 1.9},
		{"in +Inf: largest finite bound", map[float64]float64{1: 10, 2: 20}, 100, 0.95, 2},
		{"rank on a bound", map[float64]float64{0.1: 95, 0.2: 100}, 100, 0.95, 0.1},
		{"non-monotonic made monotonic", map[float64]float64{1: 10, 2: 5, 4: 20}, 20, 0.75, 3},
		{"negative first bound", map[float64]float64{-1: 10, 0: 20}, 20, 0.25, -1},
		{"no finite bucket", map[float64]float64{}, 20, 0.95, math.NaN()},
		{"no observations", map[float64]float64{1: 0}, 0, 0.95, math.NaN()},
	} {
		got := bucketQuantile(tc.q, tc.buckets, tc.total)
		if !(got == tc.want || math.IsNaN(got) && math.IsNaN(tc.want)) && math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestAppMetricsConfig: every problem at once; a provider named "app" is
// refused.
func TestAppMetricsConfig(t *testing.T) {
	err := AppMetrics{URL: "ftp://user:pw@example.com/metrics#x", TenantLabel: "2bad", Timeout: 2 * time.Minute}.Validate()
	for _, w := range []string{"scheme must be http or https", "credentials", "fragment", "tenant_label", "timeout: 2m0s is outside 1s..1m0s"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v does not mention %q", err, w)
		}
	}
	if err := (AppMetrics{URL: "https://app.internal:9090/metrics"}).Validate(); err != nil {
		t.Errorf("valid: %v", err)
	}
	if err := (AppMetrics{}).Validate(); err == nil || !strings.Contains(err.Error(), "url is required") {
		t.Errorf("empty: %v", err)
	}
	sp, err := spool.Open(filepath.Join(t.TempDir(), spool.FileName), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	_, err = New(Config{Spool: sp, Tenant: "acme", Providers: provs{"app": nil}, AppMetrics: &AppMetrics{URL: "http://127.0.0.1/metrics"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), `provider named "app"`) {
		t.Errorf("provider named app: %v", err)
	}
}

func sameValues(got, want map[string]float64) bool {
	if len(got) != len(want) {
		return false
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok || math.Abs(g-w) > 1e-9 {
			return false
		}
	}
	return true
}
