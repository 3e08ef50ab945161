// Package harness runs Attaché's real binaries for end-to-end tests: it builds
// attache-controlplane, attache and attache-agent once per test binary, starts
// control planes and agents as child processes on free local ports, drives the
// `attache` CLI against them, and waits for what a test expects with
// deadlines, never with bare sleeps. Tests read like a story:
//
//	env := harness.New(t)
//	cp := env.StartControlPlane(t, harness.CPOptions{})
//	cp.WaitReady(t)
//	cp.CreateTenant(t, "acme")
//	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme")})
//	a.AwaitEnrolled(t)
//
// Every process is started through `setpriv --pdeathsig KILL`, so it dies
// with the test binary even when `go test -timeout` kills it, and is killed
// in t.Cleanup. Process output goes to files in t.TempDir(); when a test
// fails, the last lines of every log it produced are printed.
//
// Only the e2e tests import harness; call Main from their TestMain.
package harness

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Binary names, as built into the harness's bin directory.
const (
	ControlPlaneBin = "attache-controlplane"
	CLIBin          = "attache"
	AgentBin        = "attache-agent"
	// LocalProviderBin is the local provider plugin; SampleAppBin the demo app
	// (both built into the same directory, which LocalProvider uses as bin_dir).
	LocalProviderBin = "attache-provider-local"
	SampleAppBin     = "sampleapp"
	// PostgresProviderBin is the PostgreSQL provider plugin.
	PostgresProviderBin = "attache-provider-postgres"
	// KubernetesProviderBin is the Kubernetes provider plugin.
	KubernetesProviderBin = "attache-provider-kubernetes"
)

// pollInterval is how often waits re-check their condition.
const pollInterval = 200 * time.Millisecond

var build struct {
	once sync.Once
	dir  string
	err  error
}

// Main runs the tests and removes the binaries built for them. Call it from
// TestMain and pass its result to os.Exit (after any other teardown).
func Main(m *testing.M) int {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	return code
}

// binDir builds the binaries the first time it is called and returns
// the directory that holds them.
func binDir(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			build.err = err
			return
		}
		dir, err := os.MkdirTemp("", "attache-e2e-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.dir = dir
		cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
			"./controlplane/cmd/attache-controlplane", "./controlplane/cmd/attache", "./agent/cmd/attache-agent",
			"./providers/local/cmd/attache-provider-local", "./providers/postgres/cmd/attache-provider-postgres",
			"./providers/kubernetes/cmd/attache-provider-kubernetes", "./examples/sampleapp")
		cmd.Dir = root
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			build.err = fmt.Errorf("go build in %s: %v\n%s", root, err, out.Bytes())
			return
		}
		fmt.Fprintf(os.Stderr, "harness: built binaries in %s (%s)\n", dir, time.Since(start).Round(100*time.Millisecond))
	})
	if build.err != nil {
		t.Fatalf("harness: building the binaries failed: %v", build.err)
	}
	return build.dir
}

// moduleRoot walks up from the working directory to the directory holding
// go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("harness: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Env is one test's world: the built binaries and a private directory for
// the processes it starts.
type Env struct {
	bin string
	dir string

	mu    sync.Mutex
	count map[string]int // per process kind, for unique names
}

// New builds the binaries if needed and returns an environment for t.
func New(t testing.TB) *Env {
	t.Helper()
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatalf("harness: setpriv (util-linux) is needed to tie child processes to the test: %v", err)
	}
	return &Env{bin: binDir(t), dir: t.TempDir(), count: map[string]int{}}
}

// Bin is the path of one of the built binaries.
func (e *Env) Bin(name string) string { return filepath.Join(e.bin, name) }

// name returns kind-N, unique within the environment.
func (e *Env) name(kind string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.count[kind]++
	return kind + "-" + strconv.Itoa(e.count[kind])
}

// FreeAddr returns 127.0.0.1:port for a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("harness: find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Eventually polls cond until it returns true or timeout passes; then it
// fails the test saying what it waited for and, if cond gave one, the last
// reason it was not yet true.
func Eventually(t testing.TB, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last: %s)", timeout, what, last)
		}
		time.Sleep(pollInterval)
	}
}
