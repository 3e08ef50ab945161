package httpapi

import (
	"net/http"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

func (s *server) createAPIToken(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apiv1.CreateAPITokenRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := validTokenName(req.Name); err != nil {
		return errBadRequest("name: %v", err)
	}
	role := store.Role(req.Role)
	switch role {
	case store.RoleAdmin, store.RoleOperator, store.RoleAuditor:
	default:
		return errBadRequest("role: must be admin, operator or auditor")
	}
	secret, t := newAPIToken(req.Name, role, c.actor, c.now)
	c.target = t.ID
	e := c.entry(auditlog.OutcomeSuccess, map[string]string{"name": t.Name, "role": string(t.Role)})
	if err := s.cfg.Store.CreateAPIToken(r.Context(), t, &e); err != nil {
		return storeError(err, "API token "+t.Name)
	}
	writeJSON(w, http.StatusCreated, apiv1.NewAPIToken{APIToken: apiTokenOut(t), Token: secret})
	return nil
}

func (s *server) listAPITokens(w http.ResponseWriter, r *http.Request, c *call) error {
	ts, err := s.cfg.Store.ListAPITokens(r.Context())
	if err != nil {
		return err
	}
	out := apiv1.APITokenList{Tokens: make([]apiv1.APIToken, 0, len(ts))}
	for _, t := range ts {
		out.Tokens = append(out.Tokens, apiTokenOut(t))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func apiTokenOut(t store.APIToken) apiv1.APIToken {
	return apiv1.APIToken{
		ID:        t.ID,
		Name:      t.Name,
		Role:      string(t.Role),
		CreatedBy: t.CreatedBy,
		CreatedAt: t.CreatedAt.UTC(),
		RevokedAt: utcPtr(t.RevokedAt),
	}
}
