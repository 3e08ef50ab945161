package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/controlplane/httpapi"
	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/planverify"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// oneStepYAML is a valid plan on one line, fit for a JSON string as is.
const oneStepYAML = `{version: 1, steps: [{id: a, provider: local, action: noop, resource: x}]}`

const twoStepYAML = `version: 1
release: app@v2
expires_in: 2h
steps:
  - id: dir
    provider: local
    action: dir.ensure
    resource: tenants/acme
  - id: db
    provider: local
    action: sqlite.ensure
    resource: tenants/acme/db
    depends_on: [dir]
`

// submitBody is a POST /v1/plans body.
func submitBody(t *testing.T, req apiv1.SubmitPlanRequest) string {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (e *env) submitPlan(token string, req apiv1.SubmitPlanRequest) apiv1.Plan {
	e.t.Helper()
	var p apiv1.Plan
	mustUnmarshal(e.t, e.do("POST", "/v1/plans", token, submitBody(e.t, req)).wantStatus(http.StatusCreated).raw, &p)
	return p
}

func (e *env) plan(id string) apiv1.Plan {
	e.t.Helper()
	var p apiv1.Plan
	mustUnmarshal(e.t, e.do("GET", "/v1/plans/"+id, e.auditor, "").wantStatus(http.StatusOK).raw, &p)
	return p
}

func TestPlanSubmit(t *testing.T) {
	e := newEnv(t)
	e.do("POST", "/v1/tenants", e.admin, `{"name":"acme"}`).wantStatus(http.StatusCreated)
	e.enroll("acme", "a1")

	r := e.do("POST", "/v1/plans", e.operator, submitBody(t, apiv1.SubmitPlanRequest{Tenant: "acme", YAML: twoStepYAML})).
		wantStatus(http.StatusCreated)
	var p apiv1.Plan
	mustUnmarshal(t, r.raw, &p)
	now := e.clock.Now()
	if p.ID == "" || p.Tenant != "acme" || p.Agent != "a1" || p.Sequence != 1 || p.Release != "app@v2" || p.DryRun ||
		p.State != apiv1.PlanPending || !strings.Contains(p.CreatedBy, "ops") || !p.ExpiresAt.Equal(now.Add(2*time.Hour)) ||
		p.StepCount != 2 || len(p.Steps) != 2 || p.AckedAt != nil || p.FinishedAt != nil {
		t.Fatalf("submitted plan = %+v", p)
	}
	if s := p.Steps[1]; s.ID != "db" || s.Provider != "local" || s.Action != "sqlite.ensure" || s.Resource != "tenants/acme/db" ||
		len(s.DependsOn) != 1 || s.DependsOn[0] != "dir" || s.State != apiv1.StepPending || s.StartedAt != nil {
		t.Fatalf("step = %+v", s)
	}

	rec := e.lastAudit()
	if rec.Action != "plan.submit" || rec.Outcome != auditlog.OutcomeSuccess || rec.Tenant != "acme" || rec.Target != p.ID ||
		rec.Role != "operator" || !strings.Contains(rec.Actor, "ops") || rec.RequestID != r.header.Get("X-Request-Id") || rec.Source == "" {
		t.Fatalf("audit = %+v", rec)
	}

	// What is stored is what the agent accepts.
	stored, err := e.store.GetPlan(context.Background(), p.ID)
	if err != nil {
		t.Fatal(err)
	}
	// An ad hoc plan (no release): the agent takes it only when allowed to.
	v := &planverify.Verifier{Root: e.keys.Root, Self: spiffeid.RequireFromString("spiffe://attache.test/tenant/acme/agent/a1"), Now: e.clock.Now, AllowUnreleased: true}
	if got, err := v.Verify(context.Background(), stored.Envelope); err != nil || got.GetPlanId() != p.ID {
		t.Fatalf("agent refuses the submitted plan: %v", err)
	}

	// Dry run, agent named, admin may submit too.
	e.enroll("acme", "a2")
	dry := e.submitPlan(e.admin, apiv1.SubmitPlanRequest{Tenant: "acme", Agent: "a2", DryRun: true, YAML: oneStepYAML})
	if !dry.DryRun || dry.Agent != "a2" || dry.Sequence != 1 {
		t.Fatalf("dry run = %+v", dry)
	}
}

func TestPlanBadInput(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"acme", "solo", "empty"} {
		e.do("POST", "/v1/tenants", e.admin, `{"name":"`+n+`"}`).wantStatus(http.StatusCreated)
	}
	e.enroll("acme", "a1")
	e.enroll("acme", "a2")
	e.enroll("solo", "s1")
	e.enroll("solo", "s2")
	e.do("POST", "/v1/agents/solo/s2/revoke", e.admin, "").wantStatus(http.StatusOK)

	body := func(tenant, agent, yaml string) string {
		return submitBody(t, apiv1.SubmitPlanRequest{Tenant: tenant, Agent: agent, YAML: yaml})
	}
	bigParam := fmt.Sprintf("version: 1\nsteps:\n- id: a\n  provider: local\n  action: file.write\n  resource: x\n  params: {content: %q}\n",
		strings.Repeat("x", plan.MaxPlanBytes))
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		contains                 string
	}{
		{"no tenant", "POST", "/v1/plans", body("", "", oneStepYAML), 400, "tenant:"},
		{"bad tenant", "POST", "/v1/plans", body("Acme", "", oneStepYAML), 400, "tenant:"},
		{"bad agent", "POST", "/v1/plans", body("acme", "A_1", oneStepYAML), 400, "agent:"},
		{"no yaml", "POST", "/v1/plans", body("acme", "a1", " \n"), 400, "yaml:"},
		{"yaml unknown key", "POST", "/v1/plans", body("acme", "a1", "version: 1\nsteps: [{id: a, provider: p, action: x, resource: r, dependson: [b]}]"), 400,
			`yaml: invalid plan: steps[0] "a": unknown key "dependson"`},
		{"yaml missing field", "POST", "/v1/plans", body("acme", "a1", "version: 1\nsteps: [{id: a, action: x, resource: r}]"), 400, `provider is missing`},
		{"yaml cycle", "POST", "/v1/plans", body("acme", "a1", "version: 1\nsteps:\n- {id: a, provider: p, action: x, resource: r, depends_on: [b]}\n- {id: b, provider: p, action: x, resource: r, depends_on: [a]}"), 400, "cycle"},
		{"unknown body field", "POST", "/v1/plans", `{"tenant":"acme","plan":"x"}`, 400, `unknown field "plan"`},
		{"unknown tenant", "POST", "/v1/plans", body("initech", "", oneStepYAML), 404, "tenant initech not found"},
		{"unknown agent", "POST", "/v1/plans", body("acme", "a9", oneStepYAML), 404, "agent acme/a9 not found"},
		{"no agent", "POST", "/v1/plans", body("empty", "", oneStepYAML), 409, "no active agent"},
		{"several agents", "POST", "/v1/plans", body("acme", "", oneStepYAML), 400, "(a1, a2); say which one runs the plan with --agent"},
		{"revoked agent", "POST", "/v1/plans", body("solo", "s2", oneStepYAML), 409, "agent solo/s2: agent revoked"},
		{"signed plan too large", "POST", "/v1/plans", body("acme", "a1", bigParam), 413, "limit 1048576 bytes (1 MiB); split the plan"},
		{"body too large", "POST", "/v1/plans", body("acme", "a1", "#"+strings.Repeat("x", 2<<20)), 413, "larger than 2097152 bytes (2 MiB)"},
		{"list bad tenant", "GET", "/v1/plans?tenant=A_B", "", 400, "tenant:"},
		{"list bad agent", "GET", "/v1/plans?agent=A_B", "", 400, "agent:"},
		{"list bad limit", "GET", "/v1/plans?limit=0", "", 400, "limit:"},
		{"list limit too big", "GET", "/v1/plans?limit=1001", "", 400, "limit:"},
		{"get id too long", "GET", "/v1/plans/" + strings.Repeat("x", 129), "", 400, "id:"},
		{"get unknown", "GET", "/v1/plans/nope", "", 404, "plan nope not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.do(tc.method, tc.path, e.operator, tc.body).wantError(tc.status, tc.contains)
			if tc.method == "POST" {
				rec := e.lastAudit()
				if rec.Action != "plan.submit" || rec.Outcome != auditlog.OutcomeFailure || !strings.Contains(string(rec.Detail), "error") {
					t.Fatalf("failed submission audited as %+v", rec)
				}
			}
		})
	}
	if rec := e.lastAudit(); rec.Action != "plan.submit" {
		t.Fatalf("GET requests were audited: %+v", rec)
	}
	var list apiv1.PlanList
	mustUnmarshal(t, e.do("GET", "/v1/plans", e.admin, "").wantStatus(http.StatusOK).raw, &list)
	if len(list.Plans) != 0 {
		t.Fatalf("refused submissions stored plans: %+v", list.Plans)
	}
	// The only active agent of a tenant is chosen even if others are revoked.
	if p := e.submitPlan(e.operator, apiv1.SubmitPlanRequest{Tenant: "solo", YAML: oneStepYAML}); p.Agent != "s1" {
		t.Fatalf("picked %s", p.Agent)
	}
}

