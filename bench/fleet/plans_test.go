package fleet

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/agent/journal"
	"attache.dev/attache/agent/planrun"
	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/sign"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

// simWorld is a trust root with one root and one plans key, and an agent
// state that pinned it.
type simWorld struct {
	rootKey, plansKey *sign.Signer
	root              *sign.Root
	state             *svid.State
}

func newSimWorld(t *testing.T) *simWorld {
	t.Helper()
	w := &simWorld{}
	var err error
	if w.rootKey, err = sign.GenerateSigner(); err != nil {
		t.Fatal(err)
	}
	if w.plansKey, err = sign.GenerateSigner(); err != nil {
		t.Fatal(err)
	}
	w.root = w.makeRoot(1, w.plansKey)
	env, err := sign.SignRoot(context.Background(), w.root, w.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	w.state = &svid.State{ID: spiffeid.RequireFromString("spiffe://bench.test/tenant/acme/agent/a1"), TrustRoot: env}
	return w
}

func (w *simWorld) makeRoot(version int, plansKey *sign.Signer) *sign.Root {
	r := &sign.Root{Type: sign.RootType, Version: version, TrustDomain: "bench.test", Expires: time.Now().Add(24 * time.Hour),
		Keys: map[string]sign.Key{w.rootKey.KeyID(): w.rootKey.PublicKey(), plansKey.KeyID(): plansKey.PublicKey()}}
	r.Roles = map[string]sign.RoleKeys{
		sign.RoleRoot:     {KeyIDs: []string{w.rootKey.KeyID()}, Threshold: 1},
		sign.RolePlans:    {KeyIDs: []string{plansKey.KeyID()}, Threshold: 1},
		sign.RoleReleases: {KeyIDs: []string{plansKey.KeyID()}, Threshold: 1},
	}
	return r
}

// offer returns a signed offer of a one-step plan for agent a1 of acme.
func (w *simWorld) offer(t *testing.T, id string, seq uint64, signer *sign.Signer) *agentv1.PlanOffer {
	t.Helper()
	now := time.Now()
	p := &planv1.Plan{
		PlanId: id, Tenant: "acme", AgentSpiffeId: w.state.ID.String(), Sequence: seq,
		IssuedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(time.Hour)),
		Steps: []*planv1.Step{{Id: "provision", Provider: "local", Action: "tenant.provision", Resource: "tenant"}},
	}
	env, err := plan.Sign(context.Background(), p, signer)
	if err != nil {
		t.Fatal(err)
	}
	return &agentv1.PlanOffer{PlanId: id, Sequence: seq, Envelope: env}
}

// reports returns the unreported statuses by plan ID.
func reports(p *plans) map[string]*agentv1.PlanStatus {
	out := map[string]*agentv1.PlanStatus{}
	for _, r := range p.unreported() {
		out[r.Status.GetPlanId()] = r.Status
	}
	return out
}

func TestSimulatedRunner(t *testing.T) {
	ctx := context.Background()
	w := newSimWorld(t)
	p, err := newPlans(w.state)
	if err != nil {
		t.Fatal(err)
	}
	if seq, v := p.helloState(); seq != 0 || v != 1 {
		t.Fatalf("hello state %d, %d", seq, v)
	}

	// Accepted, reported; then succeeded, reported; acknowledged.
	p.offer(ctx, w.offer(t, "p1", 1, w.plansKey))
	rs := p.unreported()
	if len(rs) != 1 || rs[0].Status.GetState() != journal.PlanAccepted || rs[0].Version != 1 || rs[0].Status.GetTenant() != "acme" {
		t.Fatalf("after offer: %v", rs)
	}
	if !p.run() || p.run() {
		t.Fatal("run should complete the plan once")
	}
	rs = p.unreported()
	if len(rs) != 1 || rs[0].Status.GetState() != journal.PlanSucceeded || rs[0].Version != 2 ||
		len(rs[0].Status.GetSteps()) != 1 || rs[0].Status.GetSteps()[0].GetState() != journal.StepSucceeded {
		t.Fatalf("after run: %v", rs)
	}
	if got := p.acked("p1", 1); got != "" {
		t.Fatalf("ack of an older version reported the plan done: %q", got)
	}
	if got := p.acked("p1", 2); got != journal.PlanSucceeded {
		t.Fatalf("ack of the final version: %q", got)
	}
	if rs := p.unreported(); len(rs) != 0 {
		t.Fatalf("acknowledged plan still unreported: %v", rs)
	}
	if seq, _ := p.helloState(); seq != 1 {
		t.Fatalf("last sequence %d", seq)
	}

	// Offered again (the control plane lost the ack): reported again.
	p.offer(ctx, w.offer(t, "p1", 1, w.plansKey))
	if r := reports(p)["p1"]; r.GetState() != journal.PlanSucceeded {
		t.Fatalf("offered again: %v", r)
	}

	// Refusals, with the real agent's reasons.
	stranger, _ := sign.GenerateSigner()
	tampered := w.offer(t, "p3", 3, w.plansKey)
	tampered.Envelope = []byte(strings.Replace(string(tampered.Envelope), `"payload":"`, `"payload":"AA`, 1))
	mismatch := w.offer(t, "p4", 4, w.plansKey)
	mismatch.PlanId = "p5"
	for _, tc := range []struct {
		offer  *agentv1.PlanOffer
		reason string
	}{
		{w.offer(t, "p2", 2, stranger), planrun.ReasonSignature},
		{tampered, planrun.ReasonSignature},
		{w.offer(t, "p6", 1, w.plansKey), planrun.ReasonReplay},
		{mismatch, planrun.ReasonInvalid},
	} {
		p.offer(ctx, tc.offer)
		r := reports(p)[tc.offer.GetPlanId()]
		if r.GetState() != journal.PlanRefused || r.GetReason() != tc.reason || r.GetTenant() != "acme" {
			t.Errorf("offer %s: %v, want refused %s", tc.offer.GetPlanId(), r, tc.reason)
		}
	}
	if p.run() {
		t.Error("run completed a refused plan")
	}

	// A rotation to a new plans key, delivered with the offer, is followed.
	newPlans, _ := sign.GenerateSigner()
	next, err := sign.SignRoot(ctx, w.makeRoot(2, newPlans), w.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	o := w.offer(t, "p7", 7, newPlans)
	o.TrustRoots = [][]byte{w.state.TrustRoot, next}
	p.offer(ctx, o)
	if r := reports(p)["p7"]; r.GetState() != journal.PlanAccepted {
		t.Fatalf("plan under the rotated root: %v", r)
	}
	if _, v := p.helloState(); v != 2 {
		t.Fatalf("root version %d after rotation", v)
	}
}
