package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// RootPayloadType is the DSSE payload type of a signed Root.
const RootPayloadType = "application/vnd.attache.root+json"

// RootType is the value of Root.Type.
const RootType = "attache/root"

// Roles every Root defines.
const (
	RoleRoot     = "root"
	RolePlans    = "plans"
	RoleReleases = "releases"
)

// Bounds on a Root, which keep the cost of verifying an untrusted one small.
const (
	MaxRootKeys   = 64
	MaxRoleKeyIDs = 32
)

// ErrRootExpired is matched (errors.Is) by the error for a root past its
// expiry.
var ErrRootExpired = errors.New("trust root expired")

// RoleKeys says which keys may sign for a role and how many must.
type RoleKeys struct {
	KeyIDs    []string `json:"keyids"`
	Threshold int      `json:"threshold"`
}

// Root is the trust root: the keys of a trust domain and the roles they hold.
type Root struct {
	Type        string              `json:"_type"`   // "attache/root"
	Version     int                 `json:"version"` // starts at 1
	TrustDomain string              `json:"trust_domain"`
	Expires     time.Time           `json:"expires"`
	Keys        map[string]Key      `json:"keys"`  // by key id
	Roles       map[string]RoleKeys `json:"roles"` // "root", "plans", "releases"
}

// Validate reports every structural problem with r at once. It does not look
// at signatures or the clock.
func (r *Root) Validate() error {
	if r == nil {
		return errors.New("trust root is nil")
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if r.Type != RootType {
		add("trust root _type is %.64q, want %q", r.Type, RootType)
	}
	if r.Version < 1 {
		add("trust root version is %d, want 1 or more", r.Version)
	}
	if td, err := spiffeid.TrustDomainFromString(r.TrustDomain); err != nil {
		add("trust root trust_domain: %w", err)
	} else if td.Name() != r.TrustDomain {
		add("trust root trust_domain must be a bare trust domain name, not a SPIFFE ID")
	}
	if r.Expires.IsZero() {
		add("trust root expires is not set")
	}
	if len(r.Keys) > MaxRootKeys {
		add("trust root has %d keys, limit %d", len(r.Keys), MaxRootKeys)
	}
	for _, id := range sortedKeys(r.Keys) {
		k := r.Keys[id]
		if k.Type != KeyTypeEd25519 {
			add("trust root key %.64s: type is %.32q, want %q", id, k.Type, KeyTypeEd25519)
		}
		if len(k.Public) != ed25519.PublicKeySize {
			add("trust root key %.64s: public key is %d bytes, want %d", id, len(k.Public), ed25519.PublicKeySize)
		}
		if got := KeyID(k); got != id {
			add("trust root key %.64s: id does not match its key (want %s)", id, got)
		}
	}
	for _, role := range []string{RoleRoot, RolePlans, RoleReleases} {
		if _, ok := r.Roles[role]; !ok {
			add("trust root has no %s role", role)
		}
	}
	for _, role := range sortedKeys(r.Roles) {
		rk := r.Roles[role]
		if len(rk.KeyIDs) == 0 {
			add("%.64s role has no keys", role)
		}
		if len(rk.KeyIDs) > MaxRoleKeyIDs {
			add("%.64s role has %d keys, limit %d", role, len(rk.KeyIDs), MaxRoleKeyIDs)
		}
		if rk.Threshold < 1 || rk.Threshold > len(rk.KeyIDs) {
			add("%.64s role threshold is %d, want 1 to %d", role, rk.Threshold, len(rk.KeyIDs))
		}
		seen := make(map[string]bool, len(rk.KeyIDs))
		for _, id := range rk.KeyIDs {
			if seen[id] {
				add("%.64s role lists key %.64s twice", role, id)
			}
			seen[id] = true
			if _, ok := r.Keys[id]; !ok {
				add("%.64s role lists unknown key %.64s", role, id)
			}
		}
	}
	return errors.Join(errs...)
}

// SignRoot validates r and returns it as a DSSE envelope (JSON) signed by
// every signer. The payload is the deterministic JSON of r.
func SignRoot(ctx context.Context, r *Root, signers ...*Signer) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("sign root: %w", err)
	}
	payload, err := marshalRoot(r)
	if err != nil {
		return nil, err
	}
	return SignPayload(ctx, RootPayloadType, payload, signers...)
}

