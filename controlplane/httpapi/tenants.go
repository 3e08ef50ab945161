package httpapi

import (
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/maintenance"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/release"
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

// updateTenant is PATCH /v1/tenants/{name}: every field given is checked
// before anything is stored, and the change is audited as tenant.update
// with the fields it set.
func (s *server) updateTenant(w http.ResponseWriter, r *http.Request, c *call) error {
	name := r.PathValue("name")
	if err := validTenantName(name); err != nil {
		return errBadRequest("name: %v", err)
	}
	c.tenant, c.target = name, name
	var req apiv1.UpdateTenantRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Tier == nil && req.Cell == nil && req.Windows == nil && req.Pin == nil && len(req.Labels) == 0 {
		return errBadRequest("nothing to change: give tier, cell, windows, pin or labels")
	}
	ctx := r.Context()
	detail := map[string]any{}
	if req.Tier != nil {
		if !slices.Contains(release.AllTiers, *req.Tier) {
			return errBadRequest("tier: %.64q is not one of %s", *req.Tier, strings.Join(release.AllTiers, ", "))
		}
		detail["tier"] = *req.Tier
	}
	if req.Cell != nil {
		if cell := *req.Cell; cell != "" {
			if !identity.ValidName(cell) {
				return errBadRequest("cell: must be an agent ID: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'")
			}
			a, err := s.cfg.Store.GetAgent(ctx, store.AgentKey{Tenant: name, ID: cell})
			switch {
			case errors.Is(err, store.ErrNotFound):
				return errBadRequest("cell: tenant %s has no agent %s (see attache agent list --tenant %s)", name, cell, name)
			case err != nil:
				return err
			case a.RevokedAt != nil:
				return errBadRequest("cell: agent %s/%s is revoked", name, cell)
			}
		}
		detail["cell"] = *req.Cell
	}
	var windows []store.Window
	if req.Windows != nil {
		if len(*req.Windows) > maintenance.MaxWindows {
			return errBadRequest("windows: %d windows, limit %d", len(*req.Windows), maintenance.MaxWindows)
		}
		formatted := make([]string, 0, len(*req.Windows))
		for i, text := range *req.Windows {
			win, err := maintenance.Parse(text)
			if err != nil {
				return errBadRequest("windows[%d]: %v", i, err)
			}
			windows = append(windows, win)
			formatted = append(formatted, maintenance.Format(win))
		}
		if err := maintenance.ValidateAll(windows); err != nil {
			return errBadRequest("%v", err)
		}
		detail["windows"] = formatted
	}
	if req.Pin != nil {
		if pin := *req.Pin; pin != "" {
			if err := validReleaseVersion(pin); err != nil {
				return errBadRequest("pin: %v", err)
			}
			if _, err := s.cfg.Store.GetRelease(ctx, pin); errors.Is(err, store.ErrNotFound) {
				return errBadRequest("pin: release %s has not been pushed (see attache release list)", pin)
			} else if err != nil {
				return err
			}
		}
		detail["pin"] = *req.Pin
	}
	if len(req.Labels) > 0 {
		detail["labels"] = req.Labels // null: removed
	}
	entry := c.entry(auditlog.OutcomeSuccess, detail)
	t, err := s.cfg.Store.UpdateTenant(ctx, name, func(t *store.Tenant) error {
		if req.Tier != nil {
			t.Tier = *req.Tier
		}
		if req.Cell != nil {
			t.Cell = *req.Cell
		}
		if req.Windows != nil {
			t.Windows = windows
		}
		if req.Pin != nil {
			t.Pin = *req.Pin
		}
		if len(req.Labels) > 0 {
			labels := maps.Clone(t.Labels)
			if labels == nil {
				labels = map[string]string{}
			}
			for k, v := range req.Labels {
				if v == nil {
					delete(labels, k)
				} else {
					labels[k] = *v
				}
			}
			if err := validLabels(labels); err != nil {
				return errBadRequest("labels: %v", err)
			}
			t.Labels = labels
		}
		return nil
	}, &entry)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			return err
		}
		return storeError(err, "tenant "+name)
	}
	writeJSON(w, http.StatusOK, tenantOut(t))
	return nil
}

func tenantOut(t store.Tenant) apiv1.Tenant {
	out := apiv1.Tenant{
		Name: t.Name, DisplayName: t.DisplayName, Labels: t.Labels, CreatedAt: t.CreatedAt.UTC(),
		Tier: t.Tier, Cell: t.Cell, Pin: t.Pin, Release: t.Release, Flags: t.Flags,
	}
	for _, w := range t.Windows {
		out.Windows = append(out.Windows, maintenance.Format(w))
	}
	return out
}
