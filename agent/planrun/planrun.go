// Package planrun is the agent's plan runner: it takes the plans the control
// plane offers on the session, follows any newer trust roots delivered with
// them, verifies each plan (internal/planverify), journals it as accepted or
// refused (agent/journal, with an audit record either way), and executes the
// accepted plans one at a time in sequence order through an Executor
// (agent/executor). It also turns journal records into the PlanStatus
// reports the session sends, and records the control plane's
// acknowledgements.
//
// Only agent packages import planrun.
package planrun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/agent/journal"
	"attache.dev/attache/agent/session"
	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/planverify"
	"attache.dev/attache/internal/sign"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

// Executor runs or resumes one journaled plan until it is terminal
// (agent/executor.Executor implements it).
type Executor interface {
	Execute(ctx context.Context, p *planv1.Plan) error
}

// Config configures a Runner.
type Config struct {
	Journal  *journal.Journal
	Executor Executor
	// State supplies the agent's SPIFFE ID and pinned trust root; followed
	// roots are persisted through it (State.SaveTrustRoot).
	State  *svid.State
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// ClockSkew is how far in the future a plan's issued_at may be; zero
	// means planverify.DefaultClockSkew.
	ClockSkew time.Duration
	// AllowUnreleased accepts plans that carry no signed release
	// (planverify.Verifier.AllowUnreleased; `attache-agent run
	// --allow-unreleased-plans`). False, the default, refuses them with
	// ReasonUnreleased.
	AllowUnreleased bool
}

// Report is the status of one plan at one journal version; it is the
// session's type, so that *Runner implements session.Plans.
type Report = session.Report

var _ session.Plans = (*Runner)(nil)

// Refusal reason codes (PlanStatus.reason), one per planverify error, plus
// ReasonInternal for anything else.
const (
	ReasonTooLarge     = "TOO_LARGE"
	ReasonRootExpired  = "ROOT_EXPIRED"
	ReasonSignature    = "SIGNATURE"
	ReasonPayloadType  = "PAYLOAD_TYPE"
	ReasonMalformed    = "MALFORMED"
	ReasonInvalid      = "INVALID"
	ReasonWrongTenant  = "WRONG_TENANT"
	ReasonWrongAgent   = "WRONG_AGENT"
	ReasonReplay       = "REPLAY"
	ReasonExpired      = "EXPIRED"
	ReasonFromFuture   = "FROM_FUTURE"
	ReasonRootRotation = "ROOT_ROTATION"
	ReasonRelease      = "RELEASE"
	ReasonUnreleased   = "UNRELEASED"
	ReasonInternal     = "INTERNAL"
)

// Audit actions the runner records in the journal's audit log.
const (
	ActionAccept     = "plan.accept"
	ActionRefuse     = "plan.refuse"
	ActionRootFollow = "trust_root.follow"
)

// maxMessage bounds the refusal message journaled and reported.
const maxMessage = 2048

// maxStatusBytes bounds the encoded PlanStatus StatusOf returns. The session
// sends it in one message, which gRPC refuses beyond grpcx.MaxRecvMsgSize,
// ending the stream; as the agent sends the same status first thing on every
// new session, an oversized status would cut the agent off for good. The
// journal's own bounds (executor.MaxMessageBytes, MaxChanges,
// MaxChangeFieldBytes, plan.MaxSteps) allow far more than that in total.
// The rest of the message limit is headroom for the AgentMessage around it.
const maxStatusBytes = grpcx.MaxRecvMsgSize - 512<<10

// fittedMessage is what each step message is cut to when a status still
// does not fit maxStatusBytes once the per-change detail has gone.
const fittedMessage = 256

// Retry backoff after a failed Execute.
const (
	defaultRetryBase = time.Second
	defaultRetryMax  = time.Minute
)

// Runner verifies, journals and executes plans. Offer, FollowRoots and
// HelloState may be called from any goroutine (the session's); Run runs on
// its own, once.
type Runner struct {
	journal *journal.Journal
	exec    Executor
	state   *svid.State
	log     *slog.Logger
	now     func() time.Time
	tenant  string
	actor   string
	changed <-chan struct{}
	wake    chan struct{}

	retryBase, retryMax time.Duration

	// mu guards v (Root, LastSequence) and state.TrustRoot. It is held
	// through Offer and FollowRoots, so verify-then-journal is atomic.
	mu sync.Mutex
	v  planverify.Verifier
}

