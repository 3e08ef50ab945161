// Package executor runs the agent's accepted plans: it applies a journaled
// plan's steps in dependency order (plan.Order) through the providers,
// journaling every state change in agent/journal before the next provider
// call, so that an agent killed at any point resumes where it stopped and
// never starts a succeeded step again.
//
// For each step the executor journals the step running (Attempts+1,
// StartedAt) before it calls the provider's Apply, journals progress messages
// at most once per Config.ProgressInterval (the latest one always gets
// written), and journals the outcome: succeeded with the provider's changes,
// or failed with its message. A failed step halts the plan: every later step
// is skipped, then the compensations of the succeeded steps that declare one
// run in reverse order, stopping at the first that fails, and the plan fails
// with a message naming the failed step and the compensation outcome. While
// compensating the plan stays running (a failed step in a running plan means
// "compensating"), so a restart carries on compensating. A dry run asks each
// provider for its diff (Plan) and changes nothing.
//
// When the context ends (the agent is shutting down) the executor leaves the
// step it was running as running, not failed, and returns the context's
// error; the next Execute starts that step again with the next attempt
// number (provider actions are idempotent).
//
// Imported by the agent's plan runner (agent/planrun) and its command.
package executor
