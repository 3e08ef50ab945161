// Package httpapi serves the control plane's ops API: HTTP/JSON under /v1
// for the `attache` CLI, the console and automation. Callers authenticate
// with a bearer API token (see Bootstrap for the first one); each route
// allows a set of roles. Every mutation, and every refused request, is
// appended to the audit trail through the store. GET /metrics, when
// Config.Metrics is set, takes any API token (it names every tenant).
//
// The wire types live in apiv1. Only the control-plane server (and
// controlplane/metrics, for AgentHealth) imports httpapi; clients use
// controlplane/apiclient.
package httpapi

import (
	"errors"
	"log/slog"
	"net/http"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/plans"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/sign"
)

// Defaults and limits.
const (
	DefaultTokenTTL    = time.Hour
	DefaultMaxTokenTTL = 24 * time.Hour
	// DefaultHeartbeatInterval is the agents' heartbeat interval when the
	// Config does not say (the control plane's default).
	DefaultHeartbeatInterval = 15 * time.Second

	maxBodyBytes     = 1 << 20
	defaultAuditPage = 100
	maxAuditPage     = 1000
)

// Config is what the ops API needs.
type Config struct {
	Store  store.Store
	Logger *slog.Logger
	// TrustDomain and AgentAddr go into join tokens: the agent dials
	// AgentAddr (host:port) and expects spiffe://TrustDomain.
	TrustDomain string
	AgentAddr   string
	// CAKeySHA256 and TrustRootSHA256 return the current pins that join
	// tokens carry; functions, so rotations are picked up.
	CAKeySHA256     func() [32]byte
	TrustRootSHA256 func() [32]byte
	Now             func() time.Time // nil means time.Now
	MaxTokenTTL     time.Duration    // 0 means DefaultMaxTokenTTL
	// HeartbeatInterval is how often agents are told to send heartbeats;
	// an agent counts as connected while seen within ConnectedWindow of it.
	HeartbeatInterval time.Duration // 0 means DefaultHeartbeatInterval
	// Plans submits plans; nil leaves the /v1/plans routes out.
	Plans *plans.Service
	// Metrics, when set, is served at GET /metrics to any API token
	// (Prometheus scrapers use an auditor token); nil leaves the route out.
	Metrics http.Handler
	// ReleaseRoot returns the current trust root, whose releases role
	// pushed releases must be signed by; a function, so rotations are
	// picked up. nil leaves out POST /v1/releases and, with Plans, the
	// flag changes (which re-render the tenant's release).
	ReleaseRoot func() *sign.Root
	// Rollouts is told when a rollout starts or an operator changes one or
	// the freeze, so it acts at once rather than at its next tick; nil:
	// nobody to tell.
	Rollouts interface{ Nudge() }
}

// ConnectedWindow is how recently a connected agent must have been seen to
// count as connected: three heartbeat intervals, so one late or lost
// heartbeat does not flip it, and never less than 30 s.
func ConnectedWindow(heartbeat time.Duration) time.Duration {
	if heartbeat <= 0 {
		heartbeat = DefaultHeartbeatInterval
	}
	return max(3*heartbeat, 30*time.Second)
}

func (c *Config) validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("httpapi: Store is required"))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("httpapi: Logger is required"))
	}
	if c.TrustDomain == "" {
		errs = append(errs, errors.New("httpapi: TrustDomain is required"))
	}
	if c.AgentAddr == "" {
		errs = append(errs, errors.New("httpapi: AgentAddr is required"))
	}
	if c.CAKeySHA256 == nil || c.TrustRootSHA256 == nil {
		errs = append(errs, errors.New("httpapi: CAKeySHA256 and TrustRootSHA256 are required"))
	}
	if c.HeartbeatInterval < 0 {
		errs = append(errs, errors.New("httpapi: HeartbeatInterval must not be negative"))
	}
	if c.MaxTokenTTL < 0 {
		errs = append(errs, errors.New("httpapi: MaxTokenTTL must not be negative"))
	}
	return errors.Join(errs...)
}

type server struct {
	cfg Config
	log *slog.Logger
	now func() time.Time
}

