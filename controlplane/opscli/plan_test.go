package opscli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/controlplane/httpapi/httpapitest"
	"attache.dev/attache/controlplane/opscli"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/jointoken"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

const planYAML = `version: 1
release: sampleapp@v1
steps:
  - id: provision
    provider: local
    action: tenant.provision
    resource: tenant
  - id: migrate
    provider: local
    action: db.migrate
    resource: app.db
    depends_on: [provision]
`

// enrollAgent enrolls agent id of tenant through a join token, as
// enrollment does.
func enrollAgent(t *testing.T, srv *httpapitest.Server, tenant, id string) {
	t.Helper()
	ctx := context.Background()
	jt, err := apiclient.New(srv.URL, srv.AdminToken, nil).CreateJoinToken(ctx, tenant, 0)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jointoken.Parse(jt.Token)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sid := "spiffe://" + httpapitest.TrustDomain + "/tenant/" + tenant + "/agent/" + id
	if _, err := srv.Store.Enroll(ctx, tok.ID, tok.SecretHash(), now, store.Agent{
		Tenant: tenant, ID: id, SPIFFEID: sid, EnrolledAt: now, CertSerial: "01", CertExpiresAt: now.Add(time.Hour),
	}, auditlog.Entry{Time: now, Actor: sid, Role: "agent", Action: "agent.enroll", Tenant: tenant, Target: id, Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatalf("Enroll: %v", err)
	}
}

// report stores an agent's status report as the agent API does.
func report(t *testing.T, st store.Store, p store.Plan, state store.PlanState, msg string, steps ...*agentv1.StepStatus) {
	t.Helper()
	raws := make([]json.RawMessage, 0, len(steps))
	for _, s := range steps {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(s)
		if err != nil {
			t.Error(err)
			return
		}
		raws = append(raws, b)
	}
	b, _ := json.Marshal(raws)
	if _, err := st.UpdatePlan(context.Background(), p.Agent(), p.ID, store.PlanUpdate{State: state, Message: msg, Steps: b}, nil); err != nil {
		t.Errorf("UpdatePlan: %v", err)
	}
}

// fakeAgent waits for the plan after the n plans already stored and plays
// the reports on it, each after the previous one was seen by --wait.
func fakeAgent(t *testing.T, st store.Store, n int, play func(p store.Plan)) (wait func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			ps, err := st.ListPlans(context.Background(), store.PlanFilter{})
			if err != nil {
				t.Errorf("ListPlans: %v", err)
				return
			}
			if len(ps) > n {
				play(ps[0])
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Error("no plan was submitted")
	}()
	return func() { <-done }
}

func runIn(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := opscli.NewRootCommand(&out, &errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func TestPlanCommands(t *testing.T) {
	clearEnv(t)
	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	admin.ok("tenant", "create", "acme")
	dir := t.TempDir()
	file := filepath.Join(dir, "plan.yaml")
	writeFile(t, file, planYAML)

	if _, _, err := admin.run("plan", "submit", file); err == nil || !strings.Contains(err.Error(), "--tenant is required") {
		t.Fatalf("no --tenant: %v", err)
	}
	if _, _, err := admin.run("plan", "submit", "--tenant", "acme", file); err == nil || !strings.Contains(err.Error(), "no active agent") {
		t.Fatalf("no agent: %v", err)
	}
	enrollAgent(t, srv, "acme", "a1")

	out, errOut, err := admin.run("plan", "submit", "--tenant", "acme", "--dry-run", file)
	if err != nil {
		t.Fatal(err)
	}
	var first apiclient.Plan
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "Plan:" {
			first.ID = f[1]
		}
	}
	for _, want := range []string{"Sequence: 1", "State:    pending", "Agent:    a1", "Dry run:  yes"} {
		if !strings.Contains(out, want) {
			t.Errorf("submit output lacks %q:\n%s", want, out)
		}
	}
	if first.ID == "" || !strings.Contains(errOut, "attache plan status "+first.ID+" --wait") {
		t.Fatalf("submit: stdout %q stderr %q", out, errOut)
	}

	var second apiclient.Plan
	mustJSON(t, admin.ok("plan", "submit", "--tenant", "acme", "--agent", "a1", file, "-o", "json"), &second)
	if second.Sequence != 2 || second.Agent != "a1" || len(second.Steps) != 2 {
		t.Fatalf("submit -o json: %+v", second)
	}
	// From standard input.
	out, _, err = runIn(t, planYAML, "--server", srv.URL, "--token", srv.AdminToken, "plan", "submit", "--tenant", "acme", "-")
	if err != nil || !strings.Contains(out, "Sequence: 3") {
		t.Fatalf("submit -: %q, %v", out, err)
	}

	// The server's validation errors reach the user whole.
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "version: 1\nsteps:\n- {id: a, provider: local, action: x, resource: r, dependson: [b]}\n")
	if _, _, err := admin.run("plan", "submit", "--tenant", "acme", bad); err == nil ||
		!strings.Contains(err.Error(), `steps[0] "a": unknown key "dependson"`) || !strings.Contains(err.Error(), "HTTP 400") {
		t.Fatalf("invalid plan: %v", err)
	}
	writeFile(t, bad, "\n")
	if _, _, err := admin.run("plan", "submit", "--tenant", "acme", bad); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty plan: %v", err)
	}
	if _, _, err := admin.run("plan", "submit", "--tenant", "acme", filepath.Join(dir, "nope.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
	if _, _, err := admin.run("plan", "submit", "--tenant", "acme", "--timeout", "1m", file); err == nil || !strings.Contains(err.Error(), "--timeout needs --wait") {
		t.Fatalf("--timeout without --wait: %v", err)
	}

	// The agent reports on the dry run.
	stored, err := srv.Store.GetPlan(context.Background(), first.ID)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Second)
	report(t, srv.Store, stored, store.PlanRunning, "", &agentv1.StepStatus{
		StepId: "provision", State: "planned", Attempts: 1, Message: "would create 2 directories",
		StartedAt: timestamppb.New(start), FinishedAt: timestamppb.New(start.Add(1500 * time.Millisecond)),
		Changes: []*agentv1.StepChange{{Resource: "tenants/acme/config", Operation: "create", Summary: "mkdir 0750"}},
		Outputs: map[string]string{"path": "tenants/acme", "verification": "2 directories would exist"},
	})

	list := admin.ok("plan", "list", "--tenant", "acme")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "ID TENANT AGENT SEQ STATE STEPS DRY-RUN RELEASE CREATED" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[3]), " "), first.ID+" acme a1 1 running 2 yes sampleapp@v1") {
		t.Fatalf("plan list:\n%s", list)
	}
	var ps []apiclient.Plan
	mustJSON(t, admin.ok("plan", "list", "--agent", "a1", "--limit", "1", "-o", "json"), &ps)
	if len(ps) != 1 || ps[0].Sequence != 3 {
		t.Fatalf("plan list -o json: %+v", ps)
	}

	show := admin.ok("plan", "show", first.ID)
	for _, want := range []string{
		"Plan:         " + first.ID, "Dry run:      yes", "State:        running", "Release:      sampleapp@v1",
		"STEP       ACTION                  RESOURCE  STATE    ATTEMPTS  DURATION  MESSAGE",
		"provision  local/tenant.provision  tenant    planned  1         1.5s      would create 2 directories",
		"migrate    local/db.migrate        app.db    pending  -         -         -",
		"Changes the plan would make (dry run, nothing was changed):",
		"provision  create     tenants/acme/config  mkdir 0750",
		"Outputs:\nSTEP       OUTPUT        VALUE\nprovision  verification  2 directories would exist\nprovision  path          tenants/acme\n",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("plan show lacks %q:\n%s", want, show)
		}
	}
	status := admin.ok("plan", "status", first.ID)
	if !strings.HasPrefix(status, "Plan "+first.ID+" (acme/a1 #1, dry run): running\n") || !strings.Contains(status, "provision  planned  1") {
		t.Fatalf("plan status:\n%s", status)
	}
	var shown apiclient.Plan
	mustJSON(t, admin.ok("plan", "show", first.ID, "-o", "json"), &shown)
	if shown.Steps[0].Changes[0].Summary != "mkdir 0750" {
		t.Fatalf("plan show -o json: %+v", shown)
	}
	if _, _, err := admin.run("plan", "show", "nope"); err == nil || !strings.Contains(err.Error(), "plan nope not found") {
		t.Fatalf("show unknown: %v", err)
	}

	// An auditor reads plans but cannot submit one.
	reviewer := cli{t, srv.URL, strings.TrimSpace(admin.ok("apitoken", "create", "--name", "reviewer", "--role", "auditor"))}
	if _, _, err := reviewer.run("plan", "submit", "--tenant", "acme", file); err == nil || !strings.Contains(err.Error(), "role auditor may not plan.submit") {
		t.Fatalf("auditor submit: %v", err)
	}
	reviewer.ok("plan", "show", first.ID)
}

