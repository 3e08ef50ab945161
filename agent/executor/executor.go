package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"attache.dev/attache/agent/journal"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/plan"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
)

// Bounds on what the executor journals per step. The journal's records are
// reported to the control plane whole, so nothing a provider says may make
// them grow without limit.
const (
	// MaxMessageBytes bounds a step's, a compensation's and the plan's
	// message; longer ones are cut at a UTF-8 boundary and end in "…".
	MaxMessageBytes = 4 << 10
	// MaxChanges bounds the changes journaled for one step; beyond it the
	// last entry says how many were left out.
	MaxChanges = 256
	// MaxChangeFieldBytes bounds a change's resource and summary.
	MaxChangeFieldBytes = 512
	// MaxOutputs bounds the outputs journaled for one step (the first ones
	// in key order are kept).
	MaxOutputs = 32
	// MaxOutputKeyBytes and MaxOutputValueBytes bound one output.
	MaxOutputKeyBytes   = 64
	MaxOutputValueBytes = 2 << 10
)

// OutputVerification is the output a provider proves a step's effect with
// (plan.OutputVerification); the executor records it in the agent's audit
// log.
const OutputVerification = plan.OutputVerification

// DefaultProgressInterval is Config.ProgressInterval's default.
const DefaultProgressInterval = 250 * time.Millisecond

// Providers hands out providers by name; *catalog.Catalog satisfies it.
type Providers interface {
	Provider(name string) (sdk.Provider, error)
}

// Config configures an Executor.
type Config struct {
	// Journal holds the plans; required.
	Journal *journal.Journal
	// Providers resolves a step's provider; required.
	Providers Providers
	// Logger receives the executor's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock for step and plan timestamps; default time.Now.
	Now func() time.Time
	// ProgressInterval is the least time between two journaled progress
	// messages of one step; default DefaultProgressInterval.
	ProgressInterval time.Duration
}

// Executor runs journaled plans. Execute is meant to be called for one plan
// at a time (agent/planrun does).
type Executor struct {
	j        *journal.Journal
	provs    Providers
	log      *slog.Logger
	now      func() time.Time
	interval time.Duration
}

// New returns an Executor; zero Config fields take their defaults.
func New(cfg Config) *Executor {
	e := &Executor{j: cfg.Journal, provs: cfg.Providers, log: cfg.Logger, now: cfg.Now, interval: cfg.ProgressInterval}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.interval <= 0 {
		e.interval = DefaultProgressInterval
	}
	return e
}

// Execute runs or resumes the plan p, which must already be accepted in the
// journal under p.PlanId, until the plan is terminal (succeeded or failed);
// a plan that already is terminal is left alone and no provider is called.
// It returns nil once the plan is terminal, whatever its outcome (which is
// in the journal). It returns ctx's error when ctx ends first, leaving the
// plan running for the next Execute to resume, and any other error when the
// journal cannot be read or written; the plan then stays unfinished too.
func (e *Executor) Execute(ctx context.Context, p *planv1.Plan) error {
	if e.j == nil || e.provs == nil {
		return errors.New("executor: Config.Journal and Config.Providers are required")
	}
	id := p.GetPlanId()
	rec, err := e.j.Get(id)
	if err != nil {
		return fmt.Errorf("executor: plan %s: %w", id, err)
	}
	if rec.Terminal() {
		e.log.Debug("plan already finished", "plan", id, "state", rec.State)
		return nil
	}
	if rec.Sequence != p.GetSequence() || (rec.Tenant != "" && rec.Tenant != p.GetTenant()) {
		return fmt.Errorf("executor: plan %s: journaled as sequence %d for tenant %q, but the plan has sequence %d for tenant %q",
			id, rec.Sequence, rec.Tenant, p.GetSequence(), p.GetTenant())
	}
	r := &run{e: e, p: p, id: id, rec: rec, log: e.log.With("plan", id)}
	ordered, err := plan.Order(p)
	if err != nil { // planverify validated it; only a broken caller gets here.
		r.later(func(rec *journal.PlanRecord) { markRunning(rec, e.now()) })
		return r.finish(journal.PlanFailed, "invalid plan: "+err.Error())
	}
	r.steps = ordered
	now := e.now()
	r.later(func(rec *journal.PlanRecord) {
		reconcile(rec, ordered)
		markRunning(rec, now)
	})
	if p.GetDryRun() {
		return r.dryRun(ctx)
	}
	return r.apply(ctx)
}