// New returns the ops API handler. Serve it with timeouts set on the
// http.Server (the handler limits bodies to 1 MiB itself, plan submissions
// to maxPlanBodyBytes).
func New(cfg Config) (http.Handler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.MaxTokenTTL == 0 {
		cfg.MaxTokenTTL = DefaultMaxTokenTTL
	}
	s := &server{cfg: cfg, log: cfg.Logger, now: cfg.Now}
	if s.now == nil {
		s.now = time.Now
	}

	var (
		all      = []store.Role{store.RoleAdmin, store.RoleOperator, store.RoleAuditor}
		mutators = []store.Role{store.RoleAdmin, store.RoleOperator}
		auditors = []store.Role{store.RoleAdmin, store.RoleAuditor}
		admins   = []store.Role{store.RoleAdmin}
	)
	mux := http.NewServeMux()
	s.handle(mux, "GET /healthz", route{action: "healthz", h: s.healthz})
	s.handle(mux, "POST /v1/tenants", route{action: "tenant.create", roles: mutators, h: s.createTenant})
	s.handle(mux, "GET /v1/tenants", route{action: "tenant.list", roles: all, h: s.listTenants})
	s.handle(mux, "GET /v1/tenants/{name}", route{action: "tenant.get", roles: all, h: s.getTenant})
	s.handle(mux, "POST /v1/tokens", route{action: "jointoken.create", roles: mutators, h: s.createJoinToken})
	s.handle(mux, "GET /v1/agents", route{action: "agent.list", roles: all, h: s.listAgents})
	s.handle(mux, "GET /v1/agents/{tenant}/{id}", route{action: "agent.get", roles: all, h: s.getAgent})
	s.handle(mux, "POST /v1/agents/{tenant}/{id}/revoke", route{action: "agent.revoke", roles: mutators, h: s.revokeAgent})
	s.handle(mux, "GET /v1/audit", route{action: "audit.list", roles: auditors, h: s.listAudit})
	s.handle(mux, "POST /v1/apitokens", route{action: "apitoken.create", roles: admins, h: s.createAPIToken})
	s.handle(mux, "GET /v1/apitokens", route{action: "apitoken.list", roles: admins, h: s.listAPITokens})
	s.handle(mux, "GET /v1/usage", route{action: "usage.list", roles: all, h: s.listUsage})
	s.handle(mux, "GET /v1/health", route{action: "health.list", roles: all, h: s.listHealth})
	s.handle(mux, "GET /v1/agents/{tenant}/{id}/health", route{action: "agent.health", roles: all, h: s.agentHealthEvents})
	if cfg.Metrics != nil {
		s.handle(mux, "GET /metrics", route{action: "metrics", roles: all, quiet: true, h: func(w http.ResponseWriter, r *http.Request, _ *call) error {
			cfg.Metrics.ServeHTTP(w, r)
			return nil
		}})
	}
	if cfg.Plans != nil {
		s.handle(mux, "POST /v1/plans", route{action: plans.ActionSubmit, roles: mutators, h: s.submitPlan})
		s.handle(mux, "GET /v1/plans", route{action: "plan.list", roles: all, h: s.listPlans})
		s.handle(mux, "GET /v1/plans/{id}", route{action: "plan.get", roles: all, h: s.getPlan})
	}

	// Releases, tenants' rollout settings and flags, rollouts, the freeze.
	s.handle(mux, "PATCH /v1/tenants/{name}", route{action: "tenant.update", roles: mutators, h: s.updateTenant})
	s.handle(mux, "GET /v1/releases", route{action: "release.list", roles: all, h: s.listReleases})
	s.handle(mux, "GET /v1/releases/{version}", route{action: "release.get", roles: all, h: s.getRelease})
	s.handle(mux, "GET /v1/tenants/{name}/flags", route{action: "flag.list", roles: all, h: s.getTenantFlags})
	if cfg.ReleaseRoot != nil {
		s.handle(mux, "POST /v1/releases", route{action: "release.push", roles: mutators, h: s.pushRelease})
		if cfg.Plans != nil {
			s.handle(mux, "PUT /v1/tenants/{name}/flags", route{action: "flag.set", roles: mutators, h: s.setTenantFlags})
			s.handle(mux, "POST /v1/rollouts/{id}/flags", route{action: "flag.set", roles: mutators, h: s.rolloutFlags})
		}
	}
	s.handle(mux, "POST /v1/rollouts", route{action: "rollout.start", roles: mutators, h: s.startRollout})
	s.handle(mux, "GET /v1/rollouts", route{action: "rollout.list", roles: all, h: s.listRollouts})
	s.handle(mux, "GET /v1/rollouts/{id}", route{action: "rollout.get", roles: all, h: s.getRollout})
	s.handle(mux, "POST /v1/rollouts/{id}/pause", route{action: "rollout.pause", roles: mutators, h: s.controlRollout(store.ControlPause, "paused")})
	s.handle(mux, "POST /v1/rollouts/{id}/resume", route{action: "rollout.resume", roles: mutators, h: s.controlRollout(store.ControlRun, "resumed")})
	s.handle(mux, "POST /v1/rollouts/{id}/abort", route{action: "rollout.abort", roles: mutators, h: s.controlRollout(store.ControlAbort, "aborted")})
	s.handle(mux, "GET /v1/freeze", route{action: "fleet.freeze_status", roles: all, h: s.getFreeze})
	s.handle(mux, "POST /v1/freeze", route{action: "fleet.freeze", roles: mutators, h: s.freeze})
	s.handle(mux, "DELETE /v1/freeze", route{action: "fleet.unfreeze", roles: mutators, h: s.unfreeze})
	return &jsonMux{mux: mux}, nil
}

// jsonMux answers requests no route matches (404, 405, redirects) with a
// JSON body instead of the ServeMux's plain text.
type jsonMux struct{ mux *http.ServeMux }

func (m *jsonMux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := m.mux.Handler(r)
	if pattern != "" {
		m.mux.ServeHTTP(w, r) // sets r.PathValue
		return
	}
	capture := &headerCapture{header: http.Header{}}
	h.ServeHTTP(capture, r)
	for _, k := range []string{"Allow", "Location"} {
		if v := capture.header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	status := capture.status
	if status == 0 {
		status = http.StatusNotFound
	}
	msg := http.StatusText(status)
	switch status {
	case http.StatusNotFound:
		msg = "no route for " + r.Method + " " + r.URL.Path
	case http.StatusMethodNotAllowed:
		msg = "method " + r.Method + " not allowed on " + r.URL.Path
	}
	writeJSON(w, status, apiv1.Error{Error: msg})
}

// headerCapture keeps a handler's status and headers and drops its body.
type headerCapture struct {
	header http.Header
	status int
}

func (c *headerCapture) Header() http.Header { return c.header }
func (c *headerCapture) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
}
func (c *headerCapture) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return len(b), nil
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request, c *call) error {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}
