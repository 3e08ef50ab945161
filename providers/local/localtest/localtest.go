// Package localtest holds what the local provider's tests and the agent
// catalog's plugin tests share: the sample app build, the provider config,
// a state snapshot and the conformance cases for attache-provider-local.
//
// Imported only by tests (providers/local, agent/catalog, e2e).
package localtest

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/providertest"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/protobuf/types/known/structpb"
)

// moduleRoot finds the module root from this file's location.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// GoBuild builds the package pkg (module-relative, e.g.
// "./examples/sampleapp") into dir/name and returns the binary's path.
func GoBuild(t testing.TB, pkg, dir, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = moduleRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// BuildSampleApp builds examples/sampleapp into a fresh directory, usable as
// the provider's bin_dir, and returns that directory.
func BuildSampleApp(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	GoBuild(t, "./examples/sampleapp", dir, "sampleapp")
	return dir
}

// Config returns the provider configuration as ConfigureRequest JSON.
func Config(root, binDir string) []byte {
	b, err := sdk.ConfigJSON(map[string]string{"root": root, "bin_dir": binDir})
	if err != nil {
		panic(err)
	}
	return b
}

// Configure configures p with root and binDir.
func Configure(t testing.TB, p sdk.Provider, root, binDir string) {
	t.Helper()
	err := p.Configure(t.Context(), &providerv1.ConfigureRequest{
		ConfigJson: Config(root, binDir),
		Tenant:     &providerv1.TenantContext{Tenant: "acme", AgentId: "spiffe://example.org/tenant/acme/agent/a1", TrustDomain: "example.org"},
	})
	if err != nil {
		t.Fatalf("Configure: %v", err)
	}
}

// Snapshot lists every file under root with its mode and SHA-256 (symlinks
// with their target), leaving out *.log files, which running apps append to.
func Snapshot(t testing.TB, root string) []byte {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if strings.HasSuffix(rel, ".log") {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(path)
			lines = append(lines, fmt.Sprintf("%s link -> %s", rel, target))
		case fi.IsDir():
			lines = append(lines, fmt.Sprintf("%s dir %v", rel, fi.Mode().Perm()))
		default:
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			lines = append(lines, fmt.Sprintf("%s file %v %x", rel, fi.Mode().Perm(), sha256.Sum256(b)))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", root, err)
	}
	sort.Strings(lines)
	return []byte(strings.Join(lines, "\n"))
}

// Step builds a step; params is converted with structpb.NewStruct.
func Step(id, action, tenant string, params map[string]any) *providerv1.Step {
	s, err := structpb.NewStruct(params)
	if err != nil {
		panic(err)
	}
	return &providerv1.Step{Id: id, Action: action, Resource: tenant, Params: s, Tenant: tenant, PlanId: "plan-test", Attempt: 1}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// AppStep is an app.upgrade step running the sample app at version on port.
func AppStep(id, tenant, version string, port int, extra ...string) *providerv1.Step {
	cmd := []any{"sampleapp", "-version", version, "-addr", fmt.Sprintf("127.0.0.1:%d", port)}
	for _, e := range extra {
		cmd = append(cmd, e)
	}
	return Step(id, "app.upgrade", tenant, map[string]any{"version": version, "command": cmd, "port": float64(port), "health_timeout": "20s"})
}

// Migrations are the sample migrations.
var Migrations = []any{
	map[string]any{"version": 1.0, "name": "create_users", "sql": "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);"},
	map[string]any{"version": 2.0, "name": "create_orders", "sql": "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id));\nCREATE INDEX orders_user ON orders(user_id);"},
}

// Cases are the conformance cases for attache-provider-local. root is the
// fixture's root as seen by AfterCancel checks via the snapshot.
func Cases(t testing.TB) []providertest.Case {
	port, slowPort := FreePort(t), FreePort(t)
	stop := Step("stop", "app.stop", "acme", nil)
	return []providertest.Case{
		{
			Name: "tenant.provision",
			Step: Step("prov", "tenant.provision", "acme", map[string]any{"files": []any{
				map[string]any{"path": "config/app.env", "content": "LOG_LEVEL=info\n"},
				map[string]any{"path": "data/README", "content": "tenant data\n", "mode": "0644"},
			}}),
			Bad: []providertest.BadStep{
				{Name: "dotdot", Field: "params.files[0].path", Step: Step("b", "tenant.provision", "acme", map[string]any{"files": []any{map[string]any{"path": "../../etc/x", "content": ""}}})},
				{Name: "absolute", Field: "params.files[0].path", Step: Step("b", "tenant.provision", "acme", map[string]any{"files": []any{map[string]any{"path": "/etc/passwd"}}})},
				{Name: "unknown key", Field: "params.files[0].owner", Step: Step("b", "tenant.provision", "acme", map[string]any{"files": []any{map[string]any{"path": "a", "owner": "root"}}})},
				{Name: "bad mode", Field: "params.files[0].mode", Step: Step("b", "tenant.provision", "acme", map[string]any{"files": []any{map[string]any{"path": "a", "mode": "999"}}})},
				{Name: "unknown param", Field: "params.dirs", Step: Step("b", "tenant.provision", "acme", map[string]any{"dirs": []any{"x"}})},
				{Name: "tenant", Field: "tenant", Step: Step("b", "tenant.provision", "Not_A_Label", nil)},
				{Name: "action", Field: "action", Step: Step("b", "tenant.explode", "acme", nil)},
			},
		},
		{
			Name:  "db.migrate",
			Setup: []*providerv1.Step{Step("prov", "tenant.provision", "acme", nil)},
			Step:  Step("mig", "db.migrate", "acme", map[string]any{"migrations": Migrations}),
			Bad: []providertest.BadStep{
				{Name: "missing", Field: "params.migrations", Step: Step("b", "db.migrate", "acme", nil)},
				{Name: "no sql", Field: "params.migrations[1].sql", Step: Step("b", "db.migrate", "acme", map[string]any{"migrations": []any{
					Migrations[0], map[string]any{"version": 2.0, "name": "x"}}})},
				{Name: "order", Field: "params.migrations[1].version", Step: Step("b", "db.migrate", "acme", map[string]any{"migrations": []any{
					Migrations[0], map[string]any{"version": 1.0, "name": "x", "sql": "SELECT 1"}}})},
				{Name: "fractional", Field: "params.migrations[0].version", Step: Step("b", "db.migrate", "acme", map[string]any{"migrations": []any{
					map[string]any{"version": 1.5, "name": "x", "sql": "SELECT 1"}}})},
			},
		},
		{
			Name:    "app.upgrade",
			Step:    AppStep("up", "acme", "v1", port),
			Cleanup: []*providerv1.Step{stop},
			Bad: []providertest.BadStep{
				{Name: "escaping command", Field: "params.command[0]", Step: Step("b", "app.upgrade", "acme", map[string]any{"version": "v1", "command": []any{"../../bin/sh"}, "port": 8080.0})},
				{Name: "absolute command", Field: "params.command[0]", Step: Step("b", "app.upgrade", "acme", map[string]any{"version": "v1", "command": []any{"/bin/sh"}, "port": 8080.0})},
				{Name: "missing command", Field: "params.command", Step: Step("b", "app.upgrade", "acme", map[string]any{"version": "v1", "port": 8080.0})},
				{Name: "remote health", Field: "params.health_url", Step: Step("b", "app.upgrade", "acme", map[string]any{"version": "v1", "command": []any{"sampleapp"}, "health_url": "http://example.com/healthz"})},
				{Name: "version", Field: "params.version", Step: Step("b", "app.upgrade", "acme", map[string]any{"version": "../v1", "command": []any{"sampleapp"}, "port": 8080.0})},
				{Name: "timeout", Field: "params.health_timeout", Step: Step("b", "app.upgrade", "acme", map[string]any{"version": "v1", "command": []any{"sampleapp"}, "port": 8080.0, "health_timeout": "soon"})},
			},
			Slow: AppStep("slow", "acme", "v9", slowPort, "-unhealthy"),
			// Over gRPC the caller's Apply returns at once; the provider
			// then stops the new version, so give it a few seconds.
			AfterCancel: func(t *testing.T, f providertest.Fixture) {
				var state string
				listening := true
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
					state = string(f.Snapshot(t))
					c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", slowPort))
					listening = err == nil
					if listening {
						c.Close()
					}
					if !listening && !strings.Contains(state, "next.json") && !strings.Contains(state, "current.json") {
						return
					}
				}
				t.Errorf("cancelled upgrade left the new version behind (listening on %d: %v); state:\n%s", slowPort, listening, state)
			},
		},
	}
}

// ApplyLog reads the provider's apply log under root (see
// local.ApplyLogFile): every Apply the provider started, in order. A missing
// log is empty.
func ApplyLog(t testing.TB, root string) []ApplyLogEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "apply.log"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []ApplyLogEntry
	for line := range strings.Lines(string(b)) {
		var e ApplyLogEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("apply log line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// ApplyLogEntry mirrors local.ApplyLogEntry (localtest cannot import the
// provider package's internals without a cycle in its tests).
type ApplyLogEntry struct {
	Time    time.Time `json:"time"`
	Tenant  string    `json:"tenant"`
	Plan    string    `json:"plan"`
	Step    string    `json:"step"`
	Action  string    `json:"action"`
	Attempt uint32    `json:"attempt"`
}

// Applies counts the log's entries for plan and step.
func Applies(log []ApplyLogEntry, plan, step string) int {
	n := 0
	for _, e := range log {
		if e.Plan == plan && e.Step == step {
			n++
		}
	}
	return n
}