// run is one Execute of one plan.
type run struct {
	e     *Executor
	p     *planv1.Plan
	id    string
	steps []*planv1.Step // in execution order
	log   *slog.Logger
	// rec is the plan as journaled, plus the queued changes.
	rec journal.PlanRecord
	// queued are changes already applied to rec that the next journal
	// write carries. Only changes that need not be durable before the next
	// provider call are queued (outcomes, skips), and every provider call
	// is preceded by a write, so they are durable before it.
	queued []func(*journal.PlanRecord)
}

// errStale aborts a progress write whose step has moved on.
var errStale = errors.New("step is no longer running")

// later applies fn to r.rec now and to the journal with the next write.
func (r *run) later(fn func(*journal.PlanRecord)) {
	fn(&r.rec)
	r.queued = append(r.queued, fn)
}

// update writes the queued changes and fn's in one durable transaction.
func (r *run) update(fn func(*journal.PlanRecord)) error {
	queued := r.queued
	rec, err := r.e.j.Update(r.id, func(rec *journal.PlanRecord) error {
		for _, q := range queued {
			q(rec)
		}
		if fn != nil {
			fn(rec)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("executor: plan %s: journal: %w", r.id, err)
	}
	r.rec, r.queued = rec, nil
	return nil
}

// stop writes what is queued and returns ctx's error, for when ctx ended.
func (r *run) stop(ctx context.Context) error {
	r.log.Info("plan interrupted; it resumes on the next start", "err", ctx.Err())
	if len(r.queued) > 0 {
		if err := r.update(nil); err != nil {
			return errors.Join(ctx.Err(), err)
		}
	}
	return ctx.Err()
}

// finish makes the plan terminal.
func (r *run) finish(state, msg string) error {
	now := r.e.now()
	if err := r.update(func(rec *journal.PlanRecord) {
		rec.State, rec.Message, rec.FinishedAt = state, bound(msg), now
	}); err != nil {
		return err
	}
	level := slog.LevelInfo
	if state != journal.PlanSucceeded {
		level = slog.LevelWarn
	}
	r.log.Log(context.Background(), level, "plan "+state, "message", r.rec.Message)
	return nil
}

// step returns the record of step s (reconcile guarantees there is one).
func (r *run) step(s *planv1.Step) *journal.StepRecord { return r.rec.Step(s.GetId()) }

// failed returns the index of the failed step, or -1.
func (r *run) failed() int {
	for i, s := range r.steps {
		if r.step(s).State == journal.StepFailed {
			return i
		}
	}
	return -1
}

// apply runs the plan for real.
func (r *run) apply(ctx context.Context) error {
	failed := r.failed() // ≥ 0: resuming an interrupted compensation
	if failed < 0 {
		for i, s := range r.steps {
			if r.step(s).State == journal.StepSucceeded {
				continue // never started again
			}
			if ctx.Err() != nil {
				return r.stop(ctx)
			}
			ok, err := r.applyStep(ctx, s)
			if err != nil {
				return err
			}
			if !ok {
				failed = i
				break
			}
		}
	}
	if failed < 0 {
		return r.finish(journal.PlanSucceeded, fmt.Sprintf("%d steps succeeded, %d changes", len(r.steps), r.changeCount()))
	}
	r.later(r.skipAfter(failed))
	s := r.steps[failed]
	msg := fmt.Sprintf("step %q failed: %s", s.GetId(), r.step(s).Message)
	outcome, err := r.compensate(ctx)
	if err != nil {
		return err
	}
	return r.finish(journal.PlanFailed, msg+"; "+outcome)
}

// applyStep runs one step. It returns whether the step succeeded; an error
// means the step was interrupted (ctx) or the journal failed.
func (r *run) applyStep(ctx context.Context, s *planv1.Step) (bool, error) {
	log := r.log.With("step", s.GetId(), "provider", s.GetProvider(), "action", s.GetAction())
	prov, err := r.e.provs.Provider(s.GetProvider())
	if err != nil {
		msg := fmt.Sprintf("provider %q is not available: %v", s.GetProvider(), err)
		log.Warn("step failed", "message", msg)
		now := r.e.now()
		r.later(func(rec *journal.PlanRecord) {
			st := rec.Step(s.GetId())
			st.State, st.Message, st.FinishedAt = journal.StepFailed, bound(msg), now
			if st.StartedAt.IsZero() {
				st.StartedAt = now
			}
		})
		return false, nil
	}
	start := r.e.now()
	if err := r.update(func(rec *journal.PlanRecord) {
		st := rec.Step(s.GetId())
		st.State, st.Attempts, st.StartedAt = journal.StepRunning, st.Attempts+1, start
		st.FinishedAt, st.Message, st.Changes = time.Time{}, "", nil
	}); err != nil {
		return false, err
	}
	attempt := r.step(s).Attempts
	log = log.With("attempt", attempt)
	log.Info("step started")
	report, stopProgress := r.progress(func(rec *journal.PlanRecord, msg string) error {
		st := rec.Step(s.GetId())
		if st == nil || st.State != journal.StepRunning || st.Attempts != attempt {
			return errStale
		}
		st.Message = msg
		return nil
	})
	res, err := prov.Apply(ctx, &providerv1.Step{
		Id: s.GetId(), Action: s.GetAction(), Resource: s.GetResource(), Params: s.GetParams(),
		Tenant: r.p.GetTenant(), PlanId: r.id, Attempt: attempt,
	}, report)
	stopProgress()
	if ctx.Err() != nil && (err != nil || res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED) {
		log.Info("step interrupted", "err", errors.Join(ctx.Err(), err))
		return false, r.stop(ctx)
	}
	state, msg, changes := outcome(res, err)
	outputs := convertOutputs(res.GetOutputs())
	now := r.e.now()
	r.later(func(rec *journal.PlanRecord) {
		st := rec.Step(s.GetId())
		st.State, st.Message, st.Changes, st.Outputs, st.FinishedAt = state, msg, changes, outputs, now
	})
	if v, ok := outputs[OutputVerification]; ok {
		if err := r.auditVerification(s, state, v); err != nil {
			return false, err
		}
	}
	if state == journal.StepSucceeded {
		log.Info("step succeeded", "duration", now.Sub(start), "changes", len(changes))
		return true, nil
	}
	log.Warn("step failed", "duration", now.Sub(start), "message", msg)
	return false, nil
}

// outcome turns Apply's answer into a step state, message and changes.
func outcome(res *providerv1.ApplyResult, err error) (state, msg string, changes []journal.Change) {
	switch {
	case err != nil:
		return journal.StepFailed, bound(errMessage(err)), nil
	case res.GetState() == providerv1.StepState_STEP_STATE_SUCCEEDED:
		return journal.StepSucceeded, bound(res.GetMessage()), convertChanges(res.GetChanges())
	case res.GetState() == providerv1.StepState_STEP_STATE_FAILED:
		msg = res.GetMessage()
		if msg == "" {
			msg = "the provider reported the step failed without saying why"
		}
		return journal.StepFailed, bound(msg), convertChanges(res.GetChanges())
	default:
		return journal.StepFailed, bound(fmt.Sprintf("the provider returned a result in state %v; treating the step as failed", res.GetState())), convertChanges(res.GetChanges())
	}
}

// skipAfter marks every step after the failed one skipped.
func (r *run) skipAfter(failed int) func(*journal.PlanRecord) {
	id := r.steps[failed].GetId()
	later := make([]string, 0, len(r.steps)-failed-1)
	for _, s := range r.steps[failed+1:] {
		later = append(later, s.GetId())
	}
	return func(rec *journal.PlanRecord) {
		for _, sid := range later {
			if st := rec.Step(sid); st.State != journal.StepSkipped {
				st.State, st.Message = journal.StepSkipped, fmt.Sprintf("not run: step %q failed", id)
			}
		}
	}
}

// compensate runs the compensations of the succeeded steps that declare
// one, latest step first, stopping at the first that fails, and returns a
// summary for the plan's message.
func (r *run) compensate(ctx context.Context) (string, error) {
	var done, notRun []string
	failedComp := ""
	for i := len(r.steps) - 1; i >= 0; i-- {
		s := r.steps[i]
		st := r.step(s)
		if st.State != journal.StepSucceeded || s.GetCompensation() == nil {
			continue
		}
		switch {
		case failedComp != "":
			notRun = append(notRun, s.GetId())
			continue
		case st.CompensationState == journal.CompensationSucceeded:
			done = append(done, s.GetId())
			continue
		case st.CompensationState == journal.CompensationFailed:
			failedComp = s.GetId()
			continue
		}
		if ctx.Err() != nil {
			return "", r.stop(ctx)
		}
		ok, err := r.compensateStep(ctx, s)
		if err != nil {
			return "", err
		}
		if ok {
			done = append(done, s.GetId())
		} else {
			failedComp = s.GetId()
		}
	}
	var parts []string
	if len(done) > 0 {
		parts = append(parts, "compensated "+quoteSteps(done))
	}
	if failedComp != "" {
		s := r.rec.Step(failedComp)
		parts = append(parts, fmt.Sprintf("compensation of step %q failed: %s", failedComp, s.CompensationMessage))
		if len(notRun) > 0 {
			parts = append(parts, "not compensated "+quoteSteps(notRun))
		}
	}
	if len(parts) == 0 {
		return "no compensation to run", nil
	}
	return strings.Join(parts, "; "), nil
}

// compensateStep runs s's compensation: an Apply of the compensation's
// action and params on s's provider and resource. It returns whether it
// succeeded; an error means it was interrupted (ctx) or the journal failed.
func (r *run) compensateStep(ctx context.Context, s *planv1.Step) (bool, error) {
	c := s.GetCompensation()
	log := r.log.With("step", s.GetId(), "provider", s.GetProvider(), "compensation", c.GetAction())
	prov, err := r.e.provs.Provider(s.GetProvider())
	if err != nil {
		msg := fmt.Sprintf("provider %q is not available: %v", s.GetProvider(), err)
		log.Warn("compensation failed", "message", msg)
		r.later(func(rec *journal.PlanRecord) {
			st := rec.Step(s.GetId())
			st.CompensationState, st.CompensationMessage = journal.CompensationFailed, bound(msg)
		})
		return false, nil
	}
	// The journal counts step attempts only: a compensation found running
	// was interrupted, so this is at least its second attempt.
	attempt := uint32(1)
	if r.step(s).CompensationState == journal.CompensationRunning {
		attempt = 2
	}
	if err := r.update(func(rec *journal.PlanRecord) {
		st := rec.Step(s.GetId())
		st.CompensationState, st.CompensationMessage = journal.CompensationRunning, ""
	}); err != nil {
		return false, err
	}
	log.Info("compensation started", "attempt", attempt)
	report, stopProgress := r.progress(func(rec *journal.PlanRecord, msg string) error {
		st := rec.Step(s.GetId())
		if st == nil || st.CompensationState != journal.CompensationRunning {
			return errStale
		}
		st.CompensationMessage = msg
		return nil
	})
	res, err := prov.Apply(ctx, &providerv1.Step{
		Id: s.GetId(), Action: c.GetAction(), Resource: s.GetResource(), Params: c.GetParams(),
		Tenant: r.p.GetTenant(), PlanId: r.id, Attempt: attempt,
	}, report)
	stopProgress()
	if ctx.Err() != nil && (err != nil || res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED) {
		log.Info("compensation interrupted", "err", errors.Join(ctx.Err(), err))
		return false, r.stop(ctx)
	}
	state, msg, _ := outcome(res, err)
	cstate := journal.CompensationFailed
	if state == journal.StepSucceeded {
		cstate = journal.CompensationSucceeded
	}
	r.later(func(rec *journal.PlanRecord) {
		st := rec.Step(s.GetId())
		st.CompensationState, st.CompensationMessage = cstate, msg
	})
	if cstate == journal.CompensationSucceeded {
		log.Info("compensation succeeded")
		return true, nil
	}
	log.Warn("compensation failed", "message", msg)
	return false, nil
}

// dryRun asks every provider for its step's diff.
func (r *run) dryRun(ctx context.Context) error {
	failed := r.failed()
	if failed < 0 {
		for i, s := range r.steps {
			if r.step(s).State == journal.StepPlanned {
				continue
			}
			if ctx.Err() != nil {
				return r.stop(ctx)
			}
			ok, err := r.planStep(ctx, s)
			if err != nil {
				return err
			}
			if !ok {
				failed = i
				break
			}
		}
	}
	if failed >= 0 {
		r.later(r.skipAfter(failed))
		s := r.steps[failed]
		return r.finish(journal.PlanFailed, fmt.Sprintf("dry run: step %q failed: %s", s.GetId(), r.step(s).Message))
	}
	return r.finish(journal.PlanSucceeded, fmt.Sprintf("dry run: %d steps planned, %d changes", len(r.steps), r.changeCount()))
}

// planStep asks s's provider for its diff and journals it; it changes
// nothing, so nothing is journaled before the call.
func (r *run) planStep(ctx context.Context, s *planv1.Step) (bool, error) {
	log := r.log.With("step", s.GetId(), "provider", s.GetProvider(), "action", s.GetAction())
	start := r.e.now()
	attempt := r.step(s).Attempts + 1
	var (
		state, msg string
		changes    []journal.Change
	)
	prov, err := r.e.provs.Provider(s.GetProvider())
	if err != nil {
		state, msg = journal.StepFailed, fmt.Sprintf("provider %q is not available: %v", s.GetProvider(), err)
	} else {
		cs, err := prov.Plan(ctx, &providerv1.Step{
			Id: s.GetId(), Action: s.GetAction(), Resource: s.GetResource(), Params: s.GetParams(),
			Tenant: r.p.GetTenant(), PlanId: r.id, Attempt: attempt,
		})
		switch {
		case err != nil && ctx.Err() != nil:
			return false, r.stop(ctx)
		case err != nil:
			state, msg = journal.StepFailed, errMessage(err)
		default:
			state, changes = journal.StepPlanned, convertChanges(cs)
			msg = fmt.Sprintf("%d changes", countChanges(changes))
		}
	}
	now := r.e.now()
	if err := r.update(func(rec *journal.PlanRecord) {
		st := rec.Step(s.GetId())
		st.State, st.Message, st.Changes = state, bound(msg), changes
		st.Attempts, st.StartedAt, st.FinishedAt = attempt, start, now
	}); err != nil {
		return false, err
	}
	if state == journal.StepFailed {
		log.Warn("dry run step failed", "message", msg)
		return false, nil
	}
	log.Info("step planned", "changes", len(changes))
	return true, nil
}

// changeCount counts the changes (not NOOPs) of every step.
func (r *run) changeCount() int {
	n := 0
	for i := range r.rec.Steps {
		n += countChanges(r.rec.Steps[i].Changes)
	}
	return n
}

func countChanges(cs []journal.Change) int {
	n := 0
	for _, c := range cs {
		if c.Operation != "noop" {
			n++
		}
	}
	return n
}

// progress starts journaling a running step's progress: report formats each
// event and hands it to a goroutine that writes it with write, at most once
// per interval and always the latest one. stop ends the goroutine (a write
// in flight completes first); what is still unwritten then is dropped, as
// the step's outcome is about to be written.
func (r *run) progress(write func(rec *journal.PlanRecord, msg string) error) (report sdk.ProgressFunc, stop func()) {
	var (
		mu     sync.Mutex
		latest string
	)
	wake := make(chan struct{}, 1)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-wake:
			case <-quit:
				return
			}
			mu.Lock()
			msg := latest
			mu.Unlock()
			_, err := r.e.j.Update(r.id, func(rec *journal.PlanRecord) error { return write(rec, msg) })
			if err != nil && !errors.Is(err, errStale) {
				r.log.Warn("journal progress", "err", err)
			}
			timer := time.NewTimer(r.e.interval)
			select {
			case <-timer.C:
			case <-quit:
				timer.Stop()
				return
			}
		}
	}()
	report = func(p *providerv1.Progress) {
		msg := p.GetMessage()
		if res := p.GetResource(); res != "" {
			msg = res + ": " + msg
		}
		mu.Lock()
		latest = bound(msg)
		mu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	return report, func() { close(quit); <-done }
}

