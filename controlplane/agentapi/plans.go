package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/plan"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// Limits on a PlanStatus. A status beyond them ends the session with
// InvalidArgument; messages are truncated instead.
const (
	maxPlanIDBytes  = 128
	maxReasonBytes  = 64
	maxStatusSteps  = 1000
	maxMessageBytes = 4 << 10
	// maxAuditMessage bounds the agent's message copied into an audit record.
	maxAuditMessage = 256
	// Step outputs beyond these bounds are dropped or cut (the agent's
	// executor keeps within them).
	maxStepOutputs     = 32
	maxOutputKeyBytes  = 64
	maxOutputValueByte = 2 << 10
	// maxAuditVerification bounds a step's verification output copied into
	// the plan's audit record.
	maxAuditVerification = 512
	// maxAuditVerifications bounds how many steps' verifications one audit
	// record carries (the rest stay in the plan's stored step status), and
	// maxAuditStepID the step id in their keys.
	maxAuditVerifications = 50
	maxAuditStepID        = 64
)

// offerRetry is how long a session waits before offering again after a
// store or envelope error left pending plans unoffered.
const offerRetry = 5 * time.Second

// NotifyPlans tells agent k's session, if it is connected to this replica,
// that it may have new plans: the session offers the pending plans it has
// not offered yet. Sessions on other replicas learn of new plans from the
// store within RevocationPoll. It never blocks and is safe for concurrent use.
func (s *Service) NotifyPlans(k store.AgentKey) { s.sessions.nudge(k) }

// offerer is one session's plan delivery state; only the session's handler
// goroutine uses it.
type offerer struct {
	key store.AgentKey
	// rootVersion is the newest trust-root version the agent has, or was
	// sent (it follows every root it is sent before verifying a plan).
	rootVersion uint32
	// offered holds the plans offered in this session, each offered once.
	offered map[string]bool
}

// trustRoots returns the trust-root envelopes newer than version after,
// oldest first.
func (s *Service) trustRoots(after uint32) [][]byte {
	if s.cfg.TrustRoots == nil {
		return nil
	}
	return s.cfg.TrustRoots(after)
}

// sendRoots returns the roots to send to an agent at o.rootVersion and
// records them as sent. Versions are consecutive, so the agent ends at
// rootVersion + len(roots).
func (o *offerer) sendRoots(s *Service) [][]byte {
	roots := s.trustRoots(o.rootVersion)
	o.rootVersion += uint32(len(roots))
	return roots
}

// offerPending offers the agent's pending plans that this session has not
// offered yet, in sequence order. It returns false if a store or envelope
// error (logged) left some unoffered: the caller retries later. Later plans
// are not offered past one that could not be: the agent would then refuse
// the earlier one as a replay. An error is the stream's and ends the session.
func (s *Service) offerPending(ctx context.Context, stream agentv1.AgentService_SessionServer, o *offerer, log *slog.Logger) (bool, error) {
	if s.frozen.Load() {
		return true, nil // the fleet is frozen; pollFreeze nudges when it thaws
	}
	plans, err := s.cfg.Store.PendingPlans(ctx, o.key, s.cfg.Now())
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("load pending plans", "err", err)
		}
		return false, nil
	}
	// Forget plans no longer pending (acknowledged or expired: they never
	// are again), so a long session's set stays small.
	pending := make(map[string]bool, len(plans))
	for _, p := range plans {
		pending[p.ID] = true
	}
	for id := range o.offered {
		if !pending[id] {
			delete(o.offered, id)
		}
	}
	for _, p := range plans {
		if o.offered[p.ID] {
			continue
		}
		env := p.Envelope
		if s.cfg.Envelope != nil {
			if env, err = s.cfg.Envelope(ctx, p); err != nil {
				if ctx.Err() == nil {
					log.Error("prepare plan envelope; plan and later ones not offered yet", "plan", p.ID, "sequence", p.Sequence, "err", err)
				}
				return false, nil
			}
		}
		// Preparing the envelope may have taken a while; an expired plan is
		// never sent (the agent would refuse it anyway).
		if !s.cfg.Now().Before(p.ExpiresAt) {
			log.Info("plan expired before it was offered", "plan", p.ID, "sequence", p.Sequence, "expired_at", p.ExpiresAt)
			continue
		}
		offer := &agentv1.PlanOffer{PlanId: p.ID, Sequence: p.Sequence, Envelope: env, TrustRoots: o.sendRoots(s)}
		if err := stream.Send(&agentv1.ControlMessage{Body: &agentv1.ControlMessage_PlanOffer{PlanOffer: offer}}); err != nil {
			return false, err
		}
		o.offered[p.ID] = true
		log.Info("plan offered", "plan", p.ID, "sequence", p.Sequence, "trust_roots", len(offer.TrustRoots))
	}
	return true, nil
}

