package httpapi

import (
	"net/http"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

func (s *server) createTenant(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apiv1.CreateTenantRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := validTenantName(req.Name); err != nil {
		return errBadRequest("name: %v", err)
	}
	c.tenant, c.target = req.Name, req.Name // only validated values reach the audit trail
	if err := validDisplayName(req.DisplayName); err != nil {
		return errBadRequest("display_name: %v", err)
	}
	if err := validLabels(req.Labels); err != nil {
		return errBadRequest("labels: %v", err)
	}
	t := store.Tenant{Name: req.Name, DisplayName: req.DisplayName, Labels: req.Labels, CreatedAt: c.now}
	detail := map[string]any{"display_name": req.DisplayName, "labels": req.Labels}
	if err := s.cfg.Store.CreateTenant(r.Context(), t, c.entry(auditlog.OutcomeSuccess, detail)); err != nil {
		return storeError(err, "tenant "+req.Name)
	}
	writeJSON(w, http.StatusCreated, tenantOut(t))
	return nil
}

func (s *server) listTenants(w http.ResponseWriter, r *http.Request, c *call) error {
	ts, err := s.cfg.Store.ListTenants(r.Context())
	if err != nil {
		return err
	}
	out := apiv1.TenantList{Tenants: make([]apiv1.Tenant, 0, len(ts))}
	for _, t := range ts {
		out.Tenants = append(out.Tenants, tenantOut(t))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) getTenant(w http.ResponseWriter, r *http.Request, c *call) error {
	name := r.PathValue("name")
	t, err := s.cfg.Store.GetTenant(r.Context(), name)
	if err != nil {
		return storeError(err, "tenant "+name)
	}
	writeJSON(w, http.StatusOK, tenantOut(t))
	return nil
}

func tenantOut(t store.Tenant) apiv1.Tenant {
	return apiv1.Tenant{Name: t.Name, DisplayName: t.DisplayName, Labels: t.Labels, CreatedAt: t.CreatedAt.UTC()}
}
