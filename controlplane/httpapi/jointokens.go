package httpapi

import (
	"fmt"
	"net/http"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/jointoken"
)

func (s *server) createJoinToken(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apiv1.CreateJoinTokenRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := validTenantName(req.Tenant); err != nil {
		return errBadRequest("tenant: %v", err)
	}
	c.tenant = req.Tenant
	ttl := DefaultTokenTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			return errBadRequest("ttl: %q is not a duration like \"1h\" or \"30m\"", req.TTL)
		}
		ttl = d
	}
	if ttl <= 0 || ttl > s.cfg.MaxTokenTTL {
		return errBadRequest("ttl: must be more than 0 and at most %s", s.cfg.MaxTokenTTL)
	}
	if _, err := s.cfg.Store.GetTenant(r.Context(), req.Tenant); err != nil {
		return storeError(err, "tenant "+req.Tenant)
	}
	tok, err := jointoken.New(s.cfg.AgentAddr, s.cfg.TrustDomain, s.cfg.CAKeySHA256(), s.cfg.TrustRootSHA256(), ttl, c.now)
	if err != nil {
		return fmt.Errorf("mint join token: %w", err)
	}
	c.target = tok.ID
	stored := store.JoinToken{
		ID:         tok.ID,
		Tenant:     req.Tenant,
		SecretHash: tok.SecretHash(),
		CreatedBy:  c.actor,
		CreatedAt:  c.now,
		ExpiresAt:  tok.ExpiresAt,
	}
	// The audit detail carries the expiry, never the secret.
	detail := map[string]any{"ttl": ttl.String(), "expires_at": tok.ExpiresAt.UTC()}
	if err := s.cfg.Store.CreateJoinToken(r.Context(), stored, c.entry(auditlog.OutcomeSuccess, detail)); err != nil {
		return storeError(err, "join token "+tok.ID)
	}
	writeJSON(w, http.StatusCreated, apiv1.JoinToken{
		ID:        tok.ID,
		Tenant:    req.Tenant,
		ExpiresAt: tok.ExpiresAt.UTC(),
		Token:     tok.String(),
	})
	return nil
}
