package httpapi

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/rollout"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

const (
	defaultRolloutPage = 50
	maxRolloutPage     = 500
	maxRolloutIDLen    = 128
)

func validRolloutID(id string) error {
	if id == "" || len(id) > maxRolloutIDLen {
		return errBadRequest("id: must be 1-%d characters", maxRolloutIDLen)
	}
	return nil
}

func (s *server) startRollout(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apiv1.StartRolloutRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := validReleaseVersion(req.Release); err != nil {
		return errBadRequest("release: %v", err)
	}
	spec, err := rolloutSpec(req)
	if err != nil {
		return err
	}
	ro, targets, err := rollout.Start(r.Context(), s.cfg.Store, rollout.StartRequest{
		Actor: c.actor, Role: c.role, Source: c.source, RequestID: c.requestID,
		Release: req.Release, Spec: spec, Now: c.now,
	})
	if err != nil {
		msg := oneLine(err)
		switch {
		case errors.Is(err, rollout.ErrInvalid), errors.Is(err, rollout.ErrNoTenants):
			return &apiError{status: http.StatusBadRequest, msg: msg, err: err}
		case errors.Is(err, store.ErrNotFound):
			return &apiError{status: http.StatusNotFound, msg: msg, err: err}
		}
		return err
	}
	c.target = ro.ID
	s.nudgeRollouts()
	writeJSON(w, http.StatusCreated, rolloutOut(ro, targets, true))
	return nil
}

// rolloutSpec reads the request's operator forms into a spec; rollout.Start
// validates the rest and fills in defaults.
func rolloutSpec(req apiv1.StartRolloutRequest) (store.RolloutSpec, error) {
	spec := store.RolloutSpec{
		MaxFailed:     req.MaxFailed,
		Concurrency:   req.Concurrency,
		IgnoreWindows: req.IgnoreWindows,
	}
	if strings.TrimSpace(req.Selector) != "" {
		sel, err := rollout.ParseSelector(req.Selector)
		if err != nil {
			return spec, errBadRequest("%v", err)
		}
		spec.Selector = sel
	}
	for i, t := range req.Tenants {
		if err := validTenantName(t); err != nil {
			return spec, errBadRequest("tenants[%d]: %v", i, err)
		}
	}
	spec.Tenants = req.Tenants
	if strings.TrimSpace(req.Waves) == "" {
		return spec, errBadRequest("waves: required, e.g. canary:2,10%%,50%%,100%%")
	}
	waves, err := rollout.ParseWaves(req.Waves)
	if err != nil {
		return spec, errBadRequest("%v", err)
	}
	spec.Waves = waves
	if spec.Bake, err = optionalDuration("bake", req.Bake); err != nil {
		return spec, err
	}
	if spec.PlanTTL, err = optionalDuration("plan_ttl", req.PlanTTL); err != nil {
		return spec, err
	}
	if spec.MaxErrorRate, err = parseRate(string(req.MaxErrorRate)); err != nil {
		return spec, errBadRequest("max_error_rate: %v", err)
	}
	return spec, nil
}

func optionalDuration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errBadRequest("%s: %.40q is not a duration like 10m or 1h30m", field, s)
	}
	return d, nil
}

// parseRate reads "2%" or a fraction ("0.02"); "" is 0.
func parseRate(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	pct, isPct := strings.CutSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(pct), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%.40q is not a percentage (2%%) or a fraction (0.02)", s)
	}
	if isPct {
		v /= 100
	}
	if v < 0 || v > 1 {
		return 0, fmt.Errorf("%.40q is outside 0%%..100%%", s)
	}
	return v, nil
}

func (s *server) nudgeRollouts() {
	if s.cfg.Rollouts != nil {
		s.cfg.Rollouts.Nudge()
	}
}

func (s *server) listRollouts(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	active := false
	if v := q.Get("active"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errBadRequest("active: must be true or false")
		}
		active = b
	}
	limit := defaultRolloutPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxRolloutPage {
			return errBadRequest("limit: must be between 1 and %d", maxRolloutPage)
		}
		limit = n
	}
	rs, err := s.cfg.Store.ListRollouts(r.Context(), active)
	if err != nil {
		return err
	}
	rs = rs[:min(len(rs), limit)]
	out := apiv1.RolloutList{Rollouts: make([]apiv1.Rollout, 0, len(rs))}
	for _, ro := range rs {
		ts, err := s.cfg.Store.RolloutTargets(r.Context(), ro.ID)
		if err != nil {
			return err
		}
		out.Rollouts = append(out.Rollouts, rolloutOut(ro, ts, false))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) getRollout(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	if err := validRolloutID(id); err != nil {
		return err
	}
	ro, err := s.cfg.Store.GetRollout(r.Context(), id)
	if err != nil {
		return storeError(err, "rollout "+id)
	}
	ts, err := s.cfg.Store.RolloutTargets(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rolloutOut(ro, ts, true))
	return nil
}

