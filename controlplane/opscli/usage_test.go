package opscli_test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/httpapi/httpapitest"
	"attache.dev/attache/controlplane/store"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// agent enrolls tenant/id (enrollAgent) and returns its key.
func agent(t *testing.T, srv *httpapitest.Server, tenant, id string) store.AgentKey {
	t.Helper()
	enrollAgent(t, srv, tenant, id)
	return store.AgentKey{Tenant: tenant, ID: id}
}

func TestUsageShow(t *testing.T) {
	clearEnv(t)
	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	admin.ok("tenant", "create", "acme")
	admin.ok("tenant", "create", "globex")
	k := agent(t, srv, "acme", "a1")
	g := agent(t, srv, "globex", "g1")

	h := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	ctx := context.Background()
	if _, err := srv.Store.IngestUsage(ctx, k, 1, []store.UsageRecord{
		{Meter: "api.requests", Value: 9007199254740990, At: h.Add(time.Minute)}, // exact near 2^53
		{Meter: "api.requests", Value: 2, At: h.Add(2 * time.Minute)},
		{Meter: "storage.bytes", Value: 0.5, At: h.Add(time.Hour)},
		{Meter: "api.requests", Value: 7, At: h.Add(-48 * time.Hour)}, // outside the default window
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Store.IngestUsage(ctx, g, 1, []store.UsageRecord{{Meter: "api.requests", Value: 1, At: h}}); err != nil {
		t.Fatal(err)
	}

	out := admin.ok("usage", "show", "--tenant", "acme")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{
		"HOUR METER SUM COUNT MAX LAST",
		h.Format(time.RFC3339) + " api.requests 9007199254740992 2 9007199254740990 2",
		h.Add(time.Hour).Format(time.RFC3339) + " storage.bytes 0.5 1 0.5 0.5",
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", out)
	}
	for i := range want {
		if got := strings.Join(strings.Fields(lines[i]), " "); got != want[i] {
			t.Fatalf("line %d = %q, want %q\n%s", i, got, want[i], out)
		}
	}

	// CSV: a header row and every figure; a window from a date and a
	// relative time.
	out = admin.ok("usage", "show", "--tenant", "acme", "--from", h.Add(-48*time.Hour).Format(time.DateOnly), "--to", "now", "--meter", "api.requests", "--format", "csv")
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatalf("csv: %v\n%s", err, out)
	}
	if len(recs) != 3 || strings.Join(recs[0], ",") != "tenant,meter,hour,sum,count,max,last,last_at" ||
		strings.Join(recs[1][:7], ",") != "acme,api.requests,"+h.Add(-48*time.Hour).Format(time.RFC3339)+",7,1,7,7" ||
		recs[2][3] != "9007199254740992" || recs[2][7] != h.Add(2*time.Minute).Format(time.RFC3339Nano) {
		t.Fatalf("csv:\n%s", out)
	}
	out = admin.ok("usage", "show", "--tenant", "acme", "--from", "-3d", "--format", "csv")
	if strings.Count(out, "\n") != 4 {
		t.Fatalf("csv from -3d:\n%s", out)
	}

	// --format json is -o json.
	var a, b apiv1.UsageList
	mustJSON(t, admin.ok("usage", "show", "--tenant", "acme", "--format", "json", "--to", h.Add(2*time.Hour).Format(time.RFC3339)), &a)
	mustJSON(t, admin.ok("usage", "show", "--tenant", "acme", "-o", "json", "--to", h.Add(2*time.Hour).Format(time.RFC3339)), &b)
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) != string(jb) || len(a.Hours) != 2 || a.Hours[0].Sum != 9007199254740992 {
		t.Fatalf("json:\n%s\n%s", ja, jb)
	}

	// Empty: header only, a note on stderr.
	out, errOut, err := admin.run("usage", "show", "--tenant", "globex", "--meter", "storage.bytes")
	if err != nil || strings.TrimSpace(out) != "HOUR  METER  SUM  COUNT  MAX  LAST" || !strings.Contains(errOut, "no usage for tenant globex") {
		t.Fatalf("empty: %v %q %q", err, out, errOut)
	}

	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"usage", "show"}, "--tenant is required"},
		{[]string{"usage", "show", "--tenant", "acme", "--from", "last tuesday"}, "--from"},
		{[]string{"usage", "show", "--tenant", "acme", "--to", "2026-13-01"}, "--to"},
		{[]string{"usage", "show", "--tenant", "acme", "--from", "-1h", "--to", "-2h"}, "must be before"},
		{[]string{"usage", "show", "--tenant", "acme", "--format", "xml"}, "--format must be"},
		{[]string{"usage", "show", "--tenant", "acme", "--format", "csv", "-o", "json"}, "disagree"},
		{[]string{"usage", "show", "--tenant", "acme", "--meter", "Bad"}, "meter"},
		{[]string{"usage", "show", "--tenant", "acme", "--from", "2020-01-01", "--to", "2022-01-01"}, "400 days"},
		{[]string{"usage", "show", "--tenant", "initech"}, "tenant initech not found"},
	} {
		if _, _, err := admin.run(tc.args...); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("attache %s: %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.msg)
		}
	}
}

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

