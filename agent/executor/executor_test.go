package executor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/agent/catalog"
	"attache.dev/attache/agent/executor"
	"attache.dev/attache/agent/journal"
	"attache.dev/attache/internal/plan"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/local"
	"attache.dev/attache/providers/local/localtest"
	"attache.dev/attache/providers/sdk"
)

var _ executor.Providers = (*catalog.Catalog)(nil)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// providers maps names to providers, like the catalog.
type providers map[string]sdk.Provider

func (ps providers) Provider(name string) (sdk.Provider, error) {
	if p, ok := ps[name]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w %q", catalog.ErrUnknownProvider, name)
}

// counting counts the calls that reach a provider.
type counting struct {
	sdk.Provider
	plans, applies atomic.Int32
}

func (c *counting) Plan(ctx context.Context, s *providerv1.Step) ([]*providerv1.Change, error) {
	c.plans.Add(1)
	return c.Provider.Plan(ctx, s)
}

func (c *counting) Apply(ctx context.Context, s *providerv1.Step, fn sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	c.applies.Add(1)
	return c.Provider.Apply(ctx, s, fn)
}

func openJournal(t *testing.T) *journal.Journal {
	t.Helper()
	j, err := journal.Open(filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Close() })
	return j
}

// step builds a plan step; params is converted with structpb.NewStruct.
func step(id, provider, action string, params map[string]any, deps ...string) *planv1.Step {
	s, err := structpb.NewStruct(params)
	if err != nil {
		panic(err)
	}
	return &planv1.Step{Id: id, Provider: provider, Action: action, Resource: "tenants/acme/" + id, Params: s, DependsOn: deps}
}

// compensated gives s a compensation.
func compensated(s *planv1.Step, action string) *planv1.Step {
	s.Compensation = &planv1.Compensation{Action: action, Params: &structpb.Struct{Fields: map[string]*structpb.Value{"undo": structpb.NewStringValue(s.GetId())}}}
	return s
}

var planSeq atomic.Uint64

// newPlan returns a valid plan for tenant acme with a fresh id and sequence.
func newPlan(steps ...*planv1.Step) *planv1.Plan {
	now := time.Now()
	seq := planSeq.Add(1)
	return &planv1.Plan{
		PlanId:        fmt.Sprintf("plan-%d", seq),
		Tenant:        "acme",
		AgentSpiffeId: "spiffe://example.org/tenant/acme/agent/a1",
		Sequence:      seq,
		IssuedAt:      timestamppb.New(now),
		ExpiresAt:     timestamppb.New(now.Add(time.Hour)),
		Steps:         steps,
	}
}

