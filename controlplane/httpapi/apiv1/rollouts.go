package apiv1

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"
)

// StartRolloutRequest is the body of POST /v1/rollouts.
//
//   - Release: a pushed release version.
//   - Selector: "all", or tenant labels "k=v,k2=v2" (the key "tier" matches
//     the tenant's tier); Tenants adds tenants by name. One of the two is
//     required.
//   - Waves: "canary:2,10%,50%,100%": counts of tenants or cumulative
//     percentages, optionally named; the last must be 100%.
//   - Bake: how long a finished wave must stay healthy before the next
//     starts (a Go duration, "10m"; empty: none).
//   - MaxFailed: failed plans a wave tolerates; MaxErrorRate: the app error
//     rate a wave may reach during the bake ("2%" or a fraction, 0.02).
//   - Concurrency: plans in flight at once (0: the default, 10).
//   - PlanTTL: how long each plan stays valid (Go duration; empty: 1h).
//   - IgnoreWindows: act outside tenants' maintenance windows.
type StartRolloutRequest struct {
	Release       string   `json:"release"`
	Selector      string   `json:"selector,omitempty"`
	Tenants       []string `json:"tenants,omitempty"`
	Waves         string   `json:"waves"`
	Bake          string   `json:"bake,omitempty"`
	MaxFailed     int      `json:"max_failed,omitempty"`
	MaxErrorRate  Rate     `json:"max_error_rate,omitempty"`
	Concurrency   int      `json:"concurrency,omitempty"`
	PlanTTL       string   `json:"plan_ttl,omitempty"`
	IgnoreWindows bool     `json:"ignore_windows,omitempty"`
}

// Rate is a fraction written either as a percentage string ("2%") or as a
// JSON number (0.02); it holds the text as given and the server parses it.
type Rate string

// UnmarshalJSON accepts a JSON string or number.
func (r *Rate) UnmarshalJSON(b []byte) error {
	return stringOrNumber(b, (*string)(r), "a rate: a percentage (\"2%\") or a fraction (0.02)")
}

// MarshalJSON writes a rate that reads as a number as a JSON number, and
// anything else ("2%") as a string.
func (r Rate) MarshalJSON() ([]byte, error) { return numberOrString(string(r)) }

// WaveRef names a rollout's wave by name ("canary") or index (0); in JSON a
// string or a number.
type WaveRef string

// UnmarshalJSON accepts a JSON string or number.
func (w *WaveRef) UnmarshalJSON(b []byte) error {
	return stringOrNumber(b, (*string)(w), "a wave name or index")
}

// MarshalJSON writes an index as a JSON number and a name as a string.
func (w WaveRef) MarshalJSON() ([]byte, error) { return numberOrString(string(w)) }

func stringOrNumber(b []byte, dst *string, want string) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, dst)
	}
	var n json.Number
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&n); err != nil {
		return errors.New("want " + want)
	}
	*dst = n.String()
	return nil
}

func numberOrString(s string) ([]byte, error) {
	if s != "" && json.Valid([]byte(s)) && (s[0] == '-' || s[0] >= '0' && s[0] <= '9') {
		return []byte(s), nil
	}
	return json.Marshal(s)
}

// Rollout conditions (Rollout.State). Progressing, Waiting and Halted are
// active; Complete and Failed are final.
const (
	RolloutProgressing = "Progressing"
	RolloutWaiting     = "Waiting"
	RolloutHalted      = "Halted"
	RolloutComplete    = "Complete"
	RolloutFailed      = "Failed"
)

// Rollout target states (RolloutTarget.State), in the order the CLI lists
// their counts.
var TargetStates = []string{"pending", "waiting", "dispatched", "succeeded", "failed", "skipped", "rolling_back", "rolled_back", "cancelled"}

