package inventory

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func obj(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCompare(t *testing.T) {
	tests := []struct {
		name          string
		applied, live string
		want          []string // "path want live"
	}{
		{
			name:    "defaults and status are not drift",
			applied: `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"w","namespace":"n","labels":{"a":"b"}},"spec":{"replicas":3}}`,
			live:    `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"w","namespace":"n","uid":"u","labels":{"a":"b","extra":"x"},"annotations":{"x":"y"}},"spec":{"replicas":3,"revisionHistoryLimit":10},"status":{"replicas":3}}`,
		},
		{
			name:    "scalar changed",
			applied: `{"spec":{"replicas":3}}`,
			live:    `{"spec":{"replicas":5}}`,
			want:    []string{"spec.replicas 3 5"},
		},
		{
			name:    "field removed",
			applied: `{"spec":{"paused":true}}`,
			live:    `{"spec":{}}`,
			want:    []string{"spec.paused true <unset>"},
		},
		{
			name:    "quantities and numbers by value",
			applied: `{"spec":{"cpu":"0.5","memory":"1Gi","n":1,"port":8080,"f":2.0}}`,
			live:    `{"spec":{"cpu":"500m","memory":"1024Mi","n":1.0,"port":"8080","f":2}}`,
		},
		{
			name:    "keyed list: extra live items are others', order does not matter",
			applied: `{"c":[{"name":"web","image":"a","ports":[{"containerPort":80}]}]}`,
			live:    `{"c":[{"name":"sidecar","image":"s"},{"name":"web","image":"a","imagePullPolicy":"Always","ports":[{"containerPort":80,"protocol":"TCP"}]}]}`,
		},
		{
			name:    "keyed list: item changed and item gone",
			applied: `{"c":[{"name":"web","image":"a"},{"name":"log","image":"l"}]}`,
			live:    `{"c":[{"name":"web","image":"b"}]}`,
			want:    []string{"c[name=web].image a b", `c[name=log] {"image":"l","name":"log"} <unset>`},
		},
		{
			name:    "unkeyed list of objects by index",
			applied: `{"rules":[{"verbs":["get"]}]}`,
			live:    `{"rules":[{"verbs":["get","delete"]}]}`,
			want:    []string{`rules[0].verbs ["get"] ["get","delete"]`},
		},
		{
			name:    "unkeyed list of objects grown",
			applied: `{"rules":[{"verbs":["get"]}]}`,
			live:    `{"rules":[{"verbs":["get"]},{"verbs":["*"]}]}`,
			want:    []string{"rules 1 items 2 items"},
		},
		{
			name:    "label keys with dots",
			applied: `{"metadata":{"labels":{"app.kubernetes.io/name":"web"},"annotations":{"a":"1"}}}`,
			live:    `{"metadata":{"labels":{"app.kubernetes.io/name":"db"}}}`,
			want:    []string{"metadata.labels[app.kubernetes.io/name] web db", "metadata.annotations {\"a\":\"1\"} <unset>"},
		},
		{
			name:    "null and empty ask for nothing",
			applied: `{"spec":{"a":null,"b":{},"c":[]}}`,
			live:    `{"spec":{"a":1}}`,
		},
		{
			name:    "type changed",
			applied: `{"spec":{"a":{"b":1}}}`,
			live:    `{"spec":{"a":"x"}}`,
			want:    []string{`spec.a {"b":1} x`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			diffs := compare(obj(t, tc.applied), obj(t, tc.live), 0)
			var got []string
			for _, d := range diffs {
				got = append(got, d.path+" "+d.want+" "+d.live)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("got\n  %q\nwant\n  %q", got, tc.want)
			}
		})
	}
}

func TestCompareBounds(t *testing.T) {
	applied, live := map[string]any{}, map[string]any{}
	for i := range 100 {
		applied[fmt.Sprint("k", i)] = strings.Repeat("é", 500)
		live[fmt.Sprint("k", i)] = "x"
	}
	diffs := compare(applied, live, maxDriftPerObject)
	if len(diffs) != maxDriftPerObject {
		t.Fatalf("%d diffs, want %d", len(diffs), maxDriftPerObject)
	}
	for _, d := range diffs {
		if len(d.want) > maxValue || !strings.HasSuffix(d.want, "…") || !json.Valid([]byte(`"`+d.want+`"`)) {
			t.Fatalf("want %q not bounded to %d bytes on a rune boundary", d.want, maxValue)
		}
	}
}

func TestEncodeBudget(t *testing.T) {
	var entries []entry
	for i := range 10 {
		o, _ := json.Marshal(map[string]string{"pad": strings.Repeat("x", (i+1)*30<<10)})
		entries = append(entries, entry{ref: ref{Version: "v1", Kind: "ConfigMap", Name: fmt.Sprint("c", i)}, Hash: "h", Object: o})
	}
	// 30+60+...+300 KiB = 1650 KiB: the largest objects go first.
	data, err := encode(entries)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 1<<20 {
		t.Fatalf("inventory of %d bytes does not fit a ConfigMap", len(data))
	}
	var back []entry
	if err := json.Unmarshal([]byte(data), &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != 10 {
		t.Fatalf("%d entries", len(back))
	}
	if back[0].Object == nil || back[9].Object != nil {
		t.Fatalf("kept the largest object or dropped the smallest")
	}
	for _, e := range back {
		if e.Hash != "h" || e.Name == "" {
			t.Fatalf("entry %+v lost its reference or hash", e)
		}
	}
	if entries[9].Object == nil {
		t.Fatal("encode changed its input")
	}
}
