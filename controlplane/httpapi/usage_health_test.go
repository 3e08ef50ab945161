package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"attache.dev/attache/controlplane/httpapi"
	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

func (e *env) ingest(tenant, id string, seq uint64, recs ...store.UsageRecord) {
	e.t.Helper()
	if _, err := e.store.IngestUsage(context.Background(), store.AgentKey{Tenant: tenant, ID: id}, seq, recs); err != nil {
		e.t.Fatalf("IngestUsage: %v", err)
	}
}

func (e *env) usage(query string) apiv1.UsageList {
	e.t.Helper()
	var l apiv1.UsageList
	mustUnmarshal(e.t, e.do("GET", "/v1/usage?"+query, e.auditor, "").wantStatus(http.StatusOK).raw, &l)
	return l
}

func TestUsage(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"acme", "globex"} {
		e.do("POST", "/v1/tenants", e.admin, `{"name":"`+n+`"}`).wantStatus(http.StatusCreated)
	}
	e.enroll("acme", "a1")
	e.enroll("acme", "a2")
	e.enroll("globex", "g1")

	now := e.clock.Now()
	cur := now.Truncate(time.Hour)
	prev := cur.Add(-time.Hour)
	old := cur.Add(-30 * time.Hour) // outside the default window
	e.ingest("acme", "a1", 1,
		store.UsageRecord{Meter: "api.requests", Value: 3, At: prev.Add(time.Minute)},
		store.UsageRecord{Meter: "api.requests", Value: 7, At: prev.Add(2 * time.Minute)},
		store.UsageRecord{Meter: "storage.bytes", Value: 100, At: cur},
		store.UsageRecord{Meter: "api.requests", Value: 1000, At: old},
	)
	// A second agent of the tenant adds to the same hour; a re-sent batch
	// changes nothing.
	e.ingest("acme", "a2", 1, store.UsageRecord{Meter: "api.requests", Value: 5, At: prev.Add(30 * time.Minute)})
	e.ingest("acme", "a2", 1, store.UsageRecord{Meter: "api.requests", Value: 5, At: prev.Add(30 * time.Minute)})
	e.ingest("globex", "g1", 1, store.UsageRecord{Meter: "api.requests", Value: 1e6, At: prev})

	// Default window: the last 24 hours, tenant isolated.
	l := e.usage("tenant=acme")
	if l.Tenant != "acme" || !l.To.Equal(now) || !l.From.Equal(now.Add(-24*time.Hour)) {
		t.Fatalf("window = %s..%s", l.From, l.To)
	}
	want := []apiv1.UsageHour{
		{Tenant: "acme", Meter: "api.requests", Hour: prev, Sum: 15, Count: 3, Max: 7, Last: 5, LastAt: prev.Add(30 * time.Minute)},
		{Tenant: "acme", Meter: "storage.bytes", Hour: cur, Sum: 100, Count: 1, Max: 100, Last: 100, LastAt: cur},
	}
	if !usageEqual(l.Hours, want) {
		t.Fatalf("hours = %+v\nwant %+v", l.Hours, want)
	}

	// Meter filter; from/to: hours overlapping [from, to), to exclusive.
	q := url.Values{"tenant": {"acme"}, "meter": {"api.requests"},
		"from": {old.Add(10 * time.Minute).Format(time.RFC3339)}, "to": {cur.Format(time.RFC3339)}}
	l = e.usage(q.Encode())
	if len(l.Hours) != 2 || !l.Hours[0].Hour.Equal(old) || l.Hours[0].Sum != 1000 || !l.Hours[1].Hour.Equal(prev) || l.Meter != "api.requests" {
		t.Fatalf("filtered = %+v", l.Hours)
	}
	q.Set("to", prev.Format(time.RFC3339))
	if l = e.usage(q.Encode()); len(l.Hours) != 1 || !l.Hours[0].Hour.Equal(old) {
		t.Fatalf("to is not exclusive: %+v", l.Hours)
	}
	// Offsets are accepted and answered in UTC.
	q.Set("to", cur.In(time.FixedZone("x", 2*3600)).Format(time.RFC3339))
	if l = e.usage(q.Encode()); len(l.Hours) != 2 || l.To.Location() != time.UTC {
		t.Fatalf("offset time: %+v", l)
	}
	// An empty answer is an empty list, not null.
	if r := e.do("GET", "/v1/usage?tenant=acme&meter=nothing.here", e.operator, "").wantStatus(http.StatusOK); !strings.Contains(string(r.raw), `"hours":[]`) {
		t.Fatalf("empty usage: %s", r.raw)
	}

	long := url.Values{"tenant": {"acme"}, "from": {now.Add(-401 * 24 * time.Hour).Format(time.RFC3339)}, "to": {now.Format(time.RFC3339)}}
	for _, tc := range []struct {
		query  string
		status int
		msg    string
	}{
		{"", 400, "tenant: required"},
		{"tenant=Acme", 400, "tenant:"},
		{"tenant=acme&meter=Bad-Meter", 400, "meter:"},
		{"tenant=acme&from=yesterday", 400, "from:"},
		{"tenant=acme&to=2026-01-02", 400, "to:"},
		{"tenant=acme&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", 400, "must be before"},
		{"tenant=acme&from=2026-01-02T00:00:00Z&to=2026-01-02T00:00:00Z", 400, "must be before"},
		{long.Encode(), 400, "400 days"},
		{"tenant=initech", 404, "tenant initech not found"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			e.do("GET", "/v1/usage?"+tc.query, e.admin, "").wantError(tc.status, tc.msg)
		})
	}
	// Exactly 400 days is allowed.
	long.Set("from", now.Add(-400*24*time.Hour).Format(time.RFC3339))
	e.usage(long.Encode())
	e.do("GET", "/v1/usage?tenant=acme", "", "").wantStatus(http.StatusUnauthorized)
}

