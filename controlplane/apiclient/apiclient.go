// Package apiclient is a typed Go client for the control plane's ops API
// (controlplane/httpapi): one method per route, apiv1 types in and out, and
// API errors as *APIError.
//
// Imported by the `attache` CLI (controlplane/opscli) and end-to-end tests.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
)

// Wire types, re-exported so callers need not import apiv1.
type (
	Tenant              = apiv1.Tenant
	CreateTenantRequest = apiv1.CreateTenantRequest
	JoinToken           = apiv1.JoinToken
	Agent               = apiv1.Agent
	AuditPage           = apiv1.AuditPage
	AuditHead           = apiv1.AuditHead
	APIToken            = apiv1.APIToken
	NewAPIToken         = apiv1.NewAPIToken
	SubmitPlanRequest   = apiv1.SubmitPlanRequest
	Plan                = apiv1.Plan
	PlanStep            = apiv1.PlanStep
	StepChange          = apiv1.StepChange
	UsageList           = apiv1.UsageList
	UsageHour           = apiv1.UsageHour
	HealthList          = apiv1.HealthList
	AgentHealth         = apiv1.AgentHealth
	HealthProblem       = apiv1.HealthProblem
	HealthEventList     = apiv1.HealthEventList
	HealthEvent         = apiv1.HealthEvent
	Release             = apiv1.Release
	ReleaseMigration    = apiv1.ReleaseMigration
	ReleaseStep         = apiv1.ReleaseStep
	UpdateTenantRequest = apiv1.UpdateTenantRequest
	TenantFlags         = apiv1.TenantFlags
	SetFlagsRequest     = apiv1.SetFlagsRequest
	FlagChange          = apiv1.FlagChange
	StartRolloutRequest = apiv1.StartRolloutRequest
	Rollout             = apiv1.Rollout
	RolloutSpec         = apiv1.RolloutSpec
	RolloutWave         = apiv1.RolloutWave
	RolloutTarget       = apiv1.RolloutTarget
	RolloutFlagsRequest = apiv1.RolloutFlagsRequest
	RolloutFlags        = apiv1.RolloutFlags
	Freeze              = apiv1.Freeze
	WaveRef             = apiv1.WaveRef
	Rate                = apiv1.Rate
)

// maxResponseBytes bounds what the client reads from one response.
const maxResponseBytes = 64 << 20

// APIError is a non-2xx answer from the server.
type APIError struct {
	Status    int    // HTTP status code
	Message   string // the server's "error" field, or the status text
	RequestID string // X-Request-Id, to find the request in server logs
}

func (e *APIError) Error() string {
	if e.RequestID != "" {
		return fmt.Sprintf("%s (HTTP %d, request %s)", e.Message, e.Status, e.RequestID)
	}
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// Client calls one control plane. It is safe for concurrent use.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
	err   error // from New: reported by every call
}

// New returns a client for the server at baseURL ("https://cp.example:7443")
// that authenticates with token. httpClient nil means a client with a 30s
// timeout.
func New(baseURL, token string, httpClient *http.Client) *Client {
	c := &Client{token: token, hc: httpClient}
	if c.hc == nil {
		c.hc = &http.Client{Timeout: 30 * time.Second}
	}
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	switch {
	case err != nil:
		c.err = fmt.Errorf("apiclient: server URL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		c.err = fmt.Errorf("apiclient: server URL %q: want http(s)://host:port", baseURL)
	}
	c.base = u
	return c
}

// Health calls GET /healthz.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil, nil)
}

// CreateTenant calls POST /v1/tenants.
func (c *Client) CreateTenant(ctx context.Context, req CreateTenantRequest) (Tenant, error) {
	var out Tenant
	err := c.do(ctx, http.MethodPost, "/v1/tenants", nil, req, &out)
	return out, err
}

// ListTenants calls GET /v1/tenants.
func (c *Client) ListTenants(ctx context.Context) ([]Tenant, error) {
	var out apiv1.TenantList
	err := c.do(ctx, http.MethodGet, "/v1/tenants", nil, nil, &out)
	return out.Tenants, err
}

// GetTenant calls GET /v1/tenants/{name}.
func (c *Client) GetTenant(ctx context.Context, name string) (Tenant, error) {
	var out Tenant
	err := c.do(ctx, http.MethodGet, "/v1/tenants/"+url.PathEscape(name), nil, nil, &out)
	return out, err
}

