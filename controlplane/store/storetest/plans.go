package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"attache.dev/attache/controlplane/store"
)

func buildPlan(k store.AgentKey, id string, expires time.Time) func(seq uint64) (store.Plan, error) {
	return func(seq uint64) (store.Plan, error) {
		return store.Plan{
			ID: id, Tenant: k.Tenant, AgentID: k.ID, Sequence: seq, Release: "v1",
			Envelope: []byte(fmt.Sprintf(`{"payload":"%s-%d"}`, id, seq)), CreatedBy: "ops",
			CreatedAt: t0, ExpiresAt: expires,
		}, nil
	}
}

func testPlans(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustTenant(t, s, "beta")
	a := mustAgent(t, s, "acme", "a1")
	b := mustAgent(t, s, "beta", "b1")
	ka, kb := store.AgentKey{Tenant: a.Tenant, ID: a.ID}, store.AgentKey{Tenant: b.Tenant, ID: b.ID}
	future := time.Now().Add(time.Hour)

	// Sequence numbers are per agent and gap-free.
	for i, id := range []string{"p1", "p2", "p3"} {
		p, err := s.CreatePlan(ctx(t), ka, buildPlan(ka, id, future), entry("plan.submit", "acme"))
		if err != nil {
			t.Fatalf("CreatePlan %s: %v", id, err)
		}
		if p.Sequence != uint64(i+1) || p.State != store.PlanPending || string(p.Envelope) != fmt.Sprintf(`{"payload":"%s-%d"}`, id, i+1) {
			t.Fatalf("plan %s: %+v", id, p)
		}
	}
	pb, err := s.CreatePlan(ctx(t), kb, buildPlan(kb, "q1", future), entry("plan.submit", "beta"))
	if err != nil || pb.Sequence != 1 {
		t.Fatalf("beta's first plan: seq %d, %v", pb.Sequence, err)
	}
	_, err = s.CreatePlan(ctx(t), ka, buildPlan(ka, "p1", future), entry("plan.submit", "acme"))
	wantErr(t, "duplicate plan id", err, store.ErrAlreadyExists)
	_, err = s.CreatePlan(ctx(t), store.AgentKey{Tenant: "acme", ID: "nope"}, buildPlan(ka, "x", future), entry("plan.submit", "acme"))
	wantErr(t, "unknown agent", err, store.ErrNotFound)
	// A build that fails stores nothing and burns no sequence number.
	before := headSeq(t, s)
	_, err = s.CreatePlan(ctx(t), ka, func(uint64) (store.Plan, error) { return store.Plan{}, errors.New("too large") }, entry("plan.submit", "acme"))
	if err == nil || headSeq(t, s) != before {
		t.Fatalf("failed build: err %v, audit head %d → %d", err, before, headSeq(t, s))
	}
	// A build that returns a plan for someone else is refused.
	_, err = s.CreatePlan(ctx(t), ka, buildPlan(kb, "evil", future), entry("plan.submit", "acme"))
	if err == nil {
		t.Fatal("stored a plan built for another agent")
	}
	p4, err := s.CreatePlan(ctx(t), ka, buildPlan(ka, "p4", future), entry("plan.submit", "acme"))
	if err != nil || p4.Sequence != 4 {
		t.Fatalf("after failed builds: seq %d, %v (want 4: no gaps)", p4.Sequence, err)
	}

	// Pending: unacknowledged and unexpired, in sequence order.
	pending, err := s.PendingPlans(ctx(t), ka, time.Now())
	if err != nil || len(pending) != 4 || pending[0].ID != "p1" || pending[3].ID != "p4" {
		t.Fatalf("PendingPlans = %d plans, %v", len(pending), err)
	}
	if got, _ := s.PendingPlans(ctx(t), ka, future.Add(time.Second)); len(got) != 0 {
		t.Fatalf("expired plans still pending: %d", len(got))
	}

	// Reports: acknowledge, progress, terminal states stick.
	p, err := s.UpdatePlan(ctx(t), ka, "p1", store.PlanUpdate{State: store.PlanRunning, Steps: []byte(`[{"step_id":"s1","state":"running"}]`)}, nil)
	if err != nil || p.State != store.PlanRunning || p.AckedAt == nil || p.FinishedAt != nil {
		t.Fatalf("running: %+v, %v", p, err)
	}
	done := entry("plan.finish", "acme")
	before = headSeq(t, s)
	p, err = s.UpdatePlan(ctx(t), ka, "p1", store.PlanUpdate{State: store.PlanSucceeded, Message: "done"}, &done)
	if err != nil || p.State != store.PlanSucceeded || p.FinishedAt == nil || string(p.Steps) != `[{"step_id":"s1","state":"running"}]` {
		t.Fatalf("succeeded: %+v, %v", p, err)
	}
	if headSeq(t, s) != before+1 {
		t.Fatal("terminal report not audited in the same transaction")
	}
	p, err = s.UpdatePlan(ctx(t), ka, "p1", store.PlanUpdate{State: store.PlanFailed, Message: "late"}, nil)
	if err != nil || p.State != store.PlanSucceeded || p.Message != "done" {
		t.Fatalf("terminal state changed: %+v, %v", p, err)
	}
	_, err = s.UpdatePlan(ctx(t), ka, "p2", store.PlanUpdate{State: store.PlanPending}, nil)
	if err == nil {
		t.Fatal("an agent reported a plan back to pending")
	}
	if pending, _ := s.PendingPlans(ctx(t), ka, time.Now()); len(pending) != 3 || pending[0].ID != "p2" {
		t.Fatalf("after acknowledging p1, pending = %v", pending)
	}

	// Tenant boundary: an agent can neither see nor report on another
	// agent's plans, whether of its own tenant or another.
	mustAgent(t, s, "acme", "a2")
	ka2 := store.AgentKey{Tenant: "acme", ID: "a2"}
	for _, tc := range []struct {
		who store.AgentKey
		id  string
	}{{kb, "p2"}, {ka, "q1"}, {ka2, "p2"}, {store.AgentKey{Tenant: "beta", ID: "a1"}, "p2"}} {
		_, err := s.UpdatePlan(ctx(t), tc.who, tc.id, store.PlanUpdate{State: store.PlanFailed}, nil)
		wantErr(t, fmt.Sprintf("%s/%s reporting on %s", tc.who.Tenant, tc.who.ID, tc.id), err, store.ErrNotFound)
	}
	if got, _ := s.PendingPlans(ctx(t), ka2, time.Now()); len(got) != 0 {
		t.Fatalf("a2 sees a1's plans: %d", len(got))
	}
	if q, _ := s.GetPlan(ctx(t), "q1"); q.State != store.PlanPending {
		t.Fatalf("beta's plan changed by a cross-tenant report: %+v", q)
	}

	// Listing.
	if ps, err := s.ListPlans(ctx(t), store.PlanFilter{Tenant: "acme"}); err != nil || len(ps) != 4 {
		t.Fatalf("ListPlans acme = %d, %v", len(ps), err)
	}
	if ps, _ := s.ListPlans(ctx(t), store.PlanFilter{Tenant: "beta"}); len(ps) != 1 || ps[0].ID != "q1" {
		t.Fatalf("ListPlans beta = %v", ps)
	}
	_, err = s.GetPlan(ctx(t), "nope")
	wantErr(t, "GetPlan unknown", err, store.ErrNotFound)

	// A revoked agent is issued no plans.
	if _, err := s.RevokeAgent(ctx(t), kb, "ops", t0, entry("agent.revoke", "beta")); err != nil {
		t.Fatal(err)
	}
	_, err = s.CreatePlan(ctx(t), kb, buildPlan(kb, "q2", future), entry("plan.submit", "beta"))
	wantErr(t, "plan for a revoked agent", err, store.ErrRevoked)
	mustVerify(t, s)
}

