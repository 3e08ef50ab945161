package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"attache.dev/attache/agent/spool"
	"attache.dev/attache/agent/telemetry"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestHandler: the version on / and /healthz as before, -unhealthy, errors
// on demand, and the request metrics on /metrics (health checks and scrapes
// not counted).
func TestHandler(t *testing.T) {
	srv := httptest.NewServer(newHandler("v7", "acme", func() bool { return false }))
	defer srv.Close()
	if code, body := get(t, srv.URL+"/"); code != 200 || !strings.HasPrefix(body, "sampleapp v7 ") {
		t.Errorf("/: %d %q", code, body)
	}
	code, body := get(t, srv.URL+"/healthz")
	var h struct {
		Version string `json:"version"`
		Healthy bool   `json:"healthy"`
	}
	if err := json.Unmarshal([]byte(body), &h); err != nil || code != 200 || h.Version != "v7" || !h.Healthy {
		t.Errorf("/healthz: %d %q %v", code, body, err)
	}
	if code, _ := get(t, srv.URL+"/status/503"); code != 503 {
		t.Errorf("/status/503: %d", code)
	}
	if code, _ := get(t, srv.URL+"/status/99"); code != 400 {
		t.Errorf("/status/99: %d", code)
	}
	get(t, srv.URL+"/metrics")
	_, metrics := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`http_requests_total{code="200",tenant="acme"} 1`,
		`http_requests_total{code="503",tenant="acme"} 1`,
		`http_requests_total{code="400",tenant="acme"} 1`,
		`http_request_duration_seconds_count{tenant="acme"} 3`,
		`http_request_duration_seconds_bucket{tenant="acme",le="+Inf"} 3`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, metrics)
		}
	}

	sick := httptest.NewServer(newHandler("v8", "", func() bool { return true }))
	defer sick.Close()
	if code, _ := get(t, sick.URL+"/healthz"); code != 503 {
		t.Errorf("unhealthy /healthz: %d", code)
	}
	get(t, sick.URL+"/")
	if _, metrics := get(t, sick.URL+"/metrics"); !strings.Contains(metrics, `http_requests_total{code="200"} 1`) ||
		!strings.Contains(metrics, "http_request_duration_seconds_count 1") || strings.Contains(metrics, "tenant=") {
		t.Errorf("without a tenant, no tenant label:\n%s", metrics)
	}
}

// TestScrapedByTheAgent: the agent's collector scrapes the app and reports
// its requests, errors and p95 latency for the tenant.
func TestScrapedByTheAgent(t *testing.T) {
	srv := httptest.NewServer(newHandler("v1", "acme", func() bool { return false }))
	defer srv.Close()
	sp, err := spool.Open(filepath.Join(t.TempDir(), spool.FileName), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	c, err := telemetry.New(telemetry.Config{Spool: sp, Tenant: "acme", AppMetrics: &telemetry.AppMetrics{URL: srv.URL + "/metrics"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	get(t, srv.URL+"/")
	c.Collect(t.Context()) // the baseline
	for range 5 {
		get(t, srv.URL+"/")
	}
	get(t, srv.URL+"/status/500")
	get(t, srv.URL+"/status/502")
	get(t, srv.URL+"/healthz")
	c.Collect(t.Context())
	bs, err := c.Pending(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, b := range bs {
		for _, r := range b.GetRecords() {
			if r.GetTenant() != "acme" {
				t.Errorf("record %v", r)
			}
			got[r.GetMeter()] = r.GetValue()
		}
	}
	if got[telemetry.MeterAppRequests] != 7 || got[telemetry.MeterAppErrors] != 2 || len(got) != 3 {
		t.Fatalf("records %v, want 7 requests and 2 errors", got)
	}
	if p95 := got[telemetry.MeterAppLatencyP95]; !(p95 > 0 && p95 <= 10) {
		t.Errorf("p95 %v, want within the default buckets", p95)
	}
	for _, comp := range c.Health() {
		if comp.GetName() == telemetry.AppMetricsComponent && comp.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY {
			t.Errorf("component %v", comp)
		}
	}
}
