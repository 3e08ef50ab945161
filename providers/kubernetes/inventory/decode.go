package inventory

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

// maxError bounds the text of a document's error (a YAML error may list
// every duplicate key of a megabyte).
const maxError = 512

// Decode decodes manifests — YAML documents separated by "---" lines, or
// JSON (a JSON object is a YAML document) — into objects, strictly:
// duplicate keys, a document that is not an object, or one without
// apiVersion, kind or metadata.name is an error. Documents holding nothing
// (only comments or whitespace) are skipped; the others are numbered from 1,
// as Apply numbers objects, and errors name that number and, when known, the
// kind and name. Errors wrap ErrInvalid. At most MaxBytes of manifests and
// MaxObjects objects.
func Decode(manifests []byte) ([]*unstructured.Unstructured, error) {
	if len(manifests) > MaxBytes {
		return nil, fmt.Errorf("%w: %d bytes of manifests; at most %d", ErrInvalid, len(manifests), MaxBytes)
	}
	var out []*unstructured.Unstructured
	for _, d := range split(manifests) {
		n := len(out) + 1
		if d.err != nil {
			return nil, fmt.Errorf("%w: document %d: %v", ErrInvalid, n, d.err)
		}
		obj, err := decodeDocument(d.body)
		if err != nil {
			return nil, fmt.Errorf("%w: document %d%s: %s", ErrInvalid, n, labelOf(obj), truncate(err.Error(), maxError))
		}
		if obj == nil {
			continue
		}
		if len(out) == MaxObjects {
			return nil, fmt.Errorf("%w: document %d: more than %d objects", ErrInvalid, n, MaxObjects)
		}
		out = append(out, obj)
	}
	return out, nil
}

// document is one YAML document of a stream; err is set when its separator
// line carries content.
type document struct {
	body []byte
	err  error
}

// split cuts a stream at its "---" lines. A separator may be followed by a
// comment; content on it ("--- !!map", "--- |") is an error of the document
// it starts.
func split(b []byte) []document {
	var (
		docs []document
		cur  document
	)
	start := 0
	for start <= len(b) {
		end := bytes.IndexByte(b[start:], '\n')
		if end < 0 {
			end = len(b)
		} else {
			end += start
		}
		line := bytes.TrimRight(b[start:end], "\r")
		if bytes.HasPrefix(line, []byte("---")) && (len(line) == 3 || line[3] == ' ' || line[3] == '\t') {
			docs = append(docs, cur)
			cur = document{}
			if rest := bytes.TrimSpace(line[3:]); len(rest) > 0 && rest[0] != '#' {
				cur.err = fmt.Errorf("content after the document separator: %q", truncate(string(rest), 40))
			}
		} else {
			cur.body = append(cur.body, b[start:min(end+1, len(b))]...)
		}
		start = end + 1
	}
	return append(docs, cur)
}

// decodeDocument decodes one document; nil, nil for an empty one. On an
// error after the kind is known it returns the partial object too, so the
// error can name it.
func decodeDocument(doc []byte) (*unstructured.Unstructured, error) {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, err
	}
	j = bytes.TrimSpace(j)
	if len(j) == 0 || string(j) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the object")
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("not an object but %s", jsonType(v))
	}
	v, err = normalize(v)
	if err != nil {
		return nil, err
	}
	m := v.(map[string]any)
	obj := &unstructured.Unstructured{Object: m}

	apiVersion, ok := m["apiVersion"].(string)
	if !ok || apiVersion == "" {
		return nil, errors.New("apiVersion is missing or not a string")
	}
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil || gv.Version == "" {
		return nil, fmt.Errorf("apiVersion %q is not group/version or version", apiVersion)
	}
	kind, ok := m["kind"].(string)
	if !ok || kind == "" {
		return nil, errors.New("kind is missing or not a string")
	}
	if strings.HasSuffix(kind, "List") {
		if _, items := m["items"]; items {
			return obj, errors.New("lists are not supported; put each object in its own document")
		}
	}
	md, ok := m["metadata"].(map[string]any)
	if !ok {
		return obj, errors.New("metadata is missing or not an object")
	}
	name, ok := md["name"].(string)
	if !ok || name == "" {
		return obj, errors.New("metadata.name is missing or not a string")
	}
	if err := validName(name); err != nil {
		return obj, err
	}
	for _, f := range []string{"namespace", "generateName"} {
		if v, ok := md[f]; ok {
			if _, isString := v.(string); !isString {
				return obj, fmt.Errorf("metadata.%s is not a string", f)
			}
		}
	}
	for _, f := range []string{"labels", "annotations"} {
		if err := stringMap(md, f); err != nil {
			return obj, err
		}
	}
	return obj, nil
}

// stringMap checks that metadata field f, if present, maps strings to strings.
func stringMap(md map[string]any, f string) error {
	v, ok := md[f]
	if !ok || v == nil {
		return nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("metadata.%s is not an object", f)
	}
	for k, x := range m {
		if _, ok := x.(string); !ok {
			return fmt.Errorf("metadata.%s[%s] is not a string (quote it)", f, k)
		}
	}
	return nil
}

// normalize turns json.Numbers into int64 or float64, the number types
// unstructured objects hold.
func normalize(v any) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			n, err := normalize(x)
			if err != nil {
				return nil, err
			}
			t[k] = n
		}
		return t, nil
	case []any:
		for i, x := range t {
			n, err := normalize(x)
			if err != nil {
				return nil, err
			}
			t[i] = n
		}
		return t, nil
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i, nil
		}
		f, err := t.Float64()
		if err != nil {
			return nil, fmt.Errorf("number %s: %w", t.String(), err)
		}
		return f, nil
	}
	return v, nil
}

// labelOf renders " (apps/v1/Deployment web)" for errors, or "".
func labelOf(obj *unstructured.Unstructured) string {
	if obj == nil {
		return ""
	}
	apiVersion, _ := obj.Object["apiVersion"].(string)
	kind, _ := obj.Object["kind"].(string)
	s := strings.TrimSpace(apiVersion + "/" + kind)
	if md, ok := obj.Object["metadata"].(map[string]any); ok {
		if name, ok := md["name"].(string); ok && name != "" {
			s += " " + name
		}
	}
	return " (" + truncate(s, maxValue) + ")"
}

func jsonType(v any) string {
	switch v.(type) {
	case []any:
		return "a list"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	}
	return fmt.Sprintf("%T", v)
}
