package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"attache.dev/attache/controlplane/maintenance"
	"attache.dev/attache/controlplane/plans"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// Reasons a rollout is in its state (store.Rollout.Reason).
const (
	ReasonStarted        = "Started"
	ReasonWaveInProgress = "WaveInProgress"
	ReasonWindow         = "MaintenanceWindow"
	ReasonBake           = "Bake"
	ReasonFrozen         = "Frozen"
	ReasonPaused         = "Paused"
	ReasonGateFailed     = "GateFailed"
	ReasonAborted        = "Aborted"
	ReasonAllWavesDone   = "AllWavesDone"
)

// Meters the error-rate gate reads (agent/telemetry's app metrics).
const (
	meterRequests = "app.http_requests"
	meterErrors   = "app.http_errors"
	// minRequests is how many requests a wave must have served during
	// the bake before its error rate is judged.
	minRequests = 20
)

// Config is what the driver needs.
type Config struct {
	Store store.Store
	Plans *plans.Service
	// Owner names this replica in leases; empty means host-pid-random.
	Owner string
	// LeaseTTL is how long a lease lasts without renewal (default 15s):
	// the time another replica waits before taking a rollout over.
	LeaseTTL time.Duration
	// Interval is how often the driver looks at active rollouts (default 1s).
	Interval time.Duration
	Logger   *slog.Logger
	Now      func() time.Time
}

// Driver drives active rollouts forward: it takes each one's lease, issues
// plans (exactly once per target, see store.DispatchRolloutPlan), follows
// their results, checks the gates and advances, halts or rolls back.
type Driver struct {
	cfg   Config
	nudge chan struct{}
}

// New returns a driver; Store and Plans are required.
func New(cfg Config) *Driver {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 15 * time.Second
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Owner == "" {
		host, _ := os.Hostname()
		id, _ := newID(time.Now())
		cfg.Owner = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), id[len(id)-8:])
	}
	return &Driver{cfg: cfg, nudge: make(chan struct{}, 1)}
}

// Owner is the name this driver takes leases under.
func (d *Driver) Owner() string { return d.cfg.Owner }

// Nudge makes Run look at the rollouts now rather than at the next tick.
func (d *Driver) Nudge() {
	select {
	case d.nudge <- struct{}{}:
	default:
	}
}

