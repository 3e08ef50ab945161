package httpapi

import (
	"net/http"
	"strings"
	"unicode"
	"unicode/utf8"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

// maxFreezeReasonLen bounds a freeze's reason, in characters.
const maxFreezeReasonLen = 500

func (s *server) getFreeze(w http.ResponseWriter, r *http.Request, c *call) error {
	f, err := s.cfg.Store.GetFreeze(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, freezeOut(f))
	return nil
}

// freeze is POST /v1/freeze: the incident switch. While it is set no
// rollout advances and no plan is offered to any agent; freezing again
// replaces the reason.
func (s *server) freeze(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apiv1.FreezeRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	reason := strings.TrimSpace(req.Reason)
	if reason == "" {
		return errBadRequest("reason: required: say why the fleet is frozen (it goes into the audit trail)")
	}
	if !utf8.ValidString(reason) || strings.ContainsFunc(reason, unicode.IsControl) {
		return errBadRequest("reason: must be valid UTF-8 without control characters (one line)")
	}
	if n := utf8.RuneCountInString(reason); n > maxFreezeReasonLen {
		return errBadRequest("reason: %d characters, limit %d", n, maxFreezeReasonLen)
	}
	ctx := r.Context()
	prev, err := s.cfg.Store.GetFreeze(ctx)
	if err != nil {
		return err
	}
	detail := map[string]any{"reason": reason}
	if prev != nil {
		detail["previous_reason"] = prev.Reason
	}
	f := &store.Freeze{By: c.actor, Reason: reason, At: c.now}
	if err := s.cfg.Store.SetFreeze(ctx, f, c.entry(auditlog.OutcomeSuccess, detail)); err != nil {
		return err
	}
	s.nudgeRollouts()
	writeJSON(w, http.StatusOK, freezeOut(f))
	return nil
}

func (s *server) unfreeze(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx := r.Context()
	prev, err := s.cfg.Store.GetFreeze(ctx)
	if err != nil {
		return err
	}
	detail := map[string]any{"was_frozen": prev != nil}
	if prev != nil {
		detail["reason"], detail["frozen_by"], detail["frozen_at"] = prev.Reason, prev.By, prev.At.UTC()
	}
	if err := s.cfg.Store.SetFreeze(ctx, nil, c.entry(auditlog.OutcomeSuccess, detail)); err != nil {
		return err
	}
	s.nudgeRollouts()
	writeJSON(w, http.StatusOK, freezeOut(nil))
	return nil
}

func freezeOut(f *store.Freeze) apiv1.Freeze {
	if f == nil {
		return apiv1.Freeze{}
	}
	at := f.At.UTC()
	return apiv1.Freeze{Frozen: true, By: f.By, Reason: f.Reason, At: &at}
}