// accept journals p as the runner does.
func accept(t *testing.T, j *journal.Journal, p *planv1.Plan) journal.PlanRecord {
	t.Helper()
	ordered, err := plan.Order(p)
	if err != nil {
		t.Fatal(err)
	}
	rec := journal.PlanRecord{ID: p.GetPlanId(), Sequence: p.GetSequence(), Tenant: p.GetTenant(), DryRun: p.GetDryRun()}
	for _, s := range ordered {
		rec.Steps = append(rec.Steps, journal.StepRecord{ID: s.GetId(), Provider: s.GetProvider(), Action: s.GetAction(), HasCompensation: s.GetCompensation() != nil})
	}
	rec, err = j.Accept(rec)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func get(t *testing.T, j *journal.Journal, id string) journal.PlanRecord {
	t.Helper()
	rec, err := j.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// serve serves p in-process over real gRPC.
func serve(t *testing.T, p sdk.Provider) sdk.Provider {
	t.Helper()
	ip, err := sdk.ServeInProcess(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ip.Close() })
	return ip
}

// localProvider is the real local provider, configured on a fresh root and
// served in-process, with a call counter in front.
func localProvider(t *testing.T) (*counting, string) {
	t.Helper()
	root := t.TempDir()
	ip := serve(t, local.New(quiet(), "test"))
	localtest.Configure(t, ip, root, t.TempDir())
	return &counting{Provider: ip}, root
}

// localPlan provisions tenant acme and migrates its database; the migrate
// step is declared first, so running it second shows plan.Order is used.
func localPlan() *planv1.Plan {
	return newPlan(
		step("migrate", "local", "db.migrate", map[string]any{"migrations": localtest.Migrations}, "provision"),
		step("provision", "local", "tenant.provision", map[string]any{"files": []any{
			map[string]any{"path": "config/app.env", "content": "LOG_LEVEL=info\n"},
		}}),
	)
}

func stepIDs(rec journal.PlanRecord) []string {
	var ids []string
	for _, s := range rec.Steps {
		ids = append(ids, s.ID)
	}
	return ids
}

func hasOp(cs []journal.Change, op, resource string) bool {
	return slices.ContainsFunc(cs, func(c journal.Change) bool { return c.Operation == op && strings.Contains(c.Resource, resource) })
}

// TestLocal runs plans through the real local provider over gRPC.
func TestLocal(t *testing.T) {
	t.Run("apply then re-execute", func(t *testing.T) {
		j := openJournal(t)
		prov, root := localProvider(t)
		ex := executor.New(executor.Config{Journal: j, Providers: providers{"local": prov}, Logger: quiet()})
		p := localPlan()
		accept(t, j, p)

		if err := ex.Execute(t.Context(), p); err != nil {
			t.Fatalf("Execute: %v", err)
		}
		rec := get(t, j, p.GetPlanId())
		if rec.State != journal.PlanSucceeded || rec.StartedAt.IsZero() || rec.FinishedAt.IsZero() {
			t.Fatalf("plan: state %s, started %v, finished %v, message %q", rec.State, rec.StartedAt, rec.FinishedAt, rec.Message)
		}
		if got, want := stepIDs(rec), []string{"provision", "migrate"}; !slices.Equal(got, want) {
			t.Errorf("steps %v, want %v", got, want)
		}
		for _, s := range rec.Steps {
			if s.State != journal.StepSucceeded || s.Attempts != 1 || s.StartedAt.IsZero() || s.FinishedAt.IsZero() {
				t.Errorf("step %s: state %s, attempts %d, message %q", s.ID, s.State, s.Attempts, s.Message)
			}
		}
		if cs := rec.Step("provision").Changes; !hasOp(cs, "create", "config/app.env") {
			t.Errorf("provision changes %+v lack the created config/app.env", cs)
		}
		if cs := rec.Step("migrate").Changes; !hasOp(cs, "create", "app.db#1") || !hasOp(cs, "create", "app.db#2") {
			t.Errorf("migrate changes %+v lack migrations 1 and 2", cs)
		}
		if _, err := os.Stat(filepath.Join(root, "tenants/acme/app.db")); err != nil {
			t.Errorf("database not created: %v", err)
		}
		if n := prov.applies.Load(); n != 2 {
			t.Errorf("%d Apply calls, want 2", n)
		}

		// A finished plan is left alone: no provider call, no journal write.
		snap := localtest.Snapshot(t, root)
		if err := ex.Execute(t.Context(), p); err != nil {
			t.Fatalf("second Execute: %v", err)
		}
		if n := prov.applies.Load() + prov.plans.Load(); n != 2 {
			t.Errorf("second Execute called the provider (%d calls in all, want 2)", n)
		}
		if again := get(t, j, p.GetPlanId()); again.Version != rec.Version {
			t.Errorf("second Execute wrote the journal: version %d → %d", rec.Version, again.Version)
		}
		if string(localtest.Snapshot(t, root)) != string(snap) {
			t.Error("second Execute changed the disk")
		}
	})

	t.Run("dry run", func(t *testing.T) {
		j := openJournal(t)
		prov, root := localProvider(t)
		ex := executor.New(executor.Config{Journal: j, Providers: providers{"local": prov}, Logger: quiet()})
		p := localPlan()
		p.DryRun = true
		accept(t, j, p)
		before := localtest.Snapshot(t, root)

		if err := ex.Execute(t.Context(), p); err != nil {
			t.Fatalf("Execute: %v", err)
		}
		if after := localtest.Snapshot(t, root); string(after) != string(before) {
			t.Errorf("dry run changed the disk:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if a, pl := prov.applies.Load(), prov.plans.Load(); a != 0 || pl != 2 {
			t.Errorf("%d Apply and %d Plan calls, want 0 and 2", a, pl)
		}
		rec := get(t, j, p.GetPlanId())
		if rec.State != journal.PlanSucceeded || !strings.Contains(rec.Message, "dry run") {
			t.Errorf("plan: state %s, message %q", rec.State, rec.Message)
		}
		for _, s := range rec.Steps {
			if s.State != journal.StepPlanned || len(s.Changes) == 0 {
				t.Errorf("step %s: state %s, changes %+v", s.ID, s.State, s.Changes)
			}
		}
		if cs := rec.Step("migrate").Changes; !hasOp(cs, "create", "app.db#1") {
			t.Errorf("migrate diff %+v lacks migration 1", cs)
		}
	})
}

// fake is a provider whose behaviour follows the action name, recording
// every call; it tests the executor's control flow, not a provider.
//
//	fail       FAILED result "boom"
//	longfail   FAILED result with a 10 KiB message
//	invalid    InvalidArgument naming params.x
//	block      on attempt 1: waits until cancelled (signals blocked first)
//	chatty     sends a progress event, waits until the journal shows it,
//	           sends a burst, waits until the journal shows its last
//	           event, then succeeds
//	undo*      a compensation: succeeds (undo.fail fails)
//	anything   else succeeds with one CREATE change
//
// Before acting it checks that the journal already shows the call: the step
// running with this attempt, or its compensation running.
type fake struct {
	t       *testing.T
	j       *journal.Journal
	blocked chan struct{}

	mu    sync.Mutex
	calls []string // "apply step action #attempt"
}

func newFake(t *testing.T, j *journal.Journal) *fake {
	return &fake{t: t, j: j, blocked: make(chan struct{}, 10)}
}

func (f *fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fake) Describe(context.Context) (*providerv1.DescribeResponse, error) {
	return &providerv1.DescribeResponse{Name: "fake"}, nil
}
func (f *fake) Configure(context.Context, *providerv1.ConfigureRequest) error { return nil }
func (f *fake) Health(context.Context) (*providerv1.HealthResponse, error) {
	return &providerv1.HealthResponse{}, nil
}
func (f *fake) Usage(context.Context, *providerv1.UsageRequest) (*providerv1.UsageResponse, error) {
	return &providerv1.UsageResponse{}, nil
}

func (f *fake) Plan(_ context.Context, s *providerv1.Step) ([]*providerv1.Change, error) {
	f.record("plan", s)
	if s.GetAction() == "invalid" {
		return nil, sdk.InvalidArgument("params.x", "must be set")
	}
	return []*providerv1.Change{{Resource: s.GetResource(), Operation: providerv1.Operation_OPERATION_CREATE, Summary: s.GetAction()}}, nil
}

func (f *fake) record(kind string, s *providerv1.Step) {
	f.mu.Lock()
	f.calls = append(f.calls, fmt.Sprintf("%s %s %s #%d", kind, s.GetId(), s.GetAction(), s.GetAttempt()))
	f.mu.Unlock()
}

// checkJournaled reports an Apply the journal does not show yet.
func (f *fake) checkJournaled(s *providerv1.Step) {
	rec, err := f.j.Get(s.GetPlanId())
	if err != nil {
		f.t.Errorf("Apply %s: journal: %v", s.GetId(), err)
		return
	}
	st := rec.Step(s.GetId())
	switch {
	case rec.State != journal.PlanRunning:
		f.t.Errorf("Apply %s %s: plan journaled %s, want running", s.GetId(), s.GetAction(), rec.State)
	case st == nil:
		f.t.Errorf("Apply %s: step not journaled", s.GetId())
	case strings.HasPrefix(s.GetAction(), "undo"):
		if st.CompensationState != journal.CompensationRunning {
			f.t.Errorf("compensation %s of %s called while journaled %q, want running", s.GetAction(), s.GetId(), st.CompensationState)
		}
	case st.State != journal.StepRunning || st.Attempts != s.GetAttempt():
		f.t.Errorf("Apply %s attempt %d called while journaled %s attempt %d", s.GetId(), s.GetAttempt(), st.State, st.Attempts)
	}
}

func (f *fake) Apply(ctx context.Context, s *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	f.record("apply", s)
	f.checkJournaled(s)
	failed := func(msg string) *providerv1.ApplyResult {
		return &providerv1.ApplyResult{State: providerv1.StepState_STEP_STATE_FAILED, Message: msg}
	}
	switch s.GetAction() {
	case "fail", "undo.fail":
		return failed("boom"), nil
	case "longfail":
		return failed(strings.Repeat("é", 5<<10)), nil
	case "invalid":
		return nil, sdk.InvalidArgument("params.x", "must be set")
	case "verify":
		outputs, err := structpb.NewStruct(map[string]any{
			"verification": "0 rows of tenant acme remain",
			"rows":         0,
			"ok":           true,
			"tables":       []any{"a", "b"},
			"long":         strings.Repeat("x", 3<<10),
		})
		if err != nil {
			return nil, err
		}
		return &providerv1.ApplyResult{State: providerv1.StepState_STEP_STATE_SUCCEEDED, Message: "erased", Outputs: outputs}, nil
	case "block":
		if s.GetAttempt() == 1 {
			f.blocked <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		}
	case "chatty":
		// The first message is written at once; the burst after it falls
		// in the throttle window, and its last message must follow.
		sdk.Report(progress, "", "first")
		if !f.awaitMessage(s, "first") {
			return failed("the first progress message was never journaled"), nil
		}
		for i := range 200 {
			sdk.Report(progress, "", fmt.Sprintf("progress %d", i))
		}
		sdk.Report(progress, s.GetResource(), "last")
		if !f.awaitMessage(s, s.GetResource()+": last") {
			return failed("the last progress message was never journaled"), nil
		}
	}
	return &providerv1.ApplyResult{
		State:   providerv1.StepState_STEP_STATE_SUCCEEDED,
		Message: "did " + s.GetAction(),
		Changes: []*providerv1.Change{{Resource: s.GetResource(), Operation: providerv1.Operation_OPERATION_CREATE, Summary: s.GetAction()}},
	}, nil
}

// awaitMessage waits until the journal shows msg as s's message.
func (f *fake) awaitMessage(s *providerv1.Step, msg string) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if rec, err := f.j.Get(s.GetPlanId()); err == nil && rec.Step(s.GetId()).Message == msg {
			return true
		}
	}
	return false
}

