package release

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/yamldoc"
)

// maxTreeDepth bounds the nesting of a decoded document: the release's own
// levels (steps, a step, compensation, params) and MaxParamsDepth below
// params.
const maxTreeDepth = plan.MaxParamsDepth + 6

// maxExactInt is the largest integer a float64 holds exactly.
const maxExactInt = 1 << 53

var (
	topKeys  = []string{"name", "version", "images", "manifests", "migrations", "flags", "tiers", "steps"}
	stepKeys = []string{"id", "provider", "action", "resource", "params", "depends_on", "compensation", "on_rollback"}
	compKeys = []string{"action", "params"}
	migKeys  = []string{"version", "name", "sql"}
)

// ParseYAML parses a release's YAML authoring document:
//
//	name: sampleapp                # product, a lowercase DNS label
//	version: 1.4.0                 # [A-Za-z0-9][A-Za-z0-9._+-]{0,63}
//	images:                        # optional: name → repo[:tag]@sha256:<64 hex>
//	  web: registry.example.com/sampleapp@sha256:…
//	manifests: |                   # optional: rendered Kubernetes manifests
//	  …
//	migrations:                    # optional, strictly increasing versions
//	  - {version: 1, name: create_accounts, sql: "CREATE TABLE …"}
//	flags: {checkout_v2: "false"}  # optional: default feature flags
//	tiers:                         # optional: per-tier values
//	  pool: {replicas: "2"}
//	steps:                         # step templates, as plan steps, plus
//	  - id: provision              # on_rollback: run (default) or skip
//	    provider: local
//	    action: tenant.provision
//	    resource: "{{tenant}}"
//	    params: {image: "{{images.web}}", flags: "{{flags}}"}
//
// It is strict: unknown keys, duplicate keys and wrong types are errors that
// name where they are (`steps[2].dependson: unknown key`), all reported at
// once. Flag, tier and other string values must be YAML strings: quote
// "false", "2" and "1.10". The YAML is read with YAML 1.1 rules
// (sigs.k8s.io/yaml): unquoted y, n, yes, no, on and off are booleans, as
// keys too. The rules that need the whole release (placeholders,
// dependencies, limits) are checked by Validate.
func ParseYAML(data []byte) (*Release, error) {
	if len(data) > MaxYAMLBytes {
		return nil, fmt.Errorf("release YAML is %d bytes, limit %d", len(data), MaxYAMLBytes)
	}
	if yamldoc.Multiple(data) {
		return nil, errors.New("release YAML: more than one document (a second \"---\" or content after \"...\"); write one release per file")
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("release YAML: %w", err)
	}
	doc, err := decodeJSON(j)
	if err != nil {
		return nil, fmt.Errorf("release YAML: %w", err)
	}
	r, err := fromTree(doc)
	if err != nil {
		return nil, fmt.Errorf("release YAML: %w", err)
	}
	return r, nil
}

// decodeJSON decodes exactly one JSON value into nil, bool, string,
// json.Number, []any and map[string]any, refusing duplicate keys and
// nesting deeper than maxTreeDepth.
func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := readValue(dec, "", 1)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON value")
	}
	return v, nil
}

