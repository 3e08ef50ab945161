// Package apiv1 defines the JSON bodies of the control plane's ops API
// (/v1/...): what httpapi serves and what apiclient decodes. It holds types
// only, so the server and its clients agree on the wire format without
// importing each other.
//
// Imported by controlplane/httpapi, controlplane/apiclient and the CLI.
package apiv1

import (
	"encoding/json"
	"time"

	"attache.dev/attache/internal/auditlog"
)

// TokenPrefix starts every ops API token: attache-api-v1.<id>.<secret>.
const TokenPrefix = "attache-api-v1"

// Error is the body of every non-2xx response.
type Error struct {
	Error     string `json:"error"`
	RequestID string `json:"request_id,omitempty"`
}

// CreateTenantRequest is the body of POST /v1/tenants.
type CreateTenantRequest struct {
	Name        string            `json:"name"`
	DisplayName string            `json:"display_name,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// Tenant is a customer of the vendor. Tier is pool, bridge, silo or byoc;
// Cell the ID of the agent that serves it (empty: its only active agent);
// Windows its maintenance windows in the operator's form (none: any time);
// Pin the release version it is held at; Release the version last applied
// to it by a rollout; Flags its feature flags over the release's defaults.
type Tenant struct {
	Name        string            `json:"name"`
	DisplayName string            `json:"display_name,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	Tier        string            `json:"tier,omitempty"`
	Cell        string            `json:"cell,omitempty"`
	Windows     []string          `json:"windows,omitempty"`
	Pin         string            `json:"pin,omitempty"`
	Release     string            `json:"release,omitempty"`
	Flags       map[string]string `json:"flags,omitempty"`
}

// TenantList is the body of GET /v1/tenants.
type TenantList struct {
	Tenants []Tenant `json:"tenants"`
}

// CreateJoinTokenRequest is the body of POST /v1/tokens. TTL is a Go
// duration ("1h", "30m"); empty means the server's default (1h).
type CreateJoinTokenRequest struct {
	Tenant string `json:"tenant"`
	TTL    string `json:"ttl,omitempty"`
}

// JoinToken is a freshly minted one-time join token. Token is the only copy
// of the secret; the server keeps its hash.
type JoinToken struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"`
	ExpiresAt time.Time `json:"expires_at"`
	Token     string    `json:"token"`
}

// Agent statuses, derived from the stored agent at request time.
const (
	AgentRevoked        = "revoked"
	AgentConnected      = "connected"
	AgentDisconnected   = "disconnected"
	AgentNeverConnected = "never-connected"
)

// Agent is an enrolled agent as the ops API shows it.
type Agent struct {
	Tenant            string          `json:"tenant"`
	ID                string          `json:"id"`
	Status            string          `json:"status"`
	SPIFFEID          string          `json:"spiffe_id"`
	Hostname          string          `json:"hostname,omitempty"`
	Version           string          `json:"version,omitempty"`
	CapabilityVersion uint32          `json:"capability_version,omitempty"`
	EnrolledAt        time.Time       `json:"enrolled_at"`
	CertSerial        string          `json:"cert_serial,omitempty"`
	CertExpiresAt     time.Time       `json:"cert_expires_at"`
	LastSeenAt        *time.Time      `json:"last_seen_at,omitempty"`
	Connected         bool            `json:"connected"`
	SessionID         string          `json:"session_id,omitempty"`
	RevokedAt         *time.Time      `json:"revoked_at,omitempty"`
	RevokedBy         string          `json:"revoked_by,omitempty"`
	Inventory         json.RawMessage `json:"inventory,omitempty"`
	Health            json.RawMessage `json:"health,omitempty"`
}

// AgentList is the body of GET /v1/agents.
type AgentList struct {
	Agents []Agent `json:"agents"`
}

// AuditHead is the sequence and hash of the audit trail's last record.
type AuditHead struct {
	Seq  uint64 `json:"seq"`
	Hash []byte `json:"hash"`
}

