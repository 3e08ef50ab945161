package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/yamldoc"
)

// MaxYAMLBytes bounds the YAML authoring document ParseYAML reads. It is
// larger than MaxPlanBytes because YAML carries comments and indentation;
// the signed plan must still fit MaxPlanBytes.
const MaxYAMLBytes = 4 << 20

// YAMLVersion is the only authoring format version.
const YAMLVersion = 1

// maxExactInt is the largest integer a params number (a float64 in
// google.protobuf.Struct) holds exactly.
const maxExactInt = 1 << 53

// Draft is a plan as a human wrote it, before it is bound to a tenant, an
// agent, a sequence and a time. The authoring format (YAML) is:
//
//	version: 1                  # required, must be 1
//	release: app@v2.3.1         # optional: the release the plan rolls out
//	expires_in: 1h              # optional: Go duration or whole days ("7d");
//	                            # default 24h, at most 7d
//	steps:                      # required, 1 to MaxSteps
//	  - id: migrate             # lowercase DNS label, unique in the plan
//	    provider: postgres      # [a-z][a-z0-9._-]*
//	    action: schema.migrate  # [a-z][a-z0-9._-]*
//	    resource: tenants/acme
//	    params: {to: 42}        # optional, any mapping
//	    depends_on: [db]        # optional: ids of other steps
//	    compensation:           # optional
//	      action: schema.rollback
//	      params: {to: 41}
//
// Unknown keys are errors that name the key and where it is. Numbers in
// params are stored as float64 (google.protobuf.Struct), so an integer beyond
// ±2^53 is refused: quote it. The YAML is read with YAML 1.1 rules
// (sigs.k8s.io/yaml): a leading 0 makes a number octal (mode: 0750), and
// unquoted y, n, yes, no, on and off are booleans, as keys too; quote them
// where a string is meant.
type Draft struct {
	// Release is the release reference; may be empty.
	Release string
	// ExpiresIn is the plan's lifetime from Build's now.
	ExpiresIn time.Duration
	// Steps in declaration order.
	Steps []*planv1.Step
	// DryRun is copied to the plan. It is not part of the YAML: the submitter
	// sets it (`attache plan submit --dry-run`).
	DryRun bool
}

var (
	topKeys  = []string{"version", "release", "expires_in", "steps"}
	stepKeys = []string{"id", "provider", "action", "resource", "params", "depends_on", "compensation"}
	compKeys = []string{"action", "params"}
)

