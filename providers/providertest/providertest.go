// Package providertest is the conformance suite every provider runs, both
// in-process (sdk.ServeInProcess) and as a plugin binary through the agent's
// catalog: applying a step twice equals applying it once, Plan changes
// nothing, bad parameters come back as InvalidArgument naming the field, and
// cancelling the context stops a long Apply promptly.
//
// Imported only by provider tests (providers/<name>/..._test.go) and by
// agent/catalog's tests. It imports nothing from agent/, controlplane/ or
// internal/.
package providertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Fixture is one fresh, configured provider under test and a way to look at
// the state it manages.
type Fixture struct {
	// Provider is the provider under test: in-process, a plugin through the
	// catalog, or a plain implementation.
	Provider sdk.Provider
	// Snapshot returns a deterministic picture of everything the provider
	// manages (files, databases, running processes); two equal snapshots
	// mean nothing changed. It must leave out what changes by itself, such
	// as log files.
	Snapshot func(t *testing.T) []byte
}

// Case is one step the suite exercises.
type Case struct {
	// Name names the case in test output.
	Name string
	// Setup steps are applied (and must succeed) on a fresh fixture before
	// Step, e.g. provisioning a tenant before migrating its database.
	Setup []*providerv1.Step
	// Step is a valid step whose first Apply changes something.
	Step *providerv1.Step
	// Bad lists invalid variants of steps, each with the field the error
	// must name.
	Bad []BadStep
	// Slow, if set, is a valid step whose Apply runs for seconds (e.g. an
	// upgrade waiting for a health check that never passes); the suite
	// cancels it and wants it back within CancelWithin.
	Slow *providerv1.Step
	// AfterCancel, if set, checks the fixture after Slow was cancelled
	// (e.g. that no process was left behind).
	AfterCancel func(t *testing.T, f Fixture)
	// Cleanup steps are applied after the case (errors are logged), e.g. to
	// stop processes the case started.
	Cleanup []*providerv1.Step
}

// BadStep is a step with invalid parameters.
type BadStep struct {
	// Name names the variant.
	Name string
	// Step is the invalid step.
	Step *providerv1.Step
	// Field is the field path the InvalidArgument message must contain,
	// e.g. "params.migrations[0].sql" or "tenant".
	Field string
}

// CancelWithin is how long a cancelled Apply may take to return.
var CancelWithin = 3 * time.Second

// callTimeout bounds each call the suite makes.
const callTimeout = 60 * time.Second

// Run runs the suite: for each case and each property a fresh fixture from
// newFixture, which must register its own cleanup with t.Cleanup.
func Run(t *testing.T, newFixture func(t *testing.T) Fixture, cases []Case) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			t.Run("Describe", func(t *testing.T) { testDescribe(t, newFixture(t), c) })
			t.Run("DryRunChangesNothing", func(t *testing.T) { testDryRun(t, newFixture(t), c) })
			t.Run("ApplyTwiceEqualsOnce", func(t *testing.T) { testIdempotent(t, newFixture(t), c) })
			t.Run("BadParams", func(t *testing.T) { testBad(t, newFixture(t), c) })
			if c.Slow != nil {
				t.Run("CancelStopsApply", func(t *testing.T) { testCancel(t, newFixture(t), c) })
			}
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), callTimeout)
	t.Cleanup(cancel)
	return c
}

// prepare applies the setup steps and registers the cleanup steps.
func prepare(t *testing.T, f Fixture, c Case) {
	t.Helper()
	t.Cleanup(func() {
		for _, s := range c.Cleanup {
			cctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			if _, err := f.Provider.Apply(cctx, s, nil); err != nil {
				t.Logf("cleanup step %s: %v", s.GetId(), err)
			}
			cancel()
		}
	})
	for _, s := range c.Setup {
		mustApply(t, f, s)
	}
}

// mustApply applies s and fails the test unless it succeeds.
func mustApply(t *testing.T, f Fixture, s *providerv1.Step) *providerv1.ApplyResult {
	t.Helper()
	res, err := f.Provider.Apply(ctx(t), s, func(p *providerv1.Progress) { t.Logf("progress %s: %s", p.GetResource(), p.GetMessage()) })
	if err != nil {
		t.Fatalf("Apply(%s %s): %v", s.GetId(), s.GetAction(), err)
	}
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatalf("Apply(%s %s): state %s: %s", s.GetId(), s.GetAction(), res.GetState(), res.GetMessage())
	}
	return res
}

func snapshot(t *testing.T, f Fixture) []byte {
	t.Helper()
	if f.Snapshot == nil {
		return nil
	}
	return f.Snapshot(t)
}

// diffSnapshots fails if a and b differ, showing the first differing line.
func diffSnapshots(t *testing.T, what string, a, b []byte) {
	t.Helper()
	if bytes.Equal(a, b) {
		return
	}
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := 0; i < max(len(al), len(bl)); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			t.Fatalf("%s: state changed; first difference at line %d:\n before: %s\n after:  %s", what, i+1, x, y)
		}
	}
}

func describeChanges(cs []*providerv1.Change) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "\n  %s %s: %s", c.GetOperation(), c.GetResource(), c.GetSummary())
	}
	return b.String()
}

func allNoop(cs []*providerv1.Change) bool {
	for _, c := range cs {
		if c.GetOperation() != providerv1.Operation_OPERATION_NOOP {
			return false
		}
	}
	return true
}

