package postgres_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"attache.dev/attache/providers/providertest"
	"attache.dev/attache/providers/sdk"
	"attache.dev/attache/testenv/pgtest"
	"github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
)

var (
	buildOnce sync.Once
	binDir    string // removed by TestMain
	binary    string
	buildErr  error
	buildOut  []byte
)

// pluginBinary builds cmd/attache-provider-postgres once per test binary.
func pluginBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		binDir, buildErr = os.MkdirTemp("", "attache-pg-plugin-")
		if buildErr != nil {
			return
		}
		binary = filepath.Join(binDir, "attache-provider-postgres")
		cmd := exec.Command("go", "build", "-o", binary, "./cmd/attache-provider-postgres")
		cmd.Dir = filepath.Dir(file)
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return binary
}

// TestConformanceThroughPlugin runs the suite against the provider binary,
// started through go-plugin with the SDK's handshake, as the agent runs it.
func TestConformanceThroughPlugin(t *testing.T) {
	t.Parallel()
	path := pluginBinary(t)
	dsn := pgtest.DSN(t)
	providertest.Run(t, func(t *testing.T) providertest.Fixture {
		t.Parallel() // each fixture has its own schemas and name prefix
		e := newSharedEnv(t, dsn)
		e.writeSecrets(t, "acme", "beta")
		client := plugin.NewClient(&plugin.ClientConfig{
			HandshakeConfig:  sdk.Handshake,
			Plugins:          sdk.PluginSet(),
			Cmd:              exec.Command(path),
			AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
			Logger:           hclog.NewNullLogger(),
			AutoMTLS:         true,
			SkipHostEnv:      true,
		})
		t.Cleanup(client.Kill)
		rpc, err := client.Client()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := rpc.Dispense(sdk.PluginName)
		if err != nil {
			t.Fatal(err)
		}
		p := raw.(sdk.Provider)
		configure(t, p, e.configJSON(t))
		return providertest.Fixture{Provider: p, Snapshot: func(t *testing.T) []byte { return e.snapshot(t) }}
	}, conformanceCases())
}