// ParseYAML parses a plan's YAML authoring document. It reports every
// problem it finds at once (errors.Join), each naming where it is
// (`steps[2] "migrate": unknown key "dependson"`). Structural checks that
// need the whole plan (unique ids, dependencies, cycles) are left to Build,
// which validates the plan it builds.
func ParseYAML(b []byte) (*Draft, error) {
	if len(b) > MaxYAMLBytes {
		return nil, fmt.Errorf("plan YAML is %d bytes, limit %d", len(b), MaxYAMLBytes)
	}
	if yamldoc.Multiple(b) {
		return nil, errors.New("plan YAML: more than one document (a second \"---\" or content after \"...\"); submit one plan per file")
	}
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return nil, fmt.Errorf("plan YAML: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("plan YAML: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("plan YAML: more than one document")
	}
	top, ok := doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("plan YAML: the document is %s, want a mapping with version, steps, …", kind(doc))
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	errs = append(errs, unknownKeys("", top, topKeys)...)

	d := &Draft{ExpiresIn: DefaultLifetime}
	switch v, ok := top["version"]; {
	case !ok:
		add("version is missing; add `version: %d`", YAMLVersion)
	case !isInt(v, YAMLVersion):
		add("version is %s, want %d", short(v), YAMLVersion)
	}
	if v, ok := top["release"]; ok {
		if s, ok := v.(string); ok {
			d.Release = s
		} else {
			add("release is %s, want a string", kind(v))
		}
	}
	if v, ok := top["expires_in"]; ok {
		s, isStr := v.(string)
		if !isStr {
			add("expires_in is %s, want a duration such as 1h or 7d", kind(v))
		} else if dur, err := parseDuration(s); err != nil {
			add("expires_in: %v", err)
		} else if dur <= 0 {
			add("expires_in is %s, want more than 0", s)
		} else if dur > MaxLifetime {
			add("expires_in is %s, limit %s (7d)", s, MaxLifetime)
		} else {
			d.ExpiresIn = dur
		}
	}
	switch v, ok := top["steps"]; {
	case !ok:
		add("steps is missing")
	default:
		list, ok := v.([]any)
		if !ok {
			add("steps is %s, want a list", kind(v))
			break
		}
		if len(list) > MaxSteps {
			add("steps has %d entries, limit %d", len(list), MaxSteps)
			break
		}
		for i, e := range list {
			s, serrs := parseStep(i, e)
			errs = append(errs, serrs...)
			d.Steps = append(d.Steps, s)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return d, nil
}

func parseStep(i int, v any) (*planv1.Step, []error) {
	m, ok := v.(map[string]any)
	name := fmt.Sprintf("steps[%d]", i)
	if !ok {
		return nil, []error{fmt.Errorf("%s is %s, want a mapping", name, kind(v))}
	}
	if id, ok := m["id"].(string); ok && id != "" {
		name = fmt.Sprintf("steps[%d] %.64q", i, id)
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(name+": "+format, args...)) }
	errs = append(errs, unknownKeys(name+": ", m, stepKeys)...)
	s := &planv1.Step{}
	str := func(key string, dst *string) {
		switch v, ok := m[key]; {
		case !ok:
			add("%s is missing", key)
		default:
			if sv, ok := v.(string); ok {
				*dst = sv
			} else {
				add("%s is %s, want a string", key, kind(v))
			}
		}
	}
	str("id", &s.Id)
	str("provider", &s.Provider)
	str("action", &s.Action)
	str("resource", &s.Resource)
	if v, ok := m["params"]; ok {
		p, err := toStruct(v)
		if err != nil {
			add("params%v", err)
		}
		s.Params = p
	}
	if v, ok := m["depends_on"]; ok && v != nil {
		list, ok := v.([]any)
		if !ok {
			add("depends_on is %s, want a list of step ids", kind(v))
		}
		for k, e := range list {
			if id, ok := e.(string); ok {
				s.DependsOn = append(s.DependsOn, id)
			} else {
				add("depends_on[%d] is %s, want a step id", k, kind(e))
			}
		}
	}
	if v, ok := m["compensation"]; ok && v != nil {
		cm, ok := v.(map[string]any)
		if !ok {
			add("compensation is %s, want a mapping with action and params", kind(v))
			return s, errs
		}
		errs = append(errs, unknownKeys(name+": compensation: ", cm, compKeys)...)
		c := &planv1.Compensation{}
		switch a, ok := cm["action"]; {
		case !ok:
			add("compensation.action is missing")
		default:
			if as, ok := a.(string); ok {
				c.Action = as
			} else {
				add("compensation.action is %s, want a string", kind(a))
			}
		}
		if pv, ok := cm["params"]; ok {
			p, err := toStruct(pv)
			if err != nil {
				add("compensation.params%v", err)
			}
			c.Params = p
		}
		s.Compensation = c
	}
	return s, errs
}

// unknownKeys reports, in sorted order, the keys of m not in allowed.
func unknownKeys(where string, m map[string]any, allowed []string) []error {
	var bad []string
	for k := range m {
		if !slices.Contains(allowed, k) {
			bad = append(bad, k)
		}
	}
	slices.Sort(bad)
	errs := make([]error, 0, len(bad))
	for _, k := range bad {
		errs = append(errs, fmt.Errorf("%sunknown key %.64q (allowed: %s)", where, k, strings.Join(allowed, ", ")))
	}
	return errs
}

// toStruct converts a decoded YAML mapping (json.Number for numbers) to a
// Struct. A null params is no params. The error's text starts with the path
// below params.
func toStruct(v any) (*structpb.Struct, error) {
	if v == nil {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, &pathError{"", fmt.Errorf("is %s, want a mapping", kind(v))}
	}
	fields := make(map[string]*structpb.Value, len(m))
	for _, k := range slices.Sorted(mapKeys(m)) {
		val, err := toValue(m[k], 2)
		if err != nil {
			return nil, prefix(keyPath(k), err)
		}
		fields[k] = val
	}
	return &structpb.Struct{Fields: fields}, nil
}

func toValue(v any, depth int) (*structpb.Value, error) {
	if depth > MaxParamsDepth {
		return nil, &pathError{"", errTooDeep}
	}
	switch t := v.(type) {
	case nil:
		return structpb.NewNullValue(), nil
	case bool:
		return structpb.NewBoolValue(t), nil
	case string:
		return structpb.NewStringValue(t), nil
	case json.Number:
		f, err := strconv.ParseFloat(t.String(), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, &pathError{"", fmt.Errorf("number %.40s does not fit a float64; quote it", t)}
		}
		if isIntLiteral(t.String()) {
			n, err := strconv.ParseInt(t.String(), 10, 64)
			if err != nil || n > maxExactInt || n < -maxExactInt {
				return nil, &pathError{"", fmt.Errorf("integer %.40s is beyond ±2^53 and would lose precision; quote it", t)}
			}
		}
		return structpb.NewNumberValue(f), nil
	case []any:
		vals := make([]*structpb.Value, 0, len(t))
		for i, e := range t {
			ev, err := toValue(e, depth+1)
			if err != nil {
				return nil, prefix(fmt.Sprintf("[%d]", i), err)
			}
			vals = append(vals, ev)
		}
		return structpb.NewListValue(&structpb.ListValue{Values: vals}), nil
	case map[string]any:
		fields := make(map[string]*structpb.Value, len(t))
		for _, k := range slices.Sorted(mapKeys(t)) {
			ev, err := toValue(t[k], depth+1)
			if err != nil {
				return nil, prefix(keyPath(k), err)
			}
			fields[k] = ev
		}
		return structpb.NewStructValue(&structpb.Struct{Fields: fields}), nil
	default:
		return nil, &pathError{"", fmt.Errorf("unsupported value %T", v)}
	}
}

func mapKeys(m map[string]any) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// isIntLiteral reports whether s is an optionally signed string of digits.
func isIntLiteral(s string) bool {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "-"), "+")
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// isInt reports whether v is the JSON number want.
func isInt(v any, want int64) bool {
	n, ok := v.(json.Number)
	if !ok {
		return false
	}
	i, err := n.Int64()
	return err == nil && i == want
}

