package httpapi

import (
	"net/http"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
)

// Usage query bounds.
const (
	// DefaultUsageWindow is the window GET /v1/usage reads when from is
	// not given.
	DefaultUsageWindow = 24 * time.Hour
	// MaxUsageWindow is the longest window one usage query may span.
	MaxUsageWindow = 400 * 24 * time.Hour
	// maxUsageRows bounds one response (a meter over 400 days is 9,600
	// rows): a query matching more is refused with advice to narrow it.
	maxUsageRows = 100_000
)

// listUsage serves GET /v1/usage?tenant=T&from=&to=&meter=: the tenant's
// hourly usage rows overlapping [from, to).
func (s *server) listUsage(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	tenant := q.Get("tenant")
	if tenant == "" {
		return errBadRequest("tenant: required")
	}
	if err := validTenantName(tenant); err != nil {
		return errBadRequest("tenant: %v", err)
	}
	meter := q.Get("meter")
	if meter != "" && !store.ValidMeter(meter) {
		return errBadRequest("meter: %q is not a meter name (^[a-z][a-z0-9_.]{0,99}$)", trimParam(meter))
	}
	to := c.now
	if v := q.Get("to"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return errBadRequest("to: %q is not an RFC 3339 time (2026-01-02T15:04:05Z)", trimParam(v))
		}
		to = t.UTC()
	}
	from := to.Add(-DefaultUsageWindow)
	if v := q.Get("from"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return errBadRequest("from: %q is not an RFC 3339 time (2026-01-02T15:04:05Z)", trimParam(v))
		}
		from = t.UTC()
	}
	switch {
	case !from.Before(to):
		return errBadRequest("from (%s) must be before to (%s)", from.Format(time.RFC3339), to.Format(time.RFC3339))
	case to.Sub(from) > MaxUsageWindow:
		return errBadRequest("from %s to %s spans more than %d days; query at most %d days at a time",
			from.Format(time.RFC3339), to.Format(time.RFC3339), int(MaxUsageWindow/(24*time.Hour)), int(MaxUsageWindow/(24*time.Hour)))
	}
	if _, err := s.cfg.Store.GetTenant(r.Context(), tenant); err != nil {
		return storeError(err, "tenant "+tenant)
	}
	// An hour overlaps [from, to) when it starts before to and after the
	// start of from's hour.
	hs, err := s.cfg.Store.QueryUsage(r.Context(), store.UsageFilter{Tenant: tenant, Meter: meter, From: from.Truncate(time.Hour), To: to})
	if err != nil {
		return err
	}
	if len(hs) > maxUsageRows {
		return errBadRequest("%d hourly rows match, more than %d: narrow from/to or name a meter", len(hs), maxUsageRows)
	}
	out := apiv1.UsageList{Tenant: tenant, Meter: meter, From: from, To: to, Hours: make([]apiv1.UsageHour, 0, len(hs))}
	for _, h := range hs {
		out.Hours = append(out.Hours, apiv1.UsageHour{
			Tenant: h.Tenant, Meter: h.Meter, Hour: h.Hour.UTC(),
			Sum: h.Sum, Count: h.Count, Max: h.Max, Last: h.Last, LastAt: h.LastAt.UTC(),
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// trimParam keeps a query parameter quoted in an error short.
func trimParam(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