// fakeSetup is a journal, a fake served over gRPC as provider "fake" and an
// executor using them.
func fakeSetup(t *testing.T) (*journal.Journal, *fake, *executor.Executor) {
	return fakeSetupInterval(t, 20*time.Millisecond)
}

func fakeSetupInterval(t *testing.T, progress time.Duration) (*journal.Journal, *fake, *executor.Executor) {
	t.Helper()
	j := openJournal(t)
	f := newFake(t, j)
	ex := executor.New(executor.Config{Journal: j, Providers: providers{"fake": serve(t, f)}, Logger: quiet(), ProgressInterval: progress})
	return j, f, ex
}

func ok(id string) *planv1.Step { return step(id, "fake", "ok", nil) }

// TestFailure covers failed steps and compensations.
func TestFailure(t *testing.T) {
	tests := []struct {
		name    string
		steps   []*planv1.Step
		calls   []string
		states  map[string]string // step → state
		comps   map[string]string // step → compensation state
		stepMsg map[string]string // step → substring of its message
		planMsg []string          // substrings of the plan's message
	}{
		{
			name:    "step 2 of 3 fails",
			steps:   []*planv1.Step{compensated(ok("a"), "undo"), step("b", "fake", "fail", nil), ok("c")},
			calls:   []string{"apply a ok #1", "apply b fail #1", "apply a undo #1"},
			states:  map[string]string{"a": journal.StepSucceeded, "b": journal.StepFailed, "c": journal.StepSkipped},
			comps:   map[string]string{"a": journal.CompensationSucceeded, "b": "", "c": ""},
			stepMsg: map[string]string{"b": "boom", "c": `step "b" failed`},
			planMsg: []string{`step "b" failed: boom`, `compensated step "a"`},
		},
		{
			name:    "compensations in reverse order",
			steps:   []*planv1.Step{compensated(ok("a"), "undo"), compensated(ok("b"), "undo"), step("c", "fake", "fail", nil)},
			calls:   []string{"apply a ok #1", "apply b ok #1", "apply c fail #1", "apply b undo #1", "apply a undo #1"},
			states:  map[string]string{"a": journal.StepSucceeded, "b": journal.StepSucceeded, "c": journal.StepFailed},
			comps:   map[string]string{"a": journal.CompensationSucceeded, "b": journal.CompensationSucceeded},
			planMsg: []string{`step "c" failed`, `compensated steps "b", "a"`},
		},
		{
			name:    "compensation fails",
			steps:   []*planv1.Step{compensated(ok("a"), "undo"), compensated(ok("b"), "undo.fail"), step("c", "fake", "fail", nil)},
			calls:   []string{"apply a ok #1", "apply b ok #1", "apply c fail #1", "apply b undo.fail #1"},
			states:  map[string]string{"a": journal.StepSucceeded, "b": journal.StepSucceeded, "c": journal.StepFailed},
			comps:   map[string]string{"a": "", "b": journal.CompensationFailed},
			planMsg: []string{`step "c" failed`, `compensation of step "b" failed: boom`, `not compensated step "a"`},
		},
		{
			name:    "no compensation declared",
			steps:   []*planv1.Step{ok("a"), step("b", "fake", "fail", nil)},
			calls:   []string{"apply a ok #1", "apply b fail #1"},
			states:  map[string]string{"a": journal.StepSucceeded, "b": journal.StepFailed},
			comps:   map[string]string{"a": ""},
			planMsg: []string{`step "b" failed`, "no compensation to run"},
		},
		{
			name:    "unknown provider",
			steps:   []*planv1.Step{compensated(ok("a"), "undo"), step("b", "nope", "ok", nil), ok("c")},
			calls:   []string{"apply a ok #1", "apply a undo #1"},
			states:  map[string]string{"a": journal.StepSucceeded, "b": journal.StepFailed, "c": journal.StepSkipped},
			comps:   map[string]string{"a": journal.CompensationSucceeded},
			stepMsg: map[string]string{"b": `provider "nope" is not available: unknown provider "nope"`},
			planMsg: []string{`step "b" failed: provider "nope" is not available`},
		},
		{
			name:    "provider error",
			steps:   []*planv1.Step{step("a", "fake", "invalid", nil), ok("b")},
			calls:   []string{"apply a invalid #1"},
			states:  map[string]string{"a": journal.StepFailed, "b": journal.StepSkipped},
			stepMsg: map[string]string{"a": "InvalidArgument: params.x: must be set"},
			planMsg: []string{`step "a" failed: InvalidArgument: params.x`},
		},
		{
			name:    "long message is bounded",
			steps:   []*planv1.Step{step("a", "fake", "longfail", nil)},
			calls:   []string{"apply a longfail #1"},
			states:  map[string]string{"a": journal.StepFailed},
			stepMsg: map[string]string{"a": "éé…"},
			planMsg: []string{`step "a" failed: éé`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, f, ex := fakeSetup(t)
			p := newPlan(tt.steps...)
			accept(t, j, p)
			if err := ex.Execute(t.Context(), p); err != nil {
				t.Fatalf("Execute: %v", err)
			}
			if got := f.Calls(); !slices.Equal(got, tt.calls) {
				t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.calls, "\n"))
			}
			rec := get(t, j, p.GetPlanId())
			if rec.State != journal.PlanFailed || rec.FinishedAt.IsZero() {
				t.Errorf("plan state %s (finished %v), want failed", rec.State, rec.FinishedAt)
			}
			for _, want := range tt.planMsg {
				if !strings.Contains(rec.Message, want) {
					t.Errorf("plan message %q lacks %q", rec.Message, want)
				}
			}
			for id, want := range tt.states {
				if got := rec.Step(id).State; got != want {
					t.Errorf("step %s: state %s, want %s", id, got, want)
				}
			}
			for id, want := range tt.comps {
				if got := rec.Step(id).CompensationState; got != want {
					t.Errorf("step %s: compensation state %q, want %q (message %q)", id, got, want, rec.Step(id).CompensationMessage)
				}
			}
			for id, want := range tt.stepMsg {
				if got := rec.Step(id).Message; !strings.Contains(got, want) {
					t.Errorf("step %s: message %.200q lacks %q", id, got, want)
				}
			}
			for _, s := range rec.Steps {
				if len(s.Message) > executor.MaxMessageBytes || !utf8.ValidString(s.Message) {
					t.Errorf("step %s: message of %d bytes (valid UTF-8: %v), limit %d", s.ID, len(s.Message), utf8.ValidString(s.Message), executor.MaxMessageBytes)
				}
			}
			if len(rec.Message) > executor.MaxMessageBytes {
				t.Errorf("plan message of %d bytes, limit %d", len(rec.Message), executor.MaxMessageBytes)
			}
		})
	}
}

