package release

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

// CheckPlan checks that p is exactly what r renders for p's release
// context: p.release_ref is Ref(r), and Render(r, p.release_context) yields
// p's steps, the same number in the same order, each equal (proto.Equal).
// The error names the first difference: the step and field, and both
// values (`step "app" params.command[0]: plan has "evil", release renders
// "sampleapp"`). It does not verify r's signature; see Verify.
func CheckPlan(r *Release, p *planv1.Plan) error {
	if r == nil {
		return errors.New("release is nil")
	}
	if p == nil {
		return errors.New("plan is nil")
	}
	if got, want := p.GetReleaseRef(), Ref(r); got != want {
		return fmt.Errorf("plan release_ref is %.300q, but the release it carries is %q", got, want)
	}
	want, err := Render(r, p.GetReleaseContext())
	if err != nil {
		return fmt.Errorf("release %s does not render for the plan's release_context: %w", Ref(r), err)
	}
	got := p.GetSteps()
	for i := range min(len(got), len(want)) {
		if proto.Equal(got[i], want[i]) {
			continue
		}
		if got[i].GetId() != want[i].GetId() {
			return fmt.Errorf("plan step %d is %.64q, but release %s renders %q there (%s)",
				i, got[i].GetId(), Ref(r), want[i].GetId(), stepsSummary(len(got), len(want)))
		}
		if d := stepDiff(got[i], want[i]); d != "" {
			return fmt.Errorf("step %q %s", want[i].GetId(), d)
		}
		return fmt.Errorf("step %q differs from what release %s renders", want[i].GetId(), Ref(r))
	}
	switch {
	case len(got) > len(want):
		return fmt.Errorf("plan step %d is %.64q, but release %s renders no step there (%s)",
			len(want), got[len(want)].GetId(), Ref(r), stepsSummary(len(got), len(want)))
	case len(got) < len(want):
		return fmt.Errorf("plan has no step %d, but release %s renders %q there (%s)",
			len(got), Ref(r), want[len(got)].GetId(), stepsSummary(len(got), len(want)))
	}
	return nil
}

func stepsSummary(got, want int) string {
	return fmt.Sprintf("the plan has %d steps, the release renders %d", got, want)
}

// stepDiff names the first field in which got and want differ, with both
// values: `params.command[0]: plan has "evil", release renders "app"`.
func stepDiff(got, want *planv1.Step) string {
	field := func(name, g, w string) string {
		return fmt.Sprintf("%s: plan has %s, release renders %s", name, quote(g), quote(w))
	}
	switch {
	case got.GetProvider() != want.GetProvider():
		return field("provider", got.GetProvider(), want.GetProvider())
	case got.GetAction() != want.GetAction():
		return field("action", got.GetAction(), want.GetAction())
	case got.GetResource() != want.GetResource():
		return field("resource", got.GetResource(), want.GetResource())
	case !slices.Equal(got.GetDependsOn(), want.GetDependsOn()):
		return fmt.Sprintf("depends_on: plan has %q, release renders %q", got.GetDependsOn(), want.GetDependsOn())
	}
	if d := structDiff("params", got.GetParams(), want.GetParams()); d != "" {
		return d
	}
	gc, wc := got.GetCompensation(), want.GetCompensation()
	switch {
	case gc == nil && wc == nil:
		return ""
	case gc == nil:
		return "compensation: plan has none, release renders one"
	case wc == nil:
		return "compensation: plan has one, release renders none"
	case gc.GetAction() != wc.GetAction():
		return field("compensation.action", gc.GetAction(), wc.GetAction())
	}
	return structDiff("compensation.params", gc.GetParams(), wc.GetParams())
}

// structDiff names the first path below path at which got and want differ.
// A nil struct and an empty one differ (field presence), which is reported
// as such.
func structDiff(path string, got, want *structpb.Struct) string {
	switch {
	case got == nil && want == nil:
		return ""
	case got == nil:
		return fmt.Sprintf("%s: plan has none, release renders %s", path, describeStruct(want))
	case want == nil:
		return fmt.Sprintf("%s: plan has %s, release renders none", path, describeStruct(got))
	}
	gf, wf := got.GetFields(), want.GetFields()
	keys := slices.Sorted(maps.Keys(gf))
	for k := range wf {
		if _, ok := gf[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := path + keyPath(k)
		g, gok := gf[k]
		w, wok := wf[k]
		switch {
		case !gok:
			return fmt.Sprintf("%s: plan has nothing, release renders %s", p, describe(w))
		case !wok:
			return fmt.Sprintf("%s: plan has %s, release renders nothing", p, describe(g))
		}
		if d := valueDiff(p, g, w); d != "" {
			return d
		}
	}
	return ""
}

func valueDiff(path string, got, want *structpb.Value) string {
	if proto.Equal(got, want) {
		return ""
	}
	switch g := got.GetKind().(type) {
	case *structpb.Value_StructValue:
		if w, ok := want.GetKind().(*structpb.Value_StructValue); ok {
			if d := structDiff(path, g.StructValue, w.StructValue); d != "" {
				return d
			}
		}
	case *structpb.Value_ListValue:
		if w, ok := want.GetKind().(*structpb.Value_ListValue); ok {
			gl, wl := g.ListValue.GetValues(), w.ListValue.GetValues()
			for i := range min(len(gl), len(wl)) {
				if d := valueDiff(path+"["+strconv.Itoa(i)+"]", gl[i], wl[i]); d != "" {
					return d
				}
			}
		}
	}
	return fmt.Sprintf("%s: plan has %s, release renders %s", path, describe(got), describe(want))
}

// describe renders a value briefly for errors: strings quoted and cut,
// containers by size.
func describe(v *structpb.Value) string {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return quote(k.StringValue)
	case *structpb.Value_NumberValue:
		return strconv.FormatFloat(k.NumberValue, 'g', -1, 64)
	case *structpb.Value_BoolValue:
		return strconv.FormatBool(k.BoolValue)
	case *structpb.Value_NullValue:
		return "null"
	case *structpb.Value_StructValue:
		return describeStruct(k.StructValue)
	case *structpb.Value_ListValue:
		return fmt.Sprintf("a list of %d", len(k.ListValue.GetValues()))
	default:
		return "no value"
	}
}

func describeStruct(s *structpb.Struct) string {
	return fmt.Sprintf("a mapping of %d", len(s.GetFields()))
}

// quote quotes s for an error, cut to 200 characters (an image reference
// pinned by digest fits whole).
func quote(s string) string {
	if len(s) > 200 {
		return fmt.Sprintf("%.200q… (%d bytes)", s, len(s))
	}
	return strconv.Quote(s)
}