// Rollout is a release going out to tenants in waves. State is the
// condition (Progressing, Waiting, Halted, Complete, Failed), Reason its
// machine-readable cause (WaveInProgress, MaintenanceWindow, Bake, Frozen,
// Paused, GateFailed, Aborted, AllWavesDone, …) and Message the underlying
// detail. Control is what an operator asked (pause, abort; empty: run).
// Wave is the index of the current wave and WaveName its name.
//
// GET /v1/rollouts/{id} and the mutations fill Waves and Targets; GET
// /v1/rollouts fills Waves only.
type Rollout struct {
	ID         string          `json:"id"`
	Release    string          `json:"release"`
	State      string          `json:"state"`
	Reason     string          `json:"reason,omitempty"`
	Message    string          `json:"message,omitempty"`
	Control    string          `json:"control,omitempty"`
	Wave       int             `json:"wave"`
	WaveName   string          `json:"wave_name,omitempty"`
	Spec       RolloutSpec     `json:"spec"`
	CreatedBy  string          `json:"created_by,omitempty"`
	CreatedAt  time.Time       `json:"created_at"`
	UpdatedAt  time.Time       `json:"updated_at"`
	WaveDoneAt *time.Time      `json:"wave_done_at,omitempty"`
	FinishedAt *time.Time      `json:"finished_at,omitempty"`
	LeaseOwner string          `json:"lease_owner,omitempty"`
	LeaseUntil *time.Time      `json:"lease_until,omitempty"`
	Waves      []RolloutWave   `json:"waves,omitempty"`
	Targets    []RolloutTarget `json:"targets,omitempty"`
}

// RolloutSpec is what the rollout was started with, defaults filled in.
// Selector is "all", "k=v,…" or empty (tenants named only); Waves is in
// the operator's form; Bake and PlanTTL are Go durations; MaxErrorRate a
// fraction.
type RolloutSpec struct {
	Selector      string   `json:"selector,omitempty"`
	Tenants       []string `json:"tenants,omitempty"`
	Waves         string   `json:"waves"`
	Bake          string   `json:"bake"`
	MaxFailed     int      `json:"max_failed"`
	MaxErrorRate  float64  `json:"max_error_rate"`
	Concurrency   int      `json:"concurrency"`
	PlanTTL       string   `json:"plan_ttl"`
	IgnoreWindows bool     `json:"ignore_windows,omitempty"`
}

// RolloutWave summarises one wave: how many tenants it has, how many need
// nothing more (Done: succeeded, failed, skipped, rolled back or
// cancelled) and how many are in each target state (states with none left
// out).
type RolloutWave struct {
	Index  int            `json:"index"`
	Name   string         `json:"name"`
	Size   int            `json:"size"`
	Done   int            `json:"done"`
	Counts map[string]int `json:"counts"`
}

// RolloutTarget is one tenant of a rollout: its wave, its state, the plan
// that upgrades it, the release it had before and, when its wave was
// rolled back, the plan that rolls it back; Message says why it is
// waiting, skipped or failed.
type RolloutTarget struct {
	Tenant          string    `json:"tenant"`
	Wave            int       `json:"wave"`
	WaveName        string    `json:"wave_name"`
	State           string    `json:"state"`
	PlanID          string    `json:"plan_id,omitempty"`
	PreviousRelease string    `json:"previous_release,omitempty"`
	RollbackPlanID  string    `json:"rollback_plan_id,omitempty"`
	Message         string    `json:"message,omitempty"`
	UpdatedAt       time.Time `json:"updated_at"`
}

// RolloutList is the body of GET /v1/rollouts, newest first.
type RolloutList struct {
	Rollouts []Rollout `json:"rollouts"`
}

// RolloutFlagsRequest is the body of POST /v1/rollouts/{id}/flags: the flag
// change of SetFlagsRequest, applied to every tenant of one wave.
type RolloutFlagsRequest struct {
	Wave  WaveRef           `json:"wave"`
	Set   map[string]string `json:"set,omitempty"`
	Unset []string          `json:"unset,omitempty"`
}

// RolloutFlags is the result of POST /v1/rollouts/{id}/flags: the change
// made to each tenant of the wave.
type RolloutFlags struct {
	Rollout  string       `json:"rollout"`
	Wave     int          `json:"wave"`
	WaveName string       `json:"wave_name"`
	Tenants  []FlagChange `json:"tenants"`
}
