package opscli_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/httpapi"
	"attache.dev/attache/controlplane/httpapi/httpapitest"
	"attache.dev/attache/controlplane/opscli"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/jointoken"
)

// clearEnv keeps the developer's ATTACHE_* settings out of the tests.
func clearEnv(t *testing.T) {
	for _, k := range []string{opscli.EnvServer, opscli.EnvToken, opscli.EnvTokenFile, opscli.EnvCAFile} {
		t.Setenv(k, "")
	}
}

// run executes one CLI invocation in-process.
func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := opscli.NewRootCommand(&out, &errb)
	root.SetArgs(args)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// cli runs commands against one server with one token.
type cli struct {
	t      *testing.T
	server string
	token  string
}

func (c cli) run(args ...string) (string, string, error) {
	c.t.Helper()
	return run(c.t, append([]string{"--server", c.server, "--token", c.token}, args...)...)
}

func (c cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("attache %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func TestCLIStory(t *testing.T) {
	clearEnv(t)
	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}

	if out := admin.ok("tenant", "create", "acme", "--display-name", "Acme Corp", "--label", "tier=silo", "--label", "region=eu"); !strings.Contains(out, "tenant acme created") {
		t.Fatalf("create: %q", out)
	}
	admin.ok("tenant", "create", "globex")
	if _, _, err := admin.run("tenant", "create", "acme"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate create: %v", err)
	}
	list := admin.ok("tenant", "list")
	if !strings.HasPrefix(list, "NAME") || !strings.Contains(list, "region=eu,tier=silo") || !strings.Contains(list, "globex") {
		t.Fatalf("list:\n%s", list)
	}
	var shown struct{ Name, DisplayName string }
	mustJSON(t, admin.ok("tenant", "show", "acme", "-o", "json"), &shown)
	if shown.Name != "acme" {
		t.Fatalf("show: %+v", shown)
	}

	// token create: the token alone on stdout, details on stderr.
	out, errOut, err := admin.run("token", "create", "--tenant", "acme", "--ttl", "30m")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jointoken.Parse(strings.TrimSuffix(out, "\n"))
	if err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("stdout %q is not one token: %v", out, err)
	}
	if !strings.Contains(errOut, tok.ID) || !strings.Contains(errOut, "acme") {
		t.Fatalf("stderr: %q", errOut)
	}
	if _, _, err := admin.run("token", "create", "--tenant", "initech"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("token for unknown tenant: %v", err)
	}

	// Enroll an agent through the store so the agent commands have one.
	now := time.Now()
	if _, err := srv.Store.Enroll(context.Background(), tok.ID, tok.SecretHash(), now, store.Agent{
		Tenant: "acme", ID: "a1", SPIFFEID: "spiffe://attache.test/tenant/acme/agent/a1",
		EnrolledAt: now, CertSerial: "01", CertExpiresAt: now.Add(time.Hour),
	}, auditlog.Entry{Time: now, Actor: "spiffe://attache.test/tenant/acme/agent/a1", Role: "agent", Action: "agent.enroll",
		Tenant: "acme", Target: "a1", Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	agents := admin.ok("agent", "list", "--tenant", "acme")
	lines := strings.Split(strings.TrimSpace(agents), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "TENANT ID STATUS LAST-SEEN VERSION" ||
		strings.Join(strings.Fields(lines[1]), " ") != "acme a1 never-connected never -" {
		t.Fatalf("agent list:\n%s", agents)
	}
	if out := admin.ok("agent", "show", "acme/a1"); !strings.Contains(out, "spiffe://attache.test/tenant/acme/agent/a1") {
		t.Fatalf("agent show:\n%s", out)
	}
	if out := admin.ok("agent", "revoke", "acme/a1"); !strings.Contains(out, "agent acme/a1 revoked") {
		t.Fatalf("revoke: %q", out)
	}
	if out := admin.ok("agent", "list"); !strings.Contains(out, "revoked") {
		t.Fatalf("agent list after revoke:\n%s", out)
	}
	if _, _, err := admin.run("agent", "show", "acme"); err == nil || !strings.Contains(err.Error(), "TENANT/ID") {
		t.Fatalf("bad agent ref: %v", err)
	}

	// An auditor reads and verifies but cannot change anything.
	reviewerToken := strings.TrimSpace(admin.ok("apitoken", "create", "--name", "reviewer", "--role", "auditor"))
	reviewer := cli{t, srv.URL, reviewerToken}
	if _, _, err := reviewer.run("tenant", "create", "initech"); err == nil || !strings.Contains(err.Error(), "role auditor may not tenant.create") {
		t.Fatalf("auditor create: %v", err)
	}
	if out := reviewer.ok("audit", "log", "--tenant", "acme"); !strings.Contains(out, "tenant.create") || !strings.Contains(out, "agent.revoke") {
		t.Fatalf("audit log:\n%s", out)
	}
	if out := admin.ok("apitoken", "list"); !strings.Contains(out, "reviewer") {
		t.Fatalf("apitoken list:\n%s", out)
	}

	verified := reviewer.ok("audit", "verify")
	if !strings.HasPrefix(verified, "audit log verified: ") {
		t.Fatalf("verify: %q", verified)
	}

	// Export, verify offline, then tamper.
	export, errOut, err := reviewer.run("audit", "export")
	if err != nil {
		t.Fatal(err)
	}
	// stderr: "exported N records, head SEQ HASH"
	f := strings.Fields(errOut)
	if len(f) != 6 {
		t.Fatalf("export stderr: %q", errOut)
	}
	head := f[4] + ":" + f[5]
	dir := t.TempDir()
	good := filepath.Join(dir, "audit.jsonl")
	writeFile(t, good, export)
	out, _, err = run(t, "audit", "verify", "--file", good, "--head", head)
	if err != nil || !strings.Contains(out, "audit log verified") || !strings.Contains(out, "head "+f[4]+" "+f[5][:16]) {
		t.Fatalf("verify --file: %q, %v", out, err)
	}

	recs := strings.Split(strings.TrimSpace(export), "\n")
	// Change only the actor of record 3, byte for byte.
	third := strings.Replace(recs[2], `"actor":"apitoken:`+httpapi.BootstrapTokenName, `"actor":"apitoken:someone-else`, 1)
	if third == recs[2] {
		t.Fatalf("record 3 is not the admin's: %s", recs[2])
	}
	tampered := append(append([]string{}, recs[:2]...), third)
	tampered = append(tampered, recs[3:]...)
	writeFile(t, filepath.Join(dir, "altered.jsonl"), strings.Join(tampered, "\n")+"\n")
	_, _, err = run(t, "audit", "verify", "--file", filepath.Join(dir, "altered.jsonl"))
	if err == nil || err.Error() != "audit record 3: content does not match its hash (altered)" {
		t.Fatalf("altered export: %v", err)
	}

	deleted := append(append([]string{}, recs[:1]...), recs[2:]...)
	writeFile(t, filepath.Join(dir, "deleted.jsonl"), strings.Join(deleted, "\n")+"\n")
	if _, _, err = run(t, "audit", "verify", "--file", filepath.Join(dir, "deleted.jsonl")); err == nil || !strings.HasPrefix(err.Error(), "audit record 2: missing") {
		t.Fatalf("deleted record: %v", err)
	}

	writeFile(t, filepath.Join(dir, "truncated.jsonl"), strings.Join(recs[:len(recs)-1], "\n")+"\n")
	if _, _, err = run(t, "audit", "verify", "--file", filepath.Join(dir, "truncated.jsonl")); err != nil {
		t.Fatalf("a truncated export without --head still chains: %v", err)
	}
	if _, _, err = run(t, "audit", "verify", "--file", filepath.Join(dir, "truncated.jsonl"), "--head", head); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated export with --head: %v", err)
	}
}

func TestTokenSources(t *testing.T) {
	clearEnv(t)
	srv := httpapitest.New(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin.token")
	writeFile(t, tokenFile, srv.AdminToken+"\n")

	if _, _, err := run(t, "--server", srv.URL, "--token-file", tokenFile, "tenant", "list"); err != nil {
		t.Fatalf("--token-file: %v", err)
	}
	if _, _, err := run(t, "--server", srv.URL, "--token", "x", "--token-file", tokenFile, "tenant", "list"); err == nil {
		t.Fatal("--token with --token-file accepted")
	}
	if _, _, err := run(t, "--server", srv.URL, "tenant", "list"); err == nil || !strings.Contains(err.Error(), "no API token") {
		t.Fatalf("no token: %v", err)
	}
	if _, _, err := run(t, "--server", srv.URL, "--token", "attache-api-v1.bogus", "tenant", "list"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("bad token: %v", err)
	}

	t.Setenv(opscli.EnvServer, srv.URL)
	t.Setenv(opscli.EnvTokenFile, tokenFile)
	if _, _, err := run(t, "tenant", "list"); err != nil {
		t.Fatalf("env token file: %v", err)
	}
	t.Setenv(opscli.EnvTokenFile, "")
	t.Setenv(opscli.EnvToken, srv.AdminToken)
	if _, _, err := run(t, "tenant", "list", "-o", "json"); err != nil {
		t.Fatalf("env token: %v", err)
	}
	// --help never shows the token from the environment.
	if out, _, _ := run(t, "--help"); strings.Contains(out, srv.AdminToken) {
		t.Fatal("--help prints the token")
	}
	if _, _, err := run(t, "tenant", "list", "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "--output") {
		t.Fatalf("-o yaml: %v", err)
	}
	if _, _, err := run(t, "--ca-file", tokenFile, "tenant", "list"); err == nil || !strings.Contains(err.Error(), "https") {
		t.Fatalf("--ca-file with http: %v", err)
	}
}

func TestCAFileForHTTPS(t *testing.T) {
	clearEnv(t)
	srv := httpapitest.NewTLS(t)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	writeFile(t, ca, string(srv.CACertPEM))
	if _, _, err := run(t, "--server", srv.URL, "--token", srv.AdminToken, "--ca-file", ca, "tenant", "list"); err != nil {
		t.Fatalf("with --ca-file: %v", err)
	}
	if _, _, err := run(t, "--server", srv.URL, "--token", srv.AdminToken, "tenant", "list"); err == nil {
		t.Fatal("https with an unknown CA succeeded without --ca-file")
	}
}

func TestEveryCommandHasHelpAndExamples(t *testing.T) {
	clearEnv(t)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		if c.Short == "" || c.Example == "" {
			t.Errorf("%q lacks a Short or an Example", c.CommandPath())
		}
		args := append(strings.Fields(c.CommandPath())[1:], "--help")
		out, _, err := run(t, args...)
		if err != nil || !strings.Contains(out, "Examples:") {
			t.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(opscli.NewRootCommand(&bytes.Buffer{}, &bytes.Buffer{}))
}

func TestVerifyEmptyAndHeadFlag(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.jsonl")
	writeFile(t, empty, "")
	out, _, err := run(t, "audit", "verify", "--file", empty)
	if err != nil || out != "audit log verified: 0 records, head 0 "+hex.EncodeToString(auditlog.GenesisHash)[:16]+"\n" {
		t.Fatalf("empty: %q, %v", out, err)
	}
	if _, _, err := run(t, "audit", "verify", "--file", empty, "--head", "nope"); err == nil {
		t.Fatal("bad --head accepted")
	}
	writeFile(t, empty, "not json\n")
	if _, _, err := run(t, "audit", "verify", "--file", empty); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("garbage: %v", err)
	}
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
