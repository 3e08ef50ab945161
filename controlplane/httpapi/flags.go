package httpapi

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/plans"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/release"
)

// flagKeyPattern is a feature flag's key, as releases declare them.
var flagKeyPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// flagChange is one request's change to a tenant's flags.
type flagChange struct {
	set   map[string]string
	unset []string
}

// check validates the change on its own; errors name the key.
func (ch flagChange) check() error {
	if len(ch.set) == 0 && len(ch.unset) == 0 {
		return errBadRequest("nothing to change: give set ({\"key\": \"value\"}) or unset ([\"key\"])")
	}
	if len(ch.set) > release.MaxFlags {
		return errBadRequest("set: %d flags, limit %d", len(ch.set), release.MaxFlags)
	}
	if len(ch.unset) > release.MaxFlags {
		return errBadRequest("unset: %d flags, limit %d", len(ch.unset), release.MaxFlags)
	}
	for _, k := range slices.Sorted(maps.Keys(ch.set)) {
		v := ch.set[k]
		switch {
		case !flagKeyPattern.MatchString(k):
			return errBadRequest("set: key %.70q: a flag key is 1-64 of a-z, 0-9, '_', '.' and '-', starting with a letter or digit", k)
		case len(v) > release.MaxFlagValueBytes:
			return errBadRequest("set: %s: value is %d bytes, limit %d (1 KiB)", k, len(v), release.MaxFlagValueBytes)
		case !utf8.ValidString(v):
			return errBadRequest("set: %s: value is not valid UTF-8", k)
		}
	}
	for i, k := range ch.unset {
		if !flagKeyPattern.MatchString(k) {
			return errBadRequest("unset[%d]: key %.70q: a flag key is 1-64 of a-z, 0-9, '_', '.' and '-', starting with a letter or digit", i, k)
		}
		if _, ok := ch.set[k]; ok {
			return errBadRequest("unset[%d]: %s is also in set", i, k)
		}
	}
	return nil
}

// detail is the change for the audit trail.
func (ch flagChange) detail() map[string]any {
	d := map[string]any{}
	if len(ch.set) > 0 {
		d["set"] = ch.set
	}
	if len(ch.unset) > 0 {
		d["unset"] = ch.unset
	}
	return d
}

// flagCheck holds what one request learned while checking flag changes:
// the releases it verified and the active rollouts' targets by tenant.
type flagCheck struct {
	s        *server
	releases map[string]verifiedRelease
	active   map[string][]activeTarget
}

type verifiedRelease struct {
	row store.Release
	rel *release.Release
	err error
}

// activeTarget is a tenant's place in an unfinished rollout.
type activeTarget struct {
	rollout store.Rollout
	target  store.RolloutTarget
}

func (s *server) newFlagCheck(ctx context.Context) (*flagCheck, error) {
	fc := &flagCheck{s: s, releases: map[string]verifiedRelease{}, active: map[string][]activeTarget{}}
	rs, err := s.cfg.Store.ListRollouts(ctx, true)
	if err != nil {
		return nil, err
	}
	for _, ro := range rs {
		ts, err := s.cfg.Store.RolloutTargets(ctx, ro.ID)
		if err != nil {
			return nil, err
		}
		for _, t := range ts {
			fc.active[t.Tenant] = append(fc.active[t.Tenant], activeTarget{rollout: ro, target: t})
		}
	}
	return fc, nil
}

// release returns the stored release version, verified against the
// current trust root (the plan rendered from it will be).
func (fc *flagCheck) release(ctx context.Context, version string) (store.Release, *release.Release, error) {
	if v, ok := fc.releases[version]; ok {
		return v.row, v.rel, v.err
	}
	var v verifiedRelease
	v.row, v.err = fc.s.cfg.Store.GetRelease(ctx, version)
	if v.err == nil {
		v.rel, v.err = release.Verify(ctx, fc.s.cfg.ReleaseRoot(), v.row.Envelope)
		if v.err != nil {
			v.err = &apiError{status: http.StatusConflict, err: v.err, msg: fmt.Sprintf(
				"release %s no longer verifies against the trust root (%v), so no plan can be rendered from it; roll out a release signed by the current release key", version, v.err)}
		}
	}
	fc.releases[version] = v
	return v.row, v.rel, v.err
}

