package plans

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/release"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

// DefaultReleasePlanTTL is how long a plan rendered from a release stays
// valid when the request sets no TTL.
const DefaultReleasePlanTTL = time.Hour

// ReleasePlanRequest asks for a plan rendered from a signed release for one
// tenant: the steps come from the release alone (release.Render), the
// control plane chooses only the agent, the tier, the flags, the time and
// whether it is a rollback.
type ReleasePlanRequest struct {
	// Actor, Role, Source and RequestID go into the audit record.
	Actor, Role, Source string
	RequestID           string
	// Tenant is the tenant served (its tier and flags are used).
	Tenant store.Tenant
	// Agent runs the plan: the tenant's cell.
	Agent store.AgentKey
	// Release is the stored signed release.
	Release store.Release
	// Rollback leaves out the release's on_rollback: skip steps.
	Rollback bool
	// TTL is how long the plan is valid; zero means DefaultReleasePlanTTL.
	TTL time.Duration
	// Rollout names the rollout the plan belongs to ("" for none); it goes
	// into the audit detail.
	Rollout string
	// Reason says why the plan is made (rollout, rollback, flags), for the
	// audit detail.
	Reason string
}

// PrepareRelease verifies the stored release against the current trust
// root, renders it for the tenant and returns the function that signs the
// plan with a given sequence number (for store.CreatePlan or
// store.DispatchRolloutPlan) and the plan's audit entry. Nothing is stored.
func (s *Service) PrepareRelease(ctx context.Context, req ReleasePlanRequest) (func(seq uint64) (store.Plan, error), auditlog.Entry, error) {
	m := s.cfg.Keys()
	if m == nil || m.PlanSigner == nil || m.Root == nil {
		return nil, auditlog.Entry{}, errors.New("plans: no plan signing key loaded")
	}
	td, err := spiffeid.TrustDomainFromString(m.Root.TrustDomain)
	if err != nil {
		return nil, auditlog.Entry{}, fmt.Errorf("plans: trust root: %w", err)
	}
	// The stored release was verified at push; verify again so a store
	// written behind the API's back, or a release key the root no longer
	// trusts, never reaches an agent (which would refuse it anyway).
	rel, err := release.Verify(ctx, m.Root, req.Release.Envelope)
	if err != nil {
		return nil, auditlog.Entry{}, fmt.Errorf("release %s: %w", req.Release.Version, err)
	}
	rc := &planv1.ReleaseContext{
		Tenant:   req.Tenant.Name,
		Tier:     req.Tenant.Tier,
		Flags:    req.Tenant.Flags,
		Rollback: req.Rollback,
	}
	steps, err := release.Render(rel, rc)
	if err != nil {
		return nil, auditlog.Entry{}, invalid(fmt.Errorf("release %s for tenant %s: %w", req.Release.Version, req.Tenant.Name, err))
	}
	self, err := identity.AgentID(td, req.Agent.Tenant, req.Agent.ID)
	if err != nil {
		return nil, auditlog.Entry{}, invalid(err)
	}
	ttl := req.TTL
	if ttl <= 0 {
		ttl = DefaultReleasePlanTTL
	}
	now := s.cfg.Now().UTC()
	id := plan.NewID(now)
	base := &planv1.Plan{
		PlanId:          id,
		Tenant:          req.Agent.Tenant,
		AgentSpiffeId:   self.String(),
		IssuedAt:        timestamppb.New(now),
		ExpiresAt:       timestamppb.New(now.Add(ttl)),
		ReleaseRef:      release.Ref(rel),
		Steps:           steps,
		ReleaseEnvelope: req.Release.Envelope,
		ReleaseContext:  rc,
	}
	detail, err := json.Marshal(map[string]any{
		"plan_id":    id,
		"agent":      req.Agent.ID,
		"tenant":     req.Tenant.Name,
		"release":    base.GetReleaseRef(),
		"rollback":   req.Rollback,
		"rollout":    req.Rollout,
		"reason":     req.Reason,
		"flags":      len(req.Tenant.Flags),
		"steps":      len(steps),
		"expires_at": base.GetExpiresAt().AsTime().Format(time.RFC3339),
		"key_id":     m.PlanSigner.KeyID(),
	})
	if err != nil {
		return nil, auditlog.Entry{}, fmt.Errorf("plans: audit detail: %w", err)
	}
	entry := auditlog.Entry{
		Time: now, Actor: req.Actor, Role: req.Role, Action: ActionSubmit, Tenant: req.Agent.Tenant,
		Target: id, RequestID: req.RequestID, Outcome: auditlog.OutcomeSuccess, Source: req.Source, Detail: detail,
	}
	build := func(seq uint64) (store.Plan, error) {
		p := proto.Clone(base).(*planv1.Plan)
		p.Sequence = seq
		if err := plan.Validate(p); err != nil {
			return store.Plan{}, invalid(fmt.Errorf("plan rendered from release %s: %w", req.Release.Version, err))
		}
		env, err := plan.Sign(ctx, p, m.PlanSigner)
		if err != nil {
			return store.Plan{}, fmt.Errorf("plans: sign plan %s: %w", id, err)
		}
		return store.Plan{
			ID: id, Tenant: req.Agent.Tenant, AgentID: req.Agent.ID, Sequence: seq,
			Release: base.GetReleaseRef(), Envelope: env, CreatedBy: req.Actor, CreatedAt: now,
			ExpiresAt: base.GetExpiresAt().AsTime(),
		}, nil
	}
	return build, entry, nil
}

// SubmitRelease renders, signs and stores a release plan outside any
// rollout (a flag change re-applying the tenant's current release), then
// nudges the agent's session.
func (s *Service) SubmitRelease(ctx context.Context, req ReleasePlanRequest) (store.Plan, error) {
	build, entry, err := s.PrepareRelease(ctx, req)
	if err != nil {
		return store.Plan{}, err
	}
	p, err := s.cfg.Store.CreatePlan(ctx, req.Agent, build, entry)
	if err != nil {
		return store.Plan{}, err
	}
	s.Notified(req.Agent)
	return p, nil
}

// Notified tells the agent's session that a plan was stored for it.
func (s *Service) Notified(k store.AgentKey) {
	if s.cfg.Notify != nil {
		s.cfg.Notify(k)
	}
}

// CellAgent returns the agent that serves tenant t: its Cell, or else its
// only active agent.
func (s *Service) CellAgent(ctx context.Context, t store.Tenant) (store.AgentKey, error) {
	a, err := s.pickAgent(ctx, t.Name, t.Cell)
	if err != nil {
		return store.AgentKey{}, err
	}
	return store.AgentKey{Tenant: a.Tenant, ID: a.ID}, nil
}