// Run drives rollouts until ctx is done, then gives up its leases so
// another replica takes over at once.
func (d *Driver) Run(ctx context.Context) error {
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	held := map[string]bool{}
	defer func() {
		for id := range held {
			_ = d.cfg.Store.ReleaseRolloutLease(context.WithoutCancel(ctx), id, d.cfg.Owner)
		}
	}()
	for {
		if err := d.step(ctx, held); err != nil && ctx.Err() == nil {
			d.cfg.Logger.Warn("rollout pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-d.nudge:
		}
	}
}

// Step makes one pass over the active rollouts (for tests and the
// benchmark; Run calls it on every tick).
func (d *Driver) Step(ctx context.Context) error { return d.step(ctx, map[string]bool{}) }

func (d *Driver) step(ctx context.Context, held map[string]bool) error {
	rs, err := d.cfg.Store.ListRollouts(ctx, true)
	if err != nil {
		return err
	}
	frozen, err := d.cfg.Store.GetFreeze(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range slices.Backward(rs) { // oldest first
		ok, err := d.cfg.Store.AcquireRolloutLease(ctx, r.ID, d.cfg.Owner, d.cfg.Now(), d.cfg.LeaseTTL)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			delete(held, r.ID)
			continue
		}
		if !held[r.ID] {
			d.cfg.Logger.Info("driving rollout", "rollout", r.ID, "release", r.Release, "owner", d.cfg.Owner)
		}
		held[r.ID] = true
		if err := d.drive(ctx, r.ID, frozen); err != nil {
			if errors.Is(err, store.ErrLeaseLost) {
				delete(held, r.ID)
				continue
			}
			errs = append(errs, fmt.Errorf("rollout %s: %w", r.ID, err))
		}
	}
	return errors.Join(errs...)
}

// gate is the driver's bookkeeping for the current wave, kept in
// store.Rollout.Gate so a restarted or other replica continues it.
type gate struct {
	// Baseline app request and error totals per tenant when the wave's
	// bake began.
	Requests map[string]float64 `json:"requests,omitempty"`
	Errors   map[string]float64 `json:"errors,omitempty"`
}

// drive advances one rollout by one pass under its lease.
func (d *Driver) drive(ctx context.Context, id string, frozen *store.Freeze) error {
	r, err := d.cfg.Store.GetRollout(ctx, id)
	if err != nil {
		return err
	}
	targets, err := d.cfg.Store.RolloutTargets(ctx, id)
	if err != nil {
		return err
	}
	rel, err := d.cfg.Store.GetRelease(ctx, r.Release)
	if err != nil {
		return err
	}
	now := d.cfg.Now()

	// Results of plans already issued, whatever else happens.
	changed, audits := d.collect(ctx, r, targets)

	halting := r.State == store.RolloutHalted && r.Reason == ReasonGateFailed
	switch {
	case r.Control == store.ControlAbort && !halting:
		for i := range targets {
			if targets[i].State == store.TargetPending || targets[i].State == store.TargetWaiting {
				targets[i].State, targets[i].Message = store.TargetCancelled, "rollout aborted"
				changed = append(changed, targets[i])
			}
		}
		r.State, r.Reason = store.RolloutFailed, ReasonAborted
		r.Message = fmt.Sprintf("aborted by an operator in wave %s; %s", waveName(r), summary(targets, r.Wave))
		audits = append(audits, d.audit(r, "rollout.abort", r.Message, auditlog.OutcomeSuccess))
		return d.save(ctx, r, changed, audits)
	case halting:
		return d.rollBack(ctx, r, rel, targets, changed, audits, frozen)
	case frozen != nil:
		d.setCondition(&r, store.RolloutHalted, ReasonFrozen, fmt.Sprintf("fleet frozen by %s at %s: %s; nothing is dispatched until `attache unfreeze`",
			frozen.By, frozen.At.UTC().Format(time.RFC3339), frozen.Reason))
		return d.save(ctx, r, changed, audits)
	case r.Control == store.ControlPause:
		d.setCondition(&r, store.RolloutHalted, ReasonPaused, fmt.Sprintf("paused by an operator in wave %s; %s; `attache rollout resume %s` continues", waveName(r), summary(targets, r.Wave), r.ID))
		return d.save(ctx, r, changed, audits)
	}

	wave := waveTargets(targets, r.Wave)
	// The failure budget is checked as soon as plans fail, not after the bake.
	if failed := countState(wave, store.TargetFailed); failed > r.Spec.MaxFailed {
		return d.halt(ctx, r, rel, targets, changed, audits, fmt.Sprintf("wave %s: %d plans failed, budget %d: %s",
			waveName(r), failed, r.Spec.MaxFailed, failures(wave)))
	}

	// Dispatch what the wave still needs.
	waiting, moreChanged, moreAudits, err := d.dispatch(ctx, r, rel, targets, now)
	changed, audits = append(changed, moreChanged...), append(audits, moreAudits...)
	if err != nil {
		_ = d.save(ctx, r, changed, audits)
		return err
	}
	wave = waveTargets(targets, r.Wave)
	if !allDone(wave) {
		state, reason := store.RolloutProgressing, ReasonWaveInProgress
		msg := fmt.Sprintf("wave %s (%d/%d): %s", waveName(r), r.Wave+1, len(r.Spec.Waves), summary(targets, r.Wave))
		if waiting != "" && countState(wave, store.TargetDispatched) == 0 {
			state, reason = store.RolloutWaiting, ReasonWindow
			msg += "; " + waiting
		}
		d.setCondition(&r, state, reason, msg)
		return d.save(ctx, r, changed, audits)
	}

	// The wave is done: bake, watching health and error rates.
	var g gate
	if r.WaveDoneAt == nil {
		r.WaveDoneAt = &now
		g = d.baseline(ctx, wave)
		b, _ := json.Marshal(g)
		r.Gate = b
	} else if err := json.Unmarshal(r.Gate, &g); err != nil {
		g = gate{}
	}
	if problem := d.checkGate(ctx, r, wave, g); problem != "" {
		return d.halt(ctx, r, rel, targets, changed, audits, fmt.Sprintf("wave %s gate failed: %s", waveName(r), problem))
	}
	if left := r.WaveDoneAt.Add(r.Spec.Bake).Sub(now); left > 0 {
		d.setCondition(&r, store.RolloutWaiting, ReasonBake, fmt.Sprintf("wave %s (%d/%d) done (%s); gate holding, baking %s more",
			waveName(r), r.Wave+1, len(r.Spec.Waves), summary(targets, r.Wave), left.Round(time.Second)))
		return d.save(ctx, r, changed, audits)
	}
	// Gate held for the whole bake: next wave, or done.
	audits = append(audits, d.audit(r, "rollout.wave", fmt.Sprintf("wave %s passed its gate: %s", waveName(r), summary(targets, r.Wave)), auditlog.OutcomeSuccess))
	if r.Wave+1 >= len(r.Spec.Waves) {
		r.State, r.Reason = store.RolloutComplete, ReasonAllWavesDone
		r.Message = "all waves done: " + summary(targets, -1)
		audits = append(audits, d.audit(r, "rollout.complete", r.Message, auditlog.OutcomeSuccess))
		return d.save(ctx, r, changed, audits)
	}
	r.Wave++
	r.WaveDoneAt, r.Gate = nil, []byte("{}")
	d.setCondition(&r, store.RolloutProgressing, ReasonWaveInProgress, fmt.Sprintf("wave %s (%d/%d) starting", waveName(r), r.Wave+1, len(r.Spec.Waves)))
	if err := d.save(ctx, r, changed, audits); err != nil {
		return err
	}
	d.Nudge()
	return nil
}

func (d *Driver) setCondition(r *store.Rollout, s store.RolloutState, reason, msg string) {
	r.State, r.Reason, r.Message = s, reason, msg
}

func (d *Driver) save(ctx context.Context, r store.Rollout, changed []store.RolloutTarget, audits []auditlog.Entry) error {
	_, err := d.cfg.Store.UpdateRollout(ctx, r.ID, d.cfg.Owner, func(cur *store.Rollout, _ []store.RolloutTarget) ([]store.RolloutTarget, []auditlog.Entry, error) {
		// The operator's control may have changed meanwhile: keep theirs.
		control := cur.Control
		*cur = r
		cur.Control = control
		return dedupe(changed), audits, nil
	})
	return err
}

// dedupe keeps the last change of each tenant.
func dedupe(ts []store.RolloutTarget) []store.RolloutTarget {
	idx := map[string]int{}
	var out []store.RolloutTarget
	for _, t := range ts {
		if i, ok := idx[t.Tenant]; ok {
			if t.SetRelease == "" {
				t.SetRelease = out[i].SetRelease
			}
			out[i] = t
			continue
		}
		idx[t.Tenant] = len(out)
		out = append(out, t)
	}
	return out
}

func (d *Driver) audit(r store.Rollout, action, msg, outcome string) auditlog.Entry {
	detail, _ := json.Marshal(map[string]any{"release": r.Release, "wave": r.Wave, "state": string(r.State), "reason": r.Reason, "message": msg})
	return auditlog.Entry{Time: d.cfg.Now(), Actor: "rollout-driver:" + d.cfg.Owner, Role: "system", Action: action,
		Target: r.ID, Outcome: outcome, Source: "controlplane", Detail: detail}
}

// collect updates dispatched targets (and rolling-back ones) from their
// plans' states.
func (d *Driver) collect(ctx context.Context, r store.Rollout, targets []store.RolloutTarget) ([]store.RolloutTarget, []auditlog.Entry) {
	var changed []store.RolloutTarget
	now := d.cfg.Now()
	for i := range targets {
		t := &targets[i]
		switch {
		case t.State == store.TargetDispatched && t.PlanID != "":
			p, err := d.cfg.Store.GetPlan(ctx, t.PlanID)
			if err != nil {
				continue
			}
			switch {
			case p.State == store.PlanSucceeded:
				t.State, t.Message, t.SetRelease = store.TargetSucceeded, "", r.Release
			case p.State == store.PlanFailed || p.State == store.PlanRefused:
				t.State, t.Message = store.TargetFailed, fmt.Sprintf("plan %s %s: %s", p.ID, p.State, p.Message)
			case p.State == store.PlanPending && !now.Before(p.ExpiresAt):
				t.State, t.Message = store.TargetFailed, fmt.Sprintf("plan %s expired at %s before agent %s took it", p.ID, p.ExpiresAt.UTC().Format(time.RFC3339), p.AgentID)
			default:
				continue
			}
			changed = append(changed, *t)
		case t.State == store.TargetRollingBack && t.RollbackPlanID != "":
			p, err := d.cfg.Store.GetPlan(ctx, t.RollbackPlanID)
			if err != nil {
				continue
			}
			switch {
			case p.State == store.PlanSucceeded:
				t.State, t.SetRelease = store.TargetRolledBack, t.PreviousRelease
				t.Message = "rolled back to " + t.PreviousRelease + " (" + t.Message + ")"
			case p.State == store.PlanFailed || p.State == store.PlanRefused || (p.State == store.PlanPending && !now.Before(p.ExpiresAt)):
				t.State = store.TargetFailed
				t.Message = fmt.Sprintf("rollback to %s failed: plan %s %s: %s (before: %s)", t.PreviousRelease, p.ID, p.State, p.Message, t.Message)
			default:
				continue
			}
			changed = append(changed, *t)
		}
	}
	return changed, nil
}

// dispatch issues plans for the current wave's pending and waiting
// targets, up to the concurrency, and returns why some wait (windows).
func (d *Driver) dispatch(ctx context.Context, r store.Rollout, rel store.Release, targets []store.RolloutTarget, now time.Time) (string, []store.RolloutTarget, []auditlog.Entry, error) {
	inFlight := 0
	for _, t := range targets {
		if t.State == store.TargetDispatched {
			inFlight++
		}
	}
	var (
		changed []store.RolloutTarget
		waiting []string
		notify  []store.AgentKey
	)
	defer func() {
		for _, k := range notify {
			d.cfg.Plans.Notified(k)
		}
	}()
	for i := range targets {
		t := &targets[i]
		if t.Wave != r.Wave || (t.State != store.TargetPending && t.State != store.TargetWaiting) {
			continue
		}
		tn, err := d.cfg.Store.GetTenant(ctx, t.Tenant)
		if err != nil {
			t.State, t.Message = store.TargetFailed, "tenant: "+err.Error()
			changed = append(changed, *t)
			continue
		}
		if tn.Pin != "" && tn.Pin != r.Release {
			t.State, t.Message = store.TargetSkipped, fmt.Sprintf("pinned to %s", tn.Pin)
			changed = append(changed, *t)
			continue
		}
		if tn.Release == r.Release && t.PreviousRelease == r.Release {
			t.State, t.Message = store.TargetSucceeded, "already at "+r.Release
			changed = append(changed, *t)
			continue
		}
		if !r.Spec.IgnoreWindows {
			if open, next := maintenance.Open(tn.Windows, now); !open {
				msg := "outside its maintenance window"
				if !next.IsZero() {
					msg += "; next opens " + next.UTC().Format(time.RFC3339)
				}
				waiting = append(waiting, t.Tenant+" "+msg)
				if t.State != store.TargetWaiting || t.Message != msg {
					t.State, t.Message = store.TargetWaiting, msg
					changed = append(changed, *t)
				}
				continue
			}
		}
		if inFlight >= r.Spec.Concurrency {
			continue
		}
		agent, err := d.cfg.Plans.CellAgent(ctx, tn)
		if err != nil {
			t.State, t.Message = store.TargetFailed, "no agent to run the plan: "+err.Error()
			changed = append(changed, *t)
			continue
		}
		build, entry, err := d.cfg.Plans.PrepareRelease(ctx, plans.ReleasePlanRequest{
			Actor: "rollout:" + r.ID, Role: "system", Source: "controlplane",
			Tenant: tn, Agent: agent, Release: rel, TTL: r.Spec.PlanTTL, Rollout: r.ID, Reason: "rollout wave " + waveName(r),
		})
		if err != nil {
			t.State, t.Message = store.TargetFailed, err.Error()
			changed = append(changed, *t)
			continue
		}
		p, err := d.cfg.Store.DispatchRolloutPlan(ctx, r.ID, t.Tenant, d.cfg.Owner, false, agent, build, entry)
		switch {
		case errors.Is(err, store.ErrConflict):
			continue // dispatched by an earlier pass; collect sees it next time
		case errors.Is(err, store.ErrLeaseLost):
			return "", changed, nil, err
		case err != nil:
			t.State, t.Message = store.TargetFailed, "dispatch: "+err.Error()
			changed = append(changed, *t)
			continue
		}
		t.State, t.PlanID, t.Message = store.TargetDispatched, p.ID, ""
		inFlight++
		notify = append(notify, agent)
	}
	return strings.Join(waiting, "; "), changed, nil, nil
}

// baseline records the wave's tenants' app request and error totals.
func (d *Driver) baseline(ctx context.Context, wave []store.RolloutTarget) gate {
	g := gate{Requests: map[string]float64{}, Errors: map[string]float64{}}
	for _, t := range wave {
		if t.State != store.TargetSucceeded {
			continue
		}
		req, errs := d.appTotals(ctx, t.Tenant)
		g.Requests[t.Tenant], g.Errors[t.Tenant] = req, errs
	}
	return g
}

func (d *Driver) appTotals(ctx context.Context, tenant string) (requests, errs float64) {
	hs, err := d.cfg.Store.UsageTotals(ctx, tenant)
	if err != nil {
		return 0, 0
	}
	for _, h := range hs {
		switch h.Meter {
		case meterRequests:
			requests = h.Sum
		case meterErrors:
			errs = h.Sum
		}
	}
	return requests, errs
}

// checkGate returns why the wave's gate fails, or "" while it holds: every
// upgraded tenant's agent reports its components healthy, and the share of
// failed app requests since the bake began is at most MaxErrorRate.
func (d *Driver) checkGate(ctx context.Context, r store.Rollout, wave []store.RolloutTarget, g gate) string {
	var problems []string
	var reqs, errs float64
	for _, t := range wave {
		if t.State != store.TargetSucceeded {
			continue
		}
		tn, err := d.cfg.Store.GetTenant(ctx, t.Tenant)
		if err != nil {
			continue
		}
		agent, err := d.cfg.Plans.CellAgent(ctx, tn)
		if err != nil {
			problems = append(problems, t.Tenant+": no agent: "+err.Error())
			continue
		}
		a, err := d.cfg.Store.GetAgent(ctx, agent)
		if err != nil {
			continue
		}
		for _, c := range unhealthy(a, t.Tenant) {
			problems = append(problems, fmt.Sprintf("tenant %s: component %s is %s: %s", t.Tenant, c.GetName(), statusWord(c.GetStatus()), c.GetMessage()))
		}
		rq, er := d.appTotals(ctx, t.Tenant)
		reqs += rq - g.Requests[t.Tenant]
		errs += er - g.Errors[t.Tenant]
	}
	if reqs >= minRequests && r.Spec.MaxErrorRate > 0 {
		if rate := errs / reqs; rate > r.Spec.MaxErrorRate {
			problems = append(problems, fmt.Sprintf("app error rate %.1f%% (%.0f of %.0f requests since the wave finished) is above %.1f%%",
				rate*100, errs, reqs, r.Spec.MaxErrorRate*100))
		}
	}
	if len(problems) > 5 {
		problems = append(problems[:5], fmt.Sprintf("and %d more", len(problems)-5))
	}
	return strings.Join(problems, "; ")
}

// unhealthy lists the agent's components that belong to tenant and are
// not healthy. An agent of the tenant itself owns all its components; a
// cell agent serving several tenants owns those named after the tenant.
func unhealthy(a store.Agent, tenant string) []*agentv1.ComponentHealth {
	if len(a.Health) == 0 {
		return nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(a.Health, &raw); err != nil {
		return nil
	}
	var out []*agentv1.ComponentHealth
	for _, m := range raw {
		var c agentv1.ComponentHealth
		if err := protojson.Unmarshal(m, &c); err != nil {
			continue
		}
		if a.Tenant != tenant && !strings.HasSuffix(c.GetName(), "/"+tenant) && !strings.Contains(c.GetName(), "/"+tenant+"/") {
			continue
		}
		if c.GetStatus() == agentv1.HealthStatus_HEALTH_STATUS_DEGRADED || c.GetStatus() == agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY {
			out = append(out, &c)
		}
	}
	return out
}

func statusWord(s agentv1.HealthStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "HEALTH_STATUS_"))
}

