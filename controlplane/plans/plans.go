package plans

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/sign"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

// Audit actions this package records.
const (
	ActionSubmit = "plan.submit"
	ActionResign = "plan.resign"
)

// Errors a submitter caused, besides plan.ErrTooLarge (the plan does not fit
// plan.MaxPlanBytes once signed, or its YAML exceeds plan.MaxYAMLBytes),
// store.ErrNotFound (unknown tenant, or no such agent in the tenant) and
// store.ErrRevoked (the named agent is revoked). Each is wrapped in an error
// whose text says what is wrong and what to do.
var (
	// ErrInvalid: the request or the plan YAML is not valid; the text names
	// every offending field (`steps[2] "migrate": unknown key "dependson"`).
	ErrInvalid = errors.New("invalid plan")
	// ErrNoAgent: no agent was named and the tenant has no agent that is
	// not revoked.
	ErrNoAgent = errors.New("no active agent")
	// ErrAmbiguousAgent: no agent was named and the tenant has several
	// active agents; the text lists their IDs.
	ErrAmbiguousAgent = errors.New("several active agents")
)

// Config is what the service needs.
type Config struct {
	Store store.Store
	// Keys returns the current key material (keys.Holder.Current); called
	// on every use, so a rotated plans key is picked up. Its RootChain(0)
	// is the root history Envelope checks before re-signing.
	Keys func() *keys.Material
	// Notify is called after a plan is stored, with its agent, so a live
	// session offers it at once. May be nil.
	Notify func(store.AgentKey)
	Logger *slog.Logger     // nil discards
	Now    func() time.Time // nil means time.Now
}

// Service submits plans and serves their envelopes. It is safe for
// concurrent use.
type Service struct {
	cfg Config
}

// New returns the service. Store and Keys are required.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg}
}

// SubmitRequest is one plan submission.
type SubmitRequest struct {
	// Actor, Role, Source and RequestID go into the audit record.
	Actor, Role, Source string
	RequestID           string
	// Tenant the plan is for; it must exist.
	Tenant string
	// AgentID names the tenant's agent to run the plan; empty means the
	// tenant's only agent that is not revoked.
	AgentID string
	// YAML is the plan's authoring document (see plan.Draft).
	YAML []byte
	// DryRun asks the agent for each step's diff instead of applying it.
	DryRun bool
}

