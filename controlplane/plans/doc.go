// Package plans is plan submission on the control plane: it parses a plan's
// YAML (internal/plan), picks the agent it is for, signs it with the
// control plane's current `plans` key, stores it with its per-agent sequence
// number and an audit record in one transaction (store.CreatePlan), and
// nudges the agent's session. It also hands the agent session the envelope
// to offer, re-signing a still-pending plan whose signing key was rotated
// away since it was submitted.
//
// Errors a client caused match (errors.Is) ErrInvalid, ErrNoAgent,
// ErrAmbiguousAgent, plan.ErrTooLarge, store.ErrNotFound or
// store.ErrRevoked, and their text says what to change; the ops API
// (controlplane/httpapi) maps them to HTTP statuses.
//
// Only controlplane packages import plans.
package plans
