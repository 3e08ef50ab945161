package rollout_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/plans"
	"attache.dev/attache/controlplane/rollout"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/sign"
)

const td = "attache.test"

// env is a rollout driver on a real SQLite store and real keys. The
// agents are played by the test: it reports plan results and health into
// the store as the agent API would.
type env struct {
	t     *testing.T
	ctx   context.Context
	st    store.Store
	m     *keys.Material
	rel   *sign.Signer
	plans *plans.Service
	now   time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := t.Context()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "cp.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m, err := keys.LoadOrCreate(ctx, filepath.Join(dir, "keys"), td, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(filepath.Join(dir, "keys", keys.ReleaseKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	relKey, err := sign.ParsePKCS8PEM(pem)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, st: st, m: m, rel: relKey, now: time.Now()}
	e.plans = plans.New(plans.Config{Store: st, Keys: func() *keys.Material { return m }, Now: func() time.Time { return e.now }})
	return e
}

func (e *env) driver(owner string) *rollout.Driver {
	return rollout.New(rollout.Config{Store: e.st, Plans: e.plans, Owner: owner, LeaseTTL: 10 * time.Second, Now: func() time.Time { return e.now }})
}

func (e *env) entry(action string) auditlog.Entry {
	return auditlog.Entry{Time: e.now, Actor: "test", Role: "admin", Action: action, Outcome: auditlog.OutcomeSuccess}
}

// pushRelease signs and stores a release of version v.
func (e *env) pushRelease(v string) {
	e.t.Helper()
	r, err := release.ParseYAML(fmt.Appendf(nil, `
name: app
version: %s
flags: {checkout_v2: "false"}
migrations:
  - {version: 1, name: init, sql: "CREATE TABLE t (id INTEGER)"}
steps:
  - id: migrate
    provider: local
    action: db.migrate
    resource: app.db
    on_rollback: skip
    params: {migrations: "{{migrations}}"}
  - id: app
    provider: local
    action: app.upgrade
    resource: app
    depends_on: [migrate]
    params: {version: "{{version}}", command: [sampleapp, -version, "{{version}}"], flags: "{{flags}}"}
`, v))
	if err != nil {
		e.t.Fatal(err)
	}
	env, err := release.Sign(e.ctx, r, e.rel)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.CreateRelease(e.ctx, store.Release{Version: v, Name: "app", Envelope: env, Digest: "x"}, e.entry("release.push")); err != nil {
		e.t.Fatal(err)
	}
}

// tenants creates n tenants t00.. with one agent each, at release cur.
func (e *env) tenants(n int, cur string) []string {
	e.t.Helper()
	var names []string
	for i := range n {
		name := fmt.Sprintf("t%02d", i)
		names = append(names, name)
		if err := e.st.CreateTenant(e.ctx, store.Tenant{Name: name, Labels: map[string]string{"env": "prod"}, Release: cur}, e.entry("tenant.create")); err != nil {
			e.t.Fatal(err)
		}
		if err := e.st.CreateJoinToken(e.ctx, store.JoinToken{ID: "tok-" + name, Tenant: name, SecretHash: []byte("h"), ExpiresAt: e.now.Add(time.Hour)}, e.entry("token.create")); err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.st.Enroll(e.ctx, "tok-"+name, []byte("h"), e.now, store.Agent{Tenant: name, ID: "a1", SPIFFEID: "spiffe://" + td + "/tenant/" + name + "/agent/a1",
			EnrolledAt: e.now, CertSerial: "1", CertExpiresAt: e.now.Add(time.Hour)}, e.entry("agent.enroll")); err != nil {
			e.t.Fatal(err)
		}
	}
	return names
}