// CreateJoinToken calls POST /v1/tokens. ttl 0 means the server's default.
func (c *Client) CreateJoinToken(ctx context.Context, tenant string, ttl time.Duration) (JoinToken, error) {
	req := apiv1.CreateJoinTokenRequest{Tenant: tenant}
	if ttl != 0 {
		req.TTL = ttl.String()
	}
	var out JoinToken
	err := c.do(ctx, http.MethodPost, "/v1/tokens", nil, req, &out)
	return out, err
}

// ListAgents calls GET /v1/agents; tenant "" lists every tenant's agents.
func (c *Client) ListAgents(ctx context.Context, tenant string) ([]Agent, error) {
	q := url.Values{}
	if tenant != "" {
		q.Set("tenant", tenant)
	}
	var out apiv1.AgentList
	err := c.do(ctx, http.MethodGet, "/v1/agents", q, nil, &out)
	return out.Agents, err
}

// GetAgent calls GET /v1/agents/{tenant}/{id}.
func (c *Client) GetAgent(ctx context.Context, tenant, id string) (Agent, error) {
	var out Agent
	err := c.do(ctx, http.MethodGet, agentPath(tenant, id), nil, nil, &out)
	return out, err
}

// RevokeAgent calls POST /v1/agents/{tenant}/{id}/revoke. Revoking twice is
// not an error; the first revocation time is kept.
func (c *Client) RevokeAgent(ctx context.Context, tenant, id string) (Agent, error) {
	var out Agent
	err := c.do(ctx, http.MethodPost, agentPath(tenant, id)+"/revoke", nil, struct{}{}, &out)
	return out, err
}

func agentPath(tenant, id string) string {
	return "/v1/agents/" + url.PathEscape(tenant) + "/" + url.PathEscape(id)
}

// AuditQuery selects one page of the audit trail.
type AuditQuery struct {
	After  uint64 // records with seq > After
	Limit  int    // 0: the server's default page (100); at most 1000
	Tenant string // optional; a filtered page cannot be chain-verified
}