// AuditPage is the body of GET /v1/audit. Records are exactly
// auditlog.Record, so a client can recompute the chain with auditlog.Verify.
// Head is read before the records, so it never lies beyond what a client
// can page to.
type AuditPage struct {
	Records []auditlog.Record `json:"records"`
	Head    AuditHead         `json:"head"`
}

// CreateAPITokenRequest is the body of POST /v1/apitokens.
type CreateAPITokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// APIToken describes an ops API token without its secret.
type APIToken struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Role      string     `json:"role"`
	CreatedBy string     `json:"created_by,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// APITokenList is the body of GET /v1/apitokens.
type APITokenList struct {
	Tokens []APIToken `json:"tokens"`
}

// NewAPIToken is a freshly created API token; Token is the only copy of
// the secret.
type NewAPIToken struct {
	APIToken
	Token string `json:"token"`
}

// SubmitPlanRequest is the body of POST /v1/plans. YAML is the plan's
// authoring document; Agent names the tenant's agent to run it and may be
// empty when the tenant has exactly one active agent. The body may be at
// most 2 MiB and the signed plan at most 1 MiB.
type SubmitPlanRequest struct {
	Tenant string `json:"tenant"`
	Agent  string `json:"agent,omitempty"`
	DryRun bool   `json:"dry_run,omitempty"`
	YAML   string `json:"yaml"`
}

// Plan states. Pending plans wait for the agent to acknowledge them;
// expired is reported for a pending plan past its expires_at (the agent
// will never get it); succeeded, failed, refused and expired are terminal.
const (
	PlanPending   = "pending"
	PlanAccepted  = "accepted"
	PlanRunning   = "running"
	PlanSucceeded = "succeeded"
	PlanFailed    = "failed"
	PlanRefused   = "refused"
	PlanExpired   = "expired"
)

// StepPending is the state of a step the agent has not reported on yet.
// Agents report running, succeeded, failed, skipped and, in a dry run,
// planned.
const StepPending = "pending"

// Plan is a signed deployment plan and what its agent last reported.
// GET /v1/plans leaves Steps out (StepCount says how many there are);
// GET /v1/plans/{id} fills it.
type Plan struct {
	ID         string     `json:"id"`
	Tenant     string     `json:"tenant"`
	Agent      string     `json:"agent"`
	Sequence   uint64     `json:"sequence"`
	Release    string     `json:"release,omitempty"`
	DryRun     bool       `json:"dry_run"`
	State      string     `json:"state"`
	Message    string     `json:"message,omitempty"`
	CreatedBy  string     `json:"created_by,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	AckedAt    *time.Time `json:"acked_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	StepCount  int        `json:"step_count"`
	Steps      []PlanStep `json:"steps,omitempty"`
}

// PlanStep is one step of a plan, as signed, with its last reported
// status. Duration is a Go duration, set once the step has started and
// finished.
type PlanStep struct {
	ID                  string       `json:"id"`
	Provider            string       `json:"provider"`
	Action              string       `json:"action"`
	Resource            string       `json:"resource"`
	DependsOn           []string     `json:"depends_on,omitempty"`
	State               string       `json:"state"`
	Message             string       `json:"message,omitempty"`
	Attempts            uint32       `json:"attempts,omitempty"`
	StartedAt           *time.Time   `json:"started_at,omitempty"`
	FinishedAt          *time.Time   `json:"finished_at,omitempty"`
	Duration            string       `json:"duration,omitempty"`
	Changes             []StepChange `json:"changes,omitempty"`
	CompensationState   string       `json:"compensation_state,omitempty"`
	CompensationMessage string       `json:"compensation_message,omitempty"`
	// Outputs are the values the provider returned with the step's result;
	// "verification" states what a check proved (e.g. that nothing of an
	// erased tenant remains).
	Outputs map[string]string `json:"outputs,omitempty"`
}

// StepChange is one change a step made or, in a dry run, would make.
// Operation is create, update, delete or noop.
type StepChange struct {
	Resource  string `json:"resource"`
	Operation string `json:"operation"`
	Summary   string `json:"summary,omitempty"`
}

// PlanList is the body of GET /v1/plans, newest first.
type PlanList struct {
	Plans []Plan `json:"plans"`
}