// Submit validates the plan, picks its agent, signs it with the current
// plans key and stores it, pending, with the agent's next sequence number
// and an audit record (action "plan.submit") in one transaction; then it
// notifies the agent's session. Nothing is stored when any check fails.
func (s *Service) Submit(ctx context.Context, req SubmitRequest) (store.Plan, error) {
	if err := ctx.Err(); err != nil {
		return store.Plan{}, err
	}
	if !identity.ValidName(req.Tenant) {
		return store.Plan{}, invalid(fmt.Errorf("tenant %q is not a valid tenant name (a lowercase DNS label)", req.Tenant))
	}
	if req.AgentID != "" && !identity.ValidName(req.AgentID) {
		return store.Plan{}, invalid(fmt.Errorf("agent %q is not a valid agent ID (a lowercase DNS label)", req.AgentID))
	}
	if len(req.YAML) > plan.MaxYAMLBytes {
		return store.Plan{}, fmt.Errorf("%w: the plan YAML is %d bytes, limit %d bytes (4 MiB), and the signed plan may be at most %d bytes (1 MiB); split the plan or move bulky content into the release",
			plan.ErrTooLarge, len(req.YAML), plan.MaxYAMLBytes, plan.MaxPlanBytes)
	}
	if len(bytes.TrimSpace(req.YAML)) == 0 {
		return store.Plan{}, invalid(errors.New("the plan YAML is empty"))
	}
	draft, err := plan.ParseYAML(req.YAML)
	if err != nil {
		return store.Plan{}, invalid(err)
	}
	draft.DryRun = req.DryRun

	m := s.cfg.Keys()
	if m == nil || m.PlanSigner == nil || m.Root == nil {
		return store.Plan{}, errors.New("plans: no plan signing key loaded")
	}
	td, err := spiffeid.TrustDomainFromString(m.Root.TrustDomain)
	if err != nil {
		return store.Plan{}, fmt.Errorf("plans: trust root: %w", err)
	}
	if _, err := s.cfg.Store.GetTenant(ctx, req.Tenant); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return store.Plan{}, fmt.Errorf("tenant %s %w", req.Tenant, store.ErrNotFound)
		}
		return store.Plan{}, err
	}
	agent, err := s.pickAgent(ctx, req.Tenant, req.AgentID)
	if err != nil {
		return store.Plan{}, err
	}
	self, err := identity.AgentID(td, agent.Tenant, agent.ID)
	if err != nil {
		return store.Plan{}, invalid(err)
	}

	// Build once outside the transaction: validation errors (cycles,
	// duplicate ids …) never take the store's write lock, and the plan ID
	// is known for the audit record. The sequence is set inside.
	now := s.cfg.Now().UTC()
	base, err := draft.Build(agent.Tenant, self, 1, now)
	if err != nil {
		return store.Plan{}, invalid(err)
	}
	key := store.AgentKey{Tenant: agent.Tenant, ID: agent.ID}
	// The sequence is issued inside CreatePlan, after this record is
	// handed over, so it is not in the detail; the plan row and its signed
	// payload carry it, found by the plan ID (the record's target).
	detail, err := json.Marshal(map[string]any{
		"plan_id":    base.GetPlanId(),
		"agent":      agent.ID,
		"steps":      len(base.GetSteps()),
		"dry_run":    req.DryRun,
		"release":    base.GetReleaseRef(),
		"expires_at": base.GetExpiresAt().AsTime().UTC().Format(time.RFC3339),
		"key_id":     m.PlanSigner.KeyID(),
	})
	if err != nil {
		return store.Plan{}, fmt.Errorf("plans: audit detail: %w", err)
	}
	entry := auditlog.Entry{
		Time:      now,
		Actor:     req.Actor,
		Role:      req.Role,
		Action:    ActionSubmit,
		Tenant:    agent.Tenant,
		Target:    base.GetPlanId(),
		RequestID: req.RequestID,
		Outcome:   auditlog.OutcomeSuccess,
		Source:    req.Source,
		Detail:    detail,
	}
	stored, err := s.cfg.Store.CreatePlan(ctx, key, func(seq uint64) (store.Plan, error) {
		p := proto.Clone(base).(*planv1.Plan)
		p.Sequence = seq
		env, err := plan.Sign(ctx, p, m.PlanSigner)
		if err != nil {
			if errors.Is(err, plan.ErrTooLarge) {
				// Its text gives the size, the limit and what to do.
				return store.Plan{}, &reworded{msg: strings.TrimPrefix(err.Error(), "sign plan "+p.GetPlanId()+": "), err: err}
			}
			return store.Plan{}, fmt.Errorf("plans: sign plan %s: %w", p.GetPlanId(), err)
		}
		return store.Plan{
			ID:        p.GetPlanId(),
			Tenant:    key.Tenant,
			AgentID:   key.ID,
			Sequence:  seq,
			Release:   p.GetReleaseRef(),
			DryRun:    p.GetDryRun(),
			Envelope:  env,
			CreatedBy: req.Actor,
			CreatedAt: now,
			ExpiresAt: p.GetExpiresAt().AsTime(),
		}, nil
	}, entry)
	if err != nil {
		if errors.Is(err, store.ErrRevoked) {
			return store.Plan{}, fmt.Errorf("agent %s/%s was revoked meanwhile: %w", key.Tenant, key.ID, err)
		}
		return store.Plan{}, err
	}
	s.cfg.Logger.Info("plan submitted", "plan", stored.ID, "tenant", stored.Tenant, "agent", stored.AgentID,
		"sequence", stored.Sequence, "steps", len(base.GetSteps()), "dry_run", stored.DryRun,
		"bytes", len(stored.Envelope), "actor", req.Actor)
	if s.cfg.Notify != nil {
		s.cfg.Notify(key)
	}
	return stored, nil
}

