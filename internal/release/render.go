package release

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
)

// Render renders r's step templates for one tenant into plan steps,
// deterministically: the same release and context always give the same
// steps (proto.Equal), on the control plane and on the agent.
//
// c must name a valid tenant and a tier (pool, bridge, silo or byoc); its
// flags may set only flags r declares (MergeFlags). In every template
// string {{tenant}}, {{tier}}, {{version}}, {{name}}, {{images.<name>}} and
// {{values.<key>}} (the tier's value; an error naming the step and param if
// the tier lacks it) are substituted; a params string that is exactly
// "{{flags}}", "{{migrations}}", "{{manifests}}" or "{{images}}" becomes the
// merged flags (a mapping), the migrations (a list of {version, name,
// sql}), the manifests (a string) or the images (a mapping).
//
// When c.Rollback is set, steps marked on_rollback: skip are left out, and
// a step that depended on a skipped step depends instead on what the
// skipped step depended on (transitively), so the order among the steps
// kept is unchanged. It reports every problem at once.
func Render(r *Release, c *planv1.ReleaseContext) ([]*planv1.Step, error) {
	if r == nil {
		return nil, errors.New("render: release is nil")
	}
	if c == nil {
		return nil, errors.New("render: no release context")
	}
	var errs []error
	if !identity.ValidName(c.GetTenant()) {
		errs = append(errs, fmt.Errorf("release context tenant %.64q is not a valid tenant name (lowercase DNS label)", c.GetTenant()))
	}
	if !slices.Contains(AllTiers, c.GetTier()) {
		errs = append(errs, fmt.Errorf("release context tier %.64q is not one of %s", c.GetTier(), strings.Join(AllTiers, ", ")))
	}
	flags, err := MergeFlags(r, c.GetFlags())
	if err != nil {
		errs = append(errs, fmt.Errorf("release context flags: %w", err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	x := &renderer{r: r, c: c, flags: flags, values: r.Tiers[c.GetTier()]}

	skip := map[string]bool{}
	byID := make(map[string]*StepTemplate, len(r.Steps))
	for i := range r.Steps {
		s := &r.Steps[i]
		byID[s.ID] = s
		if c.GetRollback() && s.OnRollback == OnRollbackSkip {
			skip[s.ID] = true
		}
	}
	out := make([]*planv1.Step, 0, len(r.Steps))
	for i := range r.Steps {
		s := &r.Steps[i]
		if skip[s.ID] {
			continue
		}
		st, serrs := x.step(s, dependencies(s.DependsOn, skip, byID))
		errs = append(errs, serrs...)
		out = append(out, st)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(out) == 0 {
		if c.GetRollback() {
			return nil, fmt.Errorf("release %s renders no steps for a rollback: every step is on_rollback: skip", Ref(r))
		}
		return nil, fmt.Errorf("release %s has no steps", Ref(r))
	}
	return out, nil
}

// dependencies returns ids with every skipped step replaced by its own
// dependencies (transitively), without duplicates, in first-seen order.
func dependencies(ids []string, skip map[string]bool, byID map[string]*StepTemplate) []string {
	if len(skip) == 0 {
		return slices.Clone(ids)
	}
	var out []string
	seen := map[string]bool{}
	expanded := map[string]bool{}
	var walk func(ids []string)
	walk = func(ids []string) {
		for _, d := range ids {
			if !skip[d] {
				if !seen[d] {
					seen[d] = true
					out = append(out, d)
				}
				continue
			}
			if expanded[d] { // a cycle among skipped steps; Validate refuses it
				continue
			}
			expanded[d] = true
			if s := byID[d]; s != nil {
				walk(s.DependsOn)
			}
		}
	}
	walk(ids)
	return out
}

// MergeFlags returns r's default flags overlaid by overrides. Only flags r
// declares may be overridden: an unknown key is an error, as is a value
// longer than MaxFlagValueBytes or not valid UTF-8. Every problem is
// reported. The result is a new map, never nil.
func MergeFlags(r *Release, overrides map[string]string) (map[string]string, error) {
	if r == nil {
		return nil, errors.New("release is nil")
	}
	out := make(map[string]string, len(r.Flags))
	maps.Copy(out, r.Flags)
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(overrides)) {
		v := overrides[k]
		if _, ok := r.Flags[k]; !ok {
			declared := strings.Join(slices.Sorted(maps.Keys(r.Flags)), ", ")
			if declared == "" {
				declared = "none"
			}
			errs = append(errs, fmt.Errorf("flag %.64q is not declared by release %s (declared: %s)", k, Ref(r), declared))
			continue
		}
		switch {
		case len(v) > MaxFlagValueBytes:
			errs = append(errs, fmt.Errorf("flag %.64q: value is %d bytes, limit %d", k, len(v), MaxFlagValueBytes))
		case !utf8.ValidString(v):
			errs = append(errs, fmt.Errorf("flag %.64q: value is not valid UTF-8", k))
		default:
			out[k] = v
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// renderer renders templates for one context.
type renderer struct {
	r      *Release
	c      *planv1.ReleaseContext
	flags  map[string]string
	values map[string]string
}

func (x *renderer) step(s *StepTemplate, deps []string) (*planv1.Step, []error) {
	var errs []error
	name := fmt.Sprintf("step %.64q", s.ID)
	st := &planv1.Step{Id: s.ID, Provider: s.Provider, Action: s.Action, DependsOn: deps}
	res, err := x.str(s.Resource)
	if err != nil {
		errs = append(errs, fmt.Errorf("%s resource: %w", name, err))
	}
	st.Resource = res
	if st.Params, err = x.params(s.Params); err != nil {
		errs = append(errs, fmt.Errorf("%s params%w", name, err))
	}
	if c := s.Compensation; c != nil {
		st.Compensation = &planv1.Compensation{Action: c.Action}
		if st.Compensation.Params, err = x.params(c.Params); err != nil {
			errs = append(errs, fmt.Errorf("%s compensation.params%w", name, err))
		}
	}
	return st, errs
}

// str renders a template string with scalar placeholders only.
func (x *renderer) str(s string) (string, error) {
	segs, err := parseTemplate(s)
	if err != nil {
		return "", err
	}
	if len(segs) == 1 && segs[0].ph == "" {
		return s, nil
	}
	var b strings.Builder
	for _, seg := range segs {
		if seg.ph == "" {
			b.WriteString(seg.lit)
			continue
		}
		v, err := x.scalar(seg.ph)
		if err != nil {
			return "", err
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

func (x *renderer) scalar(ph string) (string, error) {
	switch {
	case ph == phTenant:
		return x.c.GetTenant(), nil
	case ph == phTier:
		return x.c.GetTier(), nil
	case ph == phVersion:
		return x.r.Version, nil
	case ph == phName:
		return x.r.Name, nil
	case strings.HasPrefix(ph, phImagesDot):
		img := strings.TrimPrefix(ph, phImagesDot)
		ref, ok := x.r.Images[img]
		if !ok {
			return "", fmt.Errorf("{{%.80s}}: the release has no image %.64q", ph, img)
		}
		return ref, nil
	case strings.HasPrefix(ph, phValuesDot):
		key := strings.TrimPrefix(ph, phValuesDot)
		v, ok := x.values[key]
		if !ok {
			return "", fmt.Errorf("{{%.80s}}: tier %q has no value %.64q", ph, x.c.GetTier(), key)
		}
		return v, nil
	default:
		return "", checkPlaceholder(x.r, ph, false)
	}
}

// params renders a params mapping; the error's text starts with the path
// below params (".a.b[2]: …").
func (x *renderer) params(m map[string]any) (*structpb.Struct, error) {
	if len(m) == 0 {
		return nil, nil
	}
	s, err := x.mapping(m, 1)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (x *renderer) mapping(m map[string]any, depth int) (*structpb.Struct, error) {
	fields := make(map[string]*structpb.Value, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if strings.Contains(k, "{{") {
			return nil, &pathError{keyPath(k), errors.New("placeholders are substituted in values, not in keys")}
		}
		v, err := x.value(m[k], depth+1)
		if err != nil {
			return nil, prefix(keyPath(k), err)
		}
		fields[k] = v
	}
	return &structpb.Struct{Fields: fields}, nil
}

func (x *renderer) value(v any, depth int) (*structpb.Value, error) {
	if depth > plan.MaxParamsDepth {
		return nil, &pathError{"", fmt.Errorf("nested deeper than %d levels", plan.MaxParamsDepth)}
	}
	switch t := v.(type) {
	case nil:
		return structpb.NewNullValue(), nil
	case bool:
		return structpb.NewBoolValue(t), nil
	case string:
		if ph, ok := wholePlaceholder(t); ok && isWholeOnly(ph) {
			return x.whole(ph), nil
		}
		s, err := x.str(t)
		if err != nil {
			return nil, &pathError{"", err}
		}
		return structpb.NewStringValue(s), nil
	case []any:
		vals := make([]*structpb.Value, 0, len(t))
		for i, e := range t {
			ev, err := x.value(e, depth+1)
			if err != nil {
				return nil, prefix(fmt.Sprintf("[%d]", i), err)
			}
			vals = append(vals, ev)
		}
		return structpb.NewListValue(&structpb.ListValue{Values: vals}), nil
	case map[string]any:
		s, err := x.mapping(t, depth)
		if err != nil {
			return nil, err
		}
		return structpb.NewStructValue(s), nil
	default:
		f, err := number(v)
		if err != nil {
			return nil, &pathError{"", err}
		}
		return structpb.NewNumberValue(f), nil
	}
}

// whole renders a whole-value placeholder.
func (x *renderer) whole(ph string) *structpb.Value {
	switch ph {
	case phFlags:
		return structpb.NewStructValue(stringStruct(x.flags))
	case phImages:
		return structpb.NewStructValue(stringStruct(x.r.Images))
	case phManifests:
		return structpb.NewStringValue(x.r.Manifests)
	default: // phMigrations
		vals := make([]*structpb.Value, 0, len(x.r.Migrations))
		for _, m := range x.r.Migrations {
			vals = append(vals, structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				"version": structpb.NewNumberValue(float64(m.Version)),
				"name":    structpb.NewStringValue(m.Name),
				"sql":     structpb.NewStringValue(m.SQL),
			}}))
		}
		return structpb.NewListValue(&structpb.ListValue{Values: vals})
	}
}

func stringStruct(m map[string]string) *structpb.Struct {
	fields := make(map[string]*structpb.Value, len(m))
	for k, v := range m {
		fields[k] = structpb.NewStringValue(v)
	}
	return &structpb.Struct{Fields: fields}
}

// number converts a Go number to the float64 params hold: finite, and an
// integer within ±2^53.
func number(v any) (float64, error) {
	var f float64
	switch t := v.(type) {
	case float64:
		f = t
	case float32:
		f = float64(t)
	case int:
		return intNumber(int64(t))
	case int8:
		return intNumber(int64(t))
	case int16:
		return intNumber(int64(t))
	case int32:
		return intNumber(int64(t))
	case int64:
		return intNumber(t)
	case uint:
		return uintNumber(uint64(t))
	case uint8:
		return uintNumber(uint64(t))
	case uint16:
		return uintNumber(uint64(t))
	case uint32:
		return uintNumber(uint64(t))
	case uint64:
		return uintNumber(t)
	default:
		return 0, fmt.Errorf("unsupported value of type %T", v)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, errors.New("number is NaN or infinite")
	}
	return f, nil
}

func intNumber(n int64) (float64, error) {
	if n > maxExactInt || n < -maxExactInt {
		return 0, fmt.Errorf("integer %d is beyond ±2^53 and would lose precision", n)
	}
	return float64(n), nil
}

func uintNumber(n uint64) (float64, error) {
	if n > maxExactInt {
		return 0, fmt.Errorf("integer %d is beyond 2^53 and would lose precision", n)
	}
	return float64(n), nil
}