// UsageHour is one tenant's meter folded over one UTC hour: the sum, count
// and largest of the hour's records, and the value and time of the latest.
type UsageHour struct {
	Tenant string    `json:"tenant"`
	Meter  string    `json:"meter"`
	Hour   time.Time `json:"hour"` // start of the UTC hour
	Sum    float64   `json:"sum"`
	Count  int64     `json:"count"`
	Max    float64   `json:"max"`
	Last   float64   `json:"last"`
	LastAt time.Time `json:"last_at"`
}

// UsageList is the body of GET /v1/usage: the tenant's hours that overlap
// [From, To), ordered by meter and hour. From and To are the window the
// server used (defaults filled in).
type UsageList struct {
	Tenant string      `json:"tenant"`
	Meter  string      `json:"meter,omitempty"`
	From   time.Time   `json:"from"`
	To     time.Time   `json:"to"`
	Hours  []UsageHour `json:"hours"`
}

// Agent health states in GET /v1/health, worst first as listed there:
// unhealthy (a component reports unhealthy), silent (no session seen within
// the connected window, or never connected), degraded (a component
// degraded or of unknown status), healthy, and revoked (listed last).
const (
	HealthUnhealthy = "unhealthy"
	HealthSilent    = "silent"
	HealthDegraded  = "degraded"
	HealthHealthy   = "healthy"
	HealthRevoked   = "revoked"
)

// HealthStates lists the agent health states, worst first. GET /v1/health
// sorts agents in this order, except that agents reporting drift come right
// after the unhealthy and silent ones.
var HealthStates = []string{HealthUnhealthy, HealthSilent, HealthDegraded, HealthHealthy, HealthRevoked}

// HealthProblem is one component of an agent that is not healthy or has
// drifted, as the agent last reported it. Status is unhealthy, degraded,
// unspecified or unknown — or healthy for a component listed only for its
// drift. Drift means what the last applied plan put in place differs from
// what is live; DriftDetail says what. Message and DriftDetail are the
// agent's text (untrusted: clean them before printing).
type HealthProblem struct {
	Name        string `json:"name"`
	Status      string `json:"status"`
	Message     string `json:"message,omitempty"`
	Drift       bool   `json:"drift"`
	DriftDetail string `json:"drift_detail,omitempty"`
}

// AgentHealth is one agent's health in GET /v1/health. Connected means a
// session is open and was seen within the connected window. Drift counts
// the components that report drift (zero for a revoked agent); drift does
// not change State.
type AgentHealth struct {
	Tenant     string          `json:"tenant"`
	ID         string          `json:"id"`
	State      string          `json:"state"`
	LastSeenAt *time.Time      `json:"last_seen_at,omitempty"`
	Version    string          `json:"version,omitempty"`
	Connected  bool            `json:"connected"`
	Problems   []HealthProblem `json:"problems,omitempty"`
	Components int             `json:"components"`
	Drift      int             `json:"drift"`
}

// HealthList is the body of GET /v1/health: unhealthy agents first, then
// silent ones, then the others that report drift, then the rest (degraded,
// healthy, revoked); within each, worst state first (see HealthStates),
// then by tenant and ID. Counts has every state, zeros included; Drifted is
// the number of agents that report drift.
type HealthList struct {
	Agents  []AgentHealth  `json:"agents"`
	Counts  map[string]int `json:"counts"`
	Drifted int            `json:"drifted"`
}

// HealthEvent is a recorded change of one of an agent's components: of its
// status or of its drift (see HealthProblem), with the component's state
// at the change.
type HealthEvent struct {
	At          time.Time `json:"at"`
	Component   string    `json:"component"`
	Status      string    `json:"status"`
	Message     string    `json:"message,omitempty"`
	Drift       bool      `json:"drift"`
	DriftDetail string    `json:"drift_detail,omitempty"`
}

// HealthEventList is the body of GET /v1/agents/{tenant}/{id}/health:
// the agent's component changes of status or drift, newest first.
type HealthEventList struct {
	Tenant string        `json:"tenant"`
	Agent  string        `json:"agent"`
	Events []HealthEvent `json:"events"`
}
