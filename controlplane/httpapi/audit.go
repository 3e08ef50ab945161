package httpapi

import (
	"net/http"
	"strconv"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

func (s *server) listAudit(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	f := store.AuditFilter{Limit: defaultAuditPage, Tenant: q.Get("tenant")}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return errBadRequest("after: must be a record sequence number")
		}
		f.AfterSeq = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxAuditPage {
			return errBadRequest("limit: must be between 1 and %d", maxAuditPage)
		}
		f.Limit = n
	}
	if f.Tenant != "" {
		if err := validTenantName(f.Tenant); err != nil {
			return errBadRequest("tenant: %v", err)
		}
	}
	// Head first: every record up to it is already visible, so a client
	// paging to head.seq sees a complete chain.
	seq, hash, err := s.cfg.Store.AuditHead(r.Context())
	if err != nil {
		return err
	}
	recs, err := s.cfg.Store.ListAudit(r.Context(), f)
	if err != nil {
		return err
	}
	if recs == nil {
		recs = []auditlog.Record{}
	}
	writeJSON(w, http.StatusOK, apiv1.AuditPage{Records: recs, Head: apiv1.AuditHead{Seq: seq, Hash: hash}})
	return nil
}
