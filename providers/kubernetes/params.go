package kubernetes

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/protobuf/types/known/structpb"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation"
)

// prefixRE is what a namespace_prefix looks like.
var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,19}$`)

// target is the tenant a step acts for and its namespace.
type target struct {
	tenant, namespace string
}

func (t target) tenantID() string { return t.tenant }

// readTarget reads the optional tenant parameter (default: the step's
// tenant) and derives the namespace, refusing a name longer than a
// namespace may be.
func readTarget(p *sdk.Params, s *settings, step *providerv1.Step) target {
	tenant, field := step.GetTenant(), "tenant"
	if p.Has("tenant") {
		tenant, field = p.String("tenant", true), p.Field("tenant")
		if tenant == "" {
			return target{}
		}
	}
	if msgs := validation.IsDNS1123Label(tenant); len(msgs) > 0 {
		p.FailPath(field, "must be a DNS label (lower-case letters, digits and '-', at most 63), got %q", tenant)
		return target{}
	}
	ns := s.NamespacePrefix + tenant
	if len(ns) > validation.DNS1123LabelMaxLength {
		p.FailPath(field, "namespace %q (namespace_prefix %q + tenant) is longer than 63 characters", ns, s.NamespacePrefix)
		return target{}
	}
	return target{tenant: tenant, namespace: ns}
}

// stringMap reads an object-of-strings parameter (labels, images) from the
// step's raw fields; p records the violations. A null counts as absent.
func stringMap(p *sdk.Params, raw map[string]*structpb.Value, name string, required bool) map[string]string {
	present := p.Has(name)
	v := raw[name]
	if _, isNull := v.GetKind().(*structpb.Value_NullValue); !present || v == nil || isNull {
		if required {
			p.Fail(name, "required")
		}
		return nil
	}
	sv, ok := v.GetKind().(*structpb.Value_StructValue)
	if !ok {
		p.Fail(name, "must be an object of strings")
		return nil
	}
	out := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(sv.StructValue.GetFields())) {
		s, ok := sv.StructValue.GetFields()[k].GetKind().(*structpb.Value_StringValue)
		if !ok {
			p.FailPath(p.Field(name)+"."+k, "must be a string")
			continue
		}
		out[k] = s.StringValue
	}
	if required && len(out) == 0 && len(sv.StructValue.GetFields()) == 0 {
		p.Fail(name, "must not be empty")
	}
	return out
}

// element is one object of a list parameter with its raw fields.
type element struct {
	p   *sdk.Params
	raw map[string]*structpb.Value
}

// objectList reads a list-of-objects parameter, pairing each element's
// Params with its raw fields (for nested maps).
func objectList(p *sdk.Params, raw map[string]*structpb.Value, name string) []element {
	objs := p.Objects(name, false)
	var out []element
	i := 0
	for _, v := range raw[name].GetListValue().GetValues() {
		if sv, ok := v.GetKind().(*structpb.Value_StructValue); ok && i < len(objs) {
			out = append(out, element{p: objs[i], raw: sv.StructValue.GetFields()})
			i++
		}
	}
	return out
}

// objectParam reads an object parameter as an element (nil when absent),
// checking its keys against known: sdk.Params has no single-object getter.
func objectParam(p *sdk.Params, raw map[string]*structpb.Value, name string, known ...string) map[string]*structpb.Value {
	if !p.Has(name) {
		return nil
	}
	v := raw[name]
	if _, isNull := v.GetKind().(*structpb.Value_NullValue); v == nil || isNull {
		return nil
	}
	sv, ok := v.GetKind().(*structpb.Value_StructValue)
	if !ok {
		p.Fail(name, "must be an object")
		return nil
	}
	fields := sv.StructValue.GetFields()
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if !slices.Contains(known, k) {
			p.FailPath(p.Field(name)+"."+k, "unknown parameter (known: %s)", strings.Join(known, ", "))
		}
	}
	return fields
}

// checkLabels validates a label map's keys and values; field names the
// parameter (e.g. "params.labels").
func checkLabels(p *sdk.Params, field string, labels map[string]string) bool {
	ok := true
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if msgs := content.IsLabelKey(k); len(msgs) > 0 {
			p.FailPath(field+"."+k, "not a valid label key: %s", strings.Join(msgs, "; "))
			ok = false
			continue
		}
		if msgs := content.IsLabelValue(labels[k]); len(msgs) > 0 {
			p.FailPath(field+"."+k, "not a valid label value: %s", strings.Join(msgs, "; "))
			ok = false
		}
	}
	return ok
}

// reservedLabel reports a label key the provider sets itself (or that
// Kubernetes reserves), which params may not set.
func reservedLabel(k string) bool {
	if k == LabelManagedBy {
		return true
	}
	prefix, _, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		return false
	}
	for _, r := range []string{"attache.dev", "kubernetes.io", "k8s.io", "pod-security.kubernetes.io"} {
		if prefix == r || strings.HasSuffix(prefix, "."+r) {
			return true
		}
	}
	return false
}

// dnsName checks a Kubernetes object name (DNS subdomain) in a param.
func dnsName(p *sdk.Params, name, value string) {
	if value == "" {
		return
	}
	if msgs := validation.IsDNS1123Subdomain(value); len(msgs) > 0 {
		p.Fail(name, "must be a Kubernetes object name: %s", strings.Join(msgs, "; "))
	}
}

// plural formats n with a noun.
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