// New builds a Runner. The pinned root comes from State.TrustRoot; its
// signatures are checked but not its expiry (planverify refuses plans under
// an expired root with ErrRootExpired, until a rotation replaces it).
// LastSequence comes from the journal.
func New(cfg Config) (*Runner, error) {
	switch {
	case cfg.Journal == nil:
		return nil, errors.New("planrun: no journal")
	case cfg.Executor == nil:
		return nil, errors.New("planrun: no executor")
	case cfg.State == nil:
		return nil, errors.New("planrun: no agent state")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	root, err := sign.VerifyPinnedRoot(context.Background(), cfg.State.TrustRoot)
	if err != nil {
		return nil, fmt.Errorf("planrun: pinned trust root: %w", err)
	}
	td := cfg.State.ID.TrustDomain()
	if root.TrustDomain != td.Name() {
		return nil, fmt.Errorf("planrun: pinned trust root is for trust domain %q, this agent is %s", root.TrustDomain, cfg.State.ID)
	}
	tenant, _, err := identity.ParseAgentID(td, cfg.State.ID)
	if err != nil {
		return nil, fmt.Errorf("planrun: %w", err)
	}
	last, err := cfg.Journal.LastSequence()
	if err != nil {
		return nil, fmt.Errorf("planrun: %w", err)
	}
	return &Runner{
		journal:   cfg.Journal,
		exec:      cfg.Executor,
		state:     cfg.State,
		log:       cfg.Logger,
		now:       cfg.Now,
		tenant:    tenant,
		actor:     cfg.State.ID.String(),
		changed:   cfg.Journal.Subscribe(),
		wake:      make(chan struct{}, 1),
		retryBase: defaultRetryBase,
		retryMax:  defaultRetryMax,
		v: planverify.Verifier{
			Root:            root,
			Self:            cfg.State.ID,
			LastSequence:    last,
			Now:             cfg.Now,
			ClockSkew:       cfg.ClockSkew,
			AllowUnreleased: cfg.AllowUnreleased,
		},
	}, nil
}

// HelloState is what Hello reports: the sequence of the last accepted plan
// and the version of the pinned trust root.
func (r *Runner) HelloState() (lastSequence uint64, trustRootVersion uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.v.LastSequence, uint32(r.v.Root.Version)
}

// FollowRoots follows the trust roots in roots (oldest first), the chain of
// rotations from the pinned root to the control plane's current one.
// Envelopes whose claimed version is not above the pinned one (or above the
// envelope before it) are skipped; the rest must form the chain pinned+1,
// pinned+2, … and are verified as a whole (planverify.FollowRootChain, TUF
// rules): each root signed by the root threshold of the one before it and by
// its own, with the next version and the same trust domain, and only the
// final root checked for expiry. So an agent that was offline across
// several rotations follows them even when an intermediate root has expired
// meanwhile.
//
// The pinned root changes all at once or not at all: only when the whole
// chain verified is the final root persisted (State.SaveTrustRoot, one
// atomic write of trust-root.json) and pinned, and every followed version
// audited. A refusal anywhere in the chain, or a final root that has
// expired, leaves the pinned root (in memory and on disk) unchanged; it is
// audited, logged and returned (wrapping planverify.ErrRootRotation, and
// sign.ErrRootExpired for an expired final root). The pinned root is thus
// always one that was in force when it was pinned.
func (r *Runner) FollowRoots(ctx context.Context, roots [][]byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.followRoots(ctx, roots)
}

func (r *Runner) followRoots(ctx context.Context, roots [][]byte) error {
	from := r.v.Root.Version
	chain, top := planverify.NewerRoots(from, roots)
	if len(chain) == 0 {
		return nil
	}
	followed, err := r.v.FollowRootChain(ctx, chain)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		r.audit(ActionRootFollow, fmt.Sprintf("version %d", top), auditlog.OutcomeDenied, map[string]any{
			"from_version": from, "version": top, "chain": len(chain), "error": truncate(err.Error(), maxMessage),
		})
		r.log.Warn("trust root rotation refused", "pinned_version", from, "offered_version", top, "chain", len(chain), "err", err)
		return err
	}
	final := followed[len(followed)-1]
	if err := r.state.SaveTrustRoot(chain[len(chain)-1]); err != nil {
		r.log.Error("persisting followed trust root failed", "version", final.Version, "err", err)
		return fmt.Errorf("follow trust root version %d: %w", final.Version, err)
	}
	r.v.Root = final
	prev := from
	now := r.now()
	for _, root := range followed {
		detail := map[string]any{"from_version": prev, "version": root.Version, "expires": root.Expires.UTC()}
		if root != final && !now.Before(root.Expires) {
			detail["expired_intermediate"] = true
		}
		r.audit(ActionRootFollow, fmt.Sprintf("version %d", root.Version), auditlog.OutcomeSuccess, detail)
		prev = root.Version
	}
	r.log.Info("followed trust root rotation", "from_version", from, "version", final.Version, "chain", len(followed), "expires", final.Expires.UTC())
	return nil
}