// planStatus stores a PlanStatus and acknowledges it once stored. A status
// about a plan that is not this agent's is audited and acknowledged (there
// is nothing to retry); a store failure ends the session with Unavailable,
// and the agent sends the status again after reconnecting.
func (s *Service) planStatus(ctx context.Context, stream agentv1.AgentService_SessionServer, id spiffeid.ID, key store.AgentKey, m *agentv1.AgentMessage) error {
	ps := m.GetPlanStatus()
	u, err := planUpdate(ps, s.cfg.Now())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "plan_status: %v", err)
	}
	detail := map[string]string{"agent": key.ID, "sequence": strconv.FormatUint(ps.GetSequence(), 10)}
	outcome := auditlog.OutcomeSuccess
	switch u.State {
	case store.PlanRefused:
		outcome = auditlog.OutcomeDenied
		detail["reason"] = ps.GetReason()
		detail["message"] = truncate(ps.GetMessage(), maxAuditMessage)
	case store.PlanFailed:
		outcome = auditlog.OutcomeFailure
		detail["message"] = truncate(ps.GetMessage(), maxAuditMessage)
	}
	if ps.GetDryRun() {
		detail["dry_run"] = "true"
	}
	if u.State == store.PlanSucceeded || u.State == store.PlanFailed {
		// What a step proved (e.g. that nothing of an erased tenant remains)
		// belongs in the trail compliance reviewers read.
		n := 0
		for _, st := range ps.GetSteps() {
			if v, ok := st.GetOutputs()[plan.OutputVerification]; ok && n < maxAuditVerifications {
				detail["verification."+truncate(st.GetStepId(), maxAuditStepID)] = truncate(v, maxAuditVerification)
				n++
			}
		}
	}
	entry := s.auditEntry(ctx, id, key.Tenant, "plan."+string(u.State), ps.GetPlanId(), outcome, detail)
	_, err = s.cfg.Store.UpdatePlan(ctx, key, ps.GetPlanId(), u, &entry)
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.cfg.Logger.Warn("status about a plan that is not this agent's", "tenant", key.Tenant, "agent", key.ID, "plan", ps.GetPlanId(), "state", ps.GetState())
		d, _ := json.Marshal(map[string]string{"agent": key.ID, "state": ps.GetState(), "error": "no such plan for this agent"})
		e := s.auditEntry(ctx, id, key.Tenant, "plan.status", ps.GetPlanId(), auditlog.OutcomeDenied, nil)
		e.Detail = d
		if _, err := s.cfg.Store.AppendAudit(context.WithoutCancel(ctx), e); err != nil {
			s.cfg.Logger.Error("append audit", "action", e.Action, "err", err)
		}
	case err != nil:
		if ctx.Err() != nil {
			return ctx.Err() // the session ends for its own reason
		}
		s.cfg.Logger.Error("store plan status", "tenant", key.Tenant, "agent", key.ID, "plan", ps.GetPlanId(), "err", err)
		return status.Error(codes.Unavailable, "control plane store unavailable: plan status not stored; send it again after reconnecting")
	}
	return stream.Send(&agentv1.ControlMessage{Body: &agentv1.ControlMessage_Ack{Ack: &agentv1.Ack{Ref: m.GetId()}}})
}

// stepJSON renders step statuses for store.Plan.Steps.
var stepJSON = protojson.MarshalOptions{UseProtoNames: true}

// planUpdate validates a PlanStatus and converts it for the store. Errors
// name the offending field.
func planUpdate(ps *agentv1.PlanStatus, now time.Time) (store.PlanUpdate, error) {
	switch id := ps.GetPlanId(); {
	case id == "":
		return store.PlanUpdate{}, errors.New("plan_id is empty")
	case len(id) > maxPlanIDBytes:
		return store.PlanUpdate{}, fmt.Errorf("plan_id is %d bytes, limit %d", len(id), maxPlanIDBytes)
	}
	state := store.PlanState(ps.GetState())
	switch state {
	case store.PlanAccepted, store.PlanRefused, store.PlanRunning, store.PlanSucceeded, store.PlanFailed:
	default:
		return store.PlanUpdate{}, fmt.Errorf("state %q is not one of accepted, refused, running, succeeded, failed", truncate(ps.GetState(), 32))
	}
	if n := len(ps.GetSteps()); n > maxStatusSteps {
		return store.PlanUpdate{}, fmt.Errorf("steps: %d steps, limit %d", n, maxStatusSteps)
	}
	if n := len(ps.GetReason()); n > maxReasonBytes {
		return store.PlanUpdate{}, fmt.Errorf("reason is %d bytes, limit %d", n, maxReasonBytes)
	}
	u := store.PlanUpdate{State: state, Message: truncate(ps.GetMessage(), maxMessageBytes), At: now}
	if state == store.PlanRefused && ps.GetReason() != "" {
		if u.Message == "" {
			u.Message = ps.GetReason()
		} else {
			u.Message = ps.GetReason() + ": " + u.Message
		}
	}
	if len(ps.GetSteps()) > 0 {
		steps := make([]json.RawMessage, 0, len(ps.GetSteps()))
		for i, st := range ps.GetSteps() {
			st.Message = truncate(st.GetMessage(), maxMessageBytes)
			st.CompensationMessage = truncate(st.GetCompensationMessage(), maxMessageBytes)
			st.Outputs = boundOutputs(st.GetOutputs())
			b, err := stepJSON.Marshal(st)
			if err != nil {
				return store.PlanUpdate{}, fmt.Errorf("steps[%d]: %w", i, err)
			}
			steps = append(steps, b)
		}
		b, err := json.Marshal(steps) // also compacts protojson's output
		if err != nil {
			return store.PlanUpdate{}, fmt.Errorf("steps: %w", err)
		}
		u.Steps = b
	}
	return u, nil
}

// boundOutputs keeps the verification output and then the first others in
// key order, maxStepOutputs in all, with keys and values cut to their
// bounds.
func boundOutputs(o map[string]string) map[string]string {
	if len(o) == 0 {
		return nil
	}
	keys := plan.OutputKeys(o)
	out := make(map[string]string, min(len(keys), maxStepOutputs))
	for _, k := range keys[:min(len(keys), maxStepOutputs)] {
		out[truncate(k, maxOutputKeyBytes)] = truncate(o[k], maxOutputValueByte)
	}
	return out
}

// truncate cuts s to at most n bytes on a UTF-8 boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}