func TestPlanWait(t *testing.T) {
	clearEnv(t)
	defer opscli.SetPlanPollInterval(10 * time.Millisecond)()
	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	admin.ok("tenant", "create", "acme")
	enrollAgent(t, srv, "acme", "a1")
	file := filepath.Join(t.TempDir(), "plan.yaml")
	writeFile(t, file, planYAML)
	st := srv.Store
	pause := func() { time.Sleep(60 * time.Millisecond) } // several polls

	// Success: progress on stderr, the final table on stdout, exit 0.
	wait := fakeAgent(t, st, 0, func(p store.Plan) {
		pause()
		report(t, st, p, store.PlanRunning, "", &agentv1.StepStatus{StepId: "provision", State: "running", Attempts: 1, Message: "creating directories"})
		pause()
		report(t, st, p, store.PlanSucceeded, "", &agentv1.StepStatus{StepId: "provision", State: "succeeded", Attempts: 1},
			&agentv1.StepStatus{StepId: "migrate", State: "succeeded", Attempts: 2})
	})
	out, errOut, err := admin.run("plan", "submit", "--tenant", "acme", file, "--wait")
	wait()
	if err != nil {
		t.Fatalf("submit --wait: %v\nstderr: %s", err, errOut)
	}
	for _, want := range []string{"step provision: running: creating directories", "step provision: succeeded", "step migrate: succeeded (attempt 2)", ": succeeded"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("progress lacks %q:\n%s", want, errOut)
		}
	}
	if !strings.Contains(out, "State:    pending") || !strings.Contains(out, "(acme/a1 #1): succeeded") || !strings.Contains(out, "migrate    succeeded  2") {
		t.Fatalf("submit --wait stdout:\n%s", out)
	}

	// Failure: exit non-zero with the plan's message; JSON still printed.
	wait = fakeAgent(t, st, 1, func(p store.Plan) {
		pause()
		report(t, st, p, store.PlanFailed, `step "migrate" failed: disk full; compensation of "provision" succeeded`,
			&agentv1.StepStatus{StepId: "provision", State: "succeeded", Attempts: 1, CompensationState: "succeeded"},
			&agentv1.StepStatus{StepId: "migrate", State: "failed", Attempts: 1, Message: "disk full"})
	})
	out, _, err = admin.run("plan", "submit", "--tenant", "acme", file, "--wait", "-o", "json")
	wait()
	if err == nil || !strings.Contains(err.Error(), "failed: step \"migrate\" failed: disk full") {
		t.Fatalf("failed plan: %v", err)
	}
	var final apiclient.Plan
	mustJSON(t, out, &final)
	if final.State != "failed" || final.Steps[1].Message != "disk full" {
		t.Fatalf("final JSON: %+v", final)
	}
	// status --wait of a finished plan answers at once, with the same verdict.
	out, _, err = admin.run("plan", "status", final.ID, "--wait")
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(out, "COMPENSATION") {
		t.Fatalf("status --wait of a failed plan: %v\n%s", err, out)
	}
	if _, _, err := admin.run("plan", "status", final.ID); err != nil {
		t.Fatalf("status without --wait exits 0 whatever the state: %v", err)
	}

	// Refused by the agent.
	wait = fakeAgent(t, st, 2, func(p store.Plan) {
		report(t, st, p, store.PlanRefused, "SIGNATURE: plan signature not valid")
	})
	if _, _, err := admin.run("plan", "submit", "--tenant", "acme", file, "--wait"); err == nil || !strings.Contains(err.Error(), "refused: SIGNATURE") {
		t.Fatalf("refused plan: %v", err)
	}
	wait()

	// Nobody answers: the wait gives up and says how to resume.
	out, _, err = admin.run("plan", "submit", "--tenant", "acme", file, "--wait", "--timeout", "100ms")
	if err == nil || !strings.Contains(err.Error(), "is still pending after 100ms") || !strings.Contains(err.Error(), "--wait") {
		t.Fatalf("timeout: %v", err)
	}
	if !strings.Contains(out, "pending") {
		t.Fatalf("timeout stdout:\n%s", out)
	}

	// status --wait follows a running plan to its end.
	ps, err := st.ListPlans(context.Background(), store.PlanFilter{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pause()
		report(t, st, ps[0], store.PlanSucceeded, "", &agentv1.StepStatus{StepId: "provision", State: "succeeded"},
			&agentv1.StepStatus{StepId: "migrate", State: "succeeded"})
	}()
	out, _, err = admin.run("plan", "status", ps[0].ID, "--wait")
	<-done
	if err != nil || !strings.Contains(out, "#4): succeeded") {
		t.Fatalf("status --wait: %v\n%s", err, out)
	}
}