// TestResume executes plans journaled as a killed agent left them.
func TestResume(t *testing.T) {
	tests := []struct {
		name      string
		steps     []*planv1.Step
		journaled func(rec *journal.PlanRecord) // the state at the kill
		calls     []string
		planState string
		check     func(t *testing.T, rec journal.PlanRecord)
	}{
		{
			name:  "step running",
			steps: []*planv1.Step{ok("a"), ok("b"), ok("c")},
			journaled: func(rec *journal.PlanRecord) {
				rec.State = journal.PlanRunning
				rec.Step("a").State, rec.Step("a").Attempts = journal.StepSucceeded, 1
				rec.Step("b").State, rec.Step("b").Attempts = journal.StepRunning, 1
			},
			calls:     []string{"apply b ok #2", "apply c ok #1"},
			planState: journal.PlanSucceeded,
			check: func(t *testing.T, rec journal.PlanRecord) {
				if a, b := rec.Step("a"), rec.Step("b"); a.Attempts != 1 || b.Attempts != 2 || b.State != journal.StepSucceeded {
					t.Errorf("a attempts %d, b attempts %d state %s; want 1, 2 succeeded", a.Attempts, b.Attempts, b.State)
				}
			},
		},
		{
			name:  "compensation running",
			steps: []*planv1.Step{compensated(ok("a"), "undo"), compensated(ok("b"), "undo"), step("c", "fake", "fail", nil), ok("d")},
			journaled: func(rec *journal.PlanRecord) {
				rec.State = journal.PlanRunning
				rec.Step("a").State, rec.Step("a").Attempts = journal.StepSucceeded, 1
				rec.Step("b").State, rec.Step("b").Attempts = journal.StepSucceeded, 1
				rec.Step("b").CompensationState = journal.CompensationRunning
				rec.Step("c").State, rec.Step("c").Attempts, rec.Step("c").Message = journal.StepFailed, 1, "boom"
			},
			calls:     []string{"apply b undo #2", "apply a undo #1"},
			planState: journal.PlanFailed,
			check: func(t *testing.T, rec journal.PlanRecord) {
				if d := rec.Step("d"); d.State != journal.StepSkipped {
					t.Errorf("d: state %s, want skipped", d.State)
				}
				if !strings.Contains(rec.Message, `step "c" failed: boom; compensated steps "b", "a"`) {
					t.Errorf("plan message %q", rec.Message)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, f, ex := fakeSetup(t)
			p := newPlan(tt.steps...)
			accept(t, j, p)
			if _, err := j.Update(p.GetPlanId(), func(rec *journal.PlanRecord) error { tt.journaled(rec); return nil }); err != nil {
				t.Fatal(err)
			}
			if err := ex.Execute(t.Context(), p); err != nil {
				t.Fatalf("Execute: %v", err)
			}
			if got := f.Calls(); !slices.Equal(got, tt.calls) {
				t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.calls, "\n"))
			}
			rec := get(t, j, p.GetPlanId())
			if rec.State != tt.planState {
				t.Errorf("plan state %s (%q), want %s", rec.State, rec.Message, tt.planState)
			}
			tt.check(t, rec)
		})
	}
}

