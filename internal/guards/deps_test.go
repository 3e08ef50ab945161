package guards

import (
	"strings"
	"testing"
)

// TestProvidersImportNoCore keeps provider binaries free of agent, control-plane
// and internal code: providers import only providers/... (sdk, providertest)
// and protocol/... from this module; their tests may also use the real-server
// harnesses in testenv/. Test imports count too.
func TestProvidersImportNoCore(t *testing.T) {
	forbidden := []string{module + "/agent", module + "/controlplane", module + "/internal"}
	if !dirExists(t, "providers") {
		t.Skip("providers/ does not exist")
	}
	pkgs := goList(t, "./providers/...")
	t.Logf("%d provider packages", len(pkgs))
	for _, p := range pkgs {
		for _, dep := range p.Deps {
			for _, f := range forbidden {
				if within(dep, f) {
					t.Errorf("%s depends on %s; providers may import only providers/... and protocol/... from this module", p.ImportPath, dep)
				}
			}
		}
		for _, imp := range append(p.TestImports, p.XTestImports...) {
			for _, f := range forbidden {
				if within(imp, f) {
					t.Errorf("tests of %s import %s; provider tests may import only providers/..., protocol/... and testenv/... from this module", p.ImportPath, imp)
				}
			}
		}
	}
}

// TestTestenvImportsNothingOfOurs keeps the real-server harnesses in testenv/
// usable from every test, provider tests included: they import nothing else
// from this module.
func TestTestenvImportsNothingOfOurs(t *testing.T) {
	pkgs := goList(t, "./testenv/...")
	if len(pkgs) == 0 {
		t.Fatal("go list ./testenv/... found no packages")
	}
	for _, p := range pkgs {
		for _, dep := range append(append([]string{}, p.Deps...), p.TestImports...) {
			if within(dep, module) && !within(dep, module+"/testenv") {
				t.Errorf("%s depends on %s; testenv/ harnesses must not import the rest of this module", p.ImportPath, dep)
			}
		}
	}
}

// TestInternalImportsNoBinaries keeps internal/ shared: it is imported by the
// control plane and the agent, so it must not import either.
func TestInternalImportsNoBinaries(t *testing.T) {
	forbidden := []string{module + "/agent", module + "/controlplane", module + "/providers", module + "/installer"}
	pkgs := goList(t, "./internal/...")
	if len(pkgs) == 0 {
		t.Fatal("go list ./internal/... found no packages (not even this one)")
	}
	for _, p := range pkgs {
		for _, dep := range p.Deps {
			for _, f := range forbidden {
				if within(dep, f) {
					t.Errorf("%s depends on %s; internal/ must not import agent/, controlplane/, providers/ or installer/", p.ImportPath, dep)
				}
			}
		}
	}
}

// agentForbidden lists import path prefixes the agent binary must not link:
// database drivers (the agent's journal uses go.etcd.io/bbolt, which is
// allowed) and cloud SDKs, which belong in provider binaries.
var agentForbidden = []struct{ prefix, why string }{
	{"modernc.org/sqlite", "database driver"},
	{"github.com/mattn/go-sqlite3", "database driver"},
	{"github.com/jackc/pgx", "database driver"},
	{"github.com/lib/pq", "database driver"},
	{"github.com/go-sql-driver/mysql", "database driver"},
	{"github.com/aws/", "cloud SDK (belongs in a provider)"},
	{"cloud.google.com/go", "cloud SDK (belongs in a provider)"},
	{"google.golang.org/api", "cloud SDK (belongs in a provider)"},
	{"github.com/Azure/", "cloud SDK (belongs in a provider)"},
	{"k8s.io/client-go", "Kubernetes client (belongs in a provider)"},
	{"sigs.k8s.io/controller-runtime", "Kubernetes client (belongs in a provider)"},
}

// matchesPrefix reports whether importPath is under prefix. A prefix ending in
// "/" names a whole organisation (every module below it).
func matchesPrefix(importPath, prefix string) bool {
	if strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(importPath, prefix)
	}
	return within(importPath, prefix)
}

// TestAgentBinaryDeps keeps the agent small and free of anything that talks to
// a database or a cloud API: those live in provider binaries.
func TestAgentBinaryDeps(t *testing.T) {
	const agentCmd = "agent/cmd/attache-agent"
	if !dirExists(t, agentCmd) {
		if dirExists(t, "agent") {
			t.Fatalf("agent/ exists but %s does not; update this guard if the agent binary moved", agentCmd)
		}
		t.Skipf("%s does not exist yet", agentCmd)
	}
	pkgs := goList(t, "-deps", "./"+agentCmd)
	if len(pkgs) == 0 {
		t.Fatalf("go list -deps ./%s listed nothing", agentCmd)
	}
	for _, p := range pkgs {
		for _, f := range agentForbidden {
			if matchesPrefix(p.ImportPath, f.prefix) {
				t.Errorf("attache-agent links %s: %s", p.ImportPath, f.why)
			}
		}
		// Any non-standard package that implements database/sql/driver is a driver.
		if !p.Standard {
			for _, imp := range p.Imports {
				if imp == "database/sql/driver" {
					t.Errorf("attache-agent links %s, which imports database/sql/driver: database driver", p.ImportPath)
				}
			}
		}
	}
}
