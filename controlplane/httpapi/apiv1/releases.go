package apiv1

import (
	"encoding/json"
	"time"
)

// PushReleaseRequest is the body of POST /v1/releases. Envelope is the
// signed release exactly as `attache release sign` writes it: a DSSE
// envelope (a JSON object), signed by the vendor's release key. The server
// stores it compacted (json.Compact); Digest is the hex SHA-256 of those
// bytes.
type PushReleaseRequest struct {
	Envelope json.RawMessage `json:"envelope"`
}

// Release is a pushed release as the ops API shows it: what the signed
// document says, without the manifests and migration SQL.
type Release struct {
	Name       string             `json:"name"`
	Version    string             `json:"version"`
	Digest     string             `json:"digest"`
	PushedBy   string             `json:"pushed_by,omitempty"`
	CreatedAt  time.Time          `json:"created_at"`
	Images     map[string]string  `json:"images,omitempty"`
	Migrations []ReleaseMigration `json:"migrations,omitempty"`
	// ManifestsBytes is the size of the release's Kubernetes manifests.
	ManifestsBytes int                          `json:"manifests_bytes,omitempty"`
	Flags          map[string]string            `json:"flags,omitempty"`
	Tiers          map[string]map[string]string `json:"tiers,omitempty"`
	Steps          []ReleaseStep                `json:"steps,omitempty"`
	// SigningKeys are the key IDs of the envelope's signatures.
	SigningKeys []string `json:"signing_keys,omitempty"`
	// Verified (GET /v1/releases/{version} only) says whether the release
	// verifies against the control plane's current trust root; when it
	// does not (the release key was replaced), VerifyError says why and
	// no new plan can be rendered from it.
	Verified    *bool  `json:"verified,omitempty"`
	VerifyError string `json:"verify_error,omitempty"`
}

// ReleaseMigration is one schema migration of a release (its SQL left out).
type ReleaseMigration struct {
	Version int64  `json:"version"`
	Name    string `json:"name"`
}

// ReleaseStep is one step template of a release. OnRollback is run or
// skip.
type ReleaseStep struct {
	ID         string   `json:"id"`
	Provider   string   `json:"provider"`
	Action     string   `json:"action"`
	Resource   string   `json:"resource,omitempty"`
	DependsOn  []string `json:"depends_on,omitempty"`
	OnRollback string   `json:"on_rollback"`
}

// ReleaseList is the body of GET /v1/releases, newest first.
type ReleaseList struct {
	Releases []Release `json:"releases"`
}

// UpdateTenantRequest is the body of PATCH /v1/tenants/{name}. Every field
// is optional; a missing one is left as it is.
//
//   - Tier: pool, bridge, silo or byoc.
//   - Cell: the ID of the tenant's agent that serves it; "" means the
//     tenant's only active agent.
//   - Windows: maintenance windows in the operator's form
//     ("sat,sun 02:00+4h Europe/Paris"); they replace the tenant's windows,
//     and an empty list removes them (rollouts may act at any time).
//   - Pin: a pushed release version to hold the tenant at; "" unpins.
//   - Labels: merged into the tenant's labels (JSON merge patch): a key
//     with a string value is set, a key with null is removed.
type UpdateTenantRequest struct {
	Tier    *string            `json:"tier,omitempty"`
	Cell    *string            `json:"cell,omitempty"`
	Windows *[]string          `json:"windows,omitempty"`
	Pin     *string            `json:"pin,omitempty"`
	Labels  map[string]*string `json:"labels,omitempty"`
}

// TenantFlags is the body of GET /v1/tenants/{name}/flags. Overrides are
// the tenant's own flags; Defaults are those its current release declares;
// Effective is what its plans carry (defaults overlaid by overrides). With
// no release yet, Defaults and Effective are empty and the overrides apply
// with the tenant's first release.
type TenantFlags struct {
	Tenant    string            `json:"tenant"`
	Release   string            `json:"release,omitempty"`
	Overrides map[string]string `json:"overrides"`
	Defaults  map[string]string `json:"defaults,omitempty"`
	Effective map[string]string `json:"effective,omitempty"`
}

// SetFlagsRequest is the body of PUT /v1/tenants/{name}/flags: flags to set
// (key → value) and flags to unset (back to the release's default). Keys
// are [a-z0-9][a-z0-9_.-]{0,63}, values at most 1 KiB, and a tenant has at
// most 64 flags. When the tenant has a release, each key set must be one
// the release declares.
type SetFlagsRequest struct {
	Set   map[string]string `json:"set,omitempty"`
	Unset []string          `json:"unset,omitempty"`
}

// FlagChange is the result of changing one tenant's flags: its flags now,
// and how they reach its agent. PlanID is the plan that re-applies the
// tenant's current release with the new flags (empty when none was
// issued); Delivery says in words what happens next.
type FlagChange struct {
	TenantFlags
	PlanID   string `json:"plan_id,omitempty"`
	Delivery string `json:"delivery"`
}

// Freeze is the body of GET, POST and DELETE /v1/freeze: whether the fleet
// is frozen (no rollout advances, no plan is offered to any agent), by whom,
// why and since when.
type Freeze struct {
	Frozen bool       `json:"frozen"`
	By     string     `json:"by,omitempty"`
	Reason string     `json:"reason,omitempty"`
	At     *time.Time `json:"at,omitempty"`
}

// FreezeRequest is the body of POST /v1/freeze; Reason is required (at most
// 500 characters) and goes into the audit trail.
type FreezeRequest struct {
	Reason string `json:"reason"`
}
