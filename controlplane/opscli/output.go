package opscli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"attache.dev/attache/internal/textout"
)

func (g *globals) json() bool { return g.output == "json" }

// fields writes "key: value" lines, aligned.
func fields(w io.Writer, kv [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, p := range kv {
		fmt.Fprintf(tw, "%s:\t%s\n", p[0], p[1])
	}
	return tw.Flush()
}

func formatLabels(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(l))
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

func formatTimePtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return textout.Time(*t)
}

// ago says how long before now t was, coarsely: "12s ago", "5m ago".
func ago(t *time.Time, now time.Time) string {
	if t == nil {
		return "never"
	}
	d := now.Sub(*t)
	switch {
	case d < 0:
		return textout.Time(*t)
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return textout.Time(*t)
	}
}

// orDash is s made safe for a terminal (textout.Clean: many fields come
// from agents), or "-" when empty.
func orDash(s string) string {
	if s = textout.Clean(s); s == "" {
		return "-"
	}
	return s
}
