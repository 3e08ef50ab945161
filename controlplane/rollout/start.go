package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

// Limits and defaults of a rollout spec.
const (
	MaxWaves           = 10
	MaxBake            = 24 * time.Hour
	DefaultConcurrency = 10
	MaxConcurrency     = 1000
	DefaultPlanTTL     = time.Hour
)

// ErrInvalid: the rollout request is not valid; the text names the field.
var ErrInvalid = errors.New("invalid rollout")

// ErrNoTenants: the selector matches no tenant.
var ErrNoTenants = errors.New("no tenant matches")

// ParseWaves reads the operator's wave list: "canary:2,10%,50%,100%". Each
// item is a count of tenants or a cumulative percentage of all selected
// tenants, optionally named ("canary:2"); unnamed waves are "wave-<n>".
func ParseWaves(s string) ([]store.Wave, error) {
	var out []store.Wave
	for i, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		w := store.Wave{Name: "wave-" + strconv.Itoa(i+1)}
		if name, size, ok := strings.Cut(item, ":"); ok {
			w.Name, item = strings.TrimSpace(name), strings.TrimSpace(size)
		}
		if pct, ok := strings.CutSuffix(item, "%"); ok {
			n, err := strconv.Atoi(pct)
			if err != nil || n < 1 || n > 100 {
				return nil, fmt.Errorf("%w: waves[%d] %q: a percentage is 1%%..100%%", ErrInvalid, i, item)
			}
			w.Percent = n
		} else {
			n, err := strconv.Atoi(item)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("%w: waves[%d] %q: want a tenant count (2) or a percentage (10%%)", ErrInvalid, i, item)
			}
			w.Count = n
		}
		out = append(out, w)
	}
	return out, nil
}

// FormatWaves is ParseWaves' inverse.
func FormatWaves(ws []store.Wave) string {
	parts := make([]string, len(ws))
	for i, w := range ws {
		size := strconv.Itoa(w.Count)
		if w.Percent > 0 {
			size = strconv.Itoa(w.Percent) + "%"
		}
		parts[i] = w.Name + ":" + size
	}
	return strings.Join(parts, ",")
}

// Validate checks a spec and fills in defaults; errors name the field.
func Validate(spec *store.RolloutSpec) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(spec.Waves) == 0 {
		bad("waves: at least one wave is needed (e.g. canary:2,50%%,100%%)")
	}
	if len(spec.Waves) > MaxWaves {
		bad("waves: %d waves, limit %d", len(spec.Waves), MaxWaves)
	}
	names := map[string]bool{}
	prevPct := 0
	for i, w := range spec.Waves {
		if w.Name == "" || len(w.Name) > 32 || strings.ContainsAny(w.Name, " ,:") {
			bad("waves[%d].name: %q is not a short name without spaces, commas or colons", i, w.Name)
		}
		if names[w.Name] {
			bad("waves[%d].name: %q used twice", i, w.Name)
		}
		names[w.Name] = true
		if (w.Count > 0) == (w.Percent > 0) {
			bad("waves[%d]: give a count or a percentage", i)
		}
		if w.Percent > 0 {
			if w.Percent < prevPct {
				bad("waves[%d]: %d%% is less than the wave before (%d%%); percentages are cumulative", i, w.Percent, prevPct)
			}
			prevPct = w.Percent
		}
	}
	if n := len(spec.Waves); n > 0 && spec.Waves[n-1].Percent != 100 {
		bad("waves: the last wave must be 100%% so every selected tenant is reached (got %s)", FormatWaves(spec.Waves[n-1:]))
	}
	if spec.Bake < 0 || spec.Bake > MaxBake {
		bad("bake: %s is outside 0..%s", spec.Bake, MaxBake)
	}
	if spec.MaxFailed < 0 {
		bad("max_failed: %d is negative", spec.MaxFailed)
	}
	if spec.MaxErrorRate < 0 || spec.MaxErrorRate > 1 {
		bad("max_error_rate: %g is outside 0..1 (100%%)", spec.MaxErrorRate)
	}
	if spec.Concurrency == 0 {
		spec.Concurrency = DefaultConcurrency
	}
	if spec.Concurrency < 1 || spec.Concurrency > MaxConcurrency {
		bad("concurrency: %d is outside 1..%d", spec.Concurrency, MaxConcurrency)
	}
	if spec.PlanTTL == 0 {
		spec.PlanTTL = DefaultPlanTTL
	}
	if spec.PlanTTL < time.Minute || spec.PlanTTL > 7*24*time.Hour {
		bad("plan_ttl: %s is outside 1m..168h", spec.PlanTTL)
	}
	if len(spec.Selector) == 0 && len(spec.Tenants) == 0 {
		bad("selector: give a label selector (tier=silo, region=eu) or tenants; an empty selection would be every tenant — say --selector all to mean that")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// ParseSelector reads "k=v,k2=v2"; "all" selects every tenant. The key
// "tier" matches the tenant's tier, other keys its labels.
func ParseSelector(s string) (map[string]string, error) {
	s = strings.TrimSpace(s)
	if s == "all" {
		return map[string]string{"*": "*"}, nil
	}
	out := map[string]string{}
	for i, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: selector[%d] %q: want key=value", ErrInvalid, i, part)
		}
		out[k] = v
	}
	return out, nil
}