// TestCancel stops the agent during a step: the step stays running, nothing
// fails or is compensated, and the next Execute resumes it.
func TestCancel(t *testing.T) {
	j, f, ex := fakeSetup(t)
	p := newPlan(compensated(ok("a"), "undo"), step("b", "fake", "block", nil), ok("c"))
	accept(t, j, p)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ex.Execute(ctx, p) }()
	select {
	case <-f.blocked:
	case err := <-done:
		t.Fatalf("Execute returned %v before step b blocked", err)
	case <-time.After(10 * time.Second):
		t.Fatal("step b never started")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Execute returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Execute did not return after cancel")
	}
	rec := get(t, j, p.GetPlanId())
	b := rec.Step("b")
	if rec.State != journal.PlanRunning || b.State != journal.StepRunning || b.Attempts != 1 {
		t.Errorf("after cancel: plan %s, b %s attempt %d; want running, running, 1", rec.State, b.State, b.Attempts)
	}
	if a := rec.Step("a"); a.State != journal.StepSucceeded || a.CompensationState != "" {
		t.Errorf("after cancel: a %s, compensation %q; want succeeded, none", a.State, a.CompensationState)
	}
	if c := rec.Step("c"); c.State != journal.StepPending {
		t.Errorf("after cancel: c %s, want pending", c.State)
	}
	want := []string{"apply a ok #1", "apply b block #1"}
	if got := f.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}

	if err := ex.Execute(t.Context(), p); err != nil {
		t.Fatalf("resumed Execute: %v", err)
	}
	want = append(want, "apply b block #2", "apply c ok #1")
	if got := f.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	if rec := get(t, j, p.GetPlanId()); rec.State != journal.PlanSucceeded {
		t.Errorf("resumed plan %s (%q), want succeeded", rec.State, rec.Message)
	}
}