// pickAgent returns the named agent of tenant, or its only active one.
func (s *Service) pickAgent(ctx context.Context, tenant, id string) (store.Agent, error) {
	if id != "" {
		a, err := s.cfg.Store.GetAgent(ctx, store.AgentKey{Tenant: tenant, ID: id})
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return store.Agent{}, fmt.Errorf("agent %s/%s %w", tenant, id, store.ErrNotFound)
			}
			return store.Agent{}, err
		}
		if a.RevokedAt != nil {
			return store.Agent{}, fmt.Errorf("agent %s/%s: %w at %s by %s; plans go only to active agents",
				tenant, id, store.ErrRevoked, a.RevokedAt.UTC().Format(time.RFC3339), orUnknown(a.RevokedBy))
		}
		return a, nil
	}
	all, err := s.cfg.Store.ListAgents(ctx, store.AgentFilter{Tenant: tenant})
	if err != nil {
		return store.Agent{}, err
	}
	var active []store.Agent
	for _, a := range all {
		if a.RevokedAt == nil {
			active = append(active, a)
		}
	}
	switch len(active) {
	case 1:
		return active[0], nil
	case 0:
		revoked := ""
		if n := len(all); n > 0 {
			revoked = fmt.Sprintf(" (%d revoked)", n)
		}
		return store.Agent{}, fmt.Errorf("%w: tenant %s has none%s; enroll one with a join token (attache token create --tenant %s)",
			ErrNoAgent, tenant, revoked, tenant)
	default:
		ids := make([]string, 0, len(active))
		for _, a := range active {
			ids = append(ids, a.ID)
		}
		slices.Sort(ids)
		return store.Agent{}, fmt.Errorf("%w: tenant %s has %d (%s); say which one runs the plan with --agent (API field \"agent\")",
			ErrAmbiguousAgent, tenant, len(ids), strings.Join(ids, ", "))
	}
}

// Envelope returns the signed envelope to offer for plan p. While p's
// envelope verifies under the plans role of the current trust root it is
// returned as stored. A pending plan whose signing key has been rotated
// away is re-signed with the current plans key (the payload, and so the
// plan, is unchanged), stored (store.UpdatePlanEnvelope, audited as
// "plan.resign") and returned; only an envelope that verifies under a trust
// root this control plane issued (Keys().RootChain(0)) is re-signed, so
// whoever can write the store alone never gets a payload of their choosing
// signed. A plan that is no longer pending is returned as stored: it is not
// offered again.
func (s *Service) Envelope(ctx context.Context, p store.Plan) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.State != store.PlanPending {
		return p.Envelope, nil
	}
	m := s.cfg.Keys()
	if m == nil || m.PlanSigner == nil || m.Root == nil {
		return nil, errors.New("plans: no plan signing key loaded")
	}
	if _, err := sign.VerifyPayload(ctx, m.Root, sign.RolePlans, plan.PayloadType, p.Envelope); err == nil {
		return p.Envelope, nil
	} else if ctxErr := ctx.Err(); ctxErr != nil {
		return nil, ctxErr
	}
	payload, version, err := s.signedBefore(ctx, m, p.Envelope)
	if err == nil {
		err = matches(m, p, payload)
	}
	if err != nil {
		// Not this control plane's signature (the stored envelope was
		// altered or forged): never re-sign it, and do not hide it either.
		// It is sent as stored; the agent, the verifier of record, refuses
		// it, and the refusal with its reason is reported and audited.
		s.cfg.Logger.Error("stored plan envelope is not signed by any plans key of this control plane; offering it unchanged for the agent to refuse",
			"plan", p.ID, "tenant", p.Tenant, "agent", p.AgentID, "err", err)
		return p.Envelope, nil
	}
	env, err := sign.SignPayload(ctx, plan.PayloadType, payload, m.PlanSigner)
	if err != nil {
		return nil, fmt.Errorf("plans: re-sign plan %s: %w", p.ID, err)
	}
	detail, err := json.Marshal(map[string]any{
		"agent":            p.AgentID,
		"sequence":         p.Sequence,
		"key_id":           m.PlanSigner.KeyID(),
		"root_version":     m.Root.Version,
		"was_root_version": version,
	})
	if err != nil {
		return nil, fmt.Errorf("plans: audit detail: %w", err)
	}
	entry := auditlog.Entry{
		Time:    s.cfg.Now().UTC(),
		Actor:   "system",
		Role:    "system",
		Action:  ActionResign,
		Tenant:  p.Tenant,
		Target:  p.ID,
		Outcome: auditlog.OutcomeSuccess,
		Detail:  detail,
	}
	if err := s.cfg.Store.UpdatePlanEnvelope(ctx, p.ID, env, entry); err != nil {
		return nil, fmt.Errorf("plans: store re-signed plan %s: %w", p.ID, err)
	}
	s.cfg.Logger.Info("plan re-signed with the current plans key", "plan", p.ID, "tenant", p.Tenant, "agent", p.AgentID,
		"sequence", p.Sequence, "key_id", m.PlanSigner.KeyID(), "root_version", m.Root.Version, "was_root_version", version)
	return env, nil
}