// report stores an agent's status report the way the agent API does: the
// steps as a JSON array of protojson StepStatus with proto names.
func (e *env) report(p apiv1.Plan, state store.PlanState, msg string, steps ...*agentv1.StepStatus) {
	e.t.Helper()
	var raws []json.RawMessage
	for _, s := range steps {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(s)
		if err != nil {
			e.t.Fatal(err)
		}
		raws = append(raws, b)
	}
	b, err := json.Marshal(raws)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.store.UpdatePlan(context.Background(), store.AgentKey{Tenant: p.Tenant, ID: p.Agent}, p.ID,
		store.PlanUpdate{State: state, Message: msg, Steps: b, At: e.clock.Now()}, nil); err != nil {
		e.t.Fatalf("UpdatePlan: %v", err)
	}
}

func TestPlanListAndShow(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"acme", "globex"} {
		e.do("POST", "/v1/tenants", e.admin, `{"name":"`+n+`"}`).wantStatus(http.StatusCreated)
	}
	e.enroll("acme", "a1")
	e.enroll("globex", "g1")
	first := e.submitPlan(e.operator, apiv1.SubmitPlanRequest{Tenant: "acme", YAML: twoStepYAML, DryRun: true})
	e.clock.Advance(time.Second)
	second := e.submitPlan(e.operator, apiv1.SubmitPlanRequest{Tenant: "acme", YAML: twoStepYAML})
	e.clock.Advance(time.Second)
	other := e.submitPlan(e.operator, apiv1.SubmitPlanRequest{Tenant: "globex", YAML: oneStepYAML})

	start := e.clock.Now().Add(-500 * time.Millisecond)
	e.report(first, store.PlanRunning, "", &agentv1.StepStatus{
		StepId: "dir", State: "planned", Message: "would create the directory", Attempts: 1,
		StartedAt: timestamppb.New(start), FinishedAt: timestamppb.New(start.Add(1234 * time.Millisecond)),
		Changes: []*agentv1.StepChange{{Resource: "tenants/acme", Operation: "create", Summary: "mkdir 0750"}},
	}, &agentv1.StepStatus{StepId: "ghost", State: "running"}) // not in the plan: ignored

	p := e.plan(first.ID)
	if p.State != apiv1.PlanRunning || !p.DryRun || p.AckedAt == nil || len(p.Steps) != 2 {
		t.Fatalf("plan = %+v", p)
	}
	dir, db := p.Steps[0], p.Steps[1]
	if dir.ID != "dir" || dir.State != "planned" || dir.Message != "would create the directory" || dir.Attempts != 1 ||
		dir.StartedAt == nil || dir.FinishedAt == nil || dir.Duration != "1.234s" ||
		len(dir.Changes) != 1 || dir.Changes[0] != (apiv1.StepChange{Resource: "tenants/acme", Operation: "create", Summary: "mkdir 0750"}) {
		t.Fatalf("reported step = %+v", dir)
	}
	if db.ID != "db" || db.State != apiv1.StepPending || db.Duration != "" || db.Attempts != 0 {
		t.Fatalf("unreported step = %+v", db)
	}

	e.report(second, store.PlanFailed, `step "db" failed; compensation of "dir" succeeded`,
		&agentv1.StepStatus{StepId: "dir", State: "succeeded", Attempts: 1, CompensationState: "succeeded", CompensationMessage: "removed"},
		&agentv1.StepStatus{StepId: "db", State: "failed", Message: "disk full", Attempts: 2})
	p = e.plan(second.ID)
	if p.State != apiv1.PlanFailed || p.FinishedAt == nil || !strings.Contains(p.Message, "compensation") ||
		p.Steps[0].CompensationState != "succeeded" || p.Steps[0].CompensationMessage != "removed" ||
		p.Steps[1].State != "failed" || p.Steps[1].Message != "disk full" || p.Steps[1].Attempts != 2 {
		t.Fatalf("failed plan = %+v", p)
	}

	var list apiv1.PlanList
	mustUnmarshal(t, e.do("GET", "/v1/plans?tenant=acme", e.auditor, "").wantStatus(http.StatusOK).raw, &list)
	if len(list.Plans) != 2 || list.Plans[0].ID != second.ID || list.Plans[1].ID != first.ID ||
		list.Plans[0].StepCount != 2 || list.Plans[0].Steps != nil || list.Plans[0].State != apiv1.PlanFailed {
		t.Fatalf("acme plans = %+v", list.Plans)
	}
	mustUnmarshal(t, e.do("GET", "/v1/plans", e.auditor, "").wantStatus(http.StatusOK).raw, &list)
	if len(list.Plans) != 3 || list.Plans[0].ID != other.ID {
		t.Fatalf("all plans = %+v", list.Plans)
	}
	mustUnmarshal(t, e.do("GET", "/v1/plans?tenant=acme&agent=a1&limit=1", e.auditor, "").wantStatus(http.StatusOK).raw, &list)
	if len(list.Plans) != 1 || list.Plans[0].ID != second.ID {
		t.Fatalf("limited = %+v", list.Plans)
	}

	// A pending plan past its expiry is reported expired; reported ones keep
	// their state.
	e.clock.Advance(plan.DefaultLifetime + time.Second)
	if p := e.plan(other.ID); p.State != apiv1.PlanExpired {
		t.Fatalf("expired pending plan state = %q", p.State)
	}
	if p := e.plan(first.ID); p.State != apiv1.PlanRunning {
		t.Fatalf("running plan past expiry = %q", p.State)
	}
}

func TestPlanRoutesNeedThePlansService(t *testing.T) {
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "cp.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h, err := httpapi.New(httpapi.Config{
		Store: st, Logger: slog.New(slog.DiscardHandler), TrustDomain: "attache.test", AgentAddr: "cp:7444",
		CAKeySHA256: func() [32]byte { return testCAKey }, TrustRootSHA256: func() [32]byte { return testTrustRoot },
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/plans", nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("GET /v1/plans without a plans service: %d", rec.Code)
	}
}
