package journal

import (
	"time"
)

// Plan states as the agent journals and reports them. A plan is accepted
// (verified and journaled, not started), running, then succeeded or failed;
// refused plans were never accepted.
const (
	PlanAccepted  = "accepted"
	PlanRunning   = "running"
	PlanSucceeded = "succeeded"
	PlanFailed    = "failed"
	PlanRefused   = "refused"
)

// Step states. A step is pending until the executor journals it running,
// which it does before calling the provider; a step found running after a
// restart was interrupted and is started again (its provider action is
// idempotent). A succeeded step is never started again.
const (
	StepPending   = "pending"
	StepRunning   = "running"
	StepSucceeded = "succeeded"
	StepFailed    = "failed"
	// StepSkipped: not run because an earlier step failed.
	StepSkipped = "skipped"
	// StepPlanned: dry run; Changes holds the provider's diff.
	StepPlanned = "planned"
)

// Compensation states (StepRecord.CompensationState); empty when none ran.
const (
	CompensationRunning   = "running"
	CompensationSucceeded = "succeeded"
	CompensationFailed    = "failed"
)

// PlanRecord is everything the agent knows about one plan. It is stored as
// JSON under the plan's ID; every change goes through Journal.Update (or
// Accept/Refuse), which bumps Version in the same durable transaction.
type PlanRecord struct {
	ID       string `json:"id"`
	Sequence uint64 `json:"sequence"`
	Tenant   string `json:"tenant"`
	DryRun   bool   `json:"dry_run,omitempty"`
	// Envelope is the signed DSSE envelope exactly as received and
	// verified; the executor decodes the plan from it again after a
	// restart (see Journal.Plan) rather than trusting a second copy.
	Envelope []byte `json:"envelope,omitempty"`
	State    string `json:"state"`
	// Reason is the machine-readable refusal reason (refused plans only).
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// Steps in execution order (plan.Order), filled in on Accept.
	Steps      []StepRecord `json:"steps,omitempty"`
	ReceivedAt time.Time    `json:"received_at"`
	StartedAt  time.Time    `json:"started_at,omitzero"`
	FinishedAt time.Time    `json:"finished_at,omitzero"`
	// Version increases by one with every journaled change.
	Version uint64 `json:"version"`
	// Reported is the highest Version the control plane acknowledged;
	// Reported < Version means the latest state still has to be reported.
	Reported uint64 `json:"reported"`
}

// Terminal reports whether the plan will not change any more (apart from
// Reported).
func (r *PlanRecord) Terminal() bool {
	return r.State == PlanSucceeded || r.State == PlanFailed || r.State == PlanRefused
}

// Step returns the step with the given ID, or nil.
func (r *PlanRecord) Step(id string) *StepRecord {
	for i := range r.Steps {
		if r.Steps[i].ID == id {
			return &r.Steps[i]
		}
	}
	return nil
}

// StepRecord is the journaled state of one step.
type StepRecord struct {
	ID       string `json:"id"`
	Provider string `json:"provider"`
	Action   string `json:"action"`
	State    string `json:"state"`
	Message  string `json:"message,omitempty"`
	// Attempts counts the times the executor started the step.
	Attempts   uint32    `json:"attempts,omitempty"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	Changes    []Change  `json:"changes,omitempty"`
	// Outputs are the values the provider returned with the step's result,
	// as strings ("verification" by convention proves the step's effect).
	Outputs map[string]string `json:"outputs,omitempty"`
	// HasCompensation: the plan declares a compensation for this step.
	HasCompensation     bool   `json:"has_compensation,omitempty"`
	CompensationState   string `json:"compensation_state,omitempty"`
	CompensationMessage string `json:"compensation_message,omitempty"`
}

// Change is one change a step made or, in a dry run, would make.
type Change struct {
	Resource  string `json:"resource"`
	Operation string `json:"operation"` // create, update, delete, noop
	Summary   string `json:"summary,omitempty"`
}
