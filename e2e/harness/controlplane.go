package harness

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite" // "sqlite" driver, to inspect and tamper with the store

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/internal/auditlog"
)

// cliTimeout bounds one `attache` invocation.
const cliTimeout = 30 * time.Second

// CPOptions configures a control plane. Zero values mean the binary's
// defaults, except TrustDomain ("e2e.test").
type CPOptions struct {
	TrustDomain       string
	SVIDTTL           time.Duration // --svid-ttl
	HeartbeatInterval time.Duration // --heartbeat-interval
	StoreDSN          string        // --store; empty means SQLite in the data dir
	LogLevel          string        // --log-level; default "info"
	// AgentAdvertise is --agent-advertise, the address join tokens send
	// agents to (e.g. a fault-injecting proxy in front of AgentAddr); empty
	// means AgentAddr.
	AgentAdvertise string
}

// ControlPlane is an attache-controlplane process with its data directory
// and ports, which survive Stop and Restart.
type ControlPlane struct {
	env     *Env
	opts    CPOptions
	name    string
	args    []string
	DataDir string
	// AgentAddr and APIAddr are host:port of the agent endpoint and the ops
	// API; APIURL is the ops API's base URL.
	AgentAddr, APIAddr, APIURL string
	TrustDomain                string

	proc      *Process
	restarted bool // started again on the same ports: never re-pick them
}

