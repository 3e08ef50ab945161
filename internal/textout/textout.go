// Package textout writes what the command-line tools print: indented JSON,
// tab-aligned tables, and text made safe for one line of a terminal. Text
// that came from elsewhere (an agent's plan messages, a refused offer's
// plan ID) may hold anything, escape sequences included, so every message
// printed in a table or a progress line goes through Clean or Cell.
//
// Imported by the CLIs (controlplane/opscli, agent/agentcli).
package textout

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"
)

// JSON writes v as indented JSON, HTML characters unescaped.
func JSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Table writes a header and rows, tab-aligned.
func Table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// Time formats t in UTC as RFC 3339, "-" for the zero time.
func Time(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// Clean puts s on one line fit for a terminal: whitespace runs become one
// space; control and other non-printing characters and invalid UTF-8
// become U+FFFD.
func Clean(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) || !unicode.IsPrint(r) && r != ' ' {
			return '\uFFFD'
		}
		return r
	}, s)
}

// Cell is Clean(s) cut to at most max runes (ending in "…" when cut), or
// "-" when empty.
func Cell(s string, max int) string {
	s = Clean(s)
	if s == "" {
		return "-"
	}
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return string(r[:max-1]) + "…"
}