// Offer handles one plan offer without waiting for its execution. A plan
// already journaled (accepted or refused) is not verified again: its record
// is touched (Version bumped) so its status is reported again. Otherwise the
// offer's trust roots are followed, the envelope verified and the plan
// journaled as accepted (advancing LastSequence and waking Run) or refused
// with its reason; either way an audit record is written.
//
// A failure that is the agent's own and may pass (the journal or the trust
// root file cannot be written, an unclassified verification error) refuses
// nothing: the offer stays unacknowledged and Offer returns the error, so
// the session reconnects and the control plane offers the plan again, with
// the trust roots the agent still lacks.
func (r *Runner) Offer(ctx context.Context, o *agentv1.PlanOffer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := o.GetPlanId()
	if id != "" {
		_, err := r.journal.Update(id, func(*journal.PlanRecord) error { return nil })
		switch {
		case err == nil:
			r.log.Info("plan offered again; reporting its status again", "plan", id)
			return nil
		case !errors.Is(err, journal.ErrNotFound):
			r.log.Error("journal lookup of offered plan failed", "plan", truncate(id, 256), "err", err)
			return fmt.Errorf("plan %.256q: journal: %w", id, err)
		}
	}
	if err := r.followRoots(ctx, o.GetTrustRoots()); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return r.refuse(o, err)
	}
	p, err := r.v.Verify(ctx, o.GetEnvelope())
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return r.refuse(o, err)
	}
	if p.GetPlanId() != id || p.GetSequence() != o.GetSequence() {
		return r.refuse(o, fmt.Errorf("%w: the offer names plan %.256q sequence %d, the signed plan is %q sequence %d",
			planverify.ErrInvalid, id, o.GetSequence(), p.GetPlanId(), p.GetSequence()))
	}
	ordered, err := plan.Order(p)
	if err != nil { // Verify validated the plan; defensive.
		return r.refuse(o, fmt.Errorf("%w: %v", planverify.ErrInvalid, err))
	}
	steps := make([]journal.StepRecord, len(ordered))
	for i, s := range ordered {
		steps[i] = journal.StepRecord{
			ID: s.GetId(), Provider: s.GetProvider(), Action: s.GetAction(),
			State: journal.StepPending, HasCompensation: s.GetCompensation() != nil,
		}
	}
	_, err = r.journal.Accept(journal.PlanRecord{
		ID: p.GetPlanId(), Sequence: p.GetSequence(), Tenant: p.GetTenant(), DryRun: p.GetDryRun(),
		Envelope: bytes.Clone(o.GetEnvelope()), Steps: steps, ReceivedAt: r.now(),
	})
	if err != nil {
		if errors.Is(err, journal.ErrReplay) {
			return r.refuse(o, err)
		}
		// Not journaled, not acknowledged: the control plane offers it
		// again on the next session.
		r.log.Error("journaling accepted plan failed", "plan", id, "err", err)
		return fmt.Errorf("plan %s: journal: %w", id, err)
	}
	r.v.LastSequence = p.GetSequence()
	r.audit(ActionAccept, id, auditlog.OutcomeSuccess, map[string]any{
		"sequence": p.GetSequence(), "steps": len(steps), "dry_run": p.GetDryRun(), "release_ref": p.GetReleaseRef(),
		"release_signed": len(p.GetReleaseEnvelope()) > 0,
	})
	r.log.Info("plan accepted", "plan", id, "sequence", p.GetSequence(), "steps", len(steps), "dry_run", p.GetDryRun())
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// refuse journals and audits the refusal of an offer. A cause that is not
// a reason to refuse the plan (ReasonInternal: the agent's own failure) is
// returned instead, and nothing is journaled.
func (r *Runner) refuse(o *agentv1.PlanOffer, cause error) error {
	reason := Reason(cause)
	id := o.GetPlanId()
	if reason == ReasonInternal {
		r.log.Error("cannot handle plan offer now; it stays unacknowledged and will be offered again", "plan", truncate(id, 256), "err", cause)
		return fmt.Errorf("plan %.256q: %w", id, cause)
	}
	msg := truncate(utf(cause.Error()), maxMessage)
	if _, err := r.journal.Refuse(journal.PlanRecord{
		ID: id, Sequence: o.GetSequence(), Tenant: r.tenant, Reason: reason, Message: msg, ReceivedAt: r.now(),
	}); err != nil {
		r.log.Error("journaling refused plan failed", "plan", truncate(id, 256), "reason", reason, "err", err)
	}
	r.audit(ActionRefuse, truncate(id, 256), auditlog.OutcomeDenied, map[string]any{
		"sequence": o.GetSequence(), "reason": reason, "message": msg,
	})
	r.log.Warn("plan refused", "plan", truncate(id, 256), "sequence", o.GetSequence(), "reason", reason, "err", cause)
	return nil
}