// StartControlPlane starts a control plane on fresh ports with a fresh data
// directory. It does not wait for it: call WaitReady.
func (e *Env) StartControlPlane(t testing.TB, opts CPOptions) *ControlPlane {
	t.Helper()
	if opts.TrustDomain == "" {
		opts.TrustDomain = "e2e.test"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	name := e.name("controlplane")
	cp := &ControlPlane{
		env:         e,
		opts:        opts,
		name:        name,
		DataDir:     filepath.Join(e.dir, name+"-data"),
		AgentAddr:   FreeAddr(t),
		APIAddr:     FreeAddr(t),
		TrustDomain: opts.TrustDomain,
	}
	cp.setArgs()
	cp.proc = e.start(t, name, e.Bin(ControlPlaneBin), cp.args, nil, true)
	return cp
}

// setArgs derives the command line from the options, directories and ports.
func (cp *ControlPlane) setArgs() {
	opts := cp.opts
	cp.APIURL = "https://" + cp.APIAddr
	cp.args = []string{"serve",
		"--data-dir", cp.DataDir,
		"--trust-domain", opts.TrustDomain,
		"--agent-listen", cp.AgentAddr,
		"--api-listen", cp.APIAddr,
		"--log-level", opts.LogLevel,
	}
	if opts.SVIDTTL > 0 {
		cp.args = append(cp.args, "--svid-ttl", opts.SVIDTTL.String())
	}
	if opts.HeartbeatInterval > 0 {
		cp.args = append(cp.args, "--heartbeat-interval", opts.HeartbeatInterval.String())
	}
	if opts.StoreDSN != "" {
		cp.args = append(cp.args, "--store", opts.StoreDSN)
	}
	if opts.AgentAdvertise != "" {
		cp.args = append(cp.args, "--agent-advertise", opts.AgentAdvertise)
	}
}

// Process is the current control plane process.
func (cp *ControlPlane) Process() *Process { return cp.proc }

// Log is what the control plane logged so far (across restarts).
func (cp *ControlPlane) Log() string { return cp.proc.Stderr() }

// AdminTokenFile is the first admin API token the control plane wrote.
func (cp *ControlPlane) AdminTokenFile() string { return filepath.Join(cp.DataDir, "admin.token") }

// CAFile is the trust domain's CA certificate, which also signs the ops
// API's certificate.
func (cp *ControlPlane) CAFile() string { return filepath.Join(cp.DataDir, "ca.crt") }

// WaitReady waits until the ops API answers `attache tenant list` with the
// admin token, failing at once if the process exits.
func (cp *ControlPlane) WaitReady(t testing.TB) {
	t.Helper()
	retried := false
	Eventually(t, cp.name+" to answer `attache tenant list`", 60*time.Second, func() (bool, string) {
		if code, exited := cp.proc.Exited(); exited {
			// A port picked by FreeAddr can be taken by someone else
			// before the control plane binds it; on a first start, pick
			// new ones once.
			if !retried && !cp.restarted && strings.Contains(cp.proc.Stderr(), "address already in use") {
				retried = true
				t.Logf("%s: a port was taken before it could bind it; retrying on new ports", cp.name)
				cp.AgentAddr, cp.APIAddr = FreeAddr(t), FreeAddr(t)
				cp.setArgs()
				cp.proc = cp.env.start(t, cp.name, cp.env.Bin(ControlPlaneBin), cp.args, nil, false)
				return false, "restarted on new ports"
			}
			t.Fatalf("%s exited with status %d before it was ready", cp.name, code)
		}
		_, stderr, code := cp.run(t, []string{"--token-file", cp.AdminTokenFile()}, "tenant", "list")
		return code == 0, strings.TrimSpace(stderr)
	})
}

// Stop stops the control plane with SIGTERM and waits for it to exit.
func (cp *ControlPlane) Stop(t testing.TB) {
	t.Helper()
	if !cp.proc.Stop(15 * time.Second) {
		t.Errorf("%s did not exit within 15s of SIGTERM; killed it", cp.name)
	}
}

// Restart stops the control plane if it is running and starts it again
// with the same data directory, ports and flags, then waits until it is
// ready.
func (cp *ControlPlane) Restart(t testing.TB) {
	t.Helper()
	if _, exited := cp.proc.Exited(); !exited {
		cp.Stop(t)
	}
	cp.restarted = true
	cp.proc = cp.env.start(t, cp.name, cp.env.Bin(ControlPlaneBin), cp.args, nil, false)
	cp.WaitReady(t)
}

// CLI runs `attache ARGS…` as the admin and returns its stdout; a non-zero
// exit fails the test.
func (cp *ControlPlane) CLI(t testing.TB, args ...string) string {
	t.Helper()
	return cp.As(cp.AdminTokenFile()).CLI(t, args...)
}

// CLIErr runs `attache ARGS…` as the admin and returns its output and exit
// status, whatever it is.
func (cp *ControlPlane) CLIErr(t testing.TB, args ...string) (stdout, stderr string, exitCode int) {
	t.Helper()
	return cp.As(cp.AdminTokenFile()).CLIErr(t, args...)
}

// Caller runs the `attache` CLI with one API token.
type Caller struct {
	cp        *ControlPlane
	tokenArgs []string
}

// As returns a caller that authenticates with the API token in tokenFile.
func (cp *ControlPlane) As(tokenFile string) *Caller {
	return &Caller{cp: cp, tokenArgs: []string{"--token-file", tokenFile}}
}

// CLI runs `attache ARGS…` and returns its stdout; a non-zero exit fails the
// test.
func (c *Caller) CLI(t testing.TB, args ...string) string {
	t.Helper()
	stdout, stderr, code := c.cp.run(t, c.tokenArgs, args...)
	if code != 0 {
		t.Fatalf("attache %s: exit status %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

// CLIErr runs `attache ARGS…` and returns its output and exit status.
func (c *Caller) CLIErr(t testing.TB, args ...string) (stdout, stderr string, exitCode int) {
	t.Helper()
	return c.cp.run(t, c.tokenArgs, args...)
}

func (cp *ControlPlane) run(t testing.TB, tokenArgs []string, args ...string) (stdout, stderr string, exitCode int) {
	t.Helper()
	full := append([]string{"--pdeathsig", "KILL", "--", cp.env.Bin(CLIBin),
		"--server", cp.APIURL, "--ca-file", cp.CAFile()}, tokenArgs...)
	full = append(full, args...)
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "setpriv", full...)
	cmd.Env = cleanEnv(nil)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("attache %s: no answer within %s", strings.Join(args, " "), cliTimeout)
	}
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("attache %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// CreateTenant registers a tenant.
func (cp *ControlPlane) CreateTenant(t testing.TB, name string) {
	t.Helper()
	cp.CLI(t, "tenant", "create", name)
}

// JoinToken mints a join token for tenant; extra flags (e.g. "--ttl", "1s")
// are passed through.
func (cp *ControlPlane) JoinToken(t testing.TB, tenant string, extra ...string) string {
	t.Helper()
	tok := strings.TrimSpace(cp.CLI(t, append([]string{"token", "create", "--tenant", tenant}, extra...)...))
	if tok == "" || strings.ContainsAny(tok, " \n") {
		t.Fatalf("attache token create printed %q, want the token alone", tok)
	}
	return tok
}

// APIToken creates an ops API token with role, writes it to a file and
// returns the file's path, ready for As.
func (cp *ControlPlane) APIToken(t testing.TB, name, role string) string {
	t.Helper()
	tok := strings.TrimSpace(cp.CLI(t, "apitoken", "create", "--name", name, "--role", role))
	path := filepath.Join(cp.env.dir, cp.name+"-"+name+".token")
	if err := writeSecret(path, tok); err != nil {
		t.Fatal(err)
	}
	return path
}

// Agents lists tenant's agents ("" for all) through `attache agent list -o json`.
func (cp *ControlPlane) Agents(t testing.TB, tenant string) []apiclient.Agent {
	t.Helper()
	args := []string{"agent", "list", "-o", "json"}
	if tenant != "" {
		args = append(args, "--tenant", tenant)
	}
	var as []apiclient.Agent
	decodeJSON(t, cp.CLI(t, args...), &as)
	return as
}

// Agent shows one agent through `attache agent show -o json`.
func (cp *ControlPlane) Agent(t testing.TB, tenant, id string) apiclient.Agent {
	t.Helper()
	var a apiclient.Agent
	decodeJSON(t, cp.CLI(t, "agent", "show", tenant+"/"+id, "-o", "json"), &a)
	return a
}

// AwaitAgent polls `attache agent list --tenant T -o json` until one of the
// tenant's agents satisfies ok, and returns it.
func (cp *ControlPlane) AwaitAgent(t testing.TB, tenant, what string, timeout time.Duration, ok func(apiclient.Agent) bool) apiclient.Agent {
	t.Helper()
	var found apiclient.Agent
	Eventually(t, fmt.Sprintf("%s (tenant %s)", what, tenant), timeout, func() (bool, string) {
		as := cp.Agents(t, tenant)
		for _, a := range as {
			if ok(a) {
				found = a
				return true, ""
			}
		}
		var seen []string
		for _, a := range as {
			seen = append(seen, a.ID+"="+a.Status)
		}
		return false, fmt.Sprintf("agents %v", seen)
	})
	return found
}

// Audit returns the whole audit trail through `attache audit log -o json`.
func (cp *ControlPlane) Audit(t testing.TB) []auditlog.Record {
	t.Helper()
	var all []auditlog.Record
	after := uint64(0)
	for {
		var page apiclient.AuditPage
		decodeJSON(t, cp.CLI(t, "audit", "log", "-o", "json", "--limit", "1000", "--after", fmt.Sprint(after)), &page)
		all = append(all, page.Records...)
		if len(page.Records) < 1000 {
			return all
		}
		after = page.Records[len(page.Records)-1].Seq
	}
}

// SQLite opens the control plane's SQLite store for a test to inspect or
// tamper with it behind the control plane's back. Closed in t.Cleanup.
func (cp *ControlPlane) SQLite(t testing.TB) *sql.DB {
	t.Helper()
	if cp.opts.StoreDSN != "" {
		t.Fatalf("%s uses --store %s, not SQLite", cp.name, cp.opts.StoreDSN)
	}
	db, err := sql.Open("sqlite", filepath.Join(cp.DataDir, "attache.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func decodeJSON(t testing.TB, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode CLI JSON output: %v\n%s", err, s)
	}
}

// StartReplica starts a second control plane that shares of's store (which
// must be PostgreSQL) and a copy of its data directory (CA, keys, admin
// token), on fresh ports, and waits until it is ready: two replicas of one
// control plane, as an operator runs them behind a load balancer.
func (e *Env) StartReplica(t testing.TB, of *ControlPlane) *ControlPlane {
	t.Helper()
	if of.opts.StoreDSN == "" {
		t.Fatal("StartReplica: replicas share a PostgreSQL store; the first control plane has none")
	}
	name := e.name("controlplane")
	cp := &ControlPlane{
		env:         e,
		opts:        of.opts,
		name:        name,
		DataDir:     filepath.Join(e.dir, name+"-data"),
		AgentAddr:   FreeAddr(t),
		APIAddr:     FreeAddr(t),
		TrustDomain: of.TrustDomain,
	}
	if err := os.CopyFS(cp.DataDir, os.DirFS(of.DataDir)); err != nil {
		t.Fatalf("copy %s's data directory: %v", of.name, err)
	}
	// CopyFS makes files 0644 and dirs 0755: restore the modes key files need.
	if err := filepath.WalkDir(cp.DataDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Chmod(p, 0o700)
		}
		return os.Chmod(p, 0o600)
	}); err != nil {
		t.Fatal(err)
	}
	// The lock file belongs to the first replica's process.
	_ = os.Remove(filepath.Join(cp.DataDir, "keys.lock"))
	cp.setArgs()
	cp.proc = e.start(t, name, e.Bin(ControlPlaneBin), cp.args, nil, true)
	cp.WaitReady(t)
	return cp
}
