// Package store keeps all control-plane state behind one interface with two
// engines: SQLite (modernc.org/sqlite, the embedded default) and PostgreSQL
// (pgx). Schema migrations are embedded and run by Open. Plain SQL, no ORM.
//
// The control plane keeps no state outside the store and its data directory,
// so several control-plane replicas can share one PostgreSQL database.
//
// Only controlplane packages import store.
package store

import (
	"context"
	"errors"
	"time"

	"attache.dev/attache/internal/auditlog"
)

// Errors callers branch on. Implementations wrap them with %w.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	ErrTokenUsed     = errors.New("join token already used")
	ErrTokenExpired  = errors.New("join token expired")
	ErrRevoked       = errors.New("agent revoked")
	// ErrPlanAcknowledged: the plan's agent already accepted or refused it.
	ErrPlanAcknowledged = errors.New("plan already acknowledged by its agent")
	// ErrInvalid: the input breaks a rule the store enforces (a usage
	// record's meter, value or time, a health report's component); the
	// text names the offending record or component and field. Nothing was
	// stored.
	ErrInvalid = errors.New("invalid input")
	// ErrLeaseLost: another control-plane replica drives the rollout now.
	ErrLeaseLost = errors.New("rollout lease held by another replica")
	// ErrConflict: the rollout target is not in the state the change
	// expects (another replica or an earlier attempt already made it).
	ErrConflict = errors.New("conflicting change")
	// ErrFinished: the rollout has finished; it can no longer be changed.
	ErrFinished = errors.New("rollout finished")
)

// Role is an API token's role.
type Role string

// Roles, from most to least privileged.
const (
	RoleAdmin    Role = "admin"    // everything, including API tokens
	RoleOperator Role = "operator" // tenants, join tokens, agents
	RoleAuditor  Role = "auditor"  // read-only, including the audit trail
)

// Tenant is a customer of the vendor.
type Tenant struct {
	Name        string // DNS-label-like, unique
	DisplayName string
	Labels      map[string]string
	CreatedAt   time.Time

	// Tier is the isolation model: pool, bridge, silo or byoc (default pool).
	Tier string
	// Cell is the ID of the tenant's agent that serves it; empty means the
	// tenant's only active agent.
	Cell string
	// Windows are the maintenance windows rollouts may act in; none means
	// any time.
	Windows []Window
	// Pin is a release version the tenant is held at; rollouts of any other
	// version skip it.
	Pin string
	// Release is the version last applied successfully (by a rollout).
	Release string
	// Flags are the tenant's feature flags, over its release's defaults.
	Flags map[string]string
}

// Window is a weekly maintenance window: Start (HH:MM) on each of Days
// (mon … sun; empty means every day), lasting Duration (a Go duration), in
// TimeZone (an IANA name; empty means UTC). Parsing and containment are in
// controlplane/maintenance.
type Window struct {
	Days     []string `json:"days,omitempty"`
	Start    string   `json:"start"`
	Duration string   `json:"duration"`
	TimeZone string   `json:"time_zone,omitempty"`
}

// JoinToken is the stored half of a one-time join token: the secret itself
// is never stored, only its SHA-256.
type JoinToken struct {
	ID         string // public identifier, part of the token
	Tenant     string
	SecretHash []byte // sha256 of the secret
	CreatedBy  string
	CreatedAt  time.Time
	ExpiresAt  time.Time
	UsedAt     *time.Time
	UsedBy     string // agent ID that consumed it
}

// Agent is an enrolled agent.
type Agent struct {
	Tenant            string
	ID                string
	SPIFFEID          string
	Hostname          string
	Version           string
	CapabilityVersion uint32
	Inventory         []byte // JSON of agentv1.Inventory (protojson)
	Health            []byte // JSON array of component health (protojson)
	EnrolledAt        time.Time
	CertSerial        string
	CertExpiresAt     time.Time
	LastSeenAt        *time.Time
	Connected         bool // a session is open (see LastSeenAt for freshness)
	SessionID         string
	RevokedAt         *time.Time
	RevokedBy         string
}

