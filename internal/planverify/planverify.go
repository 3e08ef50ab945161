// Package planverify holds the agent's rules for accepting a signed plan:
// the envelope is small enough, signed by the `plans` role of the agent's
// pinned trust root, carries a plan that decodes and validates, is addressed
// to this agent of this tenant, is newer than the last accepted plan, is
// fresh, and carries the release it was rendered from, signed by the
// `releases` role, whose rendering its steps are exactly (unless the agent
// accepts ad hoc plans). It also follows trust-root rotations delivered to
// the agent.
//
// Every refusal matches (errors.Is) exactly one of the exported Err* values,
// so the agent can report and audit the reason, and tests can branch on it.
//
// Imported by the agent (and by tests of the control plane and e2e); never by
// providers.
package planverify

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/sign"
)

// DefaultClockSkew is the clock-skew allowance for issued_at when
// Verifier.ClockSkew is zero.
const DefaultClockSkew = 5 * time.Minute

// Reasons a plan is refused, in the order Verify checks them. Each error
// Verify returns for a refused plan matches exactly one of them.
var (
	// ErrTooLarge: the envelope exceeds plan.MaxPlanBytes. It is the same
	// value as plan.ErrTooLarge.
	ErrTooLarge = plan.ErrTooLarge
	// ErrRootExpired: the pinned trust root has expired, so it vouches for
	// no plan until a rotation (FollowRoot) replaces it. It is the same value
	// as sign.ErrRootExpired.
	ErrRootExpired = sign.ErrRootExpired
	// ErrSignature: the envelope does not decode as DSSE, or is not signed by
	// the threshold of the root's `plans` keys over its payload (tampered
	// payload or type, unknown key, too few signatures).
	ErrSignature = errors.New("plan signature not valid")
	// ErrPayloadType: a validly signed envelope whose payload is not a plan.
	ErrPayloadType = errors.New("envelope does not carry a plan")
	// ErrMalformed: the payload does not decode as a plan, or holds fields
	// this agent does not know.
	ErrMalformed = errors.New("plan malformed")
	// ErrInvalid: the plan decodes but fails plan.Validate.
	ErrInvalid = errors.New("plan invalid")
	// ErrWrongTenant: the plan is for another tenant than the agent's.
	ErrWrongTenant = errors.New("plan is for another tenant")
	// ErrWrongAgent: the plan is for another agent (of the agent's tenant).
	ErrWrongAgent = errors.New("plan is for another agent")
	// ErrReplay: the plan's sequence is not greater than the last accepted
	// (a replay when equal, a rollback when lower).
	ErrReplay = errors.New("plan sequence replayed or rolled back")
	// ErrExpired: the plan's expires_at has passed.
	ErrExpired = errors.New("plan expired")
	// ErrFromFuture: the plan's issued_at is later than now plus the
	// clock-skew allowance.
	ErrFromFuture = errors.New("plan issued in the future")
	// ErrRelease: the plan carries a release that is not signed by the
	// threshold of the root's `releases` keys or is not valid, or the
	// plan's steps are not exactly what that release renders for the
	// plan's release context (a control plane, or a stolen plans key,
	// trying to run what the release key did not sign).
	ErrRelease = errors.New("plan does not match a signed release")
	// ErrUnreleased: the plan carries no release, and the agent accepts
	// only plans rendered from a signed release (Verifier.AllowUnreleased
	// is false).
	ErrUnreleased = errors.New("unreleased plan refused")
	// ErrRootRotation: FollowRoot refused a new trust root.
	ErrRootRotation = errors.New("trust root rotation refused")
)

// Verifier checks signed plans for one agent. Its fields are read, never
// written, by Verify, so one Verifier may verify concurrently as long as
// nobody changes its fields meanwhile; the agent updates LastSequence (after
// journaling an accepted plan) and Root (after FollowRoot) between calls.
type Verifier struct {
	// Root is the agent's pinned trust root (verified at enrollment against
	// the join token's hash, or reached from it by FollowRoot).
	Root *sign.Root
	// Self is the agent's own SPIFFE ID, from its SVID.
	Self spiffeid.ID
	// LastSequence is the sequence of the last plan the agent accepted; 0
	// before the first.
	LastSequence uint64
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// ClockSkew is how far in the future issued_at may be; zero or less
	// means DefaultClockSkew.
	ClockSkew time.Duration
	// AllowUnreleased accepts plans that carry no release (ad hoc plans,
	// which the plans key alone vouches for). When false, the default, only
	// plans rendered from a release signed by the `releases` role are
	// accepted, so that the control plane's plans key alone cannot make the
	// agent run anything. A plan that carries a release is checked against
	// it either way.
	AllowUnreleased bool
}