// auditVerification records a step's verification output in the agent's
// audit log, after the step's outcome is journaled.
func (r *run) auditVerification(s *planv1.Step, state, verification string) error {
	if err := r.update(nil); err != nil {
		return err
	}
	outcome := auditlog.OutcomeSuccess
	if state != journal.StepSucceeded {
		outcome = auditlog.OutcomeFailure
	}
	detail, err := json.Marshal(map[string]string{
		"plan": r.id, "step": s.GetId(), "provider": s.GetProvider(), "action": s.GetAction(),
		"state": state, OutputVerification: verification,
	})
	if err != nil {
		return err
	}
	if _, err := r.e.j.Audit(auditlog.Entry{
		Time: r.e.now(), Actor: r.p.GetAgentSpiffeId(), Role: "agent", Action: "step.verified",
		Tenant: r.p.GetTenant(), Target: r.id + "/" + s.GetId(), Outcome: outcome, Detail: detail,
	}); err != nil {
		return fmt.Errorf("audit verification of step %s: %w", s.GetId(), err)
	}
	return nil
}

// convertOutputs renders a provider's outputs as bounded strings (the
// verification first, then the others in key order, MaxOutputs in all):
// strings
// as they are, numbers and booleans in their JSON form, lists and objects as
// JSON.
func convertOutputs(o *structpb.Struct) map[string]string {
	fields := o.GetFields()
	if len(fields) == 0 {
		return nil
	}
	keys := plan.OutputKeys(fields)
	out := make(map[string]string, min(len(keys), MaxOutputs))
	for _, k := range keys[:min(len(keys), MaxOutputs)] {
		var v string
		switch x := fields[k].GetKind().(type) {
		case *structpb.Value_StringValue:
			v = x.StringValue
		case *structpb.Value_BoolValue:
			v = strconv.FormatBool(x.BoolValue)
		case *structpb.Value_NumberValue:
			v = strconv.FormatFloat(x.NumberValue, 'f', -1, 64)
		case *structpb.Value_NullValue:
			v = ""
		default:
			b, err := json.Marshal(fields[k].AsInterface())
			if err != nil {
				continue
			}
			v = string(b)
		}
		out[truncate(k, MaxOutputKeyBytes)] = truncate(v, MaxOutputValueBytes)
	}
	return out
}

