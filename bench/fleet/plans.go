package fleet

import (
	"context"
	"fmt"
	"sync"
	"time"

	"attache.dev/attache/agent/journal"
	"attache.dev/attache/agent/planrun"
	"attache.dev/attache/agent/session"
	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/planverify"
	"attache.dev/attache/internal/sign"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// plans is agent/planrun.Runner for one simulated agent, in memory and
// without providers: an offered plan is verified with internal/planverify
// (real ed25519, against the trust root the agent pinned at enrollment,
// following the rotations the control plane sends), "journaled" in a map as
// accepted, or refused with planrun.Reason, and then completed at once as
// succeeded, every step succeeded with no change. Every change bumps the
// record's Version like the journal does, and reports are
// planrun.StatusOf of the record, so the session sends and acknowledges
// exactly as agent/session does. Safe for concurrent use.
type plans struct {
	tenant string
	state  *svid.State

	mu   sync.Mutex
	v    planverify.Verifier
	recs map[string]*journal.PlanRecord
	ids  []string // in arrival order, for the order of reports
}

func newPlans(st *svid.State) (*plans, error) {
	root, err := sign.VerifyPinnedRoot(context.Background(), st.TrustRoot)
	if err != nil {
		return nil, fmt.Errorf("pinned trust root: %w", err)
	}
	tenant, _, err := identity.ParseAgentID(st.TrustDomain(), st.ID)
	if err != nil {
		return nil, err
	}
	return &plans{
		tenant: tenant,
		state:  st,
		// Simulated agents take ad hoc plans too (the plan benchmarks submit
		// them); a plan that carries a release is still checked against it.
		v:    planverify.Verifier{Root: root, Self: st.ID, AllowUnreleased: true},
		recs: map[string]*journal.PlanRecord{},
	}, nil
}

// helloState is Runner.HelloState.
func (p *plans) helloState() (lastSequence uint64, trustRootVersion uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.v.LastSequence, uint32(p.v.Root.Version)
}

// followRoots is Runner.FollowRoots: the roots newer than the pinned one
// must form a chain from it (planverify.FollowRootChain); only the final
// root is persisted and pinned.
func (p *plans) followRoots(ctx context.Context, roots [][]byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.followRootsLocked(ctx, roots)
}

func (p *plans) followRootsLocked(ctx context.Context, roots [][]byte) error {
	chain, _ := planverify.NewerRoots(p.v.Root.Version, roots)
	if len(chain) == 0 {
		return nil
	}
	followed, err := p.v.FollowRootChain(ctx, chain)
	if err != nil {
		return err
	}
	if err := p.state.SaveTrustRoot(chain[len(chain)-1]); err != nil {
		return err
	}
	p.v.Root = followed[len(followed)-1]
	return nil
}

// offer is Runner.Offer: a known plan is reported again; otherwise the
// offer's trust roots are followed and the plan verified, then recorded as
// accepted or refused. run executes accepted plans.
func (p *plans) offer(ctx context.Context, o *agentv1.PlanOffer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := o.GetPlanId()
	if rec, ok := p.recs[id]; ok {
		rec.Version++ // offered again: the control plane lost the ack; report again
		return
	}
	refuse := func(err error) {
		p.add(&journal.PlanRecord{
			ID: id, Sequence: o.GetSequence(), Tenant: p.tenant, State: journal.PlanRefused,
			Reason: planrun.Reason(err), Message: err.Error(), ReceivedAt: time.Now(), Version: 1,
		})
	}
	if err := p.followRootsLocked(ctx, o.GetTrustRoots()); err != nil {
		refuse(err)
		return
	}
	pl, err := p.v.Verify(ctx, o.GetEnvelope())
	if err != nil {
		refuse(err)
		return
	}
	if pl.GetPlanId() != id || pl.GetSequence() != o.GetSequence() {
		refuse(fmt.Errorf("%w: the offer names plan %q sequence %d, the signed plan is %q sequence %d",
			planverify.ErrInvalid, id, o.GetSequence(), pl.GetPlanId(), pl.GetSequence()))
		return
	}
	ordered, err := plan.Order(pl)
	if err != nil {
		refuse(fmt.Errorf("%w: %v", planverify.ErrInvalid, err))
		return
	}
	now := time.Now()
	rec := &journal.PlanRecord{
		ID: id, Sequence: pl.GetSequence(), Tenant: pl.GetTenant(), DryRun: pl.GetDryRun(),
		State: journal.PlanAccepted, ReceivedAt: now, Version: 1,
	}
	for _, s := range ordered {
		rec.Steps = append(rec.Steps, journal.StepRecord{
			ID: s.GetId(), Provider: s.GetProvider(), Action: s.GetAction(), State: journal.StepPending,
			HasCompensation: s.GetCompensation() != nil,
		})
	}
	p.v.LastSequence = pl.GetSequence()
	p.add(rec)
}

func (p *plans) add(rec *journal.PlanRecord) {
	p.recs[rec.ID] = rec
	p.ids = append(p.ids, rec.ID)
}

// run completes every accepted plan: started, each step succeeded with no
// change, succeeded. It reports whether anything changed.
func (p *plans) run() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	changed := false
	for _, id := range p.ids {
		rec := p.recs[id]
		if rec.State != journal.PlanAccepted {
			continue
		}
		now := time.Now()
		rec.StartedAt = now
		for i := range rec.Steps {
			s := &rec.Steps[i]
			s.State, s.Attempts, s.StartedAt, s.FinishedAt = journal.StepSucceeded, 1, now, now
			s.Message = "simulated agent: nothing applied"
			s.Changes = []journal.Change{{Resource: "simulated", Operation: "noop"}}
		}
		rec.State, rec.FinishedAt = journal.PlanSucceeded, now
		rec.Version++
		changed = true
	}
	return changed
}

