package catalog

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/local/localtest"
	"attache.dev/attache/providers/providertest"
	plugin "github.com/hashicorp/go-plugin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	plugin.CleanupClients()
	os.Exit(code)
}

// buildLocal builds attache-provider-local and returns its path and sha256.
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

func load(t *testing.T, entries []Entry) (*Catalog, error) {
	t.Helper()
	c, err := Load(t.Context(), entries, Options{
		Logger:      testLogger(t),
		Tenant:      &providerv1.TenantContext{Tenant: "acme", AgentId: "spiffe://example.org/tenant/acme/agent/a1", TrustDomain: "example.org"},
		CallTimeout: 30 * time.Second,
	})
	if c != nil {
		t.Cleanup(c.Close)
	}
	return c, err
}

// TestConformanceThroughPlugin runs the providertest suite against the real
// attache-provider-local binary, started and checked by the catalog.
func TestConformanceThroughPlugin(t *testing.T) {
	path, sum := buildLocal(t)
	bin := localtest.BuildSampleApp(t)
	providertest.Run(t, func(t *testing.T) providertest.Fixture {
		root := t.TempDir()
		c, err := load(t, []Entry{{Name: "local", Path: path, SHA256: sum, Config: localtest.Config(root, bin)}})
		if err != nil {
			t.Fatal(err)
		}
		p, err := c.Provider("local")
		if err != nil {
			t.Fatal(err)
		}
		return providertest.Fixture{Provider: p, Snapshot: func(t *testing.T) []byte { return localtest.Snapshot(t, root) }}
	}, localtest.Cases(t))
}

func TestChecksumMismatchRefused(t *testing.T) {
	path, sum := buildLocal(t)
	wrong := strings.Repeat("0", 64)
	_, err := load(t, []Entry{{Name: "local", Path: path, SHA256: wrong}})
	if !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("got %v, want ErrChecksumMismatch", err)
	}
	for _, want := range []string{`provider "local"`, path, sum, wrong} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// Tampered after pinning: same refusal.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte("tampered"))
	_ = f.Close()
	if _, err := load(t, []Entry{{Name: "local", Path: path, SHA256: sum}}); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("tampered binary: got %v, want ErrChecksumMismatch", err)
	}
}

func TestCheckBinaries(t *testing.T) {
	path, sum := buildLocal(t)
	if err := CheckBinaries([]Entry{{Name: "local", Path: path, SHA256: strings.ToUpper(sum)}}); err != nil {
		t.Fatalf("matching binary (sum in upper case): %v", err)
	}
	wrong := strings.Repeat("0", 64)
	err := CheckBinaries([]Entry{
		{Name: "local", Path: path, SHA256: wrong},
		{Name: "other", Path: "/nonexistent/attache-provider-other", SHA256: sum},
	})
	if !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("got %v, want ErrChecksumMismatch", err)
	}
	for _, want := range []string{`provider "local"`, path, sum, wrong, `provider "other"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if err := CheckBinaries([]Entry{{Name: "local", Path: "relative", SHA256: sum}}); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("invalid entry: %v", err)
	}
}

func TestValidate(t *testing.T) {
	err := Validate([]Entry{
		{Name: "Local", Path: "rel/path", SHA256: "xyz"},
		{Name: "ok", Path: "/bin/true", SHA256: strings.Repeat("a", 64), Config: []byte("{")},
		{Name: "ok", Path: "/bin/true", SHA256: strings.Repeat("a", 64)},
		{Name: "env", Path: "/bin/true", SHA256: strings.Repeat("a", 64), PassEnv: []string{"GOOD_1", "bad-name", "PATH", "PLUGIN_PROTOCOL_VERSIONS", "LD_PRELOAD", "GODEBUG"}},
	})
	for _, want := range []string{"DNS label", "absolute", "64 hex", "not valid JSON", "duplicate",
		`pass_env[1]: "bad-name" is not`, "pass_env[2]: PATH is set by", "pass_env[3]: PLUGIN_PROTOCOL_VERSIONS", "pass_env[4]: LD_PRELOAD changes how", "pass_env[5]: GODEBUG"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want it to mention %q", err, want)
		}
	}
	if _, err := load(t, []Entry{{Name: "x", Path: "/nonexistent/attache-provider-x", SHA256: strings.Repeat("a", 64)}}); err == nil || !strings.Contains(err.Error(), `provider "x"`) {
		t.Errorf("missing binary: %v", err)
	}
}

// TestProcessEnv: a provider gets the base environment and only the
// variables its entry passes, when set.
func TestProcessEnv(t *testing.T) {
	agentEnv := map[string]string{"ATTACHE_PG_DSN": "postgres://u:secret@db/app", "AWS_SECRET_ACCESS_KEY": "k", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := agentEnv[k]; return v, ok }
	got := processEnv([]string{"PATH=/bin"}, []string{"ATTACHE_PG_DSN", "UNSET", "EMPTY"}, lookup)
	want := []string{"PATH=/bin", "ATTACHE_PG_DSN=postgres://u:secret@db/app", "EMPTY="}
	if !slices.Equal(got, want) {
		t.Fatalf("processEnv = %q, want %q", got, want)
	}
	if got := processEnv([]string{"PATH=/bin"}, nil, lookup); !slices.Equal(got, []string{"PATH=/bin"}) {
		t.Fatalf("without pass_env: %q", got)
	}
}

func TestRestartAfterCrash(t *testing.T) {
	path, sum := buildLocal(t)
	root := t.TempDir()
	c, err := load(t, []Entry{{Name: "local", Path: path, SHA256: sum, Config: localtest.Config(root, t.TempDir())}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Provider("local")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Provider("nope"); !errors.Is(err, ErrUnknownProvider) {
		t.Fatalf("unknown provider: %v", err)
	}
	m := c.plugins["local"]
	m.mu.Lock()
	pid := pidOf(m.client)
	m.mu.Unlock()
	if pid == 0 {
		t.Fatal("no pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	// The next call restarts the plugin and replays its configuration.
	changes, err := p.Plan(t.Context(), localtest.Step("s", "tenant.provision", "acme", nil))
	if err != nil {
		t.Fatalf("Plan after crash: %v", err)
	}
	if len(changes) == 0 {
		t.Fatal("no changes")
	}
	if got := c.Restarts("local"); got != 1 {
		t.Fatalf("restarts = %d, want 1", got)
	}
	d, err := p.Describe(t.Context())
	if err != nil || d.GetName() != "local" {
		t.Fatalf("Describe: %v %v", d, err)
	}
}
