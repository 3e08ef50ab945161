package kubernetes_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"attache.dev/attache/providers/sdk"
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

// pluginBinary builds cmd/attache-provider-kubernetes once per test binary.
func pluginBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		binDir, buildErr = os.MkdirTemp("", "attache-k8s-plugin-")
		if buildErr != nil {
			return
		}
		binary = filepath.Join(binDir, "attache-provider-kubernetes")
		cmd := exec.Command("go", "build", "-o", binary, "./cmd/attache-provider-kubernetes")
		cmd.Dir = filepath.Dir(file)
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return binary
}

// startPlugin starts the provider binary through go-plugin with the SDK's
// handshake, as the agent runs it, and configures it with e's
// configuration.
func startPlugin(t testing.TB, e *env) sdk.Provider {
	t.Helper()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          sdk.PluginSet(),
		Cmd:              exec.Command(pluginBinary(t)),
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
	return p
}
