package agentcli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	plugin "github.com/hashicorp/go-plugin"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"attache.dev/attache/agent/catalog"
	"attache.dev/attache/providers/local/localtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	plugin.CleanupClients()
	os.Exit(code)
}

// runCLI runs attache-agent with args and returns its stdout and stderr.
func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := NewRootCommand(&stdout, &stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return stdout.String(), stderr.String(), err
}

// buildLocal builds attache-provider-local into a fresh directory and
// returns its path and sha256.
func buildLocal(t *testing.T) (string, string) {
	t.Helper()
	path := localtest.GoBuild(t, "./providers/local/cmd/attache-provider-local", t.TempDir(), "attache-provider-local")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return path, hex.EncodeToString(sum[:])
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func TestRunHelp(t *testing.T) {
	out, _, err := runCLI(t, "run", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--config", "provider pin", "--state-dir", "pinned by SHA-256", "--allow-unreleased-plans", "stolen plans key"} {
		if !strings.Contains(out, want) {
			t.Errorf("run --help does not mention %q:\n%s", want, out)
		}
	}
}

// TestProviderPin: the entry `provider pin` prints is a config the agent
// parses, and the run command's provider loading starts the real plugin
// from it; a binary changed after pinning is refused.
func TestProviderPin(t *testing.T) {
	path, sum := buildLocal(t)
	root := t.TempDir()
	providerConfig := `{"root":` + jsonString(root) + `}`

	// A relative path is pinned as an absolute one.
	t.Chdir(filepath.Dir(path))
	out, _, err := runCLI(t, "provider", "pin", "--name", "local", "./"+filepath.Base(path), "--config", providerConfig, "--pass-env", "ATTACHE_A,ATTACHE_B")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig([]byte(out))
	if err != nil {
		t.Fatalf("pin output does not parse: %v\n%s", err, out)
	}
	if len(cfg.Providers) != 1 {
		t.Fatalf("pin output %s", out)
	}
	e := cfg.Providers[0]
	if e.Name != "local" || e.Path != path || e.SHA256 != sum || string(e.Config) != providerConfig || strings.Join(e.PassEnv, " ") != "ATTACHE_A ATTACHE_B" {
		t.Fatalf("pinned entry %+v (config %s), want local, %s, %s", e, e.Config, path, sum)
	}
	// The same through a config file.
	loaded, err := LoadConfig(writeConfig(t, []byte(out), 0o600))
	if err != nil {
		t.Fatal(err)
	}
	if err := catalog.CheckBinaries(loaded.Providers); err != nil {
		t.Fatalf("pinned binary fails its check: %v", err)
	}

	id := spiffeid.RequireFromString("spiffe://example.org/tenant/acme/agent/a1")
	cat, err := loadProviders(t.Context(), testLogger(t), id, loaded.Providers)
	if err != nil {
		t.Fatal(err)
	}
	p, err := cat.Provider("local")
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.Describe(t.Context())
	if err != nil || d.GetName() != "local" {
		t.Fatalf("Describe = %v, %v", d, err)
	}
	cat.Close()

	// Changed after pinning: refused by the pre-flight check and by Load.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte("tampered"))
	_ = f.Close()
	for name, err := range map[string]error{
		"CheckBinaries": catalog.CheckBinaries(loaded.Providers),
		"loadProviders": func() error {
			c, err := loadProviders(t.Context(), testLogger(t), id, loaded.Providers)
			if c != nil {
				c.Close()
			}
			return err
		}(),
	} {
		if !errors.Is(err, catalog.ErrChecksumMismatch) || !strings.Contains(err.Error(), `provider "local"`) {
			t.Errorf("%s after tampering = %v, want ErrChecksumMismatch naming the provider", name, err)
		}
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"provider", "pin", path}, `"name" not set`},
		{[]string{"provider", "pin", "--name", "local", path, "--config", "{root"}, "--config: not valid JSON"},
		{[]string{"provider", "pin", "--name", "Local", path}, "DNS label"},
		{[]string{"provider", "pin", "--name", "local", path, "--pass-env", "PATH"}, "pass_env[0]: PATH is set by the agent"},
		{[]string{"provider", "pin", "--name", "local", filepath.Join(root, "missing")}, "no such file"},
	} {
		if _, _, err := runCLI(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestRunChecksumMismatch: run refuses a config whose provider binary does
// not match its pin before anything else, naming the provider, and leaves
// the state directory untouched (not enrolled, no journal).
func TestRunChecksumMismatch(t *testing.T) {
	path, sum := buildLocal(t)
	t.Setenv("ATTACHE_JOIN_TOKEN", "")
	config := func(sum string) string {
		return writeConfig(t, []byte("providers:\n  - name: local\n    path: "+path+"\n    sha256: "+sum+"\n"), 0o600)
	}
	stateDir := t.TempDir()
	wrong := strings.Repeat("0f", 32)

	start := time.Now()
	_, _, err := runCLI(t, "run", "--state-dir", stateDir, "--config", config(wrong), "--token", "attache-join-v1.not-used")
	if !errors.Is(err, catalog.ErrChecksumMismatch) {
		t.Fatalf("run = %v, want ErrChecksumMismatch", err)
	}
	for _, want := range []string{`provider "local"`, path, sum, wrong} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refusal took %s", d)
	}
	if ents, _ := os.ReadDir(stateDir); len(ents) != 0 {
		t.Fatalf("state directory written: %v", ents)
	}

	// With the right pin the check passes, and run goes on to need an
	// identity.
	_, _, err = runCLI(t, "run", "--state-dir", stateDir, "--config", config(sum))
	if err == nil || !strings.Contains(err.Error(), "holds no identity yet") {
		t.Fatalf("run with a matching pin = %v, want the enrollment error", err)
	}
	// A missing binary is refused the same way.
	missing := writeConfig(t, []byte("providers:\n  - name: gone\n    path: /nonexistent/attache-provider-gone\n    sha256: "+sum+"\n"), 0o600)
	if _, _, err := runCLI(t, "run", "--state-dir", stateDir, "--config", missing); err == nil || !strings.Contains(err.Error(), `provider "gone"`) {
		t.Fatalf("run with a missing provider binary = %v", err)
	}
}