func (r *Runner) audit(action, target, outcome string, detail map[string]any) {
	d, err := json.Marshal(detail)
	if err != nil {
		d = nil
	}
	if _, err := r.journal.Audit(auditlog.Entry{
		Time: r.now(), Actor: r.actor, Role: "agent", Action: action, Tenant: r.tenant,
		Target: target, Outcome: outcome, Detail: d,
	}); err != nil {
		r.log.Error("writing audit record failed", "action", action, "target", target, "err", err)
	}
}

// Run executes the unfinished plans (accepted or running) one at a time in
// sequence order, and waits for newly accepted ones, until ctx ends; then it
// returns nil. An Execute error other than ctx's is logged and the plan is
// tried again after a backoff (1s doubling to 1m); it stays unfinished, and
// the plans after it wait. Call Run once.
func (r *Runner) Run(ctx context.Context) error {
	delay := r.retryBase
	retry := func(msg string, args ...any) bool {
		r.log.Error(msg, append(args, "retry_in", delay)...)
		t := time.NewTimer(delay)
		defer t.Stop()
		delay = min(delay*2, r.retryMax)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for {
		if ctx.Err() != nil {
			return nil
		}
		pending, err := r.journal.Unfinished()
		if err != nil {
			if !retry("reading unfinished plans failed", "err", err) {
				return nil
			}
			continue
		}
		if len(pending) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-r.wake:
			}
			continue
		}
		rec := pending[0]
		err = r.execute(ctx, rec)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !retry("plan execution failed; retrying", "plan", rec.ID, "sequence", rec.Sequence, "err", err) {
				return nil
			}
			continue
		}
		delay = r.retryBase
	}
}

// execute runs one unfinished plan and checks that it ended.
func (r *Runner) execute(ctx context.Context, rec journal.PlanRecord) error {
	p, err := rec.Plan()
	if err != nil {
		// The journaled envelope no longer decodes: retrying cannot help,
		// so the plan fails (and the plans after it can run).
		r.log.Error("journaled plan does not decode; failing it", "plan", rec.ID, "err", err)
		_, uerr := r.journal.Update(rec.ID, func(pr *journal.PlanRecord) error {
			pr.State = journal.PlanFailed
			pr.Message = truncate("the agent could not decode the journaled plan: "+err.Error(), maxMessage)
			pr.FinishedAt = r.now()
			return nil
		})
		return uerr
	}
	r.log.Info("executing plan", "plan", rec.ID, "sequence", rec.Sequence, "state", rec.State)
	if err := r.exec.Execute(ctx, p); err != nil {
		return err
	}
	after, err := r.journal.Get(rec.ID)
	if err != nil {
		return err
	}
	if !after.Terminal() {
		return fmt.Errorf("executor returned but plan %s is still %s", rec.ID, after.State)
	}
	r.log.Info("plan finished", "plan", rec.ID, "sequence", rec.Sequence, "state", after.State)
	return nil
}

// Changed is signalled (capacity 1, coalescing) after every journal change
// that bumps a plan's Version, including the executor's.
func (r *Runner) Changed() <-chan struct{} { return r.changed }

// Unreported returns the latest status of every plan the control plane has
// not acknowledged in its latest version: accepted plans by sequence, then
// refusals by arrival. A journal error is logged and yields nil (the next
// change or session retries).
func (r *Runner) Unreported() []Report {
	recs, err := r.journal.Unreported()
	if err != nil {
		r.log.Error("reading unreported plans failed", "err", err)
		return nil
	}
	out := make([]Report, len(recs))
	for i, rec := range recs {
		out[i] = Report{Status: StatusOf(rec, r.tenant), Version: rec.Version}
	}
	return out
}

// Acked records that the control plane stored the status of planID as of
// version.
func (r *Runner) Acked(planID string, version uint64) {
	if err := r.journal.MarkReported(planID, version); err != nil {
		r.log.Warn("recording plan acknowledgement failed", "plan", planID, "version", version, "err", err)
	}
}

