package sdk

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// Params decodes a step's parameters strictly: each getter records a
// violation naming the field ("params.files[1].path: required") instead of
// returning an error, and Err reports them all, together with every key no
// getter asked for, as one InvalidArgument error. Typical use:
//
//	p := sdk.NewParams(step.GetParams())
//	version := p.String("version", true)
//	argv := p.Strings("command", true)
//	if err := p.Err(); err != nil {
//		return nil, err
//	}
type Params struct {
	path       string
	fields     map[string]*structpb.Value
	used       map[string]bool
	children   []*Params
	violations *[]FieldViolation
}

// NewParams reads s (nil reads as empty) under the field path "params".
func NewParams(s *structpb.Struct) *Params {
	return newParams("params", s.GetFields(), new([]FieldViolation))
}

func newParams(path string, fields map[string]*structpb.Value, vs *[]FieldViolation) *Params {
	return &Params{path: path, fields: fields, used: map[string]bool{}, violations: vs}
}

// Field returns the full path of the parameter name, for error messages.
func (p *Params) Field(name string) string { return p.path + "." + name }

// Fail records a violation on parameter name.
func (p *Params) Fail(name, format string, args ...any) {
	p.FailPath(p.Field(name), format, args...)
}

// FailPath records a violation on a full field path.
func (p *Params) FailPath(field, format string, args ...any) {
	*p.violations = append(*p.violations, FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// Has reports whether name is present (and marks it as known).
func (p *Params) Has(name string) bool {
	p.used[name] = true
	_, ok := p.fields[name]
	return ok
}

// get returns name's value, recording "required" if it is absent and
// required. A JSON null counts as absent.
func (p *Params) get(name string, required bool) *structpb.Value {
	p.used[name] = true
	v, ok := p.fields[name]
	if ok {
		if _, isNull := v.GetKind().(*structpb.Value_NullValue); isNull {
			ok = false
		}
	}
	if !ok {
		if required {
			p.Fail(name, "required")
		}
		return nil
	}
	return v
}

// String returns the string parameter name.
func (p *Params) String(name string, required bool) string {
	v := p.get(name, required)
	if v == nil {
		return ""
	}
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		p.Fail(name, "must be a string")
		return ""
	}
	if required && s.StringValue == "" {
		p.Fail(name, "must not be empty")
	}
	return s.StringValue
}

// Int returns the integral number parameter name.
func (p *Params) Int(name string, required bool) int64 {
	v := p.get(name, required)
	if v == nil {
		return 0
	}
	n, ok := v.GetKind().(*structpb.Value_NumberValue)
	if !ok || n.NumberValue != math.Trunc(n.NumberValue) || math.Abs(n.NumberValue) > 1<<53 {
		p.Fail(name, "must be an integer")
		return 0
	}
	return int64(n.NumberValue)
}

// Bool returns the boolean parameter name.
func (p *Params) Bool(name string, required bool) bool {
	v := p.get(name, required)
	if v == nil {
		return false
	}
	b, ok := v.GetKind().(*structpb.Value_BoolValue)
	if !ok {
		p.Fail(name, "must be true or false")
		return false
	}
	return b.BoolValue
}

// Duration returns the duration parameter name, written as a Go duration
// string ("5s", "1m30s"); it must be positive.
func (p *Params) Duration(name string, required bool) time.Duration {
	s := p.String(name, required)
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		p.Fail(name, "must be a positive duration such as \"30s\", got %q", s)
		return 0
	}
	return d
}

// Strings returns the list-of-strings parameter name.
func (p *Params) Strings(name string, required bool) []string {
	v := p.get(name, required)
	if v == nil {
		return nil
	}
	l, ok := v.GetKind().(*structpb.Value_ListValue)
	if !ok {
		p.Fail(name, "must be a list of strings")
		return nil
	}
	out := make([]string, 0, len(l.ListValue.GetValues()))
	for i, e := range l.ListValue.GetValues() {
		s, ok := e.GetKind().(*structpb.Value_StringValue)
		if !ok {
			p.FailPath(fmt.Sprintf("%s[%d]", p.Field(name), i), "must be a string")
			continue
		}
		out = append(out, s.StringValue)
	}
	if required && len(l.ListValue.GetValues()) == 0 {
		p.Fail(name, "must not be empty")
	}
	return out
}

// StringMap returns the object parameter name whose values are all
// strings (feature flags, labels).
func (p *Params) StringMap(name string, required bool) map[string]string {
	v := p.get(name, required)
	if v == nil {
		return nil
	}
	st, ok := v.GetKind().(*structpb.Value_StructValue)
	if !ok {
		p.Fail(name, "must be an object of strings")
		return nil
	}
	out := make(map[string]string, len(st.StructValue.GetFields()))
	for k, e := range st.StructValue.GetFields() {
		s, ok := e.GetKind().(*structpb.Value_StringValue)
		if !ok {
			p.FailPath(p.Field(name)+"."+k, "must be a string")
			continue
		}
		out[k] = s.StringValue
	}
	return out
}

// Objects returns the list-of-objects parameter name, each element as a
// nested Params whose fields are checked like the top level's.
func (p *Params) Objects(name string, required bool) []*Params {
	v := p.get(name, required)
	if v == nil {
		return nil
	}
	l, ok := v.GetKind().(*structpb.Value_ListValue)
	if !ok {
		p.Fail(name, "must be a list of objects")
		return nil
	}
	var out []*Params
	for i, e := range l.ListValue.GetValues() {
		field := fmt.Sprintf("%s[%d]", p.Field(name), i)
		s, ok := e.GetKind().(*structpb.Value_StructValue)
		if !ok {
			p.FailPath(field, "must be an object")
			continue
		}
		c := newParams(field, s.StructValue.GetFields(), p.violations)
		p.children = append(p.children, c)
		out = append(out, c)
	}
	if required && len(l.ListValue.GetValues()) == 0 {
		p.Fail(name, "must not be empty")
	}
	return out
}

// Err returns nil if every parameter read was valid and no unknown key is
// present, and otherwise one InvalidArgument error naming every bad field.
// Call it after all getters, on the top-level Params.
func (p *Params) Err() error {
	p.unknown()
	if len(*p.violations) == 0 {
		return nil
	}
	return invalidArgument(*p.violations)
}

// unknown records a violation for every key nobody asked for.
func (p *Params) unknown() {
	var keys []string
	for k := range p.fields {
		if !p.used[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		known := make([]string, 0, len(p.used))
		for u := range p.used {
			known = append(known, u)
		}
		sort.Strings(known)
		p.Fail(k, "unknown parameter (known: %s)", strings.Join(known, ", "))
	}
	for _, c := range p.children {
		c.unknown()
	}
}