// convertChanges turns a provider's changes into journal changes, bounded.
func convertChanges(cs []*providerv1.Change) []journal.Change {
	if len(cs) == 0 {
		return nil
	}
	n := min(len(cs), MaxChanges)
	out := make([]journal.Change, 0, n)
	for _, c := range cs[:n] {
		out = append(out, journal.Change{
			Resource:  truncate(c.GetResource(), MaxChangeFieldBytes),
			Operation: Operation(c.GetOperation()),
			Summary:   truncate(c.GetSummary(), MaxChangeFieldBytes),
		})
	}
	if left := len(cs) - n; left > 0 {
		out[n-1] = journal.Change{Resource: "…", Operation: "noop", Summary: fmt.Sprintf("%d more changes not recorded", left+1)}
	}
	return out
}

// Operation names a provider's change operation as the journal and the
// status report do: create, update, delete or noop. An unspecified or
// unknown operation reads as update: something may have changed.
func Operation(op providerv1.Operation) string {
	switch op {
	case providerv1.Operation_OPERATION_CREATE:
		return "create"
	case providerv1.Operation_OPERATION_DELETE:
		return "delete"
	case providerv1.Operation_OPERATION_NOOP:
		return "noop"
	default:
		return "update"
	}
}

// errMessage is a provider error for humans: a gRPC status's code and
// message, or the error's text.
func errMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return err.Error()
}