// Reason returns the refusal reason code for err: one per planverify.Err*
// (journal.ErrReplay counts as REPLAY), ReasonInternal for anything else,
// "" for nil. A refused rotation is ROOT_ROTATION even when it wraps another
// reason (a rotated root that has itself expired).
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, m := range []struct {
		err    error
		reason string
	}{
		{planverify.ErrRootRotation, ReasonRootRotation},
		{planverify.ErrTooLarge, ReasonTooLarge},
		{planverify.ErrRootExpired, ReasonRootExpired},
		{planverify.ErrSignature, ReasonSignature},
		{planverify.ErrPayloadType, ReasonPayloadType},
		{planverify.ErrMalformed, ReasonMalformed},
		{planverify.ErrInvalid, ReasonInvalid},
		{planverify.ErrWrongTenant, ReasonWrongTenant},
		{planverify.ErrWrongAgent, ReasonWrongAgent},
		{planverify.ErrReplay, ReasonReplay},
		{journal.ErrReplay, ReasonReplay},
		{planverify.ErrExpired, ReasonExpired},
		{planverify.ErrFromFuture, ReasonFromFuture},
		{planverify.ErrRelease, ReasonRelease},
		{planverify.ErrUnreleased, ReasonUnreleased},
	} {
		if errors.Is(err, m.err) {
			return m.reason
		}
	}
	return ReasonInternal
}

// StatusOf renders a journal record as the PlanStatus the session reports.
// Tenant is always ownTenant (the agent's own), never a tenant a refused
// plan named; Reason is set for refused plans only. Strings are made valid
// UTF-8 (a provider's message might not be), or the status would never
// marshal and the session would fail on it again and again.
func StatusOf(rec journal.PlanRecord, ownTenant string) *agentv1.PlanStatus {
	st := &agentv1.PlanStatus{
		PlanId:   utf(rec.ID),
		Tenant:   utf(ownTenant),
		Sequence: rec.Sequence,
		State:    utf(rec.State),
		Message:  utf(rec.Message),
		DryRun:   rec.DryRun,
	}
	if rec.State == journal.PlanRefused {
		st.Reason = utf(rec.Reason)
	}
	for _, s := range rec.Steps {
		ss := &agentv1.StepStatus{
			StepId:              utf(s.ID),
			State:               utf(s.State),
			Message:             utf(s.Message),
			StartedAt:           timestamp(s.StartedAt),
			FinishedAt:          timestamp(s.FinishedAt),
			Attempts:            s.Attempts,
			CompensationState:   utf(s.CompensationState),
			CompensationMessage: utf(s.CompensationMessage),
		}
		if len(s.Outputs) > 0 {
			ss.Outputs = make(map[string]string, len(s.Outputs))
			for k, v := range s.Outputs {
				ss.Outputs[utf(k)] = utf(v)
			}
		}
		for _, c := range s.Changes {
			ss.Changes = append(ss.Changes, &agentv1.StepChange{Resource: utf(c.Resource), Operation: utf(c.Operation), Summary: utf(c.Summary)})
		}
		st.Steps = append(st.Steps, ss)
	}
	fitStatus(st)
	return st
}

// fitStatus makes st encode in at most maxStatusBytes, dropping detail in
// order of least value: first each step's list of changes (replaced by one
// entry saying how many were left out), then its outputs other than the
// verification, then the length of the step messages. Every step and its state are kept. A status that fits is left
// untouched.
func fitStatus(st *agentv1.PlanStatus) {
	if proto.Size(st) <= maxStatusBytes {
		return
	}
	for _, s := range st.Steps {
		if n := len(s.Changes); n > 0 {
			s.Changes = []*agentv1.StepChange{{Resource: "…", Operation: "noop",
				Summary: fmt.Sprintf("%d changes not reported: the plan's status would exceed %d bytes", n, maxStatusBytes)}}
		}
	}
	if proto.Size(st) <= maxStatusBytes {
		return
	}
	for _, s := range st.Steps {
		if v, ok := s.Outputs[plan.OutputVerification]; ok {
			s.Outputs = map[string]string{plan.OutputVerification: truncate(v, fittedMessage)}
		} else {
			s.Outputs = nil
		}
	}
	if proto.Size(st) <= maxStatusBytes {
		return
	}
	for _, s := range st.Steps {
		s.Message = truncate(s.Message, fittedMessage)
		s.CompensationMessage = truncate(s.CompensationMessage, fittedMessage)
	}
}

func utf(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// truncate shortens s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
