package sign

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"
)

const maxJSONDepth = 16

var (
	timeType        = reflect.TypeFor[time.Time]()
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
)

// decodeStrict decodes exactly one JSON value from data into v (a pointer).
// Beyond json.Decoder with DisallowUnknownFields, it refuses duplicate keys,
// keys that match a field only case-insensitively, objects or arrays where
// the target has neither, nesting deeper than maxJSONDepth, and trailing
// data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := walkJSON(dec, reflect.TypeOf(v).Elem(), "", 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	return nil
}

func walkJSON(dec *json.Decoder, t reflect.Type, path string, depth int) error {
	if depth > maxJSONDepth {
		return errors.New("JSON nested too deeply")
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil // scalar: json.Decode checks its type
	}
	opaque := t == timeType || reflect.PointerTo(t).Implements(unmarshalerType)
	switch d {
	case '{':
		var fields map[string]reflect.Type
		switch {
		case opaque:
			return fmt.Errorf("%s: unexpected JSON object", pathName(path))
		case t.Kind() == reflect.Struct:
			fields = jsonFields(t)
		case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String:
		default:
			return fmt.Errorf("%s: unexpected JSON object", pathName(path))
		}
		seen := make(map[string]bool)
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := tok.(string)
			if seen[key] {
				return fmt.Errorf("%s: duplicate key %.64q", pathName(path), key)
			}
			seen[key] = true
			elem := t.Elem
			if fields != nil {
				ft, ok := fields[key]
				if !ok {
					return fmt.Errorf("%s: unknown field %.64q", pathName(path), key)
				}
				elem = func() reflect.Type { return ft }
			}
			if err := walkJSON(dec, elem(), path+"."+key, depth+1); err != nil {
				return err
			}
		}
	case '[':
		if opaque || t.Kind() != reflect.Slice || t.Elem().Kind() == reflect.Uint8 {
			return fmt.Errorf("%s: unexpected JSON array", pathName(path))
		}
		for dec.More() {
			if err := walkJSON(dec, t.Elem(), path+"[]", depth+1); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // closing delimiter
	return err
}

func pathName(p string) string {
	if p == "" {
		return "JSON"
	}
	return strings.TrimPrefix(p, ".")
}

// jsonFields maps the exact JSON names of t's fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}