// tenant checks a flag change for tenant t before anything is stored: the
// keys set must be declared by its current release (its plans are rendered
// from it, and rollbacks return to it) and by the release of any active
// rollout that has yet to reach it; and no rollout plan may be in flight
// for it (a plan re-applying its current release would overtake the
// upgrade). It returns the tenant's current release, nil without one.
func (fc *flagCheck) tenant(ctx context.Context, t store.Tenant, ch flagChange) (*store.Release, error) {
	var cur *store.Release
	if t.Release != "" {
		row, rel, err := fc.release(ctx, t.Release)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, &apiError{status: http.StatusConflict, err: err, msg: fmt.Sprintf("tenant %s runs release %s, which is not stored", t.Name, t.Release)}
			}
			return nil, err
		}
		if _, err := release.MergeFlags(rel, ch.set); err != nil {
			return nil, errBadRequest("set: %s (the release tenant %s runs)", oneLine(err), t.Name)
		}
		cur = &row
	}
	for _, at := range fc.active[t.Name] {
		ro, tg := at.rollout, at.target
		switch tg.State {
		case store.TargetDispatched, store.TargetRollingBack:
			plan := tg.PlanID
			if tg.State == store.TargetRollingBack && tg.RollbackPlanID != "" {
				plan = tg.RollbackPlanID
			}
			return nil, &apiError{status: http.StatusConflict, msg: fmt.Sprintf(
				"tenant %s: rollout %s has a plan in flight for it (%s, target %s); change its flags once that plan is done (attache rollout status %s)",
				t.Name, ro.ID, orNone(plan), tg.State, ro.ID)}
		case store.TargetPending, store.TargetWaiting:
			if ro.Release == t.Release || len(ch.set) == 0 {
				continue
			}
			_, rel, err := fc.release(ctx, ro.Release)
			if err != nil {
				return nil, err
			}
			if _, err := release.MergeFlags(rel, ch.set); err != nil {
				return nil, errBadRequest("set: %s (rollout %s is about to apply it to tenant %s)", oneLine(err), ro.ID, t.Name)
			}
		}
	}
	return cur, nil
}

// applyFlags stores a checked change to tenant t's flags, audited as
// flag.set, and re-applies the tenant's current release (cur; nil: none
// yet) with them, so they reach its agent now.
func (s *server) applyFlags(ctx context.Context, c *call, t store.Tenant, cur *store.Release, ch flagChange, detail map[string]any) (apiv1.FlagChange, error) {
	detail["release"] = t.Release
	entry := c.entry(auditlog.OutcomeSuccess, detail)
	entry.Tenant, entry.Target = t.Name, t.Name
	updated, err := s.cfg.Store.UpdateTenant(ctx, t.Name, func(stored *store.Tenant) error {
		if stored.Release != t.Release {
			return &apiError{status: http.StatusConflict, msg: fmt.Sprintf(
				"tenant %s moved from release %s to %s while its flags were checked; try again", t.Name, orNone(t.Release), orNone(stored.Release))}
		}
		flags := maps.Clone(stored.Flags)
		if flags == nil {
			flags = map[string]string{}
		}
		maps.Copy(flags, ch.set)
		for _, k := range ch.unset {
			delete(flags, k)
		}
		if len(flags) > release.MaxFlags {
			return errBadRequest("tenant %s would have %d flags, limit %d", t.Name, len(flags), release.MaxFlags)
		}
		stored.Flags = flags
		return nil
	}, &entry)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			return apiv1.FlagChange{}, err
		}
		return apiv1.FlagChange{}, storeError(err, "tenant "+t.Name)
	}
	var rel *release.Release
	if cur != nil {
		rel, _ = release.Peek(cur.Envelope) // verified by flagCheck
	}
	out := apiv1.FlagChange{TenantFlags: flagsOut(updated, rel)}
	if cur == nil {
		out.Delivery = fmt.Sprintf("stored; tenant %s has no release yet: the flags apply with its first release", t.Name)
		return out, nil
	}
	notDelivered := func(err error) (apiv1.FlagChange, error) {
		s.log.Warn("flags stored but not delivered", "tenant", t.Name, "request_id", c.requestID, "err", err)
		out.Delivery = fmt.Sprintf("stored but NOT delivered: %s; the flags apply with tenant %s's next plan", oneLine(err), t.Name)
		return out, nil
	}
	agent, err := s.cfg.Plans.CellAgent(ctx, updated)
	if err != nil {
		return notDelivered(err)
	}
	p, err := s.cfg.Plans.SubmitRelease(ctx, plans.ReleasePlanRequest{
		Actor: c.actor, Role: c.role, Source: c.source, RequestID: c.requestID,
		Tenant: updated, Agent: agent, Release: *cur, Reason: "flags",
	})
	if err != nil {
		return notDelivered(err)
	}
	out.PlanID = p.ID
	out.Delivery = fmt.Sprintf("delivered to agent %s/%s: plan %s re-applies release %s with the new flags", agent.Tenant, agent.ID, p.ID, cur.Version)
	if f, err := s.cfg.Store.GetFreeze(ctx); err == nil && f != nil {
		out.Delivery += "; the fleet is frozen, so the agent receives it after attache unfreeze"
	}
	return out, nil
}

func (s *server) getTenantFlags(w http.ResponseWriter, r *http.Request, c *call) error {
	name := r.PathValue("name")
	if err := validTenantName(name); err != nil {
		return errBadRequest("name: %v", err)
	}
	t, err := s.cfg.Store.GetTenant(r.Context(), name)
	if err != nil {
		return storeError(err, "tenant "+name)
	}
	var rel *release.Release
	if t.Release != "" {
		row, err := s.cfg.Store.GetRelease(r.Context(), t.Release)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err == nil {
			rel, _ = release.Peek(row.Envelope) // verified at push; display only
		}
	}
	writeJSON(w, http.StatusOK, flagsOut(t, rel))
	return nil
}