// Matches reports whether tenant t is selected by sel.
func Matches(sel map[string]string, t store.Tenant) bool {
	if sel["*"] == "*" {
		return true
	}
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if k == "tier" {
			if t.Tier != v {
				return false
			}
			continue
		}
		if t.Labels[k] != v {
			return false
		}
	}
	return true
}

// StartRequest starts a rollout.
type StartRequest struct {
	Actor, Role, Source, RequestID string
	Release                        string
	Spec                           store.RolloutSpec
	Now                            time.Time
}

// Start validates the request, selects the tenants, assigns them to waves
// (in name order, so a rerun assigns the same way) and stores the rollout
// with its targets, audited as "rollout.start". The driver picks it up.
func Start(ctx context.Context, st store.Store, req StartRequest) (store.Rollout, []store.RolloutTarget, error) {
	spec := req.Spec
	if err := Validate(&spec); err != nil {
		return store.Rollout{}, nil, err
	}
	if _, err := st.GetRelease(ctx, req.Release); err != nil {
		return store.Rollout{}, nil, fmt.Errorf("release %q: %w (push it first: attache release push)", req.Release, err)
	}
	tenants, err := st.ListTenants(ctx)
	if err != nil {
		return store.Rollout{}, nil, err
	}
	var chosen []store.Tenant
	for _, t := range tenants {
		if Matches(spec.Selector, t) || slices.Contains(spec.Tenants, t.Name) {
			chosen = append(chosen, t)
		}
	}
	for _, name := range spec.Tenants {
		if !slices.ContainsFunc(tenants, func(t store.Tenant) bool { return t.Name == name }) {
			return store.Rollout{}, nil, fmt.Errorf("%w: tenants: %q does not exist", ErrInvalid, name)
		}
	}
	if len(chosen) == 0 {
		return store.Rollout{}, nil, fmt.Errorf("%w the selector %v", ErrNoTenants, spec.Selector)
	}
	slices.SortFunc(chosen, func(a, b store.Tenant) int { return strings.Compare(a.Name, b.Name) })
	targets := Assign(spec.Waves, chosen)
	now := req.Now
	if now.IsZero() {
		now = time.Now()
	}
	id, err := newID(now)
	if err != nil {
		return store.Rollout{}, nil, err
	}
	r := store.Rollout{
		ID: id, Release: req.Release, Spec: spec, State: store.RolloutProgressing, Reason: "Started",
		Message: fmt.Sprintf("%d tenants in %d waves (%s)", len(chosen), len(spec.Waves), FormatWaves(spec.Waves)), CreatedBy: req.Actor, CreatedAt: now,
	}
	detail, _ := json.Marshal(map[string]any{
		"release": req.Release, "tenants": len(chosen), "waves": FormatWaves(spec.Waves), "bake": spec.Bake.String(),
		"max_failed": spec.MaxFailed, "max_error_rate": spec.MaxErrorRate, "concurrency": spec.Concurrency, "selector": spec.Selector,
	})
	audit := auditlog.Entry{Time: now, Actor: req.Actor, Role: req.Role, Action: "rollout.start", Target: id,
		RequestID: req.RequestID, Outcome: auditlog.OutcomeSuccess, Source: req.Source, Detail: detail}
	for i := range targets {
		targets[i].RolloutID = id
	}
	if err := st.CreateRollout(ctx, r, targets, audit); err != nil {
		return store.Rollout{}, nil, err
	}
	return r, targets, nil
}

// Assign puts tenants (in order) into waves: a count adds that many to the
// waves before, a percentage takes the cumulative share (rounded up) of all.
func Assign(waves []store.Wave, tenants []store.Tenant) []store.RolloutTarget {
	n := len(tenants)
	var out []store.RolloutTarget
	next := 0
	for wi, w := range waves {
		end := next + w.Count
		if w.Percent > 0 {
			end = (w.Percent*n + 99) / 100
		}
		if wi == len(waves)-1 {
			end = n
		}
		end = min(max(end, next), n)
		for pos, t := range tenants[next:end] {
			out = append(out, store.RolloutTarget{Tenant: t.Name, Wave: wi, Position: pos, State: store.TargetPending, PreviousRelease: t.Release})
		}
		next = end
	}
	return out
}

func newID(now time.Time) (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "ro-" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:]), nil
}
