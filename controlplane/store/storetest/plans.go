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