func (s *server) setTenantFlags(w http.ResponseWriter, r *http.Request, c *call) error {
	name := r.PathValue("name")
	if err := validTenantName(name); err != nil {
		return errBadRequest("name: %v", err)
	}
	c.tenant, c.target = name, name
	var req apiv1.SetFlagsRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	ch := flagChange{set: req.Set, unset: req.Unset}
	if err := ch.check(); err != nil {
		return err
	}
	ctx := r.Context()
	t, err := s.cfg.Store.GetTenant(ctx, name)
	if err != nil {
		return storeError(err, "tenant "+name)
	}
	fc, err := s.newFlagCheck(ctx)
	if err != nil {
		return err
	}
	cur, err := fc.tenant(ctx, t, ch)
	if err != nil {
		return err
	}
	out, err := s.applyFlags(ctx, c, t, cur, ch, ch.detail())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// rolloutFlags is POST /v1/rollouts/{id}/flags: the same flag change for
// every tenant of one wave, all checked before any is stored.
func (s *server) rolloutFlags(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	if err := validRolloutID(id); err != nil {
		return err
	}
	c.target = id
	var req apiv1.RolloutFlagsRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	ch := flagChange{set: req.Set, unset: req.Unset}
	if err := ch.check(); err != nil {
		return err
	}
	ctx := r.Context()
	ro, err := s.cfg.Store.GetRollout(ctx, id)
	if err != nil {
		return storeError(err, "rollout "+id)
	}
	wave, err := resolveWave(ro, req.Wave)
	if err != nil {
		return err
	}
	targets, err := s.cfg.Store.RolloutTargets(ctx, id)
	if err != nil {
		return err
	}
	fc, err := s.newFlagCheck(ctx)
	if err != nil {
		return err
	}
	type checked struct {
		t   store.Tenant
		cur *store.Release
	}
	var todo []checked
	for _, tg := range targets {
		if tg.Wave != wave {
			continue
		}
		t, err := s.cfg.Store.GetTenant(ctx, tg.Tenant)
		if err != nil {
			return storeError(err, "tenant "+tg.Tenant)
		}
		cur, err := fc.tenant(ctx, t, ch)
		if err != nil {
			return err
		}
		todo = append(todo, checked{t, cur})
	}
	name := ro.Spec.Waves[wave].Name
	if len(todo) == 0 {
		return errBadRequest("wave: wave %s of rollout %s has no tenants", name, id)
	}
	out := apiv1.RolloutFlags{Rollout: id, Wave: wave, WaveName: name, Tenants: make([]apiv1.FlagChange, 0, len(todo))}
	for i, x := range todo {
		detail := ch.detail()
		detail["rollout"], detail["wave"] = id, name
		res, err := s.applyFlags(ctx, c, x.t, x.cur, ch, detail)
		if err != nil {
			done := make([]string, 0, i)
			for _, d := range todo[:i] {
				done = append(done, d.t.Name)
			}
			return prefixError(err, fmt.Sprintf("tenant %s (flags already changed for: %s)", x.t.Name, orNone(strings.Join(done, ", "))))
		}
		out.Tenants = append(out.Tenants, res)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// resolveWave finds a rollout's wave by name or index.
func resolveWave(ro store.Rollout, ref apiv1.WaveRef) (int, error) {
	names := make([]string, len(ro.Spec.Waves))
	for i, w := range ro.Spec.Waves {
		names[i] = w.Name
		if w.Name == string(ref) {
			return i, nil
		}
	}
	if ref == "" {
		return 0, errBadRequest("wave: required: a wave name (%s) or index (0-%d)", strings.Join(names, ", "), len(names)-1)
	}
	var i int
	if _, err := fmt.Sscan(string(ref), &i); err == nil && fmt.Sprint(i) == string(ref) && i >= 0 && i < len(names) {
		return i, nil
	}
	return 0, errBadRequest("wave: rollout %s has no wave %.40q (waves: %s, or an index 0-%d)", ro.ID, string(ref), strings.Join(names, ", "), len(names)-1)
}

// flagsOut shows a tenant's flags; rel is its current release (nil when it
// has none or it does not decode).
func flagsOut(t store.Tenant, rel *release.Release) apiv1.TenantFlags {
	out := apiv1.TenantFlags{Tenant: t.Name, Release: t.Release, Overrides: t.Flags}
	if out.Overrides == nil {
		out.Overrides = map[string]string{}
	}
	if rel != nil {
		out.Defaults = rel.Flags
		out.Effective = maps.Clone(rel.Flags)
		if out.Effective == nil {
			out.Effective = map[string]string{}
		}
		maps.Copy(out.Effective, t.Flags)
	}
	return out
}

// prefixError puts what in front of err's message, keeping its status.
func prefixError(err error, what string) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return &apiError{status: ae.status, msg: what + ": " + ae.msg, err: ae.err}
	}
	return err
}

// oneLine joins a multi-line error (errors.Join) with "; ".
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