func (v *Verifier) now() time.Time {
	if v.Now == nil {
		return time.Now()
	}
	return v.Now()
}

// Verify checks a signed plan envelope against every rule and returns the
// plan if all pass. The checks run in this order, and the first failure is
// returned, wrapping its Err* value with detail:
//
//  1. the envelope is at most plan.MaxPlanBytes (ErrTooLarge);
//  2. the pinned root has not expired (ErrRootExpired);
//  3. the envelope decodes and is signed by the root's `plans` threshold
//     (ErrSignature);
//  4. its payload type is plan.PayloadType (ErrPayloadType);
//  5. the payload decodes strictly as a plan (ErrMalformed);
//  6. the plan validates (ErrInvalid);
//  7. its tenant is the tenant in Self (ErrWrongTenant), and then its
//     agent_spiffe_id is Self (ErrWrongAgent); a plan for another tenant
//     fails both and is reported as ErrWrongTenant, the graver;
//  8. its sequence is greater than LastSequence (ErrReplay);
//  9. it has not expired at Now (ErrExpired);
//  10. issued_at is not after Now + ClockSkew (ErrFromFuture);
//  11. if the plan carries a release (release_envelope), the release is
//     signed by the root's `releases` threshold and valid
//     (release.Verify), release_context names a valid tenant (it may
//     differ from the plan's tenant: an agent serving a cell renders for
//     the tenants of the cell), and the plan's release_ref and steps are
//     exactly what the release renders for release_context
//     (release.CheckPlan) (all ErrRelease, naming the reason, or the first
//     step and field that differ);
//  12. if it carries none, AllowUnreleased is set (ErrUnreleased).
//
// An error matching none of them means the Verifier itself is misconfigured
// (no root, or Self not an agent ID of the root's trust domain) or ctx is
// done. Verify changes nothing: after the agent journals the plan it sets
// LastSequence to the plan's sequence.
func (v *Verifier) Verify(ctx context.Context, envelope []byte) (*planv1.Plan, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if v.Root == nil {
		return nil, errors.New("planverify: no trust root pinned")
	}
	td, err := spiffeid.TrustDomainFromString(v.Root.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("planverify: trust root: %w", err)
	}
	selfTenant, _, err := identity.ParseAgentID(td, v.Self)
	if err != nil {
		return nil, fmt.Errorf("planverify: this agent's own ID: %w", err)
	}
	now := v.now()

	// 1. Size, before any parsing.
	if len(envelope) > plan.MaxPlanBytes {
		return nil, fmt.Errorf("%w: envelope is %d bytes, limit %d", ErrTooLarge, len(envelope), plan.MaxPlanBytes)
	}
	// 2. The root vouches for nothing once expired.
	if !now.Before(v.Root.Expires) {
		return nil, fmt.Errorf("%w at %s (version %d); waiting for a rotated root", ErrRootExpired, v.Root.Expires.UTC().Format(time.RFC3339), v.Root.Version)
	}
	// 3. Signature, 4. payload type. DSSE signs the payload type with the
	// payload, so a wrong type on a validly signed envelope is told apart
	// from a bad signature by verifying under the envelope's own type; that
	// second look is only taken when the first verification fails.
	payload, err := sign.VerifyPayload(ctx, v.Root, sign.RolePlans, plan.PayloadType, envelope)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, v.classify(ctx, envelope, err)
	}
	// 5. Decode.
	p, err := plan.Unmarshal(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	// 6. Validate.
	if err := plan.Validate(p); err != nil {
		return nil, fmt.Errorf("%w: plan %.128s: %v", ErrInvalid, p.GetPlanId(), err)
	}
	// 7. Binding. Validate guarantees agent_spiffe_id parses as an agent of
	// p.Tenant.
	if p.GetTenant() != selfTenant {
		return nil, fmt.Errorf("%w: plan %s is for tenant %q (agent %s); this agent is %s of tenant %q",
			ErrWrongTenant, p.GetPlanId(), p.GetTenant(), p.GetAgentSpiffeId(), v.Self, selfTenant)
	}
	if p.GetAgentSpiffeId() != v.Self.String() {
		return nil, fmt.Errorf("%w: plan %s is for %s; this agent is %s", ErrWrongAgent, p.GetPlanId(), p.GetAgentSpiffeId(), v.Self)
	}
	// 8. Sequence.
	if seq := p.GetSequence(); seq <= v.LastSequence {
		what := "replayed"
		if seq < v.LastSequence {
			what = "rolled back"
		}
		return nil, fmt.Errorf("%w: plan %s has sequence %d, last accepted %d (%s)", ErrReplay, p.GetPlanId(), seq, v.LastSequence, what)
	}
	// 9. Expiry.
	if exp := p.GetExpiresAt().AsTime(); !now.Before(exp) {
		return nil, fmt.Errorf("%w: plan %s expired at %s, now %s", ErrExpired, p.GetPlanId(), exp.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	// 10. Issue time.
	skew := v.ClockSkew
	if skew <= 0 {
		skew = DefaultClockSkew
	}
	if iss := p.GetIssuedAt().AsTime(); iss.After(now.Add(skew)) {
		return nil, fmt.Errorf("%w: plan %s issued at %s, %s ahead of this agent's clock (%s), allowance %s",
			ErrFromFuture, p.GetPlanId(), iss.Format(time.RFC3339), iss.Sub(now).Round(time.Second), now.UTC().Format(time.RFC3339), skew)
	}
	// 11. The release: what may run.
	if env := p.GetReleaseEnvelope(); len(env) > 0 {
		if err := v.checkRelease(ctx, p); err != nil {
			return nil, err
		}
		return p, nil
	}
	// 12. No release.
	if !v.AllowUnreleased {
		return nil, fmt.Errorf("%w: plan %s carries no signed release; this agent runs only plans rendered from a release signed by the vendor's release key (start it with --allow-unreleased-plans to accept ad hoc plans)",
			ErrUnreleased, p.GetPlanId())
	}
	return p, nil
}

// checkRelease verifies the release p carries and checks p against it.
func (v *Verifier) checkRelease(ctx context.Context, p *planv1.Plan) error {
	rel, err := release.Verify(ctx, v.Root, p.GetReleaseEnvelope())
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return fmt.Errorf("%w: plan %s: the release it carries is refused: %v", ErrRelease, p.GetPlanId(), err)
	}
	if t := p.GetReleaseContext().GetTenant(); !identity.ValidName(t) {
		return fmt.Errorf("%w: plan %s: release_context tenant %.64q is not a valid tenant name", ErrRelease, p.GetPlanId(), t)
	}
	if err := release.CheckPlan(rel, p); err != nil {
		return fmt.Errorf("%w: plan %s is not what release %s renders: %v", ErrRelease, p.GetPlanId(), release.Ref(rel), err)
	}
	return nil
}

// classify turns the failure to verify envelope as a plan into ErrSignature
// or, when the envelope is validly signed under another payload type,
// ErrPayloadType.
func (v *Verifier) classify(ctx context.Context, envelope []byte, verr error) error {
	var head struct {
		PayloadType string `json:"payloadType"`
	}
	if err := json.Unmarshal(envelope, &head); err != nil {
		return fmt.Errorf("%w: envelope does not decode: %v", ErrSignature, err)
	}
	if head.PayloadType == plan.PayloadType || head.PayloadType == "" {
		return fmt.Errorf("%w: %v", ErrSignature, verr)
	}
	if _, err := sign.VerifyPayload(ctx, v.Root, sign.RolePlans, head.PayloadType, envelope); err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	return fmt.Errorf("%w: payload type is %.100q, want %q", ErrPayloadType, head.PayloadType, plan.PayloadType)
}

// FollowRoot accepts next, a signed trust root (DSSE envelope, JSON)
// delivered to the agent, if it is the rotation of current: version
// current+1, same trust domain, signed by current's root threshold and by
// its own, not expired now. current may have expired. Refusals match
// ErrRootRotation (and also sign.ErrRootExpired when next has expired). It
// is FollowRootChain with a chain of one root; an agent more than one
// version behind must follow the whole chain with FollowRootChain, so that
// only the final root's expiry counts.
func FollowRoot(ctx context.Context, current *sign.Root, next []byte) (*sign.Root, error) {
	return FollowRootAt(ctx, current, next, time.Now())
}

// FollowRootAt is FollowRoot at the given time.
func FollowRootAt(ctx context.Context, current *sign.Root, next []byte, now time.Time) (*sign.Root, error) {
	roots, err := FollowRootChainAt(ctx, current, [][]byte{next}, now)
	if err != nil {
		return nil, err
	}
	return roots[0], nil
}

// FollowRootChain follows chain, the signed trust roots of versions
// current+1, current+2, … (oldest first), from current, with TUF's rules
// (sign.VerifyRootChain): every root must be signed by the root threshold
// of the one before it and by its own, carry the next version and the same
// trust domain; expiry is checked only for the final root. An intermediate
// root that expired while the agent was offline is therefore followed, but
// a chain whose final root has expired is refused (matching both
// ErrRootRotation and sign.ErrRootExpired): the root it would reach
// vouches for no plan. On success it returns the roots of the chain in
// order; the last one is the agent's new root. Refusals match
// ErrRootRotation and name the version refused. It changes nothing: the
// caller persists the final root and pins it only after the whole chain
// verified. An empty chain returns nil and no error.
func FollowRootChain(ctx context.Context, current *sign.Root, chain [][]byte) ([]*sign.Root, error) {
	return FollowRootChainAt(ctx, current, chain, time.Now())
}

// FollowRootChainAt is FollowRootChain at the given time.
func FollowRootChainAt(ctx context.Context, current *sign.Root, chain [][]byte, now time.Time) ([]*sign.Root, error) {
	roots, err := sign.VerifyRootChain(ctx, current, chain, now)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, fmt.Errorf("%w: %w", ErrRootRotation, err)
	}
	return roots, nil
}

