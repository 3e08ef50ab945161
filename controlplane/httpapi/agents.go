package httpapi

import (
	"encoding/json"
	"net/http"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

func (s *server) listAgents(w http.ResponseWriter, r *http.Request, c *call) error {
	tenant := r.URL.Query().Get("tenant")
	if tenant != "" {
		if err := validTenantName(tenant); err != nil {
			return errBadRequest("tenant: %v", err)
		}
	}
	as, err := s.cfg.Store.ListAgents(r.Context(), store.AgentFilter{Tenant: tenant})
	if err != nil {
		return err
	}
	out := apiv1.AgentList{Agents: make([]apiv1.Agent, 0, len(as))}
	for _, a := range as {
		out.Agents = append(out.Agents, s.agentOut(a, c.now))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) getAgent(w http.ResponseWriter, r *http.Request, c *call) error {
	k, err := agentKey(r)
	if err != nil {
		return err
	}
	a, err := s.cfg.Store.GetAgent(r.Context(), k)
	if err != nil {
		return storeError(err, "agent "+k.Tenant+"/"+k.ID)
	}
	writeJSON(w, http.StatusOK, s.agentOut(a, c.now))
	return nil
}

func (s *server) revokeAgent(w http.ResponseWriter, r *http.Request, c *call) error {
	k, err := agentKey(r)
	if err != nil {
		return err
	}
	c.tenant, c.target = k.Tenant, k.ID
	a, err := s.cfg.Store.RevokeAgent(r.Context(), k, c.actor, c.now, c.entry(auditlog.OutcomeSuccess, nil))
	if err != nil {
		return storeError(err, "agent "+k.Tenant+"/"+k.ID)
	}
	writeJSON(w, http.StatusOK, s.agentOut(a, c.now))
	return nil
}

// maxAgentIDLen bounds agent IDs taken from the path (agents choose
// theirs at enrollment; the API only needs to keep junk out of the trail).
const maxAgentIDLen = 128

func agentKey(r *http.Request) (store.AgentKey, error) {
	k := store.AgentKey{Tenant: r.PathValue("tenant"), ID: r.PathValue("id")}
	if err := validTenantName(k.Tenant); err != nil {
		return k, errBadRequest("tenant: %v", err)
	}
	if k.ID == "" || len(k.ID) > maxAgentIDLen {
		return k, errBadRequest("id: must be 1-%d characters", maxAgentIDLen)
	}
	return k, nil
}

// agentStatus derives what ops want to see from the stored flags.
func agentStatus(a store.Agent, now time.Time, window time.Duration) string {
	switch {
	case a.RevokedAt != nil:
		return apiv1.AgentRevoked
	case a.LastSeenAt == nil && !a.Connected:
		return apiv1.AgentNeverConnected
	case a.Connected && a.LastSeenAt != nil && now.Sub(*a.LastSeenAt) <= window:
		return apiv1.AgentConnected
	default:
		return apiv1.AgentDisconnected
	}
}

func (s *server) agentOut(a store.Agent, now time.Time) apiv1.Agent {
	return apiv1.Agent{
		Tenant:            a.Tenant,
		ID:                a.ID,
		Status:            agentStatus(a, now, ConnectedWindow(s.cfg.HeartbeatInterval)),
		SPIFFEID:          a.SPIFFEID,
		Hostname:          a.Hostname,
		Version:           a.Version,
		CapabilityVersion: a.CapabilityVersion,
		EnrolledAt:        a.EnrolledAt.UTC(),
		CertSerial:        a.CertSerial,
		CertExpiresAt:     a.CertExpiresAt.UTC(),
		LastSeenAt:        utcPtr(a.LastSeenAt),
		Connected:         a.Connected,
		SessionID:         a.SessionID,
		RevokedAt:         utcPtr(a.RevokedAt),
		RevokedBy:         a.RevokedBy,
		Inventory:         rawJSON(a.Inventory),
		Health:            rawJSON(a.Health),
	}
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// rawJSON passes stored JSON through, dropping it if it is not valid JSON
// (so one bad row cannot break the whole response).
func rawJSON(b []byte) json.RawMessage {
	if len(b) == 0 || !json.Valid(b) {
		return nil
	}
	return b
}