// halt fails the wave's gate: the wave's upgraded (and failed) tenants
// roll back to the release they had, the rest of the rollout is cancelled.
func (d *Driver) halt(ctx context.Context, r store.Rollout, rel store.Release, targets []store.RolloutTarget, changed []store.RolloutTarget, audits []auditlog.Entry, why string) error {
	r.State, r.Reason, r.Message = store.RolloutHalted, ReasonGateFailed, why
	for i := range targets {
		t := &targets[i]
		switch {
		case t.Wave == r.Wave && (t.State == store.TargetSucceeded || t.State == store.TargetFailed || t.State == store.TargetDispatched):
			if t.PreviousRelease == "" || t.PreviousRelease == r.Release {
				if t.State == store.TargetSucceeded {
					t.Message = "no earlier release to roll back to; left at " + r.Release
					changed = append(changed, *t)
				}
				continue
			}
			t.Message = string(t.State) + ": " + t.Message
			t.State = store.TargetRollingBack
			changed = append(changed, *t)
		case t.State == store.TargetPending || t.State == store.TargetWaiting:
			t.State, t.Message = store.TargetCancelled, "rollout halted in wave "+waveName(r)
			changed = append(changed, *t)
		}
	}
	audits = append(audits, d.audit(r, "rollout.halt", why, auditlog.OutcomeFailure))
	d.cfg.Logger.Warn("rollout halted", "rollout", r.ID, "release", r.Release, "why", why)
	if err := d.save(ctx, r, changed, audits); err != nil {
		return err
	}
	d.Nudge()
	return nil
}

