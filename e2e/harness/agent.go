package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"attache.dev/attache/agent/agentcli"
	"attache.dev/attache/agent/journal"
	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/sign"
)

// AgentOptions configures an agent.
type AgentOptions struct {
	// Token is the join token; empty for an agent that is already enrolled.
	Token string
	// StateDir is the agent's state directory; empty means a new one (not
	// yet created, so the agent creates it).
	StateDir string
	// ReconnectMaxDelay is --reconnect-max-delay; 0 means 2s, so tests that
	// restart a control plane do not wait long.
	ReconnectMaxDelay time.Duration
	// LogLevel is --log-level; default "info".
	LogLevel string
	// Config is the agent's --config file; empty means none (no providers).
	Config string
	// Args are extra flags for `attache-agent run`.
	Args []string
	// Env are extra NAME=value variables of the agent's environment (e.g.
	// a secret a provider entry passes on with pass_env).
	Env []string
	// RequireRelease starts the agent without --allow-unreleased-plans, as
	// in production: it then refuses plans that carry no release signed by
	// the release key. By default the harness passes the flag, since most
	// tests submit ad hoc plans.
	RequireRelease bool
}

// Agent is an `attache-agent run` process.
type Agent struct {
	env      *Env
	name     string
	StateDir string
	proc     *Process
}

// StartAgent starts `attache-agent run`.
func (e *Env) StartAgent(t testing.TB, opts AgentOptions) *Agent {
	t.Helper()
	name := e.name("agent")
	if opts.StateDir == "" {
		opts.StateDir = filepath.Join(e.dir, name+"-state")
	}
	if opts.ReconnectMaxDelay == 0 {
		opts.ReconnectMaxDelay = 2 * time.Second
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	args := []string{"run",
		"--state-dir", opts.StateDir,
		"--reconnect-max-delay", opts.ReconnectMaxDelay.String(),
		"--log-level", opts.LogLevel,
	}
	if opts.Token != "" {
		args = append(args, "--token", opts.Token)
	}
	if opts.Config != "" {
		args = append(args, "--config", opts.Config)
	}
	if !opts.RequireRelease {
		args = append(args, "--allow-unreleased-plans")
	}
	args = append(args, opts.Args...)
	return &Agent{
		env:      e,
		name:     name,
		StateDir: opts.StateDir,
		proc:     e.start(t, name, e.Bin(AgentBin), args, opts.Env, true),
	}
}

// Process is the agent's process.
func (a *Agent) Process() *Process { return a.proc }

// Log is what the agent logged so far.
func (a *Agent) Log() string { return a.proc.Stderr() }

// Kill kills the agent with SIGKILL (kill -9): no shutdown code runs, as in
// a crash or an OOM kill.
func (a *Agent) Kill() { a.proc.Kill() }

// Stop stops the agent with SIGTERM and waits for it to exit.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	if !a.proc.Stop(15 * time.Second) {
		t.Errorf("%s did not exit within 15s of SIGTERM; killed it", a.name)
	}
}

// TrustRoot returns the signed trust root the agent pins (trust-root.json in
// its state directory) and its version.
func (a *Agent) TrustRoot(t testing.TB) (envelope []byte, version int) {
	t.Helper()
	env, err := os.ReadFile(filepath.Join(a.StateDir, svid.TrustRootFile))
	if err != nil {
		t.Fatal(err)
	}
	r, err := sign.VerifyPinnedRoot(context.Background(), env)
	if err != nil {
		t.Fatalf("%s: %s: %v", a.name, svid.TrustRootFile, err)
	}
	return env, r.Version
}