// AgentKey names one agent.
type AgentKey struct {
	Tenant string
	ID     string
}

// Heartbeat is a batched last-seen update.
type Heartbeat struct {
	AgentKey
	At     time.Time
	Health []byte // JSON, may be nil to keep the previous value
}

// SessionUpdate records a session opening or closing.
type SessionUpdate struct {
	AgentKey
	SessionID         string
	Connected         bool
	At                time.Time
	Version           string // set on open
	CapabilityVersion uint32 // set on open
	Inventory         []byte // set on open
}

// APIToken is an ops API credential. Only the SHA-256 of the secret is kept.
type APIToken struct {
	ID         string
	Name       string
	Role       Role
	SecretHash []byte
	CreatedBy  string
	CreatedAt  time.Time
	RevokedAt  *time.Time
}

// AgentFilter selects agents in ListAgents. Zero values select all.
type AgentFilter struct {
	Tenant string
}

// AuditFilter pages through the audit trail in sequence order.
type AuditFilter struct {
	AfterSeq uint64 // records with Seq > AfterSeq
	Limit    int    // 0 means a default page (1000)
	Tenant   string // optional
}

// Store is the control plane's state. All methods are safe for concurrent use.
type Store interface {
	// Engine reports "sqlite" or "postgres".
	Engine() string
	Close() error

	CreateTenant(ctx context.Context, t Tenant, audit auditlog.Entry) error
	GetTenant(ctx context.Context, name string) (Tenant, error)
	ListTenants(ctx context.Context) ([]Tenant, error)
	// UpdateTenant reads the tenant, lets fn change it (its Name and
	// CreatedAt are kept) and writes it back with the audit entry (nil:
	// none), in one transaction. An error from fn stores nothing.
	UpdateTenant(ctx context.Context, name string, fn func(*Tenant) error, audit *auditlog.Entry) (Tenant, error)

	// CreateRelease stores a signed release; releases are immutable, so an
	// existing version is ErrAlreadyExists (whatever its content).
	CreateRelease(ctx context.Context, r Release, audit auditlog.Entry) error
	GetRelease(ctx context.Context, version string) (Release, error)
	// ListReleases lists releases newest first.
	ListReleases(ctx context.Context) ([]Release, error)

	// GetFreeze returns the fleet-wide freeze, nil when not frozen.
	GetFreeze(ctx context.Context) (*Freeze, error)
	// SetFreeze freezes (f non-nil) or unfreezes (nil) the fleet, with the
	// audit entry.
	SetFreeze(ctx context.Context, f *Freeze, audit auditlog.Entry) error

	// CreateRollout stores a rollout and its targets with the audit entry.
	CreateRollout(ctx context.Context, r Rollout, targets []RolloutTarget, audit auditlog.Entry) error
	GetRollout(ctx context.Context, id string) (Rollout, error)
	// ListRollouts lists rollouts newest first; active: only unfinished ones.
	ListRollouts(ctx context.Context, active bool) ([]Rollout, error)
	// RolloutTargets lists a rollout's targets by wave and position.
	RolloutTargets(ctx context.Context, id string) ([]RolloutTarget, error)
	// SetRolloutControl records an operator's pause, resume ("") or abort
	// with the audit entry; the driving replica acts on it. ErrFinished for
	// a finished rollout.
	SetRolloutControl(ctx context.Context, id string, c RolloutControl, audit auditlog.Entry) (Rollout, error)
	// AcquireRolloutLease makes owner the rollout's driver until now+ttl if
	// it holds the lease already or the lease is free or expired; it
	// reports whether owner holds it. Finished rollouts are never leased.
	AcquireRolloutLease(ctx context.Context, id, owner string, now time.Time, ttl time.Duration) (bool, error)
	// ReleaseRolloutLease gives the lease up if owner holds it.
	ReleaseRolloutLease(ctx context.Context, id, owner string) error
	// UpdateRollout lets fn change the rollout and any of its targets
	// (fn returns the targets it changed) and stores the result with the
	// audit entries, in one transaction, only while owner holds the lease
	// (ErrLeaseLost otherwise). A target's state change to succeeded with
	// SetRelease sets the tenant's Release in the same transaction.
	UpdateRollout(ctx context.Context, id, owner string, fn func(r *Rollout, ts []RolloutTarget) ([]RolloutTarget, []auditlog.Entry, error)) (Rollout, error)
	// DispatchRolloutPlan creates the plan of one target (forward, or its
	// rollback when rollback is true) exactly once: in one transaction it
	// checks owner's lease and that the target is still waiting for that
	// plan (state pending or waiting for forward, rolling_back with no
	// rollback plan for rollback; ErrConflict otherwise), creates the plan
	// as CreatePlan does, and records its ID on the target (state
	// dispatched, or rollback plan ID). A control plane killed at any point
	// either has both or neither.
	DispatchRolloutPlan(ctx context.Context, id, tenant, owner string, rollback bool, k AgentKey, build func(seq uint64) (Plan, error), audit auditlog.Entry) (Plan, error)

	CreateJoinToken(ctx context.Context, t JoinToken, audit auditlog.Entry) error
	// GetJoinToken returns a join token by ID without consuming it (the
	// enrollment service needs its tenant to issue the SVID that Enroll then
	// stores). ErrNotFound if unknown.
	GetJoinToken(ctx context.Context, id string) (JoinToken, error)
	// Enroll atomically consumes the join token (ErrNotFound, ErrTokenUsed,
	// ErrTokenExpired, or a tenant mismatch), creates the agent and appends
	// the audit entry; either all of it happens or none.
	Enroll(ctx context.Context, tokenID string, secretHash []byte, now time.Time, a Agent, audit auditlog.Entry) (Agent, error)

	GetAgent(ctx context.Context, k AgentKey) (Agent, error)
	ListAgents(ctx context.Context, f AgentFilter) ([]Agent, error)
	// RevokeAgent marks the agent revoked (idempotent: revoking twice keeps
	// the first time) and appends the audit entry in the same transaction.
	RevokeAgent(ctx context.Context, k AgentKey, by string, at time.Time, audit auditlog.Entry) (Agent, error)
	// RevokedSince lists agents revoked at or after t, for the session
	// watcher that cuts live sessions.
	RevokedSince(ctx context.Context, t time.Time) ([]AgentKey, error)
	// UpdateAgentCert records a renewed SVID.
	UpdateAgentCert(ctx context.Context, k AgentKey, serial string, expiresAt time.Time) error
	// RecordHeartbeats applies a batch of last-seen updates in one transaction.
	RecordHeartbeats(ctx context.Context, hs []Heartbeat) error
	// RecordSessions applies session openings and closings, in order, in one
	// transaction. A close applies only if its SessionID is still the
	// agent's (a newer session may have opened); updates for unknown or
	// revoked agents change nothing.
	RecordSessions(ctx context.Context, us []SessionUpdate) error

	CreateAPIToken(ctx context.Context, t APIToken, audit *auditlog.Entry) error
	// APITokenByHash finds a token that is not revoked.
	APITokenByHash(ctx context.Context, secretHash []byte) (APIToken, error)
	ListAPITokens(ctx context.Context) ([]APIToken, error)

	// CreatePlan issues agent k's next plan sequence number, calls build with
	// it and stores the plan build returns with the audit entry, atomically.
	// ErrRevoked for a revoked agent.
	CreatePlan(ctx context.Context, k AgentKey, build func(seq uint64) (Plan, error), audit auditlog.Entry) (Plan, error)
	GetPlan(ctx context.Context, id string) (Plan, error)
	ListPlans(ctx context.Context, f PlanFilter) ([]Plan, error)
	// PendingPlans lists agent k's unacknowledged, unexpired plans in
	// sequence order.
	PendingPlans(ctx context.Context, k AgentKey, now time.Time) ([]Plan, error)
	// UpdatePlan applies a status report from agent k about one of its own
	// plans (ErrNotFound for any other plan); terminal states stick and a
	// stale report (ranking below the current state) changes nothing. The
	// audit entry is appended, in the same transaction, only when the
	// report changes the plan's state, so re-sent and progress reports are
	// not audited again.
	UpdatePlan(ctx context.Context, k AgentKey, id string, u PlanUpdate, audit *auditlog.Entry) (Plan, error)
	// PlansCreatedSince lists, once each, the agents with a plan created at
	// or after t (zero: any time) that they have not acknowledged, for the
	// session watcher to nudge sessions on every replica.
	PlansCreatedSince(ctx context.Context, t time.Time) ([]AgentKey, error)
	// UpdatePlanEnvelope replaces the envelope of a plan its agent has not
	// acknowledged and appends the audit entry, atomically: ErrNotFound for
	// an unknown plan, ErrPlanAcknowledged for an acknowledged one.
	UpdatePlanEnvelope(ctx context.Context, id string, env []byte, audit auditlog.Entry) error

	// IngestUsage stores batch seq of agent k exactly once, atomically: a
	// ledger row unique per (tenant, agent, seq), and the records folded
	// into hourly rows per tenant, meter and UTC hour (sum, count, max,
	// last). A batch already in the ledger changes nothing and returns
	// duplicate=true, also when another replica stores it at the same
	// moment. The tenant is k.Tenant (the caller takes it from the agent's
	// SVID). ErrInvalid, storing nothing, when seq is 0, there are more
	// than MaxUsageBatch records, or any record has a bad meter
	// (ValidMeter), a value that is not finite, or a zero time; the error
	// names the record's index and field. ErrNotFound for an unknown agent.
	IngestUsage(ctx context.Context, k AgentKey, seq uint64, recs []UsageRecord) (duplicate bool, err error)
	// QueryUsage lists hourly usage ordered by tenant, meter and hour.
	QueryUsage(ctx context.Context, f UsageFilter) ([]UsageHour, error)
	// UsageTotals folds each meter of the tenant (of every tenant when
	// tenant is empty) over all time, ordered by tenant and meter; Hour is
	// zero.
	UsageTotals(ctx context.Context, tenant string) ([]UsageHour, error)

	// RecordHealth stores agent k's component states as of at and appends
	// a health event for each component whose status or drift changed from
	// the last recorded one (or that is new), so history stays small.
	// ErrInvalid for a bad component, ErrNotFound for an unknown agent.
	RecordHealth(ctx context.Context, k AgentKey, at time.Time, cs []ComponentState) error
	// HealthEvents lists agent k's health events, newest first.
	HealthEvents(ctx context.Context, k AgentKey, limit int) ([]HealthEvent, error)

	// ExportCandidates lists the hourly rows with Hour < before that have
	// no billing export row or a failed one (new hours first, oldest
	// first; then failed ones, least recently tried first), up to limit.
	ExportCandidates(ctx context.Context, before time.Time, limit int) ([]UsageHour, error)
	// RecordExport upserts the export ledger row of (tenant, meter, hour);
	// sent and skipped rows are final.
	RecordExport(ctx context.Context, e BillingExport) error
	// ListExports lists export ledger rows with from <= Hour < to.
	ListExports(ctx context.Context, tenant string, from, to time.Time) ([]BillingExport, error)

	// AppendAudit appends one entry to the hash chain and returns the record.
	AppendAudit(ctx context.Context, e auditlog.Entry) (auditlog.Record, error)
	ListAudit(ctx context.Context, f AuditFilter) ([]auditlog.Record, error)
	// AuditHead is the sequence and hash of the last record (0 and the
	// genesis hash when empty), kept separately so truncation is detected.
	AuditHead(ctx context.Context) (seq uint64, hash []byte, err error)
}