func testDescribe(t *testing.T, f Fixture, c Case) {
	d, err := f.Provider.Describe(ctx(t))
	if err != nil {
		t.Fatalf("Describe: %v", err)
	}
	if d.GetName() == "" || d.GetVersion() == "" {
		t.Errorf("Describe: name %q, version %q; both must be set", d.GetName(), d.GetVersion())
	}
	for _, a := range d.GetActions() {
		if a.GetName() == c.Step.GetAction() {
			return
		}
	}
	t.Errorf("Describe does not list action %q", c.Step.GetAction())
}

func testDryRun(t *testing.T, f Fixture, c Case) {
	prepare(t, f, c)
	before := snapshot(t, f)
	changes, err := f.Provider.Plan(ctx(t), c.Step)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	if allNoop(changes) {
		t.Fatalf("Plan on a fresh fixture is all NOOP; Case.Step must change something:%s", describeChanges(changes))
	}
	diffSnapshots(t, "Plan", before, snapshot(t, f))
	// Plan twice answers the same.
	again, err := f.Provider.Plan(ctx(t), c.Step)
	if err != nil {
		t.Fatalf("second Plan: %v", err)
	}
	if describeChanges(again) != describeChanges(changes) {
		t.Errorf("second Plan differs:%s\nfirst:%s", describeChanges(again), describeChanges(changes))
	}
	diffSnapshots(t, "second Plan", before, snapshot(t, f))
}

func testIdempotent(t *testing.T, f Fixture, c Case) {
	prepare(t, f, c)
	planned, err := f.Provider.Plan(ctx(t), c.Step)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	first := mustApply(t, f, c.Step)
	if describeChanges(first.GetChanges()) != describeChanges(planned) {
		t.Errorf("first Apply's changes differ from Plan's:\napply:%s\nplan:%s", describeChanges(first.GetChanges()), describeChanges(planned))
	}
	once := snapshot(t, f)
	after, err := f.Provider.Plan(ctx(t), c.Step)
	if err != nil {
		t.Fatalf("Plan after Apply: %v", err)
	}
	if !allNoop(after) {
		t.Errorf("Plan after Apply is not all NOOP:%s", describeChanges(after))
	}
	second := mustApply(t, f, c.Step)
	if !allNoop(second.GetChanges()) {
		t.Errorf("second Apply changed something:%s", describeChanges(second.GetChanges()))
	}
	diffSnapshots(t, "second Apply", once, snapshot(t, f))
}

func testBad(t *testing.T, f Fixture, c Case) {
	prepare(t, f, c)
	if len(c.Bad) == 0 {
		t.Skip("no bad steps in this case")
	}
	before := snapshot(t, f)
	for _, b := range c.Bad {
		t.Run(b.Name, func(t *testing.T) {
			_, perr := f.Provider.Plan(ctx(t), b.Step)
			checkInvalid(t, "Plan", perr, b.Field)
			res, aerr := f.Provider.Apply(ctx(t), b.Step, nil)
			if aerr == nil {
				t.Fatalf("Apply: got result %s (%s), want InvalidArgument naming %s", res.GetState(), res.GetMessage(), b.Field)
			}
			checkInvalid(t, "Apply", aerr, b.Field)
		})
	}
	diffSnapshots(t, "invalid steps", before, snapshot(t, f))
}

func checkInvalid(t *testing.T, call string, err error, field string) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("%s: got %v (code %s), want InvalidArgument naming %s", call, err, status.Code(err), field)
		return
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, field) {
		t.Errorf("%s: InvalidArgument %q does not name field %s", call, msg, field)
	}
}

func testCancel(t *testing.T, f Fixture, c Case) {
	prepare(t, f, c)
	cctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	started := make(chan struct{}, 1)
	type outcome struct {
		res *providerv1.ApplyResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := f.Provider.Apply(cctx, c.Slow, func(*providerv1.Progress) {
			select {
			case started <- struct{}{}:
			default:
			}
		})
		done <- outcome{res, err}
	}()
	select {
	case <-started:
	case o := <-done:
		t.Fatalf("slow Apply returned before it was cancelled: %v %s %s", o.err, o.res.GetState(), o.res.GetMessage())
	case <-time.After(callTimeout):
		t.Fatal("slow Apply reported no progress")
	}
	time.Sleep(300 * time.Millisecond) // let it get into its wait
	cancel()
	cancelledAt := time.Now()
	select {
	case o := <-done:
		took := time.Since(cancelledAt)
		t.Logf("cancelled Apply returned after %s: err=%v", took, o.err)
		switch code := status.Code(o.err); {
		case o.err == nil && o.res.GetState() == providerv1.StepState_STEP_STATE_SUCCEEDED:
			t.Errorf("cancelled Apply succeeded")
		case o.err != nil && code != codes.Canceled && code != codes.DeadlineExceeded && !isCtxErr(o.err):
			t.Errorf("cancelled Apply: %v (code %s), want Canceled", o.err, code)
		}
	case <-time.After(CancelWithin):
		t.Fatalf("cancelled Apply still running after %s", CancelWithin)
	}
	if c.AfterCancel != nil {
		c.AfterCancel(t, f)
	}
}

// isCtxErr reports a context error returned by a provider called directly
// (not over gRPC).
func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