// TestProgress journals progress at most once per interval and always the
// latest message (the chatty action waits until it sees it).
func TestProgress(t *testing.T) {
	j, _, ex := fakeSetupInterval(t, 200*time.Millisecond)
	p := newPlan(step("a", "fake", "chatty", nil))
	accept(t, j, p)
	before := get(t, j, p.GetPlanId()).Version
	if err := ex.Execute(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	rec := get(t, j, p.GetPlanId())
	if a := rec.Step("a"); a.State != journal.StepSucceeded || a.Message != "did chatty" {
		t.Errorf("step a: %s %q, want succeeded with the result's message", a.State, a.Message)
	}
	// 202 progress events, a few journal writes: running, "first", "last"
	// (perhaps one message between), the outcome and the plan's end.
	if writes := rec.Version - before; writes > 6 {
		t.Errorf("%d journal writes for one chatty step; progress is not throttled", writes)
	}
}

// TestDryRunFake: a dry run calls Plan only; a step whose Plan fails fails
// the plan and skips the rest.
// TestOutputs: a step's outputs are journaled as bounded strings and its
// verification is recorded in the agent's audit log.
func TestOutputs(t *testing.T) {
	j, _, ex := fakeSetup(t)
	p := newPlan(step("erase", "fake", "verify", nil), ok("after"))
	accept(t, j, p)
	if err := ex.Execute(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	rec := get(t, j, p.GetPlanId())
	st := rec.Step("erase")
	want := map[string]string{"verification": "0 rows of tenant acme remain", "rows": "0", "ok": "true", "tables": `["a","b"]`}
	for k, v := range want {
		if st.Outputs[k] != v {
			t.Errorf("output %s = %q, want %q", k, st.Outputs[k], v)
		}
	}
	if n := len(st.Outputs["long"]); n > executor.MaxOutputValueBytes {
		t.Errorf("long output kept %d bytes, bound %d", n, executor.MaxOutputValueBytes)
	}
	if st := rec.Step("after"); len(st.Outputs) != 0 {
		t.Errorf("step without outputs journaled %v", st.Outputs)
	}
	log, err := j.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, r := range log {
		if r.Action == "step.verified" {
			found = true
			if r.Target != p.GetPlanId()+"/erase" || !strings.Contains(string(r.Detail), "0 rows of tenant acme remain") || r.Outcome != "success" {
				t.Errorf("audit record %+v", r.Entry)
			}
		}
	}
	if !found {
		t.Errorf("no step.verified audit record in %d records", len(log))
	}
}

func TestDryRunFake(t *testing.T) {
	j, f, ex := fakeSetup(t)
	p := newPlan(compensated(ok("a"), "undo"), step("b", "fake", "invalid", nil), ok("c"))
	p.DryRun = true
	accept(t, j, p)
	if err := ex.Execute(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	want := []string{"plan a ok #1", "plan b invalid #1"}
	if got := f.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	rec := get(t, j, p.GetPlanId())
	if rec.State != journal.PlanFailed || !strings.Contains(rec.Message, `dry run: step "b" failed: InvalidArgument`) {
		t.Errorf("plan %s %q", rec.State, rec.Message)
	}
	for id, want := range map[string]string{"a": journal.StepPlanned, "b": journal.StepFailed, "c": journal.StepSkipped} {
		if got := rec.Step(id).State; got != want {
			t.Errorf("step %s: %s, want %s", id, got, want)
		}
	}
	if a := rec.Step("a"); a.CompensationState != "" || len(a.Changes) != 1 || a.Changes[0].Operation != "create" {
		t.Errorf("step a: compensation %q, changes %+v", a.CompensationState, a.Changes)
	}
}

func TestNotJournaled(t *testing.T) {
	_, _, ex := fakeSetup(t)
	if err := ex.Execute(t.Context(), newPlan(ok("a"))); !errors.Is(err, journal.ErrNotFound) {
		t.Errorf("Execute of an unjournaled plan: %v, want ErrNotFound", err)
	}
}

func TestOperation(t *testing.T) {
	for op, want := range map[providerv1.Operation]string{
		providerv1.Operation_OPERATION_CREATE:      "create",
		providerv1.Operation_OPERATION_UPDATE:      "update",
		providerv1.Operation_OPERATION_DELETE:      "delete",
		providerv1.Operation_OPERATION_NOOP:        "noop",
		providerv1.Operation_OPERATION_UNSPECIFIED: "update",
		providerv1.Operation(99):                   "update",
	} {
		if got := executor.Operation(op); got != want {
			t.Errorf("Operation(%v) = %q, want %q", op, got, want)
		}
	}
}