// unreported is Runner.Unreported.
func (p *plans) unreported() []session.Report {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []session.Report
	for _, id := range p.ids {
		if rec := p.recs[id]; rec.Reported < rec.Version {
			out = append(out, session.Report{Status: planrun.StatusOf(*rec, p.tenant), Version: rec.Version})
		}
	}
	return out
}

// acked is Runner.Acked. It returns the plan's state if the acknowledged
// version is its latest and the plan is terminal.
func (p *plans) acked(id string, version uint64) (terminal string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rec, ok := p.recs[id]
	if !ok {
		return ""
	}
	rec.Reported = max(rec.Reported, version)
	if rec.Reported == rec.Version && rec.Terminal() {
		return rec.State
	}
	return ""
}

// PlanResult is what a simulated agent did with one plan.
type PlanResult struct {
	State string    // succeeded or refused
	At    time.Time // when the control plane acknowledged the final report
}

// planDone records that the control plane stored the final state of a plan.
func (f *Fleet) planDone(id, state string, at time.Time) {
	f.planMu.Lock()
	defer f.planMu.Unlock()
	if _, ok := f.planResults[id]; !ok {
		f.planResults[id] = PlanResult{State: state, At: at}
		f.plansDone.Add(1)
	}
}

// PlansDone is the number of plans whose final state (succeeded or
// refused) the control plane has acknowledged.
func (f *Fleet) PlansDone() int64 { return f.plansDone.Load() }

// PlansOffered is the number of plan offers received (offers again of a
// known plan included).
func (f *Fleet) PlansOffered() int64 { return f.plansOffered.Load() }

// PlanResults returns, by plan ID, the plans whose final state the control
// plane has acknowledged.
func (f *Fleet) PlanResults() map[string]PlanResult {
	f.planMu.Lock()
	defer f.planMu.Unlock()
	out := make(map[string]PlanResult, len(f.planResults))
	for k, v := range f.planResults {
		out[k] = v
	}
	return out
}