// parseDuration accepts Go durations ("90m", "1h30m") and whole days ("7d").
func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok && isIntLiteral(days) && !strings.HasPrefix(days, "+") {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n > 100000 {
			return 0, fmt.Errorf("%.40q is out of range", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%.40q is not a duration (want e.g. 30m, 1h, 7d)", s)
	}
	return d, nil
}

// kind names the YAML type of a decoded value for errors.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// short renders a scalar for errors.
func short(v any) string {
	switch t := v.(type) {
	case json.Number:
		return fmt.Sprintf("%.40s", t.String())
	case string:
		return fmt.Sprintf("%.40q", t)
	default:
		return kind(v)
	}
}

// Build binds d to a tenant, an agent, a per-agent sequence number and an
// issue time, and returns the validated plan: a fresh plan id (NewID),
// issued_at = now, expires_at = now + d.ExpiresIn. The plan shares nothing
// with d. Build fails, listing every problem, if the plan does not validate
// (including an agent ID that is not an agent of tenant).
func (d *Draft) Build(tenant string, agent spiffeid.ID, seq uint64, now time.Time) (*planv1.Plan, error) {
	if d == nil {
		return nil, errors.New("build plan: draft is nil")
	}
	expiresIn := d.ExpiresIn
	if expiresIn == 0 {
		expiresIn = DefaultLifetime
	}
	now = now.UTC()
	p := &planv1.Plan{
		PlanId:        NewID(now),
		Tenant:        tenant,
		AgentSpiffeId: agent.String(),
		Sequence:      seq,
		IssuedAt:      timestamppb.New(now),
		ExpiresAt:     timestamppb.New(now.Add(expiresIn)),
		ReleaseRef:    d.Release,
		DryRun:        d.DryRun,
	}
	for _, s := range d.Steps {
		if s == nil {
			p.Steps = append(p.Steps, nil)
			continue
		}
		p.Steps = append(p.Steps, proto.Clone(s).(*planv1.Step))
	}
	if err := Validate(p); err != nil {
		return nil, fmt.Errorf("build plan: %w", err)
	}
	return p, nil
}
