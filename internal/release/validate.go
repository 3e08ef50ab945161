package release

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
)

var (
	versionPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	keyPattern       = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
	migrationPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	imageRefPattern  = func() *regexp.Regexp {
		// The grammar of github.com/distribution/reference, pinned by
		// digest: [domain[:port]/]path[:tag]@sha256:<64 hex>.
		const (
			domainComponent = `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])`
			domain          = domainComponent + `(?:\.` + domainComponent + `)*(?::[0-9]+)?`
			pathComponent   = `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`
			name            = `(?:` + domain + `/)?` + pathComponent + `(?:/` + pathComponent + `)*`
			tag             = `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
		)
		return regexp.MustCompile(`^` + name + `(?::` + tag + `)?@sha256:[0-9a-f]{64}$`)
	}()
)

// validKey reports whether s may be a flag, image or tier value key.
func validKey(s string) bool { return keyPattern.MatchString(s) }

// probeTenant is the tenant Validate renders for: a valid name of the
// greatest length, so that length limits hold for every tenant.
var probeTenant = "tenant-" + strings.Repeat("x", 56)

// Validate reports every problem with r at once (errors.Join), each naming
// the field concerned. A valid release has:
//
//   - a name that is a lowercase DNS label, and a version matching
//     [A-Za-z0-9][A-Za-z0-9._+-]{0,63};
//   - at most MaxImages images, each named [a-z0-9][a-z0-9_.-]{0,63} and
//     pinned by digest (repo[:tag]@sha256:<64 lowercase hex>);
//   - manifests of at most MaxManifestsBytes, valid UTF-8;
//   - at most MaxMigrations migrations with versions from 1 to 2^53,
//     strictly increasing, a name ([A-Za-z0-9][A-Za-z0-9_.-]{0,127}) and
//     non-empty SQL;
//   - at most MaxFlags flags, keys [a-z0-9][a-z0-9_.-]{0,63}, values of at
//     most MaxFlagValueBytes;
//   - tiers among pool, bridge, silo and byoc, each with at most
//     MaxTierValues values (keys as flags, values of at most
//     MaxValueBytes);
//   - 1 to plan.MaxSteps step templates, on_rollback empty, run or skip,
//     whose template strings name only known placeholders (images that
//     exist; flags, migrations, manifests and images only as the whole
//     value of a parameter, never in a resource or inside a string);
//   - and steps that render (Render) for every tier listed (for pool with
//     no values if none is), both forward and for a rollback, into steps
//     that pass plan.ValidateSteps: ids unique lowercase DNS labels,
//     provider and action syntax, a resource, dependencies that exist and
//     form no cycle, and a well-formed compensation.
func (r *Release) Validate() error {
	if r == nil {
		return errors.New("release is nil")
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if !identity.ValidName(r.Name) {
		add("name %.64q is not a lowercase DNS label ([a-z0-9-], at most 63, starting and ending alphanumeric)", r.Name)
	}
	if !versionPattern.MatchString(r.Version) {
		add("version %.64q is not well-formed (want [A-Za-z0-9][A-Za-z0-9._+-]{0,63}, e.g. 1.4.0)", r.Version)
	}

	if n := len(r.Images); n > MaxImages {
		add("images has %d entries, limit %d", n, MaxImages)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Images)) {
		ref := r.Images[k]
		if !validKey(k) {
			add("images%s: image name is not well-formed (want [a-z0-9][a-z0-9_.-]{0,63})", keyPath(k))
		}
		switch {
		case len(ref) > MaxImageRefBytes:
			add("images%s: reference is %d bytes, limit %d", keyPath(k), len(ref), MaxImageRefBytes)
		case !imageRefPattern.MatchString(ref):
			add("images%s: %.128q is not an image reference pinned by digest (want repo[:tag]@sha256:<64 lowercase hex>)", keyPath(k), ref)
		}
	}

	if n := len(r.Manifests); n > MaxManifestsBytes {
		add("manifests is %d bytes, limit %d (512 KiB)", n, MaxManifestsBytes)
	} else if !utf8.ValidString(r.Manifests) {
		add("manifests is not valid UTF-8")
	}

	if n := len(r.Migrations); n > MaxMigrations {
		add("migrations has %d entries, limit %d", n, MaxMigrations)
	} else {
		var prev int64
		for i, m := range r.Migrations {
			at := fmt.Sprintf("migrations[%d]", i)
			switch {
			case m.Version < 1:
				add("%s.version is %d, want 1 or more", at, m.Version)
			case m.Version > maxVersion:
				add("%s.version is %d, limit 2^53", at, m.Version)
			case i > 0 && m.Version <= prev:
				add("%s.version is %d, not greater than the version before it (%d); versions must strictly increase", at, m.Version, prev)
			}
			prev = m.Version
			if !migrationPattern.MatchString(m.Name) {
				add("%s.name %.64q is not well-formed (want [A-Za-z0-9][A-Za-z0-9_.-]{0,127})", at, m.Name)
			}
			switch {
			case strings.TrimSpace(m.SQL) == "":
				add("%s.sql is empty", at)
			case !utf8.ValidString(m.SQL):
				add("%s.sql is not valid UTF-8", at)
			}
		}
	}

	if n := len(r.Flags); n > MaxFlags {
		add("flags has %d entries, limit %d", n, MaxFlags)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Flags)) {
		v := r.Flags[k]
		if !validKey(k) {
			add("flags%s: flag name is not well-formed (want [a-z0-9][a-z0-9_.-]{0,63})", keyPath(k))
		}
		switch {
		case len(v) > MaxFlagValueBytes:
			add("flags%s: value is %d bytes, limit %d", keyPath(k), len(v), MaxFlagValueBytes)
		case !utf8.ValidString(v):
			add("flags%s: value is not valid UTF-8", keyPath(k))
		}
	}

	for _, tier := range slices.Sorted(maps.Keys(r.Tiers)) {
		values := r.Tiers[tier]
		if !slices.Contains(AllTiers, tier) {
			add("tiers%s: unknown tier (want one of %s)", keyPath(tier), strings.Join(AllTiers, ", "))
			continue
		}
		if n := len(values); n > MaxTierValues {
			add("tiers.%s has %d values, limit %d", tier, n, MaxTierValues)
		}
		for _, k := range slices.Sorted(maps.Keys(values)) {
			v := values[k]
			if !validKey(k) {
				add("tiers.%s%s: key is not well-formed (want [a-z0-9][a-z0-9_.-]{0,63})", tier, keyPath(k))
			}
			switch {
			case len(v) > MaxValueBytes:
				add("tiers.%s%s: value is %d bytes, limit %d", tier, keyPath(k), len(v), MaxValueBytes)
			case !utf8.ValidString(v):
				add("tiers.%s%s: value is not valid UTF-8", tier, keyPath(k))
			}
		}
	}

	switch n := len(r.Steps); {
	case n == 0:
		add("steps is empty; a release has at least one step")
	case n > plan.MaxSteps:
		add("steps has %d entries, limit %d", n, plan.MaxSteps)
	default:
		for i := range r.Steps {
			errs = append(errs, r.checkStep(i)...)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return r.checkRenders()
}

// stepName names step i in errors: steps[3] "migrate".
func (r *Release) stepName(i int) string {
	if id := r.Steps[i].ID; id != "" {
		return fmt.Sprintf("steps[%d] %.64q", i, id)
	}
	return fmt.Sprintf("steps[%d]", i)
}

// checkStep checks what rendering does not: on_rollback and the
// placeholders of step i's template strings.
func (r *Release) checkStep(i int) []error {
	s := &r.Steps[i]
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(r.stepName(i)+": "+format, args...))
	}
	switch s.OnRollback {
	case "", OnRollbackRun, OnRollbackSkip:
	default:
		add("on_rollback is %.64q, want run or skip", s.OnRollback)
	}
	if err := checkTemplate(r, s.Resource, false); err != nil {
		add("resource: %v", err)
	}
	if err := r.checkParams(s.Params, 1); err != nil {
		add("params%v", err)
	}
	if c := s.Compensation; c != nil {
		if err := r.checkParams(c.Params, 1); err != nil {
			add("compensation.params%v", err)
		}
	}
	return errs
}

// checkParams checks the keys, value types and template strings of params,
// in key order; the error's text starts with the path below params.
func (r *Release) checkParams(m map[string]any, depth int) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if strings.Contains(k, "{{") {
			return &pathError{keyPath(k), errors.New("placeholders are substituted in values, not in keys")}
		}
		if err := r.checkValue(m[k], depth+1); err != nil {
			return prefix(keyPath(k), err)
		}
	}
	return nil
}

func (r *Release) checkValue(v any, depth int) error {
	if depth > plan.MaxParamsDepth {
		return &pathError{"", fmt.Errorf("nested deeper than %d levels", plan.MaxParamsDepth)}
	}
	switch t := v.(type) {
	case nil, bool:
	case string:
		if !utf8.ValidString(t) {
			return &pathError{"", errors.New("string is not valid UTF-8")}
		}
		if err := checkTemplate(r, t, true); err != nil {
			return &pathError{"", err}
		}
	case []any:
		for i, e := range t {
			if err := r.checkValue(e, depth+1); err != nil {
				return prefix(fmt.Sprintf("[%d]", i), err)
			}
		}
	case map[string]any:
		return r.checkParams(t, depth)
	default:
		if _, err := number(v); err != nil {
			return &pathError{"", err}
		}
	}
	return nil
}

// probeTiers returns the tiers Validate renders for: those r lists, in
// canonical order, or pool if it lists none.
func (r *Release) probeTiers() []string {
	var tiers []string
	for _, t := range AllTiers {
		if _, ok := r.Tiers[t]; ok {
			tiers = append(tiers, t)
		}
	}
	if len(tiers) == 0 {
		tiers = []string{TierPool}
	}
	return tiers
}

// checkRenders renders r for every probe tier, forward and for a rollback,
// and validates the steps. A problem found for several tiers is reported
// once, for the first.
func (r *Release) checkRenders() error {
	var errs []error
	seen := map[string]bool{}
	for _, tier := range r.probeTiers() {
		for _, rollback := range []bool{false, true} {
			what := fmt.Sprintf("rendered for tier %s", tier)
			if rollback {
				what = fmt.Sprintf("rendered for a rollback on tier %s", tier)
			}
			steps, err := Render(r, &planv1.ReleaseContext{Tenant: probeTenant, Tier: tier, Rollback: rollback})
			if err == nil {
				err = plan.ValidateSteps(steps)
			}
			for _, e := range unjoin(err) {
				if msg := e.Error(); !seen[msg] {
					seen[msg] = true
					errs = append(errs, fmt.Errorf("%s: %w", what, e))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// unjoin returns the errors err joins, or err alone.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	return []error{err}
}