// testPlanSequenceRace submits concurrently: every plan gets a distinct
// sequence number, with no gaps.
func testPlanSequenceRace(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	const n = 12
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seqs = map[uint64]bool{}
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := s.CreatePlan(ctx(t), k, buildPlan(k, fmt.Sprintf("p%d", i), time.Now().Add(time.Hour)), entry("plan.submit", "acme"))
			if err != nil {
				t.Errorf("CreatePlan: %v", err)
				return
			}
			mu.Lock()
			seqs[p.Sequence] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	for i := uint64(1); i <= n; i++ {
		if !seqs[i] {
			t.Fatalf("sequence %d missing; got %v", i, seqs)
		}
	}
	mustVerify(t, s)
}

func buildPlanAt(k store.AgentKey, id string, created time.Time) func(seq uint64) (store.Plan, error) {
	return func(seq uint64) (store.Plan, error) {
		p, err := buildPlan(k, id, time.Now().Add(time.Hour))(seq)
		p.CreatedAt = created
		return p, err
	}
}

func mustPlan(t *testing.T, s store.Store, k store.AgentKey, build func(seq uint64) (store.Plan, error)) store.Plan {
	t.Helper()
	p, err := s.CreatePlan(ctx(t), k, build, entry("plan.submit", k.Tenant))
	if err != nil {
		t.Fatalf("CreatePlan: %v", err)
	}
	return p
}

