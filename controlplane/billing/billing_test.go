package billing

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

const apiKey = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"

// t0 is inside hour h0; the tests' clock starts well after h1 closed.
var (
	h0  = time.Date(2025, 3, 4, 5, 0, 0, 0, time.UTC)
	h1  = h0.Add(time.Hour)
	t0  = h0.Add(6*time.Minute + 7*time.Second)
	now = h0.Add(2*time.Hour + 10*time.Minute) // h0 and h1 closed, h2 open
)

// request is what the endpoint received.
type request struct {
	Method, Path, ContentType, Auth, IdemKey, Body string
}

// endpoint is a local meter-events server that records requests and answers
// with respond (200 when nil).
type endpoint struct {
	*httptest.Server
	mu      sync.Mutex
	reqs    []request
	respond func(n int, r request) (status int, header map[string]string, body string)
}

func newEndpoint(t *testing.T) *endpoint {
	e := &endpoint{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req := request{r.Method, r.URL.Path, r.Header.Get("Content-Type"), r.Header.Get("Authorization"), r.Header.Get("Idempotency-Key"), string(body)}
		e.mu.Lock()
		e.reqs = append(e.reqs, req)
		n, respond := len(e.reqs), e.respond
		e.mu.Unlock()
		status, header, resp := 200, map[string]string(nil), `{"object":"billing.meter_event"}`
		if respond != nil {
			status, header, resp = respond(n, req)
		}
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		io.WriteString(w, resp)
	}))
	t.Cleanup(e.Close)
	return e
}

func (e *endpoint) requests() []request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]request(nil), e.reqs...)
}

func (e *endpoint) setRespond(f func(n int, r request) (int, map[string]string, string)) {
	e.mu.Lock()
	e.respond = f
	e.mu.Unlock()
}

// fixture is a real SQLite store with usage, an endpoint and an exporter.
type fixture struct {
	st    store.Store
	ep    *endpoint
	logs  *bytes.Buffer
	clock time.Time
	slept []time.Duration
	cfg   Config
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := t.Context()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "attache.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, tenant := range []string{"acme", "beta"} {
		if err := st.CreateTenant(ctx, store.Tenant{Name: tenant}, auditlog.Entry{Action: "tenant.create"}); err != nil {
			t.Fatal(err)
		}
		secret := sha256.Sum256([]byte(tenant))
		tok := store.JoinToken{ID: "tok-" + tenant, Tenant: tenant, SecretHash: secret[:], ExpiresAt: t0.Add(time.Hour)}
		if err := st.CreateJoinToken(ctx, tok, auditlog.Entry{Action: "jointoken.create"}); err != nil {
			t.Fatal(err)
		}
		a := store.Agent{Tenant: tenant, ID: "a1", SPIFFEID: "spiffe://example.org/tenant/" + tenant + "/agent/a1", CertExpiresAt: t0.Add(time.Hour)}
		if _, err := st.Enroll(ctx, tok.ID, secret[:], t0, a, auditlog.Entry{Action: "agent.enroll"}); err != nil {
			t.Fatal(err)
		}
	}
	f := &fixture{st: st, ep: newEndpoint(t), logs: &bytes.Buffer{}, clock: now}
	f.cfg = Config{
		Endpoint: f.ep.URL + "/v1/billing/meter_events",
		APIKey:   apiKey,
		Meters: map[string]Meter{
			"requests":   {EventName: "api_requests", Aggregation: AggregationSum},
			"vcpu":       {EventName: "peak_vcpus", Aggregation: AggregationMax},
			"storage.gb": {EventName: "storage_gb", Aggregation: AggregationLast},
		},
		Customers: func(_ context.Context, tenant string) (string, bool, error) {
			if tenant == "acme" {
				return "cus_ACME", true, nil
			}
			return "", false, nil
		},
		MaxAttempts: 3,
		Store:       st,
		Logger:      slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:         func() time.Time { return f.clock },
	}
	return f
}