// ListAudit calls GET /v1/audit.
func (c *Client) ListAudit(ctx context.Context, q AuditQuery) (AuditPage, error) {
	v := url.Values{}
	if q.After > 0 {
		v.Set("after", strconv.FormatUint(q.After, 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Tenant != "" {
		v.Set("tenant", q.Tenant)
	}
	var out AuditPage
	err := c.do(ctx, http.MethodGet, "/v1/audit", v, nil, &out)
	return out, err
}

// CreateAPIToken calls POST /v1/apitokens. The returned Token is the only
// copy of the secret.
func (c *Client) CreateAPIToken(ctx context.Context, name, role string) (NewAPIToken, error) {
	var out NewAPIToken
	err := c.do(ctx, http.MethodPost, "/v1/apitokens", nil, apiv1.CreateAPITokenRequest{Name: name, Role: role}, &out)
	return out, err
}

// ListAPITokens calls GET /v1/apitokens.
func (c *Client) ListAPITokens(ctx context.Context) ([]APIToken, error) {
	var out apiv1.APITokenList
	err := c.do(ctx, http.MethodGet, "/v1/apitokens", nil, nil, &out)
	return out.Tokens, err
}

// SubmitPlan calls POST /v1/plans: the control plane validates, signs and
// stores the plan and offers it to the agent. Refusals come back as
// *APIError: 400 (the message names the field), 404 (tenant or agent), 409
// (no active agent, agent revoked) or 413 (plan too large).
func (c *Client) SubmitPlan(ctx context.Context, req SubmitPlanRequest) (Plan, error) {
	var out Plan
	err := c.do(ctx, http.MethodPost, "/v1/plans", nil, req, &out)
	return out, err
}

// PlanQuery selects plans in ListPlans. Zero values select all.
type PlanQuery struct {
	Tenant string
	Agent  string
	Limit  int // 0: the server's default (100); at most 1000
}

// ListPlans calls GET /v1/plans: plans newest first, without their steps
// (Plan.StepCount says how many).
func (c *Client) ListPlans(ctx context.Context, q PlanQuery) ([]Plan, error) {
	v := url.Values{}
	if q.Tenant != "" {
		v.Set("tenant", q.Tenant)
	}
	if q.Agent != "" {
		v.Set("agent", q.Agent)
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out apiv1.PlanList
	err := c.do(ctx, http.MethodGet, "/v1/plans", v, nil, &out)
	return out.Plans, err
}

// GetPlan calls GET /v1/plans/{id}: the plan with every step's status.
func (c *Client) GetPlan(ctx context.Context, id string) (Plan, error) {
	var out Plan
	err := c.do(ctx, http.MethodGet, "/v1/plans/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// UsageQuery selects a tenant's hourly usage in Usage.
type UsageQuery struct {
	Tenant string    // required
	Meter  string    // optional: only this meter
	From   time.Time // zero: 24 hours before To
	To     time.Time // zero: now (exclusive)
}

// Usage calls GET /v1/usage: the tenant's hourly usage rows overlapping
// [From, To), ordered by meter and hour. The window may span at most 400
// days.
func (c *Client) Usage(ctx context.Context, q UsageQuery) (UsageList, error) {
	v := url.Values{"tenant": {q.Tenant}}
	if q.Meter != "" {
		v.Set("meter", q.Meter)
	}
	if !q.From.IsZero() {
		v.Set("from", q.From.UTC().Format(time.RFC3339))
	}
	if !q.To.IsZero() {
		v.Set("to", q.To.UTC().Format(time.RFC3339))
	}
	var out UsageList
	err := c.do(ctx, http.MethodGet, "/v1/usage", v, nil, &out)
	return out, err
}

// FleetHealth calls GET /v1/health; tenant "" covers every tenant. Agents
// come worst first: unhealthy, silent, degraded, healthy, revoked.
func (c *Client) FleetHealth(ctx context.Context, tenant string) (HealthList, error) {
	q := url.Values{}
	if tenant != "" {
		q.Set("tenant", tenant)
	}
	var out HealthList
	err := c.do(ctx, http.MethodGet, "/v1/health", q, nil, &out)
	return out, err
}

// AgentHealthEvents calls GET /v1/agents/{tenant}/{id}/health: the agent's
// component status changes, newest first. limit 0 means the server's
// default (100); at most 1000.
func (c *Client) AgentHealthEvents(ctx context.Context, tenant, id string, limit int) (HealthEventList, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out HealthEventList
	err := c.do(ctx, http.MethodGet, agentPath(tenant, id)+"/health", q, nil, &out)
	return out, err
}

// PushRelease calls POST /v1/releases with a signed release envelope (the
// JSON `attache release sign` writes). Refusals come back as *APIError: 400
// (not signed by the release key the trust root lists, or not a valid
// release; the message says why), 409 (the version exists: releases are
// immutable) or 413 (too large).
func (c *Client) PushRelease(ctx context.Context, envelope []byte) (Release, error) {
	var out Release
	err := c.do(ctx, http.MethodPost, "/v1/releases", nil, apiv1.PushReleaseRequest{Envelope: envelope}, &out)
	return out, err
}

// ListReleases calls GET /v1/releases: releases newest first.
func (c *Client) ListReleases(ctx context.Context) ([]Release, error) {
	var out apiv1.ReleaseList
	err := c.do(ctx, http.MethodGet, "/v1/releases", nil, nil, &out)
	return out.Releases, err
}

// GetRelease calls GET /v1/releases/{version}; Verified says whether it
// still verifies against the current trust root.
func (c *Client) GetRelease(ctx context.Context, version string) (Release, error) {
	var out Release
	err := c.do(ctx, http.MethodGet, "/v1/releases/"+url.PathEscape(version), nil, nil, &out)
	return out, err
}

// UpdateTenant calls PATCH /v1/tenants/{name}: only the fields set in req
// change (see UpdateTenantRequest).
func (c *Client) UpdateTenant(ctx context.Context, name string, req UpdateTenantRequest) (Tenant, error) {
	var out Tenant
	err := c.do(ctx, http.MethodPatch, "/v1/tenants/"+url.PathEscape(name), nil, req, &out)
	return out, err
}

// TenantFlags calls GET /v1/tenants/{name}/flags.
func (c *Client) TenantFlags(ctx context.Context, name string) (TenantFlags, error) {
	var out TenantFlags
	err := c.do(ctx, http.MethodGet, "/v1/tenants/"+url.PathEscape(name)+"/flags", nil, nil, &out)
	return out, err
}

// SetTenantFlags calls PUT /v1/tenants/{name}/flags: sets and unsets flags
// and, when the tenant has a release, re-applies it with them (PlanID).
func (c *Client) SetTenantFlags(ctx context.Context, name string, req SetFlagsRequest) (FlagChange, error) {
	var out FlagChange
	err := c.do(ctx, http.MethodPut, "/v1/tenants/"+url.PathEscape(name)+"/flags", nil, req, &out)
	return out, err
}

// SetRolloutFlags calls POST /v1/rollouts/{id}/flags: the same flag change
// for every tenant of one wave.
func (c *Client) SetRolloutFlags(ctx context.Context, id string, req RolloutFlagsRequest) (RolloutFlags, error) {
	var out RolloutFlags
	err := c.do(ctx, http.MethodPost, rolloutPath(id)+"/flags", nil, req, &out)
	return out, err
}

// StartRollout calls POST /v1/rollouts. Refusals come back as *APIError:
// 400 (the message names the field, or says no tenant matches) or 404 (no
// such release).
func (c *Client) StartRollout(ctx context.Context, req StartRolloutRequest) (Rollout, error) {
	var out Rollout
	err := c.do(ctx, http.MethodPost, "/v1/rollouts", nil, req, &out)
	return out, err
}

// RolloutQuery selects rollouts in ListRollouts.
type RolloutQuery struct {
	Active bool // only unfinished rollouts
	Limit  int  // 0: the server's default (50); at most 500
}

// ListRollouts calls GET /v1/rollouts: newest first, with each wave's
// summary but no targets.
func (c *Client) ListRollouts(ctx context.Context, q RolloutQuery) ([]Rollout, error) {
	v := url.Values{}
	if q.Active {
		v.Set("active", "true")
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var out apiv1.RolloutList
	err := c.do(ctx, http.MethodGet, "/v1/rollouts", v, nil, &out)
	return out.Rollouts, err
}

// GetRollout calls GET /v1/rollouts/{id}: the rollout, its waves and every
// target.
func (c *Client) GetRollout(ctx context.Context, id string) (Rollout, error) {
	var out Rollout
	err := c.do(ctx, http.MethodGet, rolloutPath(id), nil, nil, &out)
	return out, err
}

// PauseRollout calls POST /v1/rollouts/{id}/pause: no new plans until
// resumed. 409 for a finished rollout.
func (c *Client) PauseRollout(ctx context.Context, id string) (Rollout, error) {
	return c.controlRollout(ctx, id, "pause")
}

// ResumeRollout calls POST /v1/rollouts/{id}/resume. 409 for a finished or
// aborting rollout.
func (c *Client) ResumeRollout(ctx context.Context, id string) (Rollout, error) {
	return c.controlRollout(ctx, id, "resume")
}

// AbortRollout calls POST /v1/rollouts/{id}/abort: the rollout stops and
// fails; tenants not reached are cancelled. 409 for a finished rollout.
func (c *Client) AbortRollout(ctx context.Context, id string) (Rollout, error) {
	return c.controlRollout(ctx, id, "abort")
}

func (c *Client) controlRollout(ctx context.Context, id, verb string) (Rollout, error) {
	var out Rollout
	err := c.do(ctx, http.MethodPost, rolloutPath(id)+"/"+verb, nil, nil, &out)
	return out, err
}

func rolloutPath(id string) string { return "/v1/rollouts/" + url.PathEscape(id) }

// Freeze calls POST /v1/freeze: every rollout and plan dispatch stops,
// fleet-wide, until Unfreeze. reason is required.
func (c *Client) Freeze(ctx context.Context, reason string) (Freeze, error) {
	var out Freeze
	err := c.do(ctx, http.MethodPost, "/v1/freeze", nil, apiv1.FreezeRequest{Reason: reason}, &out)
	return out, err
}

// Unfreeze calls DELETE /v1/freeze.
func (c *Client) Unfreeze(ctx context.Context) (Freeze, error) {
	var out Freeze
	err := c.do(ctx, http.MethodDelete, "/v1/freeze", nil, nil, &out)
	return out, err
}

// FreezeStatus calls GET /v1/freeze.
func (c *Client) FreezeStatus(ctx context.Context) (Freeze, error) {
	var out Freeze
	err := c.do(ctx, http.MethodGet, "/v1/freeze", nil, nil, &out)
	return out, err
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	if c.err != nil {
		return c.err
	}
	// path's segments are already escaped (url.PathEscape).
	target := c.base.String() + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}

	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("apiclient: encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return fmt.Errorf("apiclient: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("apiclient: %w", err) // *url.Error names method and URL
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("apiclient: %s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		ae := &APIError{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id")}
		var e apiv1.Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			ae.Message = e.Error
			if ae.RequestID == "" {
				ae.RequestID = e.RequestID
			}
		} else {
			ae.Message = http.StatusText(resp.StatusCode)
		}
		return ae
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("apiclient: %s %s: decode response: %w", method, path, err)
	}
	return nil
}

// IsStatus reports whether err is an *APIError with the given status.
func IsStatus(err error, status int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == status
}