// agentsRun plays every agent: each pending plan is decoded, checked
// against its release as the agent would, and reported with the outcome
// fail(tenant, plan) chooses ("" = succeeded).
func (e *env) agentsRun(fail func(tenant string, rollback bool) string) (ran []string) {
	e.t.Helper()
	agents, err := e.st.ListAgents(e.ctx, store.AgentFilter{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, a := range agents {
		k := store.AgentKey{Tenant: a.Tenant, ID: a.ID}
		pending, err := e.st.PendingPlans(e.ctx, k, e.now)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, p := range pending {
			payload, err := sign.VerifyPayload(e.ctx, e.m.Root, sign.RolePlans, plan.PayloadType, p.Envelope)
			if err != nil {
				e.t.Fatalf("plan %s: %v", p.ID, err)
			}
			pp, err := plan.Unmarshal(payload)
			if err != nil {
				e.t.Fatal(err)
			}
			rel, err := release.Verify(e.ctx, e.m.Root, pp.GetReleaseEnvelope())
			if err != nil {
				e.t.Fatalf("plan %s release: %v", p.ID, err)
			}
			if err := release.CheckPlan(rel, pp); err != nil {
				e.t.Fatalf("plan %s does not match its release: %v", p.ID, err)
			}
			rb := pp.GetReleaseContext().GetRollback()
			u := store.PlanUpdate{State: store.PlanSucceeded, At: e.now}
			if msg := fail(a.Tenant, rb); msg != "" {
				u = store.PlanUpdate{State: store.PlanFailed, Message: msg, At: e.now}
			}
			if _, err := e.st.UpdatePlan(e.ctx, k, p.ID, u, nil); err != nil {
				e.t.Fatal(err)
			}
			kind := "forward"
			if rb {
				kind = "rollback"
			}
			ran = append(ran, a.Tenant+":"+rel.Version+":"+kind)
		}
	}
	return ran
}

// health reports tenant's agent health as a heartbeat would.
func (e *env) health(tenant, status, msg string) {
	e.t.Helper()
	j := fmt.Sprintf(`[{"name":"local/app/%s","status":"%s","message":%q}]`, tenant, status, msg)
	if err := e.st.RecordHeartbeats(e.ctx, []store.Heartbeat{{AgentKey: store.AgentKey{Tenant: tenant, ID: "a1"}, At: e.now, Health: []byte(j)}}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) start(spec store.RolloutSpec, rel string) store.Rollout {
	e.t.Helper()
	r, _, err := rollout.Start(e.ctx, e.st, rollout.StartRequest{Actor: "ops", Role: "operator", Release: rel, Spec: spec, Now: e.now})
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) get(id string) (store.Rollout, []store.RolloutTarget) {
	e.t.Helper()
	r, err := e.st.GetRollout(e.ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	ts, err := e.st.RolloutTargets(e.ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return r, ts
}

func mustStep(t *testing.T, d *rollout.Driver) {
	t.Helper()
	if err := d.Step(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func spec(waves string, bake time.Duration) store.RolloutSpec {
	ws, err := rollout.ParseWaves(waves)
	if err != nil {
		panic(err)
	}
	return store.RolloutSpec{Selector: map[string]string{"env": "prod"}, Waves: ws, Bake: bake, MaxFailed: 0, MaxErrorRate: 0.02, Concurrency: 100}
}

func countPlans(t *testing.T, e *env, tenant string) int {
	ps, err := e.st.ListPlans(e.ctx, store.PlanFilter{Tenant: tenant})
	if err != nil {
		t.Fatal(err)
	}
	return len(ps)
}

func TestGoodReleaseCompletesAllWaves(t *testing.T) {
	e := newEnv(t)
	e.pushRelease("1.0.0")
	e.pushRelease("2.0.0")
	names := e.tenants(10, "1.0.0")
	r := e.start(spec("canary:2,50%,100%", time.Minute), "2.0.0")
	d := e.driver("cp-a")

	wantWaves := []int{2, 3, 5} // canary 2, then up to 50% (5), then the rest
	for w, n := range wantWaves {
		mustStep(t, d)
		ran := e.agentsRun(func(string, bool) string { return "" })
		if len(ran) != n {
			t.Fatalf("wave %d ran %v, want %d plans", w, ran, n)
		}
		mustStep(t, d) // collect results; wave done, bake starts
		got, _ := e.get(r.ID)
		if got.State != store.RolloutWaiting || got.Reason != rollout.ReasonBake {
			t.Fatalf("wave %d after plans: %s/%s %s", w, got.State, got.Reason, got.Message)
		}
		for _, name := range names {
			e.health(name, "HEALTH_STATUS_HEALTHY", "ok")
		}
		e.now = e.now.Add(61 * time.Second)
		mustStep(t, d)
	}
	got, ts := e.get(r.ID)
	if got.State != store.RolloutComplete {
		t.Fatalf("rollout %s/%s: %s", got.State, got.Reason, got.Message)
	}
	for _, tg := range ts {
		tn, _ := e.st.GetTenant(e.ctx, tg.Tenant)
		if tg.State != store.TargetSucceeded || tn.Release != "2.0.0" {
			t.Fatalf("target %+v, tenant release %s", tg, tn.Release)
		}
		if n := countPlans(t, e, tg.Tenant); n != 1 {
			t.Fatalf("tenant %s got %d plans, want exactly 1", tg.Tenant, n)
		}
	}
	// More passes change nothing and issue nothing.
	mustStep(t, d)
	if ran := e.agentsRun(func(string, bool) string { return "" }); len(ran) != 0 {
		t.Fatalf("plans after completion: %v", ran)
	}
}

func TestUnhealthyCanaryHaltsAndRollsBack(t *testing.T) {
	e := newEnv(t)
	e.pushRelease("1.0.0")
	e.pushRelease("2.0.0")
	e.tenants(6, "1.0.0")
	r := e.start(spec("canary:2,100%", time.Minute), "2.0.0")
	d := e.driver("cp-a")

	mustStep(t, d)
	if ran := e.agentsRun(func(string, bool) string { return "" }); len(ran) != 2 {
		t.Fatalf("canary ran %v", ran)
	}
	mustStep(t, d) // bake starts
	e.now = e.now.Add(10 * time.Second)
	e.health("t00", "HEALTH_STATUS_HEALTHY", "2.0.0 healthy")
	e.health("t01", "HEALTH_STATUS_DEGRADED", "2.0.0: GET /healthz: 503")
	mustStep(t, d)
	got, _ := e.get(r.ID)
	if got.State != store.RolloutHalted || got.Reason != rollout.ReasonGateFailed ||
		!strings.Contains(got.Message, "tenant t01: component local/app/t01 is degraded: 2.0.0: GET /healthz: 503") {
		t.Fatalf("after unhealthy canary: %s/%s %q", got.State, got.Reason, got.Message)
	}
	mustStep(t, d) // issue rollbacks
	ran := e.agentsRun(func(string, bool) string { return "" })
	if strings.Join(ran, ",") != "t00:1.0.0:rollback,t01:1.0.0:rollback" {
		t.Fatalf("rollback plans: %v", ran)
	}
	mustStep(t, d)
	got, ts := e.get(r.ID)
	if got.State != store.RolloutFailed || !strings.Contains(got.Message, "rolled back 2 tenants of wave canary") ||
		!strings.Contains(got.Message, "component local/app/t01 is degraded") {
		t.Fatalf("final: %s/%s %q", got.State, got.Reason, got.Message)
	}
	for _, tg := range ts {
		tn, _ := e.st.GetTenant(e.ctx, tg.Tenant)
		switch tg.Wave {
		case 0:
			if tg.State != store.TargetRolledBack || tn.Release != "1.0.0" {
				t.Fatalf("canary target %+v, release %s", tg, tn.Release)
			}
		default:
			if tg.State != store.TargetCancelled || countPlans(t, e, tg.Tenant) != 0 || tn.Release != "1.0.0" {
				t.Fatalf("the bad release reached %s: %+v", tg.Tenant, tg)
			}
		}
	}
}

func TestFailedPlansOverBudgetHalt(t *testing.T) {
	e := newEnv(t)
	e.pushRelease("1.0.0")
	e.pushRelease("2.0.0")
	e.tenants(4, "1.0.0")
	s := spec("canary:2,100%", 0)
	s.MaxFailed = 0
	r := e.start(s, "2.0.0")
	d := e.driver("cp-a")
	mustStep(t, d)
	e.agentsRun(func(tenant string, rb bool) string {
		if tenant == "t01" && !rb {
			return `step "app" failed: 2.0.0 never became healthy; rolled back to 1.0.0`
		}
		return ""
	})
	mustStep(t, d)
	got, _ := e.get(r.ID)
	if got.State != store.RolloutHalted || !strings.Contains(got.Message, "1 plans failed, budget 0") || !strings.Contains(got.Message, "never became healthy") {
		t.Fatalf("halt: %s %q", got.State, got.Message)
	}
}

func TestHighErrorRateFailsGate(t *testing.T) {
	e := newEnv(t)
	e.pushRelease("1.0.0")
	e.pushRelease("2.0.0")
	e.tenants(3, "1.0.0")
	r := e.start(spec("canary:1,100%", time.Minute), "2.0.0")
	d := e.driver("cp-a")
	mustStep(t, d)
	e.agentsRun(func(string, bool) string { return "" })
	mustStep(t, d) // bake starts, baseline taken
	at := e.now.Truncate(time.Hour)
	if _, err := e.st.IngestUsage(e.ctx, store.AgentKey{Tenant: "t00", ID: "a1"}, 1, []store.UsageRecord{
		{Meter: "app.http_requests", Value: 100, At: at},
		{Meter: "app.http_errors", Value: 9, At: at},
	}); err != nil {
		t.Fatal(err)
	}
	e.health("t00", "HEALTH_STATUS_HEALTHY", "ok")
	mustStep(t, d)
	got, _ := e.get(r.ID)
	if got.State != store.RolloutHalted || !strings.Contains(got.Message, "app error rate 9.0% (9 of 100 requests") {
		t.Fatalf("gate: %s %q", got.State, got.Message)
	}
}

func TestPinsWindowsAndFreeze(t *testing.T) {
	e := newEnv(t)
	e.pushRelease("1.0.0")
	e.pushRelease("2.0.0")
	e.tenants(3, "1.0.0")
	// t01 is pinned; t02 has a window that is closed now.
	if _, err := e.st.UpdateTenant(e.ctx, "t01", func(tn *store.Tenant) error { tn.Pin = "1.0.0"; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	closed := store.Window{Start: e.now.Add(2 * time.Hour).UTC().Format("15:04"), Duration: "1h"}
	if _, err := e.st.UpdateTenant(e.ctx, "t02", func(tn *store.Tenant) error { tn.Windows = []store.Window{closed}; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	r := e.start(spec("100%", 0), "2.0.0")
	d := e.driver("cp-a")

	// Frozen: nothing is dispatched.
	if err := e.st.SetFreeze(e.ctx, &store.Freeze{By: "ops", Reason: "incident 7", At: e.now}, e.entry("fleet.freeze")); err != nil {
		t.Fatal(err)
	}
	mustStep(t, d)
	got, _ := e.get(r.ID)
	if got.State != store.RolloutHalted || got.Reason != rollout.ReasonFrozen || !strings.Contains(got.Message, "incident 7") {
		t.Fatalf("frozen: %s/%s %q", got.State, got.Reason, got.Message)
	}
	if ran := e.agentsRun(func(string, bool) string { return "" }); len(ran) != 0 {
		t.Fatalf("plans while frozen: %v", ran)
	}
	if err := e.st.SetFreeze(e.ctx, nil, e.entry("fleet.unfreeze")); err != nil {
		t.Fatal(err)
	}
	mustStep(t, d)
	if ran := e.agentsRun(func(string, bool) string { return "" }); strings.Join(ran, ",") != "t00:2.0.0:forward" {
		t.Fatalf("after unfreeze ran %v, want only t00 (t01 pinned, t02 outside its window)", ran)
	}
	mustStep(t, d)
	got, ts := e.get(r.ID)
	if got.State != store.RolloutWaiting || got.Reason != rollout.ReasonWindow || !strings.Contains(got.Message, "t02 outside its maintenance window") {
		t.Fatalf("waiting: %s/%s %q", got.State, got.Reason, got.Message)
	}
	if ts[1].State != store.TargetSkipped || ts[1].Message != "pinned to 1.0.0" {
		t.Fatalf("pinned target: %+v", ts[1])
	}
	// The window opens.
	e.now = e.now.Add(2*time.Hour + time.Minute)
	mustStep(t, d)
	if ran := e.agentsRun(func(string, bool) string { return "" }); strings.Join(ran, ",") != "t02:2.0.0:forward" {
		t.Fatalf("in window ran %v", ran)
	}
	mustStep(t, d)
	if got, _ := e.get(r.ID); got.State != store.RolloutComplete {
		t.Fatalf("final: %s %q", got.State, got.Message)
	}
}

func TestPauseResumeAbort(t *testing.T) {
	e := newEnv(t)
	e.pushRelease("2.0.0")
	e.tenants(4, "")
	r := e.start(spec("canary:1,100%", 0), "2.0.0")
	d := e.driver("cp-a")
	if _, err := e.st.SetRolloutControl(e.ctx, r.ID, store.ControlPause, e.entry("rollout.pause")); err != nil {
		t.Fatal(err)
	}
	mustStep(t, d)
	if got, _ := e.get(r.ID); got.State != store.RolloutHalted || got.Reason != rollout.ReasonPaused {
		t.Fatalf("paused: %s/%s", got.State, got.Reason)
	}
	if ran := e.agentsRun(func(string, bool) string { return "" }); len(ran) != 0 {
		t.Fatalf("plans while paused: %v", ran)
	}
	if _, err := e.st.SetRolloutControl(e.ctx, r.ID, store.ControlRun, e.entry("rollout.resume")); err != nil {
		t.Fatal(err)
	}
	mustStep(t, d)
	if ran := e.agentsRun(func(string, bool) string { return "" }); len(ran) != 1 {
		t.Fatalf("resumed ran %v", ran)
	}
	if _, err := e.st.SetRolloutControl(e.ctx, r.ID, store.ControlAbort, e.entry("rollout.abort")); err != nil {
		t.Fatal(err)
	}
	mustStep(t, d)
	got, ts := e.get(r.ID)
	if got.State != store.RolloutFailed || got.Reason != rollout.ReasonAborted {
		t.Fatalf("aborted: %s/%s %q", got.State, got.Reason, got.Message)
	}
	for _, tg := range ts[1:] {
		if tg.State != store.TargetCancelled {
			t.Fatalf("target after abort: %+v", tg)
		}
	}
}

// TestFailoverNoDuplicatePlans: a second driver cannot act while the
// first holds the lease; once it lapses (the first replica died), the
// second continues the rollout without issuing any plan twice.
func TestFailoverNoDuplicatePlans(t *testing.T) {
	e := newEnv(t)
	e.pushRelease("2.0.0")
	e.tenants(6, "")
	s := spec("canary:2,100%", 0)
	s.Concurrency = 1
	r := e.start(s, "2.0.0")
	a, b := e.driver("cp-a"), e.driver("cp-b")
	mustStep(t, a)
	mustStep(t, b) // lease held by cp-a: no effect
	if ran := e.agentsRun(func(string, bool) string { return "" }); len(ran) != 1 {
		t.Fatalf("concurrency 1 ran %v", ran)
	}
	// cp-a dies; its lease lapses.
	e.now = e.now.Add(11 * time.Second)
	for range 12 {
		mustStep(t, b)
		e.agentsRun(func(string, bool) string { return "" })
	}
	got, ts := e.get(r.ID)
	if got.State != store.RolloutComplete || got.LeaseOwner != "cp-b" {
		t.Fatalf("after failover: %s %q owner %s", got.State, got.Message, got.LeaseOwner)
	}
	for _, tg := range ts {
		if n := countPlans(t, e, tg.Tenant); n != 1 {
			t.Fatalf("tenant %s got %d plans", tg.Tenant, n)
		}
	}
}

func TestStartValidation(t *testing.T) {
	e := newEnv(t)
	e.pushRelease("2.0.0")
	e.tenants(2, "")
	tests := []struct {
		name string
		rel  string
		spec store.RolloutSpec
		want string
	}{
		{"unknown release", "9.9.9", spec("100%", 0), `release "9.9.9"`},
		{"last wave not 100%", "2.0.0", spec("canary:1,50%", 0), "the last wave must be 100%"},
		{"no selector", "2.0.0", store.RolloutSpec{Waves: []store.Wave{{Name: "all", Percent: 100}}}, "selector:"},
		{"no match", "2.0.0", store.RolloutSpec{Selector: map[string]string{"env": "dev"}, Waves: []store.Wave{{Name: "all", Percent: 100}}}, "no tenant matches"},
		{"error rate", "2.0.0", func() store.RolloutSpec { s := spec("100%", 0); s.MaxErrorRate = 2; return s }(), "max_error_rate"},
		{"unknown tenant", "2.0.0", func() store.RolloutSpec { s := spec("100%", 0); s.Tenants = []string{"ghost"}; return s }(), `"ghost" does not exist`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := rollout.Start(e.ctx, e.st, rollout.StartRequest{Actor: "ops", Release: tt.rel, Spec: tt.spec})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start = %v, want error containing %q", err, tt.want)
			}
		})
	}
	if rs, _ := e.st.ListRollouts(e.ctx, false); len(rs) != 0 {
		t.Fatalf("refused starts stored %d rollouts", len(rs))
	}
}

func TestParseWaves(t *testing.T) {
	ws, err := rollout.ParseWaves("canary:2,10%,50%,100%")
	if err != nil || rollout.FormatWaves(ws) != "canary:2,wave-2:10%,wave-3:50%,wave-4:100%" {
		t.Fatalf("ParseWaves = %v, %v", rollout.FormatWaves(ws), err)
	}
	for _, bad := range []string{"0", "canary:x", "150%", "10%,,100%"} {
		if _, err := rollout.ParseWaves(bad); err == nil {
			t.Errorf("ParseWaves(%q) accepted", bad)
		}
	}
}