// marshalRoot encodes r deterministically: struct fields in order, map keys
// sorted (encoding/json), the expiry in UTC.
func marshalRoot(r *Root) ([]byte, error) {
	c := *r
	c.Expires = r.Expires.UTC()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return nil, fmt.Errorf("encode trust root: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// VerifyRoot checks a self-contained root: at least the root role's threshold
// of distinct root keys signed it, it is not expired at now, and Validate
// passes. Use it only for a root whose envelope hash is pinned (join token)
// or already trusted; otherwise use VerifyRootUpdate.
func VerifyRoot(ctx context.Context, envelope []byte, now time.Time) (*Root, error) {
	r, err := VerifyPinnedRoot(ctx, envelope)
	if err != nil {
		return nil, err
	}
	if err := checkExpiry(r, now); err != nil {
		return nil, err
	}
	return r, nil
}

// VerifyPinnedRoot is VerifyRoot without the expiry check, for loading a
// root the agent already pinned (verified at enrollment or reached by
// VerifyRootUpdate): a pinned root that has since expired must still load,
// so that a rotation can replace it. Whoever uses the root checks its expiry
// (the agent refuses every plan under an expired root).
func VerifyPinnedRoot(ctx context.Context, envelope []byte) (*Root, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	env, r, payload, err := decodeRoot(envelope)
	if err != nil {
		return nil, err
	}
	if err := verifyRole(ctx, env, payload, r, RoleRoot, "trust root:"); err != nil {
		return nil, err
	}
	return r, nil
}

// VerifyRootUpdate accepts next only if it is signed by prev's root threshold
// and by next's own root threshold, next.Version == prev.Version+1, the trust
// domain is unchanged, and next is not expired at now. prev may have expired:
// rotating away from an expired root is the point. It is VerifyRootChain
// with a chain of one root, which is therefore the final root and must be
// in force.
func VerifyRootUpdate(ctx context.Context, prev *Root, next []byte, now time.Time) (*Root, error) {
	r, err := verifyRootStep(ctx, prev, next)
	if err != nil {
		return nil, err
	}
	if err := checkExpiry(r, now); err != nil {
		return nil, fmt.Errorf("root update: %w", err)
	}
	return r, nil
}

// VerifyRootChain follows a chain of root rotations from trusted, the way a
// TUF client updates its root (TUF specification §5.3): chain holds the
// signed envelopes of versions trusted.Version+1, +2, … oldest first. Every
// root in it must be signed by the root threshold of the root before it and
// by its own, carry the next version and keep the trust domain, exactly as
// VerifyRootUpdate checks one rotation. Expiry is checked only for the final
// root, at now, after the whole chain verified: an intermediate root that
// expired while a client was offline is still a valid link (a client that
// missed two rotations must get through it), but a chain that ends in an
// expired root is refused (ErrRootExpired), since the root it reaches
// vouches for nothing. trusted may have expired.
//
// It returns the verified roots in chain order (the last one is the new
// trusted root) or the first refusal, naming the version it happened at.
// An empty chain returns no roots and no error.
func VerifyRootChain(ctx context.Context, trusted *Root, chain [][]byte, now time.Time) ([]*Root, error) {
	if len(chain) == 0 {
		return nil, ctx.Err()
	}
	out := make([]*Root, 0, len(chain))
	prev := trusted
	for i, env := range chain {
		r, err := verifyRootStep(ctx, prev, env)
		if err != nil {
			if len(chain) == 1 || ctx.Err() != nil {
				return nil, err
			}
			return nil, fmt.Errorf("root chain: root %d of %d, after version %d: %w", i+1, len(chain), prev.Version, err)
		}
		out = append(out, r)
		prev = r
	}
	if err := checkExpiry(prev, now); err != nil {
		if len(chain) == 1 {
			return nil, fmt.Errorf("root update: %w", err)
		}
		return nil, fmt.Errorf("root chain: final root version %d: %w", prev.Version, err)
	}
	return out, nil
}

// verifyRootStep is one link of a root chain: VerifyRootUpdate without the
// expiry check.
func verifyRootStep(ctx context.Context, prev *Root, next []byte) (*Root, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, errors.New("root update: no previous root")
	}
	if err := prev.Validate(); err != nil {
		return nil, fmt.Errorf("root update: previous root: %w", err)
	}
	env, r, payload, err := decodeRoot(next)
	if err != nil {
		return nil, fmt.Errorf("root update: %w", err)
	}
	if r.TrustDomain != prev.TrustDomain {
		return nil, fmt.Errorf("root update: trust domain changed from %q to %q", prev.TrustDomain, r.TrustDomain)
	}
	if r.Version != prev.Version+1 {
		return nil, fmt.Errorf("root update: version %d does not follow version %d (want %d)", r.Version, prev.Version, prev.Version+1)
	}
	if err := verifyRole(ctx, env, payload, prev, RoleRoot, "root update: previous"); err != nil {
		return nil, err
	}
	if err := verifyRole(ctx, env, payload, r, RoleRoot, "root update: new"); err != nil {
		return nil, err
	}
	return r, nil
}

func decodeRoot(envelope []byte) (*dsse.Envelope, *Root, []byte, error) {
	env, payload, err := decodeEnvelope(envelope)
	if err != nil {
		return nil, nil, nil, err
	}
	if env.PayloadType != RootPayloadType {
		return nil, nil, nil, fmt.Errorf("envelope payload type is %.100q, want %q", env.PayloadType, RootPayloadType)
	}
	var r Root
	if err := decodeStrict(payload, &r); err != nil {
		return nil, nil, nil, fmt.Errorf("decode trust root: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, nil, nil, err
	}
	return env, &r, payload, nil
}

func checkExpiry(r *Root, now time.Time) error {
	if !now.Before(r.Expires) {
		return fmt.Errorf("%w at %s", ErrRootExpired, r.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
