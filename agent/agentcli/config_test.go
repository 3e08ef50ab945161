package agentcli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	sumA = "3f1c0a4b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708"
	sumB = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)

func TestParseConfig(t *testing.T) {
	good := `# the agent's providers
providers:
  - name: local
    path: /usr/local/libexec/attache/attache-provider-local
    sha256: ` + sumA + `
    config:
      root: /var/lib/attache/local
      bin_dir: /opt/vendor/bin
  - name: other
    path: /opt/attache-provider-other
    sha256: ` + sumB + `
`
	for _, tc := range []struct {
		name  string
		in    string
		want  []string // substrings of the error; none for success
		count int      // providers on success
	}{
		{name: "good", in: good, count: 2},
		{name: "leading document marker", in: "%YAML 1.1\n---\n" + good, count: 2},
		{name: "document end marker", in: good + "...\n# trailing comment\n", count: 2},
		{name: "JSON", in: `{"providers":[{"name":"local","path":"/p","sha256":"` + sumA + `","config":{"root":"/r"}}]}`, count: 1},
		{name: "empty", in: "", count: 0},
		{name: "comments only", in: "# nothing yet\n", count: 0},
		{name: "no providers", in: "providers: []\n", count: 0},

		{name: "unknown top-level key", in: "provider:\n  - name: local\n", want: []string{`unknown field "provider"`}},
		{name: "unknown entry key", in: strings.Replace(good, "sha256:", "sha265:", 1), want: []string{`unknown field "sha265"`}},
		{name: "duplicate key", in: strings.Replace(good, "    config:", "    sha256: "+sumB+"\n    config:", 1), want: []string{"sha256", "already set"}},
		{name: "second document", in: good + "---\nproviders: []\n", want: []string{"more than one YAML document"}},
		{name: "content after the end marker", in: good + "...\nproviders: []\n", want: []string{"more than one YAML document"}},
		{name: "not a mapping", in: "- name: local\n", want: []string{"decode"}},
		{name: "not YAML", in: "providers: [\n", want: []string{"not valid YAML"}},
		{name: "catalog validation, every problem at once", in: `providers:
  - name: Local
    path: relative/attache-provider-local
    sha256: xyz
  - name: dup
    path: /a
    sha256: ` + sumA + `
  - name: dup
    path: /b
    sha256: ` + sumB + `
`, want: []string{`providers[0] (Local): name must be a DNS label`, "path must be absolute", "sha256 must be 64 hex digits", "providers[2] (dup): duplicate name"}},
		{name: "missing fields", in: "providers:\n  - name: local\n", want: []string{"path must be absolute", "sha256 must be 64 hex digits"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.in))
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if len(c.Providers) != tc.count {
					t.Fatalf("%d providers, want %d", len(c.Providers), tc.count)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	c, err := ParseConfig([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Providers[0]
	if e.Name != "local" || e.Path != "/usr/local/libexec/attache/attache-provider-local" || e.SHA256 != sumA ||
		string(e.Config) != `{"bin_dir":"/opt/vendor/bin","root":"/var/lib/attache/local"}` {
		t.Fatalf("entry %+v (config %s)", e, e.Config)
	}
}

func writeConfig(t *testing.T, content []byte, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // not subject to the umask
		t.Fatal(err)
	}
	return path
}

func TestLoadConfig(t *testing.T) {
	good := []byte("providers:\n  - name: local\n    path: /p\n    sha256: " + sumA + "\n")
	for _, mode := range []os.FileMode{0o600, 0o400, 0o644} {
		if c, err := LoadConfig(writeConfig(t, good, mode)); err != nil || len(c.Providers) != 1 {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	for _, mode := range []os.FileMode{0o620, 0o664, 0o602, 0o666} {
		path := writeConfig(t, good, mode)
		_, err := LoadConfig(path)
		if err == nil || !strings.Contains(err.Error(), "writable by group or others") || !strings.Contains(err.Error(), "chmod go-w") ||
			!strings.Contains(err.Error(), path) {
			t.Errorf("mode %04o: %v, want a refusal naming the file and chmod go-w", mode, err)
		}
	}

	// The size limit: a file of exactly MaxConfigBytes loads, one byte more
	// is refused before it is parsed.
	pad := func(n int) []byte {
		b := append([]byte(nil), good...)
		b = append(b, '#')
		return append(b, bytes.Repeat([]byte("x"), n-len(b))...)
	}
	if _, err := LoadConfig(writeConfig(t, pad(MaxConfigBytes), 0o600)); err != nil {
		t.Errorf("config of exactly %d bytes: %v", MaxConfigBytes, err)
	}
	if _, err := LoadConfig(writeConfig(t, pad(MaxConfigBytes+1), 0o600)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized config: %v", err)
	}

	// Parse errors name the file.
	path := writeConfig(t, []byte("providers:\n  - nmae: local\n"), 0o600)
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `"nmae"`) {
		t.Errorf("unknown key: %v", err)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}