func readValue(dec *json.Decoder, path string, depth int) (any, error) {
	if depth > maxTreeDepth {
		return nil, fmt.Errorf("%s: nested deeper than %d levels", where(path), maxTreeDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	switch d {
	case '{':
		m := map[string]any{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			k, ok := kt.(string)
			if !ok {
				return nil, fmt.Errorf("%s: object key is not a string", where(path))
			}
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("%s: duplicate key %.64q", where(path), k)
			}
			v, err := readValue(dec, path+keyPath(k), depth+1)
			if err != nil {
				return nil, err
			}
			m[k] = v
		}
		if _, err := dec.Token(); err != nil {
			return nil, err
		}
		return m, nil
	case '[':
		l := []any{}
		for dec.More() {
			v, err := readValue(dec, fmt.Sprintf("%s[%d]", path, len(l)), depth+1)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
		if _, err := dec.Token(); err != nil {
			return nil, err
		}
		return l, nil
	}
	return nil, fmt.Errorf("%s: unexpected %v", where(path), d)
}

func where(path string) string {
	if path == "" {
		return "the document"
	}
	return strings.TrimPrefix(path, ".")
}

var simpleKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]{0,63}$`)

// keyPath renders a key in a path: .name, or ["odd key"].
func keyPath(k string) string {
	if simpleKey.MatchString(k) {
		return "." + k
	}
	return fmt.Sprintf("[%.64q]", k)
}

// treeParser converts a decoded document to a Release, collecting errors.
type treeParser struct{ errs []error }

func (p *treeParser) add(path, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf(where(path)+": "+format, args...))
}

// fromTree converts a document decoded by decodeJSON to a Release.
func fromTree(doc any) (*Release, error) {
	top, ok := doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("the document is %s, want a mapping with name, version, steps, …", kind(doc))
	}
	p := &treeParser{}
	p.unknownKeys("", top, topKeys)
	r := &Release{}
	r.Name = p.requiredString(top, "", "name")
	r.Version = p.requiredString(top, "", "version")
	r.Images = p.stringMap(".images", top["images"])
	if v, ok := top["manifests"]; ok && v != nil {
		r.Manifests, _ = p.str(".manifests", v)
	}
	if v, ok := top["migrations"]; ok && v != nil {
		if list, ok := p.list(".migrations", v); ok {
			for i, e := range list {
				r.Migrations = append(r.Migrations, p.migration(fmt.Sprintf(".migrations[%d]", i), e))
			}
		}
	}
	r.Flags = p.stringMap(".flags", top["flags"])
	if v, ok := top["tiers"]; ok && v != nil {
		if m, ok := p.mapping(".tiers", v); ok {
			r.Tiers = make(map[string]map[string]string, len(m))
			for _, k := range slices.Sorted(mapKeys(m)) {
				r.Tiers[k] = p.stringMap(".tiers"+keyPath(k), m[k])
			}
		}
	}
	switch v, ok := top["steps"]; {
	case !ok || v == nil:
		p.add("steps", "is missing")
	default:
		if list, ok := p.list(".steps", v); ok {
			if len(list) > plan.MaxSteps {
				p.add("steps", "has %d entries, limit %d", len(list), plan.MaxSteps)
				break
			}
			r.Steps = make([]StepTemplate, 0, len(list))
			for i, e := range list {
				r.Steps = append(r.Steps, p.step(fmt.Sprintf(".steps[%d]", i), e))
			}
		}
	}
	if err := errors.Join(p.errs...); err != nil {
		return nil, err
	}
	return r, nil
}

func (p *treeParser) migration(path string, v any) Migration {
	var m Migration
	mm, ok := p.mapping(path, v)
	if !ok {
		return m
	}
	p.unknownKeys(path, mm, migKeys)
	switch n, ok := mm["version"]; {
	case !ok || n == nil:
		p.add(path+".version", "is missing")
	default:
		m.Version, _ = p.integer(path+".version", n)
	}
	m.Name = p.requiredString(mm, path, "name")
	m.SQL = p.requiredString(mm, path, "sql")
	return m
}

func (p *treeParser) step(path string, v any) StepTemplate {
	var s StepTemplate
	m, ok := p.mapping(path, v)
	if !ok {
		return s
	}
	p.unknownKeys(path, m, stepKeys)
	s.ID = p.requiredString(m, path, "id")
	s.Provider = p.requiredString(m, path, "provider")
	s.Action = p.requiredString(m, path, "action")
	s.Resource = p.requiredString(m, path, "resource")
	s.Params = p.params(path+".params", m["params"])
	if v, ok := m["depends_on"]; ok && v != nil {
		if list, ok := p.list(path+".depends_on", v); ok {
			for k, e := range list {
				if id, ok := p.str(fmt.Sprintf("%s.depends_on[%d]", path, k), e); ok {
					s.DependsOn = append(s.DependsOn, id)
				}
			}
		}
	}
	if v, ok := m["compensation"]; ok && v != nil {
		cpath := path + ".compensation"
		if cm, ok := p.mapping(cpath, v); ok {
			p.unknownKeys(cpath, cm, compKeys)
			s.Compensation = &Compensation{
				Action: p.requiredString(cm, cpath, "action"),
				Params: p.params(cpath+".params", cm["params"]),
			}
		}
	}
	if v, ok := m["on_rollback"]; ok && v != nil {
		s.OnRollback, _ = p.str(path+".on_rollback", v)
	}
	return s
}

// unknownKeys reports, in sorted order, the keys of m not in allowed.
func (p *treeParser) unknownKeys(path string, m map[string]any, allowed []string) {
	var bad []string
	for k := range m {
		if !slices.Contains(allowed, k) {
			bad = append(bad, k)
		}
	}
	slices.Sort(bad)
	for _, k := range bad {
		p.add(path+keyPath(k), "unknown key (allowed: %s)", strings.Join(allowed, ", "))
	}
}

func (p *treeParser) requiredString(m map[string]any, path, key string) string {
	v, ok := m[key]
	if !ok || v == nil {
		p.add(path+"."+key, "is missing")
		return ""
	}
	s, _ := p.str(path+"."+key, v)
	return s
}

func (p *treeParser) str(path string, v any) (string, bool) {
	if s, ok := v.(string); ok {
		return s, true
	}
	switch v.(type) {
	case json.Number, bool:
		p.add(path, "is %s, want a string (quote it)", kind(v))
	default:
		p.add(path, "is %s, want a string", kind(v))
	}
	return "", false
}

func (p *treeParser) mapping(path string, v any) (map[string]any, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		p.add(path, "is %s, want a mapping", kind(v))
	}
	return m, ok
}

func (p *treeParser) list(path string, v any) ([]any, bool) {
	l, ok := v.([]any)
	if !ok {
		p.add(path, "is %s, want a list", kind(v))
	}
	return l, ok
}

// stringMap converts a mapping of strings; null is no mapping.
func (p *treeParser) stringMap(path string, v any) map[string]string {
	if v == nil {
		return nil
	}
	m, ok := p.mapping(path, v)
	if !ok {
		return nil
	}
	out := make(map[string]string, len(m))
	for _, k := range slices.Sorted(mapKeys(m)) {
		if s, ok := p.str(path+keyPath(k), m[k]); ok {
			out[k] = s
		}
	}
	return out
}

func (p *treeParser) integer(path string, v any) (int64, bool) {
	n, ok := v.(json.Number)
	if !ok || !isIntLiteral(n.String()) {
		p.add(path, "is %s, want a whole number", short(v))
		return 0, false
	}
	i, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil {
		p.add(path, "%.40s is out of range", n)
		return 0, false
	}
	return i, true
}

// params converts a params mapping; null is no params.
func (p *treeParser) params(path string, v any) map[string]any {
	if v == nil {
		return nil
	}
	m, ok := p.mapping(path, v)
	if !ok {
		return nil
	}
	out, err := toParam(m, 1)
	if err != nil {
		var pe *pathError
		if errors.As(err, &pe) {
			p.add(path+pe.path, "%v", pe.err)
		} else {
			p.add(path, "%v", err)
		}
		return nil
	}
	return out.(map[string]any)
}

// pathError carries the path below params at which a problem sits.
type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

func prefix(p string, err error) error {
	var pe *pathError
	if errors.As(err, &pe) {
		return &pathError{p + pe.path, pe.err}
	}
	return &pathError{p, err}
}

// toParam converts a decoded params value: json.Number to float64 (finite,
// integers within ±2^53), containers recursively, depth levels below
// params.
func toParam(v any, depth int) (any, error) {
	if depth > plan.MaxParamsDepth {
		return nil, &pathError{"", fmt.Errorf("nested deeper than %d levels", plan.MaxParamsDepth)}
	}
	switch t := v.(type) {
	case nil, bool, string:
		return t, nil
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
		return f, nil
	case []any:
		out := make([]any, 0, len(t))
		for i, e := range t {
			ev, err := toParam(e, depth+1)
			if err != nil {
				return nil, prefix(fmt.Sprintf("[%d]", i), err)
			}
			out = append(out, ev)
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(t))
		for _, k := range slices.Sorted(mapKeys(t)) {
			ev, err := toParam(t[k], depth+1)
			if err != nil {
				return nil, prefix(keyPath(k), err)
			}
			out[k] = ev
		}
		return out, nil
	default:
		return nil, &pathError{"", fmt.Errorf("unsupported value %T", v)}
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
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

// kind names the type of a decoded value for errors.
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