// testPlanReports: a report is audited only when it changes the plan's
// state; re-sent reports change nothing and stale ones never move a plan
// back.
func testPlanReports(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	mustPlan(t, s, k, buildPlan(k, "p1", time.Now().Add(time.Hour)))
	mustPlan(t, s, k, buildPlan(k, "p2", time.Now().Add(time.Hour)))

	report := func(id string, st store.PlanState, msg, steps string, at time.Time) store.Plan {
		t.Helper()
		e := entry("plan."+string(st), "acme")
		var b []byte
		if steps != "" {
			b = []byte(steps)
		}
		p, err := s.UpdatePlan(ctx(t), k, id, store.PlanUpdate{State: st, Message: msg, Steps: b, At: at}, &e)
		if err != nil {
			t.Fatalf("UpdatePlan %s %s: %v", id, st, err)
		}
		return p
	}
	for i, tc := range []struct {
		name        string
		state       store.PlanState
		msg, steps  string
		wantState   store.PlanState
		wantSteps   string
		wantAudited bool
		wantUpdated bool
	}{
		{"accepted", store.PlanAccepted, "", `[{"step_id":"s1","state":"pending"}]`, store.PlanAccepted, `[{"step_id":"s1","state":"pending"}]`, true, true},
		{"re-sent accepted", store.PlanAccepted, "", `[{"step_id":"s1","state":"pending"}]`, store.PlanAccepted, `[{"step_id":"s1","state":"pending"}]`, false, false},
		{"running", store.PlanRunning, "", `[{"step_id":"s1","state":"running"}]`, store.PlanRunning, `[{"step_id":"s1","state":"running"}]`, true, true},
		{"progress", store.PlanRunning, "", `[{"step_id":"s1","state":"running","message":"50%"}]`, store.PlanRunning, `[{"step_id":"s1","state":"running","message":"50%"}]`, false, true},
		{"progress without steps keeps them", store.PlanRunning, "half way", "", store.PlanRunning, `[{"step_id":"s1","state":"running","message":"50%"}]`, false, true},
		{"stale accepted", store.PlanAccepted, "", `[{"step_id":"s1","state":"pending"}]`, store.PlanRunning, `[{"step_id":"s1","state":"running","message":"50%"}]`, false, false},
		{"succeeded", store.PlanSucceeded, "done", `[{"step_id":"s1","state":"succeeded"}]`, store.PlanSucceeded, `[{"step_id":"s1","state":"succeeded"}]`, true, true},
		{"re-sent succeeded", store.PlanSucceeded, "done", `[{"step_id":"s1","state":"succeeded"}]`, store.PlanSucceeded, `[{"step_id":"s1","state":"succeeded"}]`, false, false},
		{"failed after succeeded", store.PlanFailed, "late", "", store.PlanSucceeded, `[{"step_id":"s1","state":"succeeded"}]`, false, false},
	} {
		before, _ := s.GetPlan(ctx(t), "p1")
		head := headSeq(t, s)
		at := t0.Add(time.Duration(i+1) * time.Minute)
		p := report("p1", tc.state, tc.msg, tc.steps, at)
		if p.State != tc.wantState || string(p.Steps) != tc.wantSteps {
			t.Fatalf("%s: state %s steps %s, want %s %s", tc.name, p.State, p.Steps, tc.wantState, tc.wantSteps)
		}
		if audited := headSeq(t, s) == head+1; audited != tc.wantAudited || (!audited && headSeq(t, s) != head) {
			t.Fatalf("%s: audit head %d → %d, want audited=%v", tc.name, head, headSeq(t, s), tc.wantAudited)
		}
		if updated := p.UpdatedAt.Equal(micro(at)); updated != tc.wantUpdated || (!updated && !p.UpdatedAt.Equal(before.UpdatedAt)) {
			t.Fatalf("%s: updated_at %v → %v, want written=%v", tc.name, before.UpdatedAt, p.UpdatedAt, tc.wantUpdated)
		}
		if p.AckedAt == nil || !p.AckedAt.Equal(micro(t0.Add(time.Minute))) {
			t.Fatalf("%s: acked_at %v, want the first report's time", tc.name, p.AckedAt)
		}
	}

	// A refusal acknowledges and finishes a pending plan, audited once.
	head := headSeq(t, s)
	p := report("p2", store.PlanRefused, "SIGNATURE: bad signature", "", t0)
	if p.State != store.PlanRefused || p.AckedAt == nil || p.FinishedAt == nil || p.Message != "SIGNATURE: bad signature" || headSeq(t, s) != head+1 {
		t.Fatalf("refused: %+v, audit head %d → %d", p, head, headSeq(t, s))
	}
	report("p2", store.PlanRefused, "SIGNATURE: bad signature", "", t0)
	if headSeq(t, s) != head+1 {
		t.Fatal("re-sent refusal audited again")
	}
	mustVerify(t, s)
}

