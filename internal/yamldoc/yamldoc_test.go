package yamldoc

import "testing"

func TestMultiple(t *testing.T) {
	for in, want := range map[string]bool{
		"a: 1\n":                        false,
		"---\na: 1\n":                   false,
		"# c\n---\na: 1\n...\n":         false,
		"--- # start\na: 1\n":           false,
		"a: |\n  ---- not a marker\n":   false,
		"a: '--- quoted'\n":             false,
		"----\n":                        false,
		"a: 1\n---\n":                   true,
		"a: 1\n--- \n":                  true,
		"a: 1\r\n---\r\nb: 2\r\n":       true,
		"--- a\n--- b\n":                true,
		"a: 1\n...\nb: 2\n":             true,
		"a: 1\n...\n---\nb: 2\n":        true,
		"%YAML 1.2\n---\na: 1\n":        false,
		"a: 1\n%not a directive here\n": false,
	} {
		if got := Multiple([]byte(in)); got != want {
			t.Errorf("Multiple(%q) = %v, want %v", in, got, want)
		}
	}
}
