// Package release is the release document: what may run. A vendor authors a
// release as YAML (name, version, images pinned by digest, manifests,
// migrations, default feature flags, per-tier values and step templates),
// signs it with the release key that its CI holds (a DSSE envelope checked
// against the `releases` role of the trust root), and pushes it to the
// control plane. The control plane renders it into the steps of each
// tenant's plan (Render) and carries the signed release inside every such
// plan; the agent verifies the release with Verify and renders it again
// (CheckPlan), so a control plane whose plan key is stolen can still choose
// only who gets a signed release and when, never what runs.
//
// Rendering is deterministic and substitutes only data: the tenant, its
// tier, the release's own name, version, images, manifests, migrations and
// tier values, and, as a whole parameter value only, the tenant's feature
// flags over the release's defaults. The control plane chooses the tenant,
// tier and flags (planv1.ReleaseContext); it never chooses code.
//
// Imported by the control plane, the agent and the `attache` CLI (internal/*
// is shared by them); never by providers.
package release