// rollBack issues and follows the rollback plans of a halted wave; when
// none is left it marks the rollout Failed with the gate's reason.
func (d *Driver) rollBack(ctx context.Context, r store.Rollout, rel store.Release, targets []store.RolloutTarget, changed []store.RolloutTarget, audits []auditlog.Entry, frozen *store.Freeze) error {
	_ = rel
	pending := 0
	for i := range targets {
		t := &targets[i]
		if t.State != store.TargetRollingBack {
			continue
		}
		pending++
		if t.RollbackPlanID != "" || frozen != nil {
			continue
		}
		// A forward plan still in flight is left to finish or expire: the
		// agent runs plans in sequence, so the rollback plan issued now
		// runs after it.
		prev, err := d.cfg.Store.GetRelease(ctx, t.PreviousRelease)
		if err != nil {
			t.State, t.Message = store.TargetFailed, fmt.Sprintf("cannot roll back to %s: %v", t.PreviousRelease, err)
			changed = append(changed, *t)
			continue
		}
		tn, err := d.cfg.Store.GetTenant(ctx, t.Tenant)
		if err != nil {
			continue
		}
		agent, err := d.cfg.Plans.CellAgent(ctx, tn)
		if err != nil {
			t.State, t.Message = store.TargetFailed, "rollback: no agent: "+err.Error()
			changed = append(changed, *t)
			continue
		}
		build, entry, err := d.cfg.Plans.PrepareRelease(ctx, plans.ReleasePlanRequest{
			Actor: "rollout:" + r.ID, Role: "system", Source: "controlplane",
			Tenant: tn, Agent: agent, Release: prev, Rollback: true, TTL: r.Spec.PlanTTL, Rollout: r.ID, Reason: "rollback: " + r.Message,
		})
		if err != nil {
			t.State, t.Message = store.TargetFailed, "rollback: "+err.Error()
			changed = append(changed, *t)
			continue
		}
		p, err := d.cfg.Store.DispatchRolloutPlan(ctx, r.ID, t.Tenant, d.cfg.Owner, true, agent, build, entry)
		switch {
		case errors.Is(err, store.ErrConflict):
			continue
		case errors.Is(err, store.ErrLeaseLost):
			return err
		case err != nil:
			t.State, t.Message = store.TargetFailed, "rollback dispatch: "+err.Error()
			changed = append(changed, *t)
			continue
		}
		t.RollbackPlanID = p.ID
		d.cfg.Plans.Notified(agent)
	}
	if pending > 0 {
		return d.save(ctx, r, changed, audits)
	}
	rolled := countState(waveTargets(targets, r.Wave), store.TargetRolledBack)
	r.State = store.RolloutFailed
	r.Message = fmt.Sprintf("%s; rolled back %d tenants of wave %s; %s", r.Message, rolled, waveName(r), summary(targets, -1))
	audits = append(audits, d.audit(r, "rollout.failed", r.Message, auditlog.OutcomeFailure))
	return d.save(ctx, r, changed, audits)
}

