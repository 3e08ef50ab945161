package release

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// PayloadType is the DSSE payload type of a signed release.
const PayloadType = "application/vnd.attache.release.v1+json"

// Size limits.
const (
	// MaxYAMLBytes bounds the YAML authoring document ParseYAML reads.
	MaxYAMLBytes = 2 << 20
	// MaxEnvelopeBytes is the largest signed release envelope that Sign
	// produces and Verify accepts: 768 KiB. Every plan rendered from the
	// release carries the envelope, and a signed plan may be at most
	// plan.MaxPlanBytes (1 MiB); Fits checks that the plans do fit.
	MaxEnvelopeBytes = 768 << 10
	// MaxManifestsBytes bounds the manifests string.
	MaxManifestsBytes = 512 << 10
)

// Bounds on a release's contents.
const (
	MaxImages         = 64
	MaxImageRefBytes  = 512
	MaxMigrations     = 1000
	MaxMigrationName  = 128
	MaxFlags          = 64
	MaxFlagValueBytes = 1 << 10
	MaxTierValues     = 64
	// MaxValueBytes bounds a tier value.
	MaxValueBytes = 1 << 10
	// maxVersion is the largest migration version: migrations render into
	// params, whose numbers are float64.
	maxVersion = 1 << 53
)

// Tiers a tenant may be on.
const (
	TierPool   = "pool"
	TierBridge = "bridge"
	TierSilo   = "silo"
	TierBYOC   = "byoc"
)

// AllTiers lists the tiers in their canonical order.
var AllTiers = []string{TierPool, TierBridge, TierSilo, TierBYOC}

// On-rollback behaviours of a step template.
const (
	// OnRollbackRun (the default, also spelled "") keeps the step when the
	// release is rendered for a rollback to it.
	OnRollbackRun = "run"
	// OnRollbackSkip leaves the step out of a rollback rendering (typically
	// migrations, which are expand/contract and stay applied).
	OnRollbackSkip = "skip"
)

// Reasons Verify refuses a release. Each error Verify returns for a refused
// release matches exactly one of them.
var (
	// ErrTooLarge: the envelope exceeds MaxEnvelopeBytes (or, from Fits and
	// Sign, a plan rendered from the release would exceed the plan limit).
	ErrTooLarge = errors.New("release too large")
	// ErrSignature: the envelope does not decode as DSSE, does not carry
	// PayloadType, or is not signed by the threshold of the root's
	// `releases` keys.
	ErrSignature = errors.New("release signature not valid")
	// ErrMalformed: the payload does not decode strictly as a release.
	ErrMalformed = errors.New("release malformed")
	// ErrInvalid: the release decodes but fails Validate.
	ErrInvalid = errors.New("release invalid")
)

// Release is a release document. The JSON form (Marshal) is the signed
// payload; the YAML authoring form (ParseYAML) has the same keys.
type Release struct {
	// Name is the product, a lowercase DNS label.
	Name string `json:"name"`
	// Version matches [A-Za-z0-9][A-Za-z0-9._+-]{0,63}.
	Version string `json:"version"`
	// Images maps an image name to a reference pinned by digest
	// (repo[:tag]@sha256:<64 hex>).
	Images map[string]string `json:"images,omitempty"`
	// Manifests are rendered Kubernetes manifests, at most
	// MaxManifestsBytes.
	Manifests string `json:"manifests,omitempty"`
	// Migrations in strictly increasing version order.
	Migrations []Migration `json:"migrations,omitempty"`
	// Flags are the default feature flags.
	Flags map[string]string `json:"flags,omitempty"`
	// Tiers holds per-tier values: tier → key → value.
	Tiers map[string]map[string]string `json:"tiers,omitempty"`
	// Steps are the step templates, in declaration order.
	Steps []StepTemplate `json:"steps"`
}

// Migration is one schema migration of the release.
type Migration struct {
	Version int64  `json:"version"`
	Name    string `json:"name"`
	SQL     string `json:"sql"`
}

// StepTemplate is a plan step (internal/plan) whose strings may hold
// placeholders, plus what to do with it when rolling back.
type StepTemplate struct {
	ID       string `json:"id"`
	Provider string `json:"provider"`
	Action   string `json:"action"`
	Resource string `json:"resource"`
	// Params values are nil, bool, string, float64 (or another Go number
	// type when built in code), []any and map[string]any.
	Params       map[string]any `json:"params,omitempty"`
	DependsOn    []string       `json:"depends_on,omitempty"`
	Compensation *Compensation  `json:"compensation,omitempty"`
	// OnRollback is OnRollbackRun ("" means the same) or OnRollbackSkip.
	OnRollback string `json:"on_rollback,omitempty"`
}

// Compensation undoes a step, as in a plan.
type Compensation struct {
	Action string         `json:"action"`
	Params map[string]any `json:"params,omitempty"`
}

// Ref returns the release reference "name@version", a plan's release_ref.
func Ref(r *Release) string {
	if r == nil {
		return ""
	}
	return r.Name + "@" + r.Version
}

// Marshal returns the deterministic JSON encoding of r, the bytes that are
// signed: struct fields in declaration order, map keys sorted, no HTML
// escaping, no trailing newline. It does not validate r.
func Marshal(r *Release) ([]byte, error) {
	if r == nil {
		return nil, errors.New("release is nil")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("encode release: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Unmarshal decodes a release's JSON encoding strictly: exactly one JSON
// object, no duplicate keys, no unknown keys (each named with its path,
// `steps[2].dependson`), the right type for every field, params numbers
// that are finite and, if integers, within ±2^53. It reports every problem
// at once. It does not validate the release; call Validate.
func Unmarshal(payload []byte) (*Release, error) {
	doc, err := decodeJSON(payload)
	if err != nil {
		return nil, fmt.Errorf("decode release: %w", err)
	}
	r, err := fromTree(doc)
	if err != nil {
		return nil, fmt.Errorf("decode release: %w", err)
	}
	return r, nil
}