// Journal opens the agent's plan journal (journal.db in its state
// directory) to inspect it; the agent must not be running, since it holds
// the journal's lock. Closed in t.Cleanup.
func (a *Agent) Journal(t testing.TB) *journal.Journal {
	t.Helper()
	if _, exited := a.proc.Exited(); !exited {
		t.Fatalf("%s is running and holds its journal; stop it first", a.name)
	}
	j, err := journal.Open(filepath.Join(a.StateDir, agentcli.JournalFile), journal.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open %s journal: %v", a.name, err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// Wait waits up to timeout for the agent to exit and returns its exit status
// and stderr; it fails the test if the agent is still running.
func (a *Agent) Wait(t testing.TB, timeout time.Duration) (exitCode int, stderr string) {
	t.Helper()
	code, ok := a.proc.Wait(timeout)
	if !ok {
		t.Fatalf("%s still running %s later; expected it to exit", a.name, timeout)
	}
	return code, a.proc.Stderr()
}

// AwaitEnrolled waits until the agent has saved an identity in its state
// directory and returns it. It fails at once if the agent exits.
func (a *Agent) AwaitEnrolled(t testing.TB) *svid.State {
	t.Helper()
	var st *svid.State
	Eventually(t, a.name+" to enroll (identity in its state dir)", 30*time.Second, func() (bool, string) {
		if code, exited := a.proc.Exited(); exited {
			t.Fatalf("%s exited with status %d before enrolling:\n%s", a.name, code, a.proc.Stderr())
		}
		var err error
		st, err = svid.Load(a.StateDir)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	return st
}

// Identity loads the agent's identity from its state directory.
func (a *Agent) Identity(t testing.TB) *svid.State {
	t.Helper()
	st, err := svid.Load(a.StateDir)
	if err != nil {
		t.Fatalf("load %s identity: %v", a.name, err)
	}
	return st
}

// Ref returns the agent's tenant and agent ID, from the SPIFFE ID in its
// state directory.
func (a *Agent) Ref(t testing.TB) (tenant, id string) {
	t.Helper()
	st := a.Identity(t)
	tenant, id, err := identity.ParseAgentID(st.TrustDomain(), st.ID)
	if err != nil {
		t.Fatalf("%s: %v", a.name, err)
	}
	return tenant, id
}

// Status runs `attache-agent status` and returns its "Key: value" lines as
// a map.
func (a *Agent) Status(t testing.TB) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "setpriv", "--pdeathsig", "KILL", "--", a.env.Bin(AgentBin), "status", "--state-dir", a.StateDir)
	cmd.Env = cleanEnv(nil)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("attache-agent status: %v\n%s", err, errb.String())
	}
	m := map[string]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

func writeSecret(path, s string) error {
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return errors.New("harness: write " + path + ": " + err.Error())
	}
	return nil
}

// LocalProvider writes an agent config file that pins the attache-provider-local
// binary the harness built, with its root below the test's directory and the
// built sampleapp's directory as bin_dir, and returns the config's path and
// the provider's root. The apps the provider starts outlive it by design
// (each in its own process group); they are killed in t.Cleanup (StopApps).
func (e *Env) LocalProvider(t testing.TB) (config, root string) {
	t.Helper()
	bin := e.Bin(LocalProviderBin)
	sum, err := agentcli.FileSHA256(bin)
	if err != nil {
		t.Fatal(err)
	}
	return e.ProviderConfig(t, bin, sum)
}

// ProviderConfig is LocalProvider with the provider binary at bin pinned
// by the sha256 sum (64 hex digits), which need not be bin's.
func (e *Env) ProviderConfig(t testing.TB, bin, sum string) (config, root string) {
	t.Helper()
	name := e.name("local")
	root = filepath.Join(e.dir, name+"-root")
	t.Cleanup(func() { StopApps(t, root) })
	cfg, err := json.Marshal(map[string]any{"providers": []any{map[string]any{
		"name": "local", "path": bin, "sha256": sum,
		"config": map[string]string{"root": root, "bin_dir": e.bin},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	config = filepath.Join(e.dir, name+".json")
	if err := os.WriteFile(config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	return config, root
}

// Provider is one provider entry of an agent config written by
// AgentConfig.
type Provider struct {
	// Name is the name plan steps use; Bin the binary's name in the
	// harness's bin directory (e.g. PostgresProviderBin).
	Name, Bin string
	// Config is the provider's configuration, marshalled as JSON.
	Config any
	// PassEnv names agent environment variables passed to the provider.
	PassEnv []string
}

// AgentConfig writes an agent config file pinning the given providers (each
// binary by its real sha256) and returns its path.
func (e *Env) AgentConfig(t testing.TB, providers ...Provider) string {
	t.Helper()
	var entries []any
	for _, p := range providers {
		bin := e.Bin(p.Bin)
		sum, err := agentcli.FileSHA256(bin)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, map[string]any{"name": p.Name, "path": bin, "sha256": sum, "config": p.Config, "pass_env": p.PassEnv})
	}
	cfg, err := json.Marshal(map[string]any{"providers": entries})
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(e.dir, e.name("config")+".json")
	if err := os.WriteFile(config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	return config
}

// StopApps kills every process working below root (the local provider
// starts each app in apps/<tenant> of its root, in its own process group),
// group and all, and waits until they are gone. Linux only (/proc).
func StopApps(t testing.TB, root string) {
	t.Helper()
	root = filepath.Clean(root)
	procs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Errorf("StopApps: %v", err)
		return
	}
	var killed []int
	for _, p := range procs {
		cwd, err := os.Readlink(filepath.Join(p, "cwd"))
		if err != nil || (cwd != root && !strings.HasPrefix(cwd, root+string(filepath.Separator))) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		killed = append(killed, pid)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range killed {
		for time.Now().Before(deadline) && alive(pid) {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
