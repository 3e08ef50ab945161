package executor

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
)

func TestTruncate(t *testing.T) {
	tests := []struct {
		name, in string
		n        int
		want     string
	}{
		{"short", "hello", 10, "hello"},
		{"exact", "hello", 5, "hello"},
		{"cut", "hello world", 8, "hello…"},
		{"rune boundary", "ééééé", 8, "éé…"},
		{"invalid utf-8", "a\xffb", 10, "a\uFFFDb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := truncate(tt.in, tt.n)
			if got != tt.want || len(got) > tt.n || !utf8.ValidString(got) {
				t.Errorf("truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
			}
		})
	}
}

func TestConvertChangesBounded(t *testing.T) {
	var cs []*providerv1.Change
	for i := range MaxChanges + 44 {
		cs = append(cs, &providerv1.Change{Resource: fmt.Sprintf("r%d", i), Operation: providerv1.Operation_OPERATION_CREATE, Summary: strings.Repeat("x", 2*MaxChangeFieldBytes)})
	}
	out := convertChanges(cs)
	if len(out) != MaxChanges {
		t.Fatalf("%d changes, want %d", len(out), MaxChanges)
	}
	if last := out[len(out)-1]; last.Summary != "45 more changes not recorded" {
		t.Errorf("last change %+v", last)
	}
	if s := out[0].Summary; len(s) > MaxChangeFieldBytes {
		t.Errorf("summary of %d bytes, limit %d", len(s), MaxChangeFieldBytes)
	}
	if out[0].Operation != "create" || out[0].Resource != "r0" {
		t.Errorf("first change %+v", out[0])
	}
}