// signedBefore returns envelope's payload if the plans role of a trust root
// this control plane issued (m.RootChain(0), newest first) signed it, and
// that root's version.
func (s *Service) signedBefore(ctx context.Context, m *keys.Material, envelope []byte) ([]byte, int, error) {
	chain := m.RootChain(0)
	for i := len(chain) - 1; i >= 0; i-- {
		// An expired root still says which plans keys this control plane
		// held; its own signatures are checked.
		r, err := sign.VerifyPinnedRoot(ctx, chain[i])
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, 0, ctxErr
			}
			s.cfg.Logger.Warn("skipping a trust root that does not verify", "err", err)
			continue
		}
		if r.TrustDomain != m.Root.TrustDomain {
			continue
		}
		if payload, err := sign.VerifyPayload(ctx, r, sign.RolePlans, plan.PayloadType, envelope); err == nil {
			return payload, r.Version, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	return nil, 0, errors.New("its envelope verifies under no trust root this control plane issued")
}

// matches checks that payload is the plan the row p describes.
func matches(m *keys.Material, p store.Plan, payload []byte) error {
	pl, err := plan.Unmarshal(payload)
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(m.Root.TrustDomain)
	if err != nil {
		return err
	}
	self, err := identity.AgentID(td, p.Tenant, p.AgentID)
	if err != nil {
		return err
	}
	if pl.GetPlanId() != p.ID || pl.GetTenant() != p.Tenant || pl.GetAgentSpiffeId() != self.String() || pl.GetSequence() != p.Sequence {
		return fmt.Errorf("the signed plan (%s, %s, sequence %d) is not the stored one (%s, %s, sequence %d)",
			pl.GetPlanId(), pl.GetAgentSpiffeId(), pl.GetSequence(), p.ID, self, p.Sequence)
	}
	return nil
}

// Decode returns the plan a stored envelope carries without checking its
// signature: for showing plans this control plane signed and stored. Never
// use it to decide whether to trust a plan.
func Decode(envelope []byte) (*planv1.Plan, error) {
	var env dsse.Envelope
	if err := json.Unmarshal(envelope, &env); err != nil {
		return nil, fmt.Errorf("decode plan envelope: %w", err)
	}
	if env.PayloadType != plan.PayloadType {
		return nil, fmt.Errorf("decode plan envelope: payload type is %.100q, want %q", env.PayloadType, plan.PayloadType)
	}
	payload, err := env.DecodeB64Payload()
	if err != nil {
		return nil, fmt.Errorf("decode plan envelope: payload: %w", err)
	}
	return plan.Unmarshal(payload)
}

// invalidError is an ErrInvalid with its problems on one line.
type invalidError struct{ err error }

func invalid(err error) error { return &invalidError{err: err} }

func (e *invalidError) Error() string {
	msg := strings.TrimPrefix(e.err.Error(), "build plan: ")
	return ErrInvalid.Error() + ": " + strings.ReplaceAll(msg, "\n", "; ")
}

func (e *invalidError) Unwrap() []error { return []error{ErrInvalid, e.err} }

// reworded is err with a message fit for the submitter.
type reworded struct {
	msg string
	err error
}

func (e *reworded) Error() string { return e.msg }
func (e *reworded) Unwrap() error { return e.err }

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
