package httpapi

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
)

// Health event paging of GET /v1/agents/{tenant}/{id}/health.
const (
	defaultHealthEvents = 100
	maxHealthEvents     = 1000
)

// Component statuses as the health routes show them: the protocol's
// HealthStatus names, lower case and without the HEALTH_STATUS_ prefix.
const (
	componentHealthy     = "healthy"
	componentDegraded    = "degraded"
	componentUnhealthy   = "unhealthy"
	componentUnspecified = "unspecified"
	componentUnknown     = "unknown"
)

// AgentHealth derives an agent's health from what the store holds: revoked;
// silent when no session was seen within window (or ever); otherwise the
// worst of the components of its last heartbeat (unhealthy, then degraded —
// a component of unspecified or unknown status counts as degraded — else
// healthy, also with no components). Problems lists the components that
// are not healthy or report drift, in the agent's order, and Drift counts
// the latter; drift does not change the state. The metrics package counts
// agents by the same states.
func AgentHealth(a store.Agent, now time.Time, window time.Duration) apiv1.AgentHealth {
	h := apiv1.AgentHealth{
		Tenant:     a.Tenant,
		ID:         a.ID,
		LastSeenAt: utcPtr(a.LastSeenAt),
		Version:    a.Version,
		Connected:  agentStatus(a, now, window) == apiv1.AgentConnected,
	}
	comps := components(a.Health)
	h.Components = len(comps)
	worst := componentHealthy
	for _, c := range comps {
		if c.Drift {
			h.Drift++
		}
		if c.Status == componentHealthy {
			if c.Drift {
				h.Problems = append(h.Problems, c)
			}
			continue
		}
		h.Problems = append(h.Problems, c)
		if c.Status == componentUnhealthy {
			worst = componentUnhealthy
		} else if worst != componentUnhealthy {
			worst = componentDegraded
		}
	}
	switch {
	case a.RevokedAt != nil:
		h.State, h.Problems, h.Drift = apiv1.HealthRevoked, nil, 0
	case !h.Connected:
		h.State = apiv1.HealthSilent
	case worst == componentUnhealthy:
		h.State = apiv1.HealthUnhealthy
	case worst == componentDegraded:
		h.State = apiv1.HealthDegraded
	default:
		h.State = apiv1.HealthHealthy
	}
	return h
}

// components parses the agent's stored health JSON: an array of
// protojson ComponentHealth ({"name", "status": "HEALTH_STATUS_…",
// "message", "drift", "driftDetail"}). Statuses come back lower case
// without the prefix; a missing status is unspecified, one that is not a
// name unknown. A drift detail is kept only with drift. Unparseable JSON
// yields no components; an unreadable element, a nameless unknown one.
func components(raw []byte) []apiv1.HealthProblem {
	var elems []json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &elems) != nil {
		return nil
	}
	out := make([]apiv1.HealthProblem, 0, len(elems))
	for _, e := range elems {
		var c struct {
			Name        string          `json:"name"`
			Status      json.RawMessage `json:"status"`
			Message     string          `json:"message"`
			Drift       bool            `json:"drift"`
			DriftDetail string          `json:"driftDetail"`
		}
		if json.Unmarshal(e, &c) != nil {
			c.Name, c.Status, c.Message, c.Drift = "", nil, "unreadable component report", false
		}
		if !c.Drift {
			c.DriftDetail = ""
		}
		status := componentUnspecified
		var named string
		switch {
		case len(c.Status) == 0 || string(c.Status) == "null":
		case json.Unmarshal(c.Status, &named) == nil:
			status = ComponentStatus(named)
		default:
			status = componentUnknown // an enum number this version does not know
		}
		out = append(out, apiv1.HealthProblem{Name: c.Name, Status: status, Message: c.Message, Drift: c.Drift, DriftDetail: c.DriftDetail})
	}
	return out
}

