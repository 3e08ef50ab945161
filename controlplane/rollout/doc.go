// Package rollout is progressive delivery of a signed release across the
// fleet. Start selects tenants, assigns them to waves and stores the
// rollout; the Driver (one per control-plane replica, Run(ctx)) takes each
// active rollout's lease in the store, so exactly one replica drives it,
// and on every pass:
//
//   - follows the results of the plans it issued;
//   - issues plans for the current wave's tenants, rendered from the
//     release (controlplane/plans.PrepareRelease), at most Concurrency at
//     once, skipping pinned tenants and holding those outside their
//     maintenance window; each plan is created together with its target's
//     state in one transaction (store.DispatchRolloutPlan), so a replica
//     killed at any point never issues a target's plan twice;
//   - once the wave is done, bakes it: the gate holds while the failed
//     plans stay within MaxFailed, every upgraded tenant's agent reports
//     its components healthy and the app error rate since the wave finished
//     stays at or under MaxErrorRate; after Bake the next wave starts;
//   - a failed gate halts the rollout, cancels the tenants not yet reached
//     and rolls the wave's tenants back to the release they had (plans
//     rendered with rollback set), then marks it Failed with the reason;
//   - a freeze, a pause or an abort stops dispatching at once.
//
// Conditions (store.Rollout State/Reason/Message) always carry the
// underlying cause: which tenant, which component, which plan and why.
//
// Imported by the control plane's server and ops API.
package rollout