func waveName(r store.Rollout) string {
	if r.Wave < len(r.Spec.Waves) {
		return r.Spec.Waves[r.Wave].Name
	}
	return fmt.Sprint(r.Wave)
}

func waveTargets(ts []store.RolloutTarget, wave int) []store.RolloutTarget {
	var out []store.RolloutTarget
	for _, t := range ts {
		if t.Wave == wave {
			out = append(out, t)
		}
	}
	return out
}

func countState(ts []store.RolloutTarget, s store.TargetState) int {
	n := 0
	for _, t := range ts {
		if t.State == s {
			n++
		}
	}
	return n
}

func allDone(ts []store.RolloutTarget) bool {
	for _, t := range ts {
		if !t.State.Done() {
			return false
		}
	}
	return true
}

// summary counts targets by state ("2 succeeded, 1 dispatched"), of one
// wave, or of all when wave < 0.
func summary(ts []store.RolloutTarget, wave int) string {
	order := []store.TargetState{store.TargetSucceeded, store.TargetDispatched, store.TargetPending, store.TargetWaiting, store.TargetFailed,
		store.TargetSkipped, store.TargetRollingBack, store.TargetRolledBack, store.TargetCancelled}
	counts := map[store.TargetState]int{}
	total := 0
	for _, t := range ts {
		if wave >= 0 && t.Wave != wave {
			continue
		}
		counts[t.State]++
		total++
	}
	var parts []string
	for _, s := range order {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	if len(parts) == 0 {
		return "no tenants"
	}
	return fmt.Sprintf("%s of %d", strings.Join(parts, ", "), total)
}

func failures(ts []store.RolloutTarget) string {
	var out []string
	for _, t := range ts {
		if t.State == store.TargetFailed {
			out = append(out, t.Tenant+": "+t.Message)
		}
	}
	if len(out) > 3 {
		out = append(out[:3], fmt.Sprintf("and %d more", len(out)-3))
	}
	return strings.Join(out, "; ")
}
