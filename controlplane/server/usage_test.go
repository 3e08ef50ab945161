package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"attache.dev/attache/controlplane/billing"
	"attache.dev/attache/controlplane/ca"
	"attache.dev/attache/controlplane/config"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/identity"
)

// syncBuffer collects logs written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// meterEvents is a billing endpoint that records what it is sent.
type meterEvents struct {
	mu   sync.Mutex
	reqs []recordedEvent
}

type recordedEvent struct {
	auth, idempotencyKey, contentType string
	form                              url.Values
}

func (m *meterEvents) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	form, _ := url.ParseQuery(string(body))
	m.mu.Lock()
	m.reqs = append(m.reqs, recordedEvent{r.Header.Get("Authorization"), r.Header.Get("Idempotency-Key"), r.Header.Get("Content-Type"), form})
	m.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"object":"billing.meter_event"}`)
}

func (m *meterEvents) events() []recordedEvent {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]recordedEvent(nil), m.reqs...)
}

func createTenant(t *testing.T, st store.Store, name string, labels map[string]string) {
	t.Helper()
	if err := st.CreateTenant(context.Background(), store.Tenant{Name: name, Labels: labels, CreatedAt: time.Now()},
		auditlog.Entry{Actor: "test", Role: "admin", Action: "tenant.create", Tenant: name, Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
}

// TestBillingExport runs the server with billing configured against a local
// endpoint: usage ingested through the store is posted once per tenant,
// meter and closed hour, to the tenant's customer, with the key from its
// file; nothing is sent twice and the key never reaches the logs.
func TestBillingExport(t *testing.T) {
	const apiKey = "sk_test_51NotARealKey0123456789"
	endpoint := &meterEvents{}
	hs := httptest.NewServer(endpoint)
	t.Cleanup(hs.Close)
	keyFile := filepath.Join(t.TempDir(), "billing.key")
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cp := startCPWith(t, func(c *config.Config) {
		c.Billing = &config.Billing{
			Endpoint:   hs.URL + "/v1/billing/meter_events",
			APIKeyFile: keyFile,
			Interval:   config.Duration(time.Second),
			Delay:      config.Duration(time.Second),
			Meters: map[string]config.BillingMeter{
				"api.requests":  {EventName: "api_requests"},
				"storage.bytes": {EventName: "storage_gb_hours", Aggregation: "max"},
			},
		}
	}, logs)
	st := cp.Store()
	createTenant(t, st, "acme", map[string]string{config.DefaultCustomerLabel: "cus_Acme42"})
	createTenant(t, st, "globex", nil) // no customer: not billed
	acme, _ := cp.agent(t, "acme")
	globex, _ := cp.agent(t, "globex")
	acmeTenant, acmeID, _ := identity.ParseAgentID(cp.td, acme.ID)
	globexTenant, globexID, _ := identity.ParseAgentID(cp.td, globex.ID)

	hour := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	ctx := context.Background()
	if _, err := st.IngestUsage(ctx, store.AgentKey{Tenant: acmeTenant, ID: acmeID}, 1, []store.UsageRecord{
		{Meter: "api.requests", Value: 3, At: hour.Add(time.Minute)},
		{Meter: "api.requests", Value: 4, At: hour.Add(59 * time.Minute)},
		{Meter: "storage.bytes", Value: 10, At: hour.Add(time.Minute)},
		{Meter: "storage.bytes", Value: 12, At: hour.Add(2 * time.Minute)},
		{Meter: "debug.samples", Value: 1, At: hour}, // not a billed meter
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.IngestUsage(ctx, store.AgentKey{Tenant: globexTenant, ID: globexID}, 1, []store.UsageRecord{
		{Meter: "api.requests", Value: 100, At: hour},
	}); err != nil {
		t.Fatal(err)
	}

	// Wait until every hour has a final ledger row.
	deadline := time.Now().Add(15 * time.Second)
	var exports []store.BillingExport
	for {
		var err error
		if exports, err = st.ListExports(ctx, "", time.Time{}, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if len(exports) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger after 15s: %+v; requests: %+v", exports, endpoint.events())
		}
		time.Sleep(100 * time.Millisecond)
	}
	status := map[string]string{}
	for _, e := range exports {
		status[e.Tenant+"/"+e.Meter] = e.Status
	}
	if status["acme/api.requests"] != store.ExportSent || status["acme/storage.bytes"] != store.ExportSent ||
		status["acme/debug.samples"] != store.ExportSkipped || status["globex/api.requests"] != store.ExportSkipped {
		t.Fatalf("ledger: %v", status)
	}

	// Two more passes change nothing: the same hours are not sent again.
	time.Sleep(2500 * time.Millisecond)
	evs := endpoint.events()
	if len(evs) != 2 {
		t.Fatalf("%d requests, want 2: %+v", len(evs), evs)
	}
	byEvent := map[string]recordedEvent{}
	for _, e := range evs {
		byEvent[e.form.Get("event_name")] = e
	}
	for _, w := range []struct{ event, meter, value string }{{"api_requests", "api.requests", "7"}, {"storage_gb_hours", "storage.bytes", "12"}} {
		e, ok := byEvent[w.event]
		id := billing.Identifier("acme", w.meter, hour)
		if !ok || e.form.Get("payload[stripe_customer_id]") != "cus_Acme42" || e.form.Get("payload[value]") != w.value ||
			e.form.Get("timestamp") != strconv.FormatInt(hour.Unix(), 10) || e.form.Get("identifier") != id ||
			e.idempotencyKey != id || e.auth != "Bearer "+apiKey || !strings.HasPrefix(e.contentType, "application/x-www-form-urlencoded") {
			t.Fatalf("event %s: %+v", w.event, e)
		}
	}
	if strings.Contains(logs.String(), apiKey) {
		t.Fatal("the billing API key reached the logs")
	}
	if !strings.Contains(logs.String(), "billing export enabled") {
		t.Fatalf("no startup log line for the billing export:\n%s", logs.String())
	}
}

func TestBillingConfigErrors(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir, cfg.TrustDomain = t.TempDir(), "example.org"
	cfg.Agent.Listen, cfg.API.Listen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Billing = &config.Billing{Endpoint: "https://billing.example.com/events", APIKeyEnv: "ATTACHE_TEST_BILLING_KEY",
		Meters: map[string]config.BillingMeter{"api.requests": {EventName: "api_requests"}}}
	t.Setenv("ATTACHE_TEST_BILLING_KEY", "")
	_, err := New(context.Background(), cfg, discardLogger())
	if err == nil || !strings.Contains(err.Error(), "ATTACHE_TEST_BILLING_KEY") {
		t.Fatalf("unset key variable: %v", err)
	}
	cfg.Billing.Endpoint = "ftp://billing.example.com"
	if _, err := New(context.Background(), cfg, discardLogger()); err == nil || !strings.Contains(err.Error(), "billing.endpoint") {
		t.Fatalf("bad endpoint: %v", err)
	}
}

// TestMetricsEndpoint: /metrics is on the ops API listener, for API
// tokens, only when enabled.
func TestMetricsEndpoint(t *testing.T) {
	get := func(cp *testCP) (int, string) {
		t.Helper()
		authority, err := ca.LoadOrCreate(cp.dir, cp.td, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(authority.Certificate())
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
		req, err := http.NewRequest("GET", "https://"+cp.APIAddr().String()+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		if token, err := os.ReadFile(filepath.Join(cp.dir, AdminTokenFile)); err == nil {
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	on := startCPWith(t, func(c *config.Config) { c.Metrics.Enabled = true }, io.Discard)
	on.agent(t, "acme") // enrolled, never connected: silent
	code, body := get(on)
	if code != http.StatusOK || !strings.Contains(body, `attache_agents{state="silent"} 1`) ||
		!strings.Contains(body, `attache_tenant_agents{state="silent",tenant="acme"} 1`) || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("metrics on: %d\n%s", code, body)
	}
	if code, _ := get(startCP(t)); code != http.StatusNotFound {
		t.Fatalf("metrics off: GET /metrics = %d, want 404", code)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