// testPlansCreatedSince: the agents with unacknowledged plans created at or
// after a time, each once.
func testPlansCreatedSince(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustTenant(t, s, "beta")
	a1, a2, b1 := store.AgentKey{Tenant: "acme", ID: "a1"}, store.AgentKey{Tenant: "acme", ID: "a2"}, store.AgentKey{Tenant: "beta", ID: "b1"}
	for _, k := range []store.AgentKey{a1, a2, b1} {
		mustAgent(t, s, k.Tenant, k.ID)
	}
	if got, err := s.PlansCreatedSince(ctx(t), time.Time{}); err != nil || len(got) != 0 {
		t.Fatalf("no plans: %v, %v", got, err)
	}
	mustPlan(t, s, a2, buildPlanAt(a2, "old", t0.Add(-time.Hour)))
	mustPlan(t, s, b1, buildPlanAt(b1, "q1", t0.Add(2*time.Minute)))
	mustPlan(t, s, a1, buildPlanAt(a1, "p1", t0))
	mustPlan(t, s, a1, buildPlanAt(a1, "p2", t0.Add(time.Minute)))

	check := func(what string, since time.Time, want ...store.AgentKey) {
		t.Helper()
		got, err := s.PlansCreatedSince(ctx(t), since)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %v, want %v", what, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("%s: %v, want %v", what, got, want)
			}
		}
	}
	check("since t0", t0, a1, b1)
	check("any time", time.Time{}, a1, a2, b1)
	check("at the newest plan's creation", t0.Add(2*time.Minute), b1)
	check("after every plan", t0.Add(3*time.Minute))

	// Acknowledged plans no longer count: a1 still has p2.
	if _, err := s.UpdatePlan(ctx(t), a1, "p1", store.PlanUpdate{State: store.PlanAccepted}, nil); err != nil {
		t.Fatal(err)
	}
	check("p1 acknowledged", t0, a1, b1)
	if _, err := s.UpdatePlan(ctx(t), a1, "p2", store.PlanUpdate{State: store.PlanRefused, Message: "EXPIRED: too late"}, nil); err != nil {
		t.Fatal(err)
	}
	check("p1 and p2 acknowledged", t0, b1)
}

// testUpdatePlanEnvelope: a pending plan's envelope can be replaced, with
// its audit entry, until the agent acknowledges the plan.
func testUpdatePlanEnvelope(t *testing.T, s store.Store) {
	mustTenant(t, s, "acme")
	mustAgent(t, s, "acme", "a1")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}
	orig := mustPlan(t, s, k, buildPlan(k, "p1", time.Now().Add(time.Hour)))

	head := headSeq(t, s)
	resigned := []byte(`{"payload":"p1-resigned"}`)
	if err := s.UpdatePlanEnvelope(ctx(t), "p1", resigned, entry("plan.resign", "acme")); err != nil {
		t.Fatalf("UpdatePlanEnvelope: %v", err)
	}
	if headSeq(t, s) != head+1 {
		t.Fatal("re-signing not audited in the same transaction")
	}
	p, err := s.GetPlan(ctx(t), "p1")
	if err != nil || string(p.Envelope) != string(resigned) || p.State != store.PlanPending || p.Sequence != orig.Sequence || p.AckedAt != nil {
		t.Fatalf("after re-signing: %+v, %v", p, err)
	}
	if pending, _ := s.PendingPlans(ctx(t), k, time.Now()); len(pending) != 1 || string(pending[0].Envelope) != string(resigned) {
		t.Fatalf("pending plans after re-signing: %v", pending)
	}

	head = headSeq(t, s)
	err = s.UpdatePlanEnvelope(ctx(t), "nope", resigned, entry("plan.resign", "acme"))
	wantErr(t, "unknown plan", err, store.ErrNotFound)
	if err := s.UpdatePlanEnvelope(ctx(t), "p1", nil, entry("plan.resign", "acme")); err == nil {
		t.Fatal("stored an empty envelope")
	}
	if _, err := s.UpdatePlan(ctx(t), k, "p1", store.PlanUpdate{State: store.PlanAccepted}, nil); err != nil {
		t.Fatal(err)
	}
	err = s.UpdatePlanEnvelope(ctx(t), "p1", []byte(`{"payload":"again"}`), entry("plan.resign", "acme"))
	wantErr(t, "acknowledged plan", err, store.ErrPlanAcknowledged)
	if p, _ := s.GetPlan(ctx(t), "p1"); string(p.Envelope) != string(resigned) {
		t.Fatalf("an acknowledged plan's envelope changed: %s", p.Envelope)
	}
	if headSeq(t, s) != head {
		t.Fatalf("refused re-signings were audited: head %d → %d", head, headSeq(t, s))
	}
	mustVerify(t, s)
}