// ComponentStatus normalizes a component status: "HEALTH_STATUS_DEGRADED"
// and "degraded" are both "degraded"; empty is "unspecified".
func ComponentStatus(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.TrimPrefix(s, "health_status_")
	if s == "" {
		return componentUnspecified
	}
	return s
}

// stateRank orders states: the index in apiv1.HealthStates, unknown states
// last.
func stateRank(state string) int {
	if i := slices.Index(apiv1.HealthStates, state); i >= 0 {
		return i
	}
	return len(apiv1.HealthStates)
}

// healthRank orders agents for GET /v1/health: by state, except that an
// agent that reports drift and is neither unhealthy nor silent ranks right
// after the silent ones.
func healthRank(h apiv1.AgentHealth) int {
	r := 2 * stateRank(h.State)
	if silent := 2 * stateRank(apiv1.HealthSilent); h.Drift > 0 && r > silent {
		r = silent + 1
	}
	return r
}

// SortHealth sorts agents for GET /v1/health: unhealthy, silent, then those
// reporting drift, then the rest (apiv1.HealthStates order); within each,
// worst state first, then by tenant and ID.
func SortHealth(hs []apiv1.AgentHealth) {
	slices.SortFunc(hs, func(a, b apiv1.AgentHealth) int {
		return cmp.Or(
			cmp.Compare(healthRank(a), healthRank(b)),
			cmp.Compare(stateRank(a.State), stateRank(b.State)),
			cmp.Compare(a.Tenant, b.Tenant),
			cmp.Compare(a.ID, b.ID),
		)
	})
}

// listHealth serves GET /v1/health?tenant=T.
func (s *server) listHealth(w http.ResponseWriter, r *http.Request, c *call) error {
	tenant := r.URL.Query().Get("tenant")
	if tenant != "" {
		if err := validTenantName(tenant); err != nil {
			return errBadRequest("tenant: %v", err)
		}
		if _, err := s.cfg.Store.GetTenant(r.Context(), tenant); err != nil {
			return storeError(err, "tenant "+tenant)
		}
	}
	as, err := s.cfg.Store.ListAgents(r.Context(), store.AgentFilter{Tenant: tenant})
	if err != nil {
		return err
	}
	window := ConnectedWindow(s.cfg.HeartbeatInterval)
	out := apiv1.HealthList{Agents: make([]apiv1.AgentHealth, 0, len(as)), Counts: make(map[string]int, len(apiv1.HealthStates))}
	for _, st := range apiv1.HealthStates {
		out.Counts[st] = 0
	}
	for _, a := range as {
		h := AgentHealth(a, c.now, window)
		out.Counts[h.State]++
		if h.Drift > 0 {
			out.Drifted++
		}
		out.Agents = append(out.Agents, h)
	}
	SortHealth(out.Agents)
	writeJSON(w, http.StatusOK, out)
	return nil
}

// agentHealthEvents serves GET /v1/agents/{tenant}/{id}/health?limit=N.
func (s *server) agentHealthEvents(w http.ResponseWriter, r *http.Request, c *call) error {
	k, err := agentKey(r)
	if err != nil {
		return err
	}
	limit := defaultHealthEvents
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxHealthEvents {
			return errBadRequest("limit: must be between 1 and %d", maxHealthEvents)
		}
		limit = n
	}
	if _, err := s.cfg.Store.GetAgent(r.Context(), k); err != nil {
		return storeError(err, "agent "+k.Tenant+"/"+k.ID)
	}
	es, err := s.cfg.Store.HealthEvents(r.Context(), k, limit)
	if err != nil {
		return err
	}
	out := apiv1.HealthEventList{Tenant: k.Tenant, Agent: k.ID, Events: make([]apiv1.HealthEvent, 0, len(es))}
	for _, e := range es {
		out.Events = append(out.Events, apiv1.HealthEvent{
			At: e.At.UTC(), Component: e.Component, Status: ComponentStatus(e.Status), Message: e.Message,
			Drift: e.Drift, DriftDetail: e.DriftDetail,
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
