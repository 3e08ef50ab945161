package inventory

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// maxValue bounds a value rendered in a Drift or a Change summary.
const maxValue = 120

// unset renders a field the live object lacks.
const unset = "<unset>"

// fieldDiff is one field whose live value differs from the applied one.
type fieldDiff struct {
	path, want, live string
}

// listKeys are the fields that identify an item of a list of objects, in
// the order tried (the merge keys of the core API's associative lists).
var listKeys = []string{"name", "containerPort", "port", "mountPath", "devicePath", "ip"}

// compare walks the fields of applied — everything but apiVersion, kind,
// status and metadata other than labels and annotations — and returns the
// ones whose live value differs, at most limit of them. Fields live has and
// applied lacks (defaults, what controllers and other managers set) are not
// differences.
func compare(applied, live map[string]any, limit int) []fieldDiff {
	c := &comparer{limit: limit}
	for _, k := range sortedKeys(applied) {
		switch k {
		case "apiVersion", "kind", "status":
			continue
		case "metadata":
			am, _ := applied[k].(map[string]any)
			lm, _ := live[k].(map[string]any)
			for _, f := range []string{"labels", "annotations"} {
				if v, ok := am[f]; ok {
					lv, lok := lm[f]
					c.walk("metadata."+f, v, lv, lok)
				}
			}
			continue
		}
		lv, ok := live[k]
		c.walk(k, applied[k], lv, ok)
	}
	return c.diffs
}

type comparer struct {
	limit int
	diffs []fieldDiff
}

func (c *comparer) full() bool { return c.limit > 0 && len(c.diffs) >= c.limit }

func (c *comparer) add(path string, want, live any, present bool) {
	if c.full() {
		return
	}
	l := unset
	if present {
		l = render(live)
	}
	c.diffs = append(c.diffs, fieldDiff{path: path, want: render(want), live: l})
}

// walk compares want (from the applied object) with live at path; present
// says whether live has the field at all.
func (c *comparer) walk(path string, want, live any, present bool) {
	if c.full() || want == nil {
		return // null in an applied configuration asks for nothing
	}
	switch w := want.(type) {
	case map[string]any:
		if len(w) == 0 {
			return
		}
		l, ok := live.(map[string]any)
		if !ok {
			c.add(path, want, live, present && live != nil)
			return
		}
		for _, k := range sortedKeys(w) {
			lv, lok := l[k]
			c.walk(join(path, k), w[k], lv, lok)
		}
	case []any:
		l, ok := live.([]any)
		if !ok && (present && live != nil || len(w) > 0) {
			c.add(path, want, live, present && live != nil)
			return
		}
		c.list(path, w, l)
	default:
		if !present || !sameScalar(want, live) {
			c.add(path, want, live, present)
		}
	}
}

// list compares a list: lists of objects with a unique key field item by
// key (live may hold more items, set by others), other lists of objects item
// by item, lists of scalars as a whole.
func (c *comparer) list(path string, want, live []any) {
	if key := itemKey(want); key != "" {
		byKey := map[string]map[string]any{}
		for _, it := range live {
			if m, ok := it.(map[string]any); ok {
				if v, ok := m[key]; ok && scalar(v) {
					byKey[render(v)] = m
				}
			}
		}
		for _, it := range want {
			m := it.(map[string]any)
			id := render(m[key])
			p := fmt.Sprintf("%s[%s=%s]", path, key, id)
			lm, ok := byKey[id]
			if !ok {
				c.add(p, m, nil, false)
				continue
			}
			c.walk(p, m, lm, true)
		}
		return
	}
	objects := len(want) > 0
	for _, it := range want {
		if _, ok := it.(map[string]any); !ok {
			objects = false
		}
	}
	if objects {
		if len(live) != len(want) {
			c.add(path, fmt.Sprintf("%d items", len(want)), fmt.Sprintf("%d items", len(live)), true)
			return
		}
		for i := range want {
			c.walk(fmt.Sprintf("%s[%d]", path, i), want[i], live[i], true)
		}
		return
	}
	same := len(want) == len(live)
	for i := 0; same && i < len(want); i++ {
		if _, ok := want[i].(map[string]any); ok {
			same = false
		} else if _, ok := want[i].([]any); ok {
			same = false
		} else {
			same = sameScalar(want[i], live[i])
		}
	}
	if !same {
		c.add(path, want, live, true)
	}
}

// itemKey returns the first of listKeys that every item of want has, as a
// scalar, with distinct values; "" if none does.
func itemKey(want []any) string {
	if len(want) == 0 {
		return ""
	}
	for _, k := range listKeys {
		seen := map[string]bool{}
		ok := true
		for _, it := range want {
			m, isMap := it.(map[string]any)
			if !isMap {
				return ""
			}
			v, has := m[k]
			if !has || !scalar(v) || seen[render(v)] {
				ok = false
				break
			}
			seen[render(v)] = true
		}
		if ok {
			return k
		}
	}
	return ""
}

// sameScalar compares two scalars the way the API server normalizes them:
// numbers by value (1 and 1.0), a number and its string form (an int or
// string field given as 8080), and quantities by value ("0.5" and "500m").
func sameScalar(want, live any) bool {
	if want == live {
		return true
	}
	wf, wok := number(want)
	lf, lok := number(live)
	if wok && lok {
		return wf == lf
	}
	ws, wstr := want.(string)
	ls, lstr := live.(string)
	switch {
	case wstr && lstr:
		return quantityEqual(ws, ls)
	case wok && lstr:
		return quantityEqual(render(want), ls)
	case wstr && lok:
		return quantityEqual(ws, render(live))
	}
	return false
}

func quantityEqual(a, b string) bool {
	if a == b {
		return true
	}
	qa, err := resource.ParseQuantity(a)
	if err != nil {
		return false
	}
	qb, err := resource.ParseQuantity(b)
	if err != nil {
		return false
	}
	return qa.Cmp(qb) == 0
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case int64:
		return float64(n), true
	case int:
		return float64(n), true
	case int32:
		return float64(n), true
	case float64:
		return n, !math.IsNaN(n)
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

func scalar(v any) bool {
	switch v.(type) {
	case map[string]any, []any, nil:
		return false
	}
	return true
}

// render renders a value for a Drift: strings bare, everything else as
// JSON, at most maxValue bytes.
func render(v any) string {
	var s string
	switch t := v.(type) {
	case string:
		s = t
	case int64:
		s = strconv.FormatInt(t, 10)
	case nil:
		s = "null"
	default:
		b, err := json.Marshal(v)
		if err != nil {
			s = fmt.Sprint(v)
		} else {
			s = string(b)
		}
	}
	return truncate(s, maxValue)
}

// truncate cuts s to at most n bytes, on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !isRuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// join appends key to a dotted path, bracketing keys that hold dots (label
// keys such as app.kubernetes.io/name).
func join(path, key string) string {
	if strings.ContainsAny(key, ".[]") {
		return path + "[" + key + "]"
	}
	return path + "." + key
}

func sortedKeys(m map[string]any) []string { return slices.Sorted(maps.Keys(m)) }