func TestHealth(t *testing.T) {
	clearEnv(t)
	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	admin.ok("tenant", "create", "acme")
	admin.ok("tenant", "create", "globex")
	ctx := context.Background()
	now := time.Now()
	connect := func(k store.AgentKey, health []byte) {
		t.Helper()
		if err := srv.Store.RecordSessions(ctx, []store.SessionUpdate{{AgentKey: k, SessionID: "s", Connected: true, At: now, Version: "1.4.0"}}); err != nil {
			t.Fatal(err)
		}
		if err := srv.Store.RecordHeartbeats(ctx, []store.Heartbeat{{AgentKey: k, At: now, Health: health}}); err != nil {
			t.Fatal(err)
		}
	}
	ok := agent(t, srv, "acme", "a-ok")
	sick := agent(t, srv, "acme", "a-sick")
	drifting := agent(t, srv, "acme", "a-drift")
	enrollAgent(t, srv, "globex", "g-new")
	connect(ok, healthJSON(t, &agentv1.ComponentHealth{Name: "agent", Status: agentv1.HealthStatus_HEALTH_STATUS_HEALTHY}))
	connect(sick, healthJSON(t,
		&agentv1.ComponentHealth{Name: "agent", Status: agentv1.HealthStatus_HEALTH_STATUS_HEALTHY},
		&agentv1.ComponentHealth{Name: "provider/pg", Status: agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, Message: "down \x1b[2J\x1b]0;pwned\x07 now"},
		&agentv1.ComponentHealth{Name: "spool", Status: agentv1.HealthStatus_HEALTH_STATUS_DEGRADED, Message: "back-pressure", Drift: true, DriftDetail: "size: plan 1Gi, live 2Gi"},
	))
	connect(drifting, healthJSON(t,
		&agentv1.ComponentHealth{Name: "agent", Status: agentv1.HealthStatus_HEALTH_STATUS_HEALTHY},
		&agentv1.ComponentHealth{Name: "provider/kubernetes/app", Status: agentv1.HealthStatus_HEALTH_STATUS_HEALTHY, Drift: true, DriftDetail: "replicas: plan 3, live 5\x1b[31m"},
	))

	out, errOut, err := admin.run("health")
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Fatalf("terminal control characters reached the output: %q", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || strings.Join(strings.Fields(lines[0]), " ") != "TENANT AGENT STATE LAST-SEEN VERSION DRIFT PROBLEMS" {
		t.Fatalf("health:\n%s", out)
	}
	// Agents with drift come right after the unhealthy and silent ones.
	for i, prefix := range []string{"acme a-sick unhealthy", "globex g-new silent never - - -", "acme a-drift healthy", "acme a-ok healthy"} {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); !strings.HasPrefix(got, prefix) {
			t.Fatalf("line %d = %q, want prefix %q\n%s", i+1, got, prefix, out)
		}
	}
	if !strings.Contains(lines[1], "provider/pg: unhealthy (down \uFFFD[2J\uFFFD]0;pwned\uFFFD now); spool: degraded (back-pressure), drift (size: plan 1Gi, live 2Gi)") ||
		!strings.Contains(strings.Join(strings.Fields(lines[1]), " "), "1.4.0 1 provider/pg") {
		t.Fatalf("problems: %q", lines[1])
	}
	if !strings.HasSuffix(strings.Join(strings.Fields(lines[3]), " "), "1.4.0 1 provider/kubernetes/app: drift (replicas: plan 3, live 5\uFFFD[31m)") {
		t.Fatalf("drift: %q", lines[3])
	}
	if !strings.HasSuffix(strings.Join(strings.Fields(lines[4]), " "), "1.4.0 - -") {
		t.Fatalf("healthy agent: %q", lines[4])
	}
	if !strings.Contains(errOut, "4 agents: 1 unhealthy, 1 silent, 0 degraded, 2 healthy, 0 revoked; 2 with drift") {
		t.Fatalf("stderr: %q", errOut)
	}

	var l apiv1.HealthList
	mustJSON(t, admin.ok("health", "--tenant", "acme", "-o", "json"), &l)
	if len(l.Agents) != 3 || l.Agents[0].ID != "a-sick" || l.Agents[0].Problems[0].Message != "down \x1b[2J\x1b]0;pwned\x07 now" ||
		l.Drifted != 2 || l.Agents[1].ID != "a-drift" || l.Agents[1].Drift != 1 || l.Agents[1].Problems[0].DriftDetail != "replicas: plan 3, live 5\x1b[31m" {
		t.Fatalf("json: %+v", l)
	}

	// History of one agent.
	for i, st := range []string{"healthy", "unhealthy", "healthy"} {
		if err := srv.Store.RecordHealth(ctx, sick, now.Add(time.Duration(i)*time.Minute),
			[]store.ComponentState{{Name: "provider/pg", Status: st, Message: "try " + string(rune('a'+i)) + "\x1b[31m"}}); err != nil {
			t.Fatal(err)
		}
	}
	out = admin.ok("agent", "health", "acme/a-sick")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "TIME COMPONENT STATUS MESSAGE DRIFT" || !strings.HasSuffix(lines[1], " -") ||
		!strings.Contains(lines[1], "healthy") || !strings.Contains(lines[1], "try c\uFFFD[31m") || !strings.Contains(lines[2], "unhealthy") ||
		strings.Contains(out, "\x1b") {
		t.Fatalf("agent health:\n%s", out)
	}
	var ev apiv1.HealthEventList
	mustJSON(t, admin.ok("agent", "health", "acme/a-sick", "--limit", "1", "-o", "json"), &ev)
	if len(ev.Events) != 1 || ev.Events[0].Message != "try c\x1b[31m" {
		t.Fatalf("json: %+v", ev)
	}
	// Drift appearing is a change.
	if err := srv.Store.RecordHealth(ctx, sick, now.Add(3*time.Minute),
		[]store.ComponentState{{Name: "provider/pg", Status: "healthy", Drift: true, DriftDetail: "max_connections: plan 100, live 200\x1b[31m"}}); err != nil {
		t.Fatal(err)
	}
	out = admin.ok("agent", "health", "acme/a-sick", "--limit", "1")
	if lines = strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 ||
		!strings.HasSuffix(strings.Join(strings.Fields(lines[1]), " "), "provider/pg healthy - yes (max_connections: plan 100, live 200\uFFFD[31m)") {
		t.Fatalf("agent health with drift:\n%s", out)
	}
	var dev apiv1.HealthEventList
	mustJSON(t, admin.ok("agent", "health", "acme/a-sick", "--limit", "1", "-o", "json"), &dev)
	if len(dev.Events) != 1 || !dev.Events[0].Drift || dev.Events[0].DriftDetail != "max_connections: plan 100, live 200\x1b[31m" {
		t.Fatalf("json: %+v", dev)
	}
	if _, _, err := admin.run("agent", "health", "acme/nope"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("unknown agent: %v", err)
	}
	if _, _, err := admin.run("agent", "health", "acme/a-sick", "--limit", "0"); err == nil || !strings.Contains(err.Error(), "--limit") {
		t.Fatalf("bad limit: %v", err)
	}
}