// controlRollout records an operator's pause, resume or abort; the
// replica driving the rollout acts on it at its next pass (nudged now).
func (s *server) controlRollout(ctl store.RolloutControl, verb string) func(http.ResponseWriter, *http.Request, *call) error {
	return func(w http.ResponseWriter, r *http.Request, c *call) error {
		id := r.PathValue("id")
		if err := validRolloutID(id); err != nil {
			return err
		}
		c.target = id
		ctx := r.Context()
		cur, err := s.cfg.Store.GetRollout(ctx, id)
		if err != nil {
			return storeError(err, "rollout "+id)
		}
		if cur.Control == store.ControlAbort && ctl != store.ControlAbort && cur.FinishedAt == nil {
			return &apiError{status: http.StatusConflict, msg: fmt.Sprintf(
				"rollout %s is being aborted; it cannot be %s (start a new rollout instead)", id, verb)}
		}
		detail := map[string]any{"release": cur.Release, "state": string(cur.State), "previous_control": string(cur.Control)}
		ro, err := s.cfg.Store.SetRolloutControl(ctx, id, ctl, c.entry(auditlog.OutcomeSuccess, detail))
		switch {
		case errors.Is(err, store.ErrFinished):
			return &apiError{status: http.StatusConflict, err: err, msg: fmt.Sprintf(
				"rollout %s has finished (%s: %s) and can no longer be %s", id, cur.State, cur.Reason, verb)}
		case err != nil:
			return storeError(err, "rollout "+id)
		}
		s.nudgeRollouts()
		ts, err := s.cfg.Store.RolloutTargets(ctx, id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, rolloutOut(ro, ts, true))
		return nil
	}
}

// rolloutOut shows a rollout with its per-wave summary and, withTargets,
// every target.
func rolloutOut(ro store.Rollout, ts []store.RolloutTarget, withTargets bool) apiv1.Rollout {
	out := apiv1.Rollout{
		ID:         ro.ID,
		Release:    ro.Release,
		State:      string(ro.State),
		Reason:     ro.Reason,
		Message:    ro.Message,
		Control:    string(ro.Control),
		Wave:       ro.Wave,
		WaveName:   waveName(ro, ro.Wave),
		Spec:       specOut(ro.Spec),
		CreatedBy:  ro.CreatedBy,
		CreatedAt:  ro.CreatedAt.UTC(),
		UpdatedAt:  ro.UpdatedAt.UTC(),
		WaveDoneAt: utcPtr(ro.WaveDoneAt),
		FinishedAt: utcPtr(ro.FinishedAt),
		LeaseOwner: ro.LeaseOwner,
		LeaseUntil: utcPtr(ro.LeaseUntil),
		Waves:      make([]apiv1.RolloutWave, len(ro.Spec.Waves)),
	}
	for i, w := range ro.Spec.Waves {
		out.Waves[i] = apiv1.RolloutWave{Index: i, Name: w.Name, Counts: map[string]int{}}
	}
	for _, t := range ts {
		if t.Wave >= 0 && t.Wave < len(out.Waves) {
			w := &out.Waves[t.Wave]
			w.Size++
			w.Counts[string(t.State)]++
			if t.State.Done() {
				w.Done++
			}
		}
		if withTargets {
			out.Targets = append(out.Targets, apiv1.RolloutTarget{
				Tenant:          t.Tenant,
				Wave:            t.Wave,
				WaveName:        waveName(ro, t.Wave),
				State:           string(t.State),
				PlanID:          t.PlanID,
				PreviousRelease: t.PreviousRelease,
				RollbackPlanID:  t.RollbackPlanID,
				Message:         t.Message,
				UpdatedAt:       t.UpdatedAt.UTC(),
			})
		}
	}
	if withTargets && out.Targets == nil {
		out.Targets = []apiv1.RolloutTarget{}
	}
	return out
}

func waveName(ro store.Rollout, i int) string {
	if i >= 0 && i < len(ro.Spec.Waves) {
		return ro.Spec.Waves[i].Name
	}
	return ""
}

func specOut(sp store.RolloutSpec) apiv1.RolloutSpec {
	return apiv1.RolloutSpec{
		Selector:      formatSelector(sp.Selector),
		Tenants:       sp.Tenants,
		Waves:         rollout.FormatWaves(sp.Waves),
		Bake:          sp.Bake.String(),
		MaxFailed:     sp.MaxFailed,
		MaxErrorRate:  sp.MaxErrorRate,
		Concurrency:   sp.Concurrency,
		PlanTTL:       sp.PlanTTL.String(),
		IgnoreWindows: sp.IgnoreWindows,
	}
}

// formatSelector is rollout.ParseSelector's inverse.
func formatSelector(sel map[string]string) string {
	if sel["*"] == "*" {
		return "all"
	}
	parts := make([]string, 0, len(sel))
	for _, k := range slices.Sorted(maps.Keys(sel)) {
		parts = append(parts, k+"="+sel[k])
	}
	return strings.Join(parts, ",")
}