// bound makes msg fit MaxMessageBytes.
func bound(msg string) string { return truncate(msg, MaxMessageBytes) }

// truncate returns s as valid UTF-8 of at most n bytes, ending in "…" when
// it was cut.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	cut := n - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// quoteSteps renders step ids as `"a", "b"`, prefixed by "step" or "steps".
func quoteSteps(ids []string) string {
	q := make([]string, len(ids))
	for i, id := range ids {
		q[i] = fmt.Sprintf("%q", id)
	}
	if len(q) == 1 {
		return "step " + q[0]
	}
	return "steps " + strings.Join(q, ", ")
}

// reconcile makes rec.Steps hold exactly p's steps in execution order,
// keeping the journaled state of each and taking provider, action and
// whether a compensation exists from the signed plan.
func reconcile(rec *journal.PlanRecord, ordered []*planv1.Step) {
	steps := make([]journal.StepRecord, 0, len(ordered))
	for _, s := range ordered {
		st := journal.StepRecord{ID: s.GetId(), State: journal.StepPending}
		if old := rec.Step(s.GetId()); old != nil {
			st = *old
		}
		if st.State == "" {
			st.State = journal.StepPending
		}
		st.Provider, st.Action, st.HasCompensation = s.GetProvider(), s.GetAction(), s.GetCompensation() != nil
		steps = append(steps, st)
	}
	rec.Steps = steps
}

// markRunning marks an accepted plan running.
func markRunning(rec *journal.PlanRecord, now time.Time) {
	rec.State = journal.PlanRunning
	if rec.StartedAt.IsZero() {
		rec.StartedAt = now
	}
}