func (f *fixture) ingest(t *testing.T, tenant string, seq uint64, recs ...store.UsageRecord) {
	t.Helper()
	if _, err := f.st.IngestUsage(t.Context(), store.AgentKey{Tenant: tenant, ID: "a1"}, seq, recs); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) exporter(t *testing.T) *Exporter {
	t.Helper()
	e, err := New(f.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.sleep = func(ctx context.Context, d time.Duration) error {
		f.slept = append(f.slept, d)
		return ctx.Err()
	}
	return e
}

func (f *fixture) exports(t *testing.T) map[string]store.BillingExport {
	t.Helper()
	es, err := f.st.ListExports(t.Context(), "", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]store.BillingExport{}
	for _, e := range es {
		m[e.Tenant+"/"+e.Meter+"@"+e.Hour.Format("15")] = e
	}
	return m
}

func mustExport(t *testing.T, e *Exporter, want Summary) {
	t.Helper()
	got, err := e.ExportOnce(t.Context())
	if err != nil {
		t.Fatalf("ExportOnce: %v", err)
	}
	if got != want {
		t.Fatalf("ExportOnce = %+v, want %+v", got, want)
	}
}

func rec(meter string, v float64, at time.Time) store.UsageRecord {
	return store.UsageRecord{Meter: meter, Value: v, At: at}
}

// wantID computes the identifier independently of Identifier.
func wantID(tenant, meter string, hour time.Time) string {
	sum := sha256.Sum256([]byte(tenant + "|" + meter + "|" + hour.Format("2006-01-02T15:04:05Z")))
	return "attache-" + hex.EncodeToString(sum[:16])
}

// TestExport: exact requests for closed hours, one per tenant, meter and
// hour; the ledger; nothing new the second time; the open hour waits.
func TestExport(t *testing.T) {
	f := newFixture(t)
	f.ingest(t, "acme", 1,
		rec("requests", 120, t0), rec("requests", 30, t0.Add(time.Minute)), rec("requests", 7, h1.Add(time.Minute)),
		rec("vcpu", 2, t0), rec("vcpu", 8, t0.Add(time.Minute)), rec("vcpu", 4, t0.Add(2*time.Minute)),
		rec("storage.gb", 10.5, t0.Add(2*time.Minute)), rec("storage.gb", 12.25, t0),
		rec("debug.spans", 99, t0),                           // not exported
		rec("requests", 1000, h1.Add(time.Hour+time.Minute)), // hour 2: still open
	)
	f.ingest(t, "beta", 1, rec("requests", 5, t0)) // beta has no customer
	e := f.exporter(t)
	mustExport(t, e, Summary{Sent: 4, Skipped: 2})

	type event struct{ name, value, hour string }
	want := map[string]event{ // by identifier
		wantID("acme", "requests", h0):   {"api_requests", "150", "h0"},
		wantID("acme", "requests", h1):   {"api_requests", "7", "h1"},
		wantID("acme", "vcpu", h0):       {"peak_vcpus", "8", "h0"},
		wantID("acme", "storage.gb", h0): {"storage_gb", "10.5", "h0"},
	}
	reqs := f.ep.requests()
	if len(reqs) != len(want) {
		t.Fatalf("%d requests, want %d: %+v", len(reqs), len(want), reqs)
	}
	for _, r := range reqs {
		ev, ok := want[r.IdemKey]
		if !ok {
			t.Fatalf("unexpected Idempotency-Key %q", r.IdemKey)
		}
		delete(want, r.IdemKey)
		ts := h0
		if ev.hour == "h1" {
			ts = h1
		}
		body := fmt.Sprintf("event_name=%s&identifier=%s&payload%%5Bstripe_customer_id%%5D=cus_ACME&payload%%5Bvalue%%5D=%s&timestamp=%d",
			ev.name, r.IdemKey, ev.value, ts.Unix())
		if r.Body != body {
			t.Errorf("body\n %s\nwant\n %s", r.Body, body)
		}
		if r.Method != http.MethodPost || r.Path != "/v1/billing/meter_events" || r.ContentType != "application/x-www-form-urlencoded" ||
			r.Auth != "Bearer "+apiKey {
			t.Errorf("request %+v", r)
		}
		form, err := url.ParseQuery(r.Body)
		if err != nil || form.Get("identifier") != r.IdemKey || form.Get("payload[stripe_customer_id]") != "cus_ACME" {
			t.Errorf("form %v (%v)", form, err)
		}
	}

	ledger := f.exports(t)
	if len(ledger) != 6 {
		t.Fatalf("ledger has %d rows: %+v", len(ledger), ledger)
	}
	if r := ledger["acme/requests@05"]; r.Status != store.ExportSent || r.Value != 150 || r.Attempts != 1 || r.Identifier != wantID("acme", "requests", h0) || !r.ExportedAt.Equal(now) {
		t.Errorf("ledger acme/requests@05 = %+v", r)
	}
	if r := ledger["acme/debug.spans@05"]; r.Status != store.ExportSkipped || r.LastError != "meter is not exported" {
		t.Errorf("ledger acme/debug.spans@05 = %+v", r)
	}
	if r := ledger["beta/requests@05"]; r.Status != store.ExportSkipped || r.LastError != "tenant has no billing customer" || r.Attempts != 0 {
		t.Errorf("ledger beta/requests@05 = %+v", r)
	}
	if n := strings.Count(f.logs.String(), "tenant has no billing customer"); n != 1 {
		t.Errorf("the missing customer was logged %d times, want once per pass", n)
	}

	// Exporting again sends nothing new.
	mustExport(t, e, Summary{})
	if n := len(f.ep.requests()); n != 4 {
		t.Errorf("second pass sent %d more requests", n-4)
	}

	// Hour 2 is exported only after its end plus Delay (5m).
	f.clock = h1.Add(2*time.Hour + 4*time.Minute)
	mustExport(t, e, Summary{})
	f.clock = h1.Add(2*time.Hour + 5*time.Minute)
	mustExport(t, e, Summary{Sent: 1})
	if r := f.ep.requests()[4]; r.IdemKey != wantID("acme", "requests", h1.Add(time.Hour)) || !strings.Contains(r.Body, "payload%5Bvalue%5D=1000&") {
		t.Errorf("hour 2 request %+v", r)
	}

	// One audit record per pass that recorded something.
	recs, err := f.st.ListAudit(t.Context(), store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var audits []auditlog.Record
	for _, r := range recs {
		if r.Action == ActionExport {
			audits = append(audits, r)
		}
	}
	if len(audits) != 2 || audits[0].Outcome != auditlog.OutcomeSuccess || !strings.Contains(string(audits[0].Detail), `"sent":4`) {
		t.Errorf("audit records %+v", audits)
	}
	if strings.Contains(f.logs.String(), apiKey) {
		t.Error("the API key is in the logs")
	}
}

// TestRetry: a 500 is retried with the same identifier and body; a 429's
// Retry-After is respected and bounded.
func TestRetry(t *testing.T) {
	f := newFixture(t)
	f.ingest(t, "acme", 1, rec("requests", 3, t0), rec("vcpu", 2, t0))
	f.ep.setRespond(func(n int, r request) (int, map[string]string, string) {
		switch n {
		case 1:
			return 500, nil, `{"error":{"message":"internal"}}`
		case 3:
			return 429, map[string]string{"Retry-After": "2"}, `{"error":{"message":"slow down"}}`
		case 4:
			return 503, map[string]string{"Retry-After": "3600"}, ``
		}
		return 200, nil, `{}`
	})
	mustExport(t, f.exporter(t), Summary{Sent: 2})
	reqs := f.ep.requests()
	if len(reqs) != 5 {
		t.Fatalf("%d requests, want 5", len(reqs))
	}
	if reqs[0] != reqs[1] || reqs[2] != reqs[3] || reqs[3] != reqs[4] {
		t.Errorf("a retry differs from the first attempt: %+v", reqs)
	}
	if len(f.slept) != 3 || f.slept[0] < DefaultBackoff/2 || f.slept[0] > DefaultBackoff*3/2 || f.slept[1] != 2*time.Second || f.slept[2] != maxRetryAfter {
		t.Errorf("slept %v, want ~%v, 2s (Retry-After) and %v (Retry-After cut)", f.slept, DefaultBackoff, maxRetryAfter)
	}
	ledger := f.exports(t)
	if r := ledger["acme/requests@05"]; r.Status != store.ExportSent || r.Attempts != 2 {
		t.Errorf("requests: %+v", r)
	}
	if r := ledger["acme/vcpu@05"]; r.Status != store.ExportSent || r.Attempts != 3 {
		t.Errorf("vcpu: %+v", r)
	}
}

// TestClientError: a 400 is recorded failed with the endpoint's message and
// not retried in the pass; the next pass tries again.
func TestClientError(t *testing.T) {
	f := newFixture(t)
	f.ingest(t, "acme", 1, rec("requests", 3, t0), rec("vcpu", 2, t0))
	f.ep.setRespond(func(n int, r request) (int, map[string]string, string) {
		if strings.Contains(r.Body, "api_requests") {
			return 400, nil, `{"error":{"message":"No such customer: 'cus_ACME'","type":"invalid_request_error"}}`
		}
		return 200, nil, `{}`
	})
	e := f.exporter(t)
	mustExport(t, e, Summary{Sent: 1, Failed: 1})
	if n := len(f.ep.requests()); n != 2 {
		t.Errorf("%d requests, want 2 (no retry of the 400)", n)
	}
	r := f.exports(t)["acme/requests@05"]
	if r.Status != store.ExportFailed || r.Attempts != 1 || r.LastError != "400 Bad Request: No such customer: 'cus_ACME'" {
		t.Errorf("ledger %+v", r)
	}
	f.ep.setRespond(nil)
	f.clock = f.clock.Add(time.Minute)
	mustExport(t, e, Summary{Sent: 1})
	if r := f.exports(t)["acme/requests@05"]; r.Status != store.ExportSent || r.Attempts != 2 || r.LastError != "" {
		t.Errorf("after the second pass: %+v", r)
	}
	mustExport(t, e, Summary{})
}

// TestEndpointDown: when an event exhausts its attempts on retryable
// errors, it is recorded failed and the pass stops; the rest waits.
func TestEndpointDown(t *testing.T) {
	f := newFixture(t)
	f.ingest(t, "acme", 1, rec("requests", 3, t0), rec("vcpu", 2, t0), rec("storage.gb", 1, t0))
	f.ep.setRespond(func(int, request) (int, map[string]string, string) { return 502, nil, "<html>bad gateway</html>" })
	e := f.exporter(t)
	sum, err := e.ExportOnce(t.Context())
	if !errors.Is(err, errUnavailable) || sum != (Summary{Failed: 1}) {
		t.Fatalf("ExportOnce = %+v, %v", sum, err)
	}
	if n := len(f.ep.requests()); n != 3 {
		t.Errorf("%d requests, want 3 (MaxAttempts)", n)
	}
	ledger := f.exports(t)
	if len(ledger) != 1 {
		t.Fatalf("ledger %+v", ledger)
	}
	for _, r := range ledger {
		if r.Status != store.ExportFailed || r.Attempts != 3 || r.LastError != "502 Bad Gateway: <html>bad gateway</html>" {
			t.Errorf("ledger %+v", r)
		}
	}

	// Transport errors count as the endpoint being down too.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	f.cfg.Endpoint = "http://" + closed + "/v1/billing/meter_events"
	if _, err := f.exporter(t).ExportOnce(t.Context()); !errors.Is(err, errUnavailable) {
		t.Fatalf("ExportOnce to a closed port: %v", err)
	}

	// Back up: everything goes, the failed hour included.
	f.ep.setRespond(nil)
	f.clock = f.clock.Add(time.Minute)
	mustExport(t, e, Summary{Sent: 3})
	if strings.Contains(f.logs.String(), apiKey) {
		t.Error("the API key is in the logs")
	}
}

// TestCustomerLookupError: the tenant's hours are recorded failed, looked
// up once per pass, and retried next pass.
func TestCustomerLookupError(t *testing.T) {
	f := newFixture(t)
	f.ingest(t, "acme", 1, rec("requests", 3, t0), rec("vcpu", 2, t0))
	calls := 0
	f.cfg.Customers = func(context.Context, string) (string, bool, error) {
		calls++
		if calls == 1 {
			return "", false, errors.New("billing database unreachable")
		}
		return "cus_ACME", true, nil
	}
	e := f.exporter(t)
	mustExport(t, e, Summary{Failed: 2})
	if r := f.exports(t)["acme/vcpu@05"]; r.Status != store.ExportFailed || r.LastError != "customer lookup: billing database unreachable" {
		t.Errorf("ledger %+v", r)
	}
	f.clock = f.clock.Add(time.Minute)
	mustExport(t, e, Summary{Sent: 2})
	if calls != 2 {
		t.Errorf("Customers called %d times, want once per pass", calls)
	}
}

// TestManyCandidates: a pass pages through more hours than one page, with
// failures moving to the back, and ends.
func TestManyCandidates(t *testing.T) {
	f := newFixture(t)
	var recs []store.UsageRecord
	for i := range pageSize + 50 {
		recs = append(recs, rec("requests", 1, h0.Add(-time.Duration(i)*time.Hour)))
	}
	f.ingest(t, "acme", 1, recs...)
	f.ep.setRespond(func(n int, r request) (int, map[string]string, string) {
		if n%10 == 0 {
			return 400, nil, `{"error":{"message":"rejected"}}`
		}
		return 200, nil, `{}`
	})
	f.clock = h0.Add(time.Hour + 10*time.Minute)
	e := f.exporter(t)
	sum, err := e.ExportOnce(t.Context())
	if err != nil || sum.Sent+sum.Failed != pageSize+50 || sum.Failed != (pageSize+50)/10 {
		t.Fatalf("ExportOnce = %+v, %v", sum, err)
	}
	f.ep.setRespond(nil)
	f.clock = f.clock.Add(time.Minute)
	mustExport(t, e, Summary{Sent: (pageSize + 50) / 10})
}

// TestRun exports on its own and stops with the context.
func TestRun(t *testing.T) {
	f := newFixture(t)
	f.ingest(t, "acme", 1, rec("requests", 3, t0))
	f.cfg.Interval = 10 * time.Millisecond
	e := f.exporter(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(f.ep.requests()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // a few more passes
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if n := len(f.ep.requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestIdentifier(t *testing.T) {
	// Fixed value: the identifier must never change between releases, or
	// a re-export after an upgrade would bill twice.
	const fixed = "attache-c6ce73a2c6a2f138639919b356565bdf" // sha256("acme|requests|2025-03-04T05:00:00Z")
	if got := Identifier("acme", "requests", h0); got != fixed || got != wantID("acme", "requests", h0) {
		t.Errorf("Identifier = %q", got)
	}
	loc := time.FixedZone("CET", 3600)
	if Identifier("acme", "requests", h0.In(loc)) != Identifier("acme", "requests", h0) {
		t.Error("Identifier depends on the time's location")
	}
	if Identifier("acme", "requests", h0) == Identifier("acme", "requests", h1) || Identifier("acme", "a", h0) == Identifier("acme", "b", h0) {
		t.Error("identifiers collide")
	}
}

func TestConfig(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"http to a remote host", func(c *Config) { c.Endpoint = "http://billing.example.com/v1/billing/meter_events" }, "must be https"},
		{"http to localhost by name", func(c *Config) { c.Endpoint = "http://localhost:8080/x" }, "must be https"},
		{"ftp", func(c *Config) { c.Endpoint = "ftp://example.com/x" }, "must be https"},
		{"relative", func(c *Config) { c.Endpoint = "/v1/billing/meter_events" }, "absolute"},
		{"user info", func(c *Config) { c.Endpoint = "https://user:pw@example.com/x" }, "user info"},
		{"no key", func(c *Config) { c.APIKey = "" }, "api key"},
		{"key with a newline", func(c *Config) { c.APIKey = "sk\nX-Evil: 1" }, "api key"},
		{"no meters", func(c *Config) { c.Meters = nil }, "no meters"},
		{"bad meter name", func(c *Config) { c.Meters = map[string]Meter{"Req": {EventName: "e", Aggregation: "sum"}} }, `"Req"`},
		{"no event name", func(c *Config) { c.Meters = map[string]Meter{"req": {Aggregation: "sum"}} }, "event name"},
		{"bad aggregation", func(c *Config) { c.Meters = map[string]Meter{"req": {EventName: "e", Aggregation: "avg"}} }, `aggregation "avg"`},
		{"no customers", func(c *Config) { c.Customers = nil }, "customer"},
		{"no store", func(c *Config) { c.Store = nil }, "store"},
		{"negative delay", func(c *Config) { c.Delay = -time.Second }, "delay"},
		{"negative attempts", func(c *Config) { c.MaxAttempts = -1 }, "attempts"},
	}
	for _, tt := range tests {
		cfg := f.cfg
		tt.mod(&cfg)
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New error %v, want one mentioning %q", tt.name, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), apiKey) {
			t.Errorf("%s: the error shows the API key", tt.name)
		}
	}
	cfg := f.cfg
	cfg.Endpoint = "https://api.stripe.com/v1/billing/meter_events"
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if e.cfg.Interval != DefaultInterval || e.cfg.Delay != DefaultDelay || e.cfg.Backoff != DefaultBackoff || e.cfg.HTTPClient == nil {
		t.Errorf("defaults not applied: %+v", e.cfg)
	}
}