func usageEqual(got, want []apiv1.UsageHour) bool {
	return slices.EqualFunc(got, want, func(a, b apiv1.UsageHour) bool {
		return a.Tenant == b.Tenant && a.Meter == b.Meter && a.Hour.Equal(b.Hour) && a.Sum == b.Sum && a.Count == b.Count &&
			a.Max == b.Max && a.Last == b.Last && a.LastAt.Equal(b.LastAt)
	})
}

// healthJSON is what the agent API stores from a heartbeat: protojson of
// each component.
func healthJSON(t *testing.T, cs ...*agentv1.ComponentHealth) []byte {
	t.Helper()
	out := make([]json.RawMessage, 0, len(cs))
	for _, c := range cs {
		b, err := protojson.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	b, _ := json.Marshal(out)
	return b
}

func comp(name string, st agentv1.HealthStatus, msg string) *agentv1.ComponentHealth {
	return &agentv1.ComponentHealth{Name: name, Status: st, Message: msg}
}

// drifted marks c as drifted.
func drifted(c *agentv1.ComponentHealth, detail string) *agentv1.ComponentHealth {
	c.Drift, c.DriftDetail = true, detail
	return c
}

// connect records an open session and a heartbeat with the given health,
// as the agent API does.
func (e *env) connect(tenant, id string, at time.Time, health []byte) {
	e.t.Helper()
	ctx := context.Background()
	k := store.AgentKey{Tenant: tenant, ID: id}
	if err := e.store.RecordSessions(ctx, []store.SessionUpdate{{AgentKey: k, SessionID: "s-" + id, Connected: true, At: at, Version: "1.0." + id}}); err != nil {
		e.t.Fatal(err)
	}
	if err := e.store.RecordHeartbeats(ctx, []store.Heartbeat{{AgentKey: k, At: at, Health: health}}); err != nil {
		e.t.Fatal(err)
	}
}

const (
	healthy   = agentv1.HealthStatus_HEALTH_STATUS_HEALTHY
	degraded  = agentv1.HealthStatus_HEALTH_STATUS_DEGRADED
	unhealthy = agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
)

func TestFleetHealth(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"acme", "globex", "initech"} {
		e.do("POST", "/v1/tenants", e.admin, `{"name":"`+n+`"}`).wantStatus(http.StatusCreated)
	}
	for _, a := range []string{"a-healthy", "a-sick", "a-slow", "a-new", "a-gone", "a-odd", "a-drift", "a-shift"} {
		e.enroll("acme", a)
	}
	e.enroll("globex", "g-stale")
	e.enroll("globex", "g-ok")

	now := e.clock.Now()
	e.connect("acme", "a-healthy", now, healthJSON(t, comp("agent", healthy, "version 1"), comp("svid", healthy, "")))
	e.connect("acme", "a-sick", now, healthJSON(t, comp("agent", healthy, ""), comp("provider/postgres", unhealthy, "connection refused \x1b[31m"), comp("spool", degraded, "back-pressure")))
	e.connect("acme", "a-slow", now, healthJSON(t, comp("spool", degraded, "back-pressure")))
	// A component without a status (protojson leaves it out) or with one
	// this version does not know counts as degraded.
	// A drift detail without drift means nothing.
	e.connect("acme", "a-odd", now, []byte(`[{"name":"x"},{"name":"y","status":42},{"name":"z","status":"HEALTH_STATUS_HEALTHY","driftDetail":"stray"}]`))
	// Drift does not change the state; agents that report it come right
	// after the silent ones.
	e.connect("acme", "a-drift", now, healthJSON(t, comp("agent", healthy, ""),
		drifted(comp("provider/kubernetes/app", healthy, "3/3 ready"), "replicas: plan 3, live 5 \x1b[31m")))
	e.connect("acme", "a-shift", now, healthJSON(t, comp("spool", degraded, "back-pressure"),
		drifted(comp("provider/kubernetes/cfg", healthy, ""), "configmap app-config edited"), drifted(comp("provider/kubernetes/db", degraded, "slow"), "")))
	e.connect("acme", "a-gone", now, healthJSON(t, comp("agent", unhealthy, ""), drifted(comp("app", healthy, ""), "gone")))
	if _, err := e.store.RevokeAgent(context.Background(), store.AgentKey{Tenant: "acme", ID: "a-gone"}, "test", now,
		auditlog.Entry{Actor: "test", Role: "admin", Action: "agent.revoke", Tenant: "acme", Target: "a-gone", Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	// Seen, but longer ago than the connected window: silent, whatever its
	// last health said.
	e.connect("globex", "g-stale", now.Add(-httpapi.ConnectedWindow(0)-time.Second), healthJSON(t, comp("agent", unhealthy, "old news")))
	e.connect("globex", "g-ok", now, healthJSON(t, comp("agent", healthy, "")))

	var l apiv1.HealthList
	mustUnmarshal(t, e.do("GET", "/v1/health", e.auditor, "").wantStatus(http.StatusOK).raw, &l)
	var order []string
	for _, a := range l.Agents {
		order = append(order, a.State+" "+a.Tenant+"/"+a.ID)
	}
	wantOrder := []string{
		"unhealthy acme/a-sick",
		"silent acme/a-new",
		"silent globex/g-stale",
		"degraded acme/a-shift",
		"healthy acme/a-drift",
		"degraded acme/a-odd",
		"degraded acme/a-slow",
		"healthy acme/a-healthy",
		"healthy globex/g-ok",
		"revoked acme/a-gone",
	}
	if !slices.Equal(order, wantOrder) {
		t.Fatalf("order:\n%s\nwant:\n%s", strings.Join(order, "\n"), strings.Join(wantOrder, "\n"))
	}
	wantCounts := map[string]int{"unhealthy": 1, "silent": 2, "degraded": 3, "healthy": 3, "revoked": 1}
	if fmt.Sprint(l.Counts) != fmt.Sprint(wantCounts) || l.Drifted != 2 {
		t.Fatalf("counts = %v, drifted %d; want %v, drifted 2", l.Counts, l.Drifted, wantCounts)
	}
	sick := l.Agents[0]
	if !sick.Connected || sick.Components != 3 || sick.Version != "1.0.a-sick" || sick.LastSeenAt == nil || !sick.LastSeenAt.Equal(now) ||
		len(sick.Problems) != 2 ||
		sick.Problems[0] != (apiv1.HealthProblem{Name: "provider/postgres", Status: "unhealthy", Message: "connection refused \x1b[31m"}) ||
		sick.Problems[1] != (apiv1.HealthProblem{Name: "spool", Status: "degraded", Message: "back-pressure"}) {
		t.Fatalf("sick agent = %+v", sick)
	}
	if a := l.Agents[1]; a.Connected || a.LastSeenAt != nil || a.Components != 0 || a.Problems != nil {
		t.Fatalf("never-connected agent = %+v", a)
	}
	if a := l.Agents[2]; a.Connected || len(a.Problems) != 1 || a.Problems[0].Message != "old news" {
		t.Fatalf("stale agent = %+v (last known problems are kept)", a)
	}
	if a := l.Agents[3]; a.Drift != 2 || a.Components != 3 || len(a.Problems) != 3 ||
		a.Problems[0] != (apiv1.HealthProblem{Name: "spool", Status: "degraded", Message: "back-pressure"}) ||
		a.Problems[1] != (apiv1.HealthProblem{Name: "provider/kubernetes/cfg", Status: "healthy", Drift: true, DriftDetail: "configmap app-config edited"}) ||
		a.Problems[2] != (apiv1.HealthProblem{Name: "provider/kubernetes/db", Status: "degraded", Message: "slow", Drift: true}) {
		t.Fatalf("degraded agent with drift = %+v", a)
	}
	if a := l.Agents[4]; a.State != "healthy" || a.Drift != 1 || len(a.Problems) != 1 ||
		a.Problems[0] != (apiv1.HealthProblem{Name: "provider/kubernetes/app", Status: "healthy", Message: "3/3 ready", Drift: true, DriftDetail: "replicas: plan 3, live 5 \x1b[31m"}) {
		t.Fatalf("healthy agent with drift = %+v", a)
	}
	if a := l.Agents[5]; len(a.Problems) != 2 || a.Problems[0].Status != "unspecified" || a.Problems[1].Status != "unknown" || a.Components != 3 || a.Drift != 0 {
		t.Fatalf("odd agent = %+v", a)
	}
	if a := l.Agents[9]; a.Problems != nil || a.Connected || a.Drift != 0 {
		t.Fatalf("revoked agent = %+v", a)
	}
	for _, a := range l.Agents {
		if a.ID == "a-sick" || a.ID == "a-healthy" {
			if a.Drift != 0 {
				t.Fatalf("agent without drift = %+v", a)
			}
		}
	}

	// One tenant.
	mustUnmarshal(t, e.do("GET", "/v1/health?tenant=globex", e.operator, "").wantStatus(http.StatusOK).raw, &l)
	if len(l.Agents) != 2 || l.Agents[0].ID != "g-stale" || l.Counts["silent"] != 1 || l.Counts["unhealthy"] != 0 {
		t.Fatalf("globex = %+v", l)
	}
	r := e.do("GET", "/v1/health?tenant=initech", e.operator, "").wantStatus(http.StatusOK)
	if !strings.Contains(string(r.raw), `"agents":[]`) {
		t.Fatalf("tenant without agents: %s", r.raw)
	}
	e.do("GET", "/v1/health?tenant=nope", e.operator, "").wantError(http.StatusNotFound, "tenant nope not found")
	e.do("GET", "/v1/health?tenant=No_Pe", e.operator, "").wantError(http.StatusBadRequest, "tenant:")

	// Time passes without heartbeats: every connected agent goes silent.
	e.clock.Advance(httpapi.ConnectedWindow(0) + time.Second)
	mustUnmarshal(t, e.do("GET", "/v1/health", e.admin, "").wantStatus(http.StatusOK).raw, &l)
	if l.Counts["silent"] != 9 || l.Counts["revoked"] != 1 || l.Drifted != 2 {
		t.Fatalf("after the window: %v, drifted %d (silent agents keep their drift)", l.Counts, l.Drifted)
	}
}

func TestAgentHealthEvents(t *testing.T) {
	e := newEnv(t)
	e.do("POST", "/v1/tenants", e.admin, `{"name":"acme"}`).wantStatus(http.StatusCreated)
	e.enroll("acme", "a1")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	t0 := e.clock.Now()
	for i, cs := range [][]store.ComponentState{
		{{Name: "agent", Status: "healthy"}, {Name: "spool", Status: "healthy"}},
		{{Name: "agent", Status: "healthy"}, {Name: "spool", Status: "degraded", Message: "back-pressure"}},
		{{Name: "agent", Status: "healthy"}, {Name: "spool", Status: "degraded", Message: "still"}}, // no change of status
		{{Name: "agent", Status: "healthy"}, {Name: "spool", Status: "healthy"}},
	} {
		if err := e.store.RecordHealth(context.Background(), k, t0.Add(time.Duration(i)*time.Minute), cs); err != nil {
			t.Fatal(err)
		}
	}
	var l apiv1.HealthEventList
	mustUnmarshal(t, e.do("GET", "/v1/agents/acme/a1/health", e.auditor, "").wantStatus(http.StatusOK).raw, &l)
	var got []string
	for _, ev := range l.Events {
		got = append(got, fmt.Sprintf("%d %s=%s %s", int(ev.At.Sub(t0).Minutes()), ev.Component, ev.Status, ev.Message))
	}
	want := []string{"3 spool=healthy ", "1 spool=degraded back-pressure", "0 spool=healthy ", "0 agent=healthy "}
	if l.Tenant != "acme" || l.Agent != "a1" || len(got) != 4 || !slices.Equal(got[:2], want[:2]) ||
		!slices.Contains(got[2:], want[2]) || !slices.Contains(got[2:], want[3]) {
		t.Fatalf("events = %q, want %q (newest first)", got, want)
	}
	mustUnmarshal(t, e.do("GET", "/v1/agents/acme/a1/health?limit=1", e.operator, "").wantStatus(http.StatusOK).raw, &l)
	if len(l.Events) != 1 || l.Events[0].Status != "healthy" || !l.Events[0].At.Equal(t0.Add(3*time.Minute)) {
		t.Fatalf("limit=1: %+v", l.Events)
	}
	e.do("GET", "/v1/agents/acme/a1/health?limit=1001", e.admin, "").wantError(http.StatusBadRequest, "limit")
	e.do("GET", "/v1/agents/acme/a1/health?limit=0", e.admin, "").wantError(http.StatusBadRequest, "limit")
	e.do("GET", "/v1/agents/acme/nope/health", e.admin, "").wantError(http.StatusNotFound, "agent acme/nope not found")
	e.enroll("acme", "a2")
	if r := e.do("GET", "/v1/agents/acme/a2/health", e.admin, "").wantStatus(http.StatusOK); !strings.Contains(string(r.raw), `"events":[]`) {
		t.Fatalf("no events: %s", r.raw)
	}

	// A change of drift is an event that shows it.
	for i, d := range []string{"replicas: plan 3, live 5", ""} {
		cs := []store.ComponentState{{Name: "spool", Status: "healthy", Drift: d != "", DriftDetail: d}}
		if err := e.store.RecordHealth(context.Background(), k, t0.Add(time.Duration(4+i)*time.Minute), cs); err != nil {
			t.Fatal(err)
		}
	}
	r := e.do("GET", "/v1/agents/acme/a1/health?limit=2", e.auditor, "").wantStatus(http.StatusOK)
	var dl apiv1.HealthEventList
	mustUnmarshal(t, r.raw, &dl)
	if len(dl.Events) != 2 ||
		dl.Events[0] != (apiv1.HealthEvent{At: t0.Add(5 * time.Minute).UTC(), Component: "spool", Status: "healthy"}) ||
		dl.Events[1] != (apiv1.HealthEvent{At: t0.Add(4 * time.Minute).UTC(), Component: "spool", Status: "healthy", Drift: true, DriftDetail: "replicas: plan 3, live 5"}) {
		t.Fatalf("drift events: %+v", dl.Events)
	}
	if !strings.Contains(string(r.raw), `"drift":true,"drift_detail":"replicas: plan 3, live 5"`) || !strings.Contains(string(r.raw), `"drift":false`) {
		t.Fatalf("drift events JSON: %s", r.raw)
	}
}

// TestMetricsRoute: /metrics is served, to any API token, when a handler is
// configured, and absent otherwise.
func TestMetricsRoute(t *testing.T) {
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "cp.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := httpapi.Config{
		Store: st, Logger: slog.New(slog.DiscardHandler), TrustDomain: "attache.test", AgentAddr: "cp:7444",
		CAKeySHA256: func() [32]byte { return testCAKey }, TrustRootSHA256: func() [32]byte { return testTrustRoot },
	}
	h, err := httpapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("GET /metrics without a handler: %d", rec.Code)
	}
	cfg.Metrics = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "up 1\n")
	})
	if h, err = httpapi.New(cfg); err != nil {
		t.Fatal(err)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("GET /metrics without a token: %d %q, want 401 (it names every tenant)", rec.Code, rec.Body)
	}
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if _, err := httpapi.Bootstrap(context.Background(), st, tokenFile, time.Now()); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimSpace(string(raw))
	rec = httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || rec.Body.String() != "up 1\n" {
		t.Fatalf("GET /metrics: %d %q", rec.Code, rec.Body)
	}
}
