// Package yamldoc answers one question about a YAML stream before it is
// converted to JSON: does it hold more than one document? The conversion
// (sigs.k8s.io/yaml) reads the first document and silently drops the rest,
// so strict readers of YAML input (plans, the agent's config) refuse a
// stream with a second document instead of half-reading it.
//
// Imported by any package that reads YAML from outside.
package yamldoc

import "bytes"

// Multiple reports whether b holds a second YAML document, which the
// YAML-to-JSON conversion would silently drop: a "---" marker line after
// content, or content after a "..." end marker. Document markers are only
// ever markers at the start of a line (YAML forbids them inside scalars),
// so a line scan is exact.
func Multiple(b []byte) bool {
	content, ended := false, false
	for line := range bytes.Lines(b) {
		line = bytes.TrimRight(line, "\r\n")
		marker := func(m string) bool {
			return bytes.HasPrefix(line, []byte(m)) && (len(line) == 3 || line[3] == ' ' || line[3] == '\t')
		}
		switch t := bytes.TrimSpace(line); {
		case marker("---"):
			if content || ended {
				return true
			}
			// "--- value" starts the document with content on the line.
			if rest := bytes.TrimSpace(line[3:]); len(rest) > 0 && rest[0] != '#' {
				content = true
			}
		case marker("..."):
			ended = true
		case len(t) == 0 || t[0] == '#' || (!content && t[0] == '%'):
			// Blank, comment, or a directive before the document.
		default:
			if ended {
				return true
			}
			content = true
		}
	}
	return false
}