// FollowRoot is FollowRootAt at v.Now. It does not change v; on success the
// caller persists the new root and sets v.Root.
func (v *Verifier) FollowRoot(ctx context.Context, next []byte) (*sign.Root, error) {
	return FollowRootAt(ctx, v.Root, next, v.now())
}

// FollowRootChain is FollowRootChainAt from v.Root at v.Now. It does not
// change v; on success the caller persists the final root and sets v.Root
// to it.
func (v *Verifier) FollowRootChain(ctx context.Context, chain [][]byte) ([]*sign.Root, error) {
	return FollowRootChainAt(ctx, v.Root, chain, v.now())
}

// NewerRoots returns, in order, the root envelopes of roots that do not
// claim a version at or below current (an envelope whose version cannot be
// read is kept, for FollowRootChain to refuse), and the highest version
// claimed. It verifies nothing: it only drops what the control plane sent
// that the agent already has, before FollowRootChain.
func NewerRoots(current int, roots [][]byte) (chain [][]byte, top int) {
	top = current
	for _, env := range roots {
		claimed, ok := peekRootVersion(env)
		if ok && claimed <= top {
			continue
		}
		if ok {
			top = claimed
		}
		chain = append(chain, env)
	}
	return chain, top
}

// peekRootVersion reads the version a root envelope claims, without
// verifying anything; it only decides which envelopes to skip.
func peekRootVersion(env []byte) (int, bool) {
	var e struct {
		Payload string `json:"payload"`
	}
	if json.Unmarshal(env, &e) != nil {
		return 0, false
	}
	payload, err := base64.StdEncoding.DecodeString(e.Payload)
	if err != nil {
		if payload, err = base64.URLEncoding.DecodeString(e.Payload); err != nil {
			return 0, false
		}
	}
	var root struct {
		Version int `json:"version"`
	}
	if json.Unmarshal(payload, &root) != nil {
		return 0, false
	}
	return root.Version, true
}
