package textout

import (
	"testing"
	"time"
)

func TestCleanAndCell(t *testing.T) {
	for _, tc := range []struct{ in, clean, cell string }{
		{"", "", "-"},
		{"  two\n lines\t", "two lines", "two lines"},
		{"red \x1b[31mtext", "red \uFFFD[31mtext", "red \uFFFD[31mte…"},
		{"bad \xff utf8", "bad \uFFFD utf8", "bad \uFFFD utf8"},
		{"exactly12345", "exactly12345", "exactly12345"},
	} {
		if got := Clean(tc.in); got != tc.clean {
			t.Errorf("Clean(%q) = %q, want %q", tc.in, got, tc.clean)
		}
		if got := Cell(tc.in, 12); got != tc.cell {
			t.Errorf("Cell(%q, 12) = %q, want %q", tc.in, got, tc.cell)
		}
	}
	if Time(time.Time{}) != "-" || Time(time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))) != "2026-01-02T02:04:05Z" {
		t.Error("Time")
	}
}
