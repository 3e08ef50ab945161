package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/providers/local/localtest"
)

// planWorld is a control plane with tenant acme and one connected agent
// that runs the local provider.
type planWorld struct {
	env     *harness.Env
	cp      *harness.ControlPlane
	agent   *harness.Agent
	config  string // the agent's --config, pinning attache-provider-local
	root    string // the local provider's root
	agentID string
}

func newPlanWorld(t *testing.T) *planWorld {
	t.Helper()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	config, root := env.LocalProvider(t)
	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme"), Config: config})
	a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	cp.AwaitAgent(t, "acme", "the agent to be connected", 20*time.Second, isConnected(id))
	return &planWorld{env: env, cp: cp, agent: a, config: config, root: root, agentID: id}
}

// startAgent starts the agent again with its state directory and config.
func (w *planWorld) startAgent(t *testing.T) {
	t.Helper()
	w.agent = w.env.StartAgent(t, harness.AgentOptions{StateDir: w.agent.StateDir, Config: w.config})
}

// submit submits yaml for acme, waits for it to finish and fails the test
// unless it succeeded.
func (w *planWorld) submit(t *testing.T, yaml string) apiclient.Plan {
	t.Helper()
	p, stderr, code := w.cp.SubmitPlanWait(t, "acme", yaml)
	if code != 0 || p.State != harness.PlanSucceeded {
		t.Fatalf("plan %s: %s (exit %d): %s%s\nstderr: %s", p.ID, p.State, code, p.Message, harness.StepSummary(p), stderr)
	}
	return p
}

// applyLog is the local provider's log of every Apply it started.
func (w *planWorld) applyLog(t *testing.T) []localtest.ApplyLogEntry {
	t.Helper()
	return localtest.ApplyLog(t, w.root)
}

// Plan YAML builders. Each step is one local provider action.

func planYAML(steps ...string) string {
	return "version: 1\nexpires_in: 1h\nsteps:\n" + strings.Join(steps, "")
}

// provisionStep provisions acme's directories with one file.
func provisionStep(id, path, content string) string {
	return fmt.Sprintf(`  - id: %s
    provider: local
    action: tenant.provision
    resource: tenant
    params:
      files:
        - path: %s
          content: %q
`, id, path, content)
}

// migrateStep migrates acme's SQLite database to version 2.
func migrateStep(id string, dependsOn ...string) string {
	return fmt.Sprintf(`  - id: %s
    provider: local
    action: db.migrate
    resource: app.db
    depends_on: [%s]
    params:
      migrations:
        - version: 1
          name: create_accounts
          sql: CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL)
        - version: 2
          name: add_accounts_email
          sql: ALTER TABLE accounts ADD COLUMN email TEXT
`, id, strings.Join(dependsOn, ", "))
}

// appStep runs the sample app at version on port (app.upgrade), health
// checked for up to healthTimeout; extra is appended to its command line.
func appStep(id, version string, port int, healthTimeout string, dependsOn []string, extra ...string) string {
	cmd := []string{"sampleapp", "-version", version, "-addr", fmt.Sprintf(`"127.0.0.1:%d"`, port)}
	cmd = append(cmd, extra...)
	return fmt.Sprintf(`  - id: %s
    provider: local
    action: app.upgrade
    resource: app
    depends_on: [%s]
    params:
      version: %s
      command: [%s]
      port: %d
      health_timeout: %s
`, id, strings.Join(dependsOn, ", "), version, strings.Join(cmd, ", "), port, healthTimeout)
}

// freePort is a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	_, p, err := net.SplitHostPort(harness.FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// appAnswer is what the sample app on port answers on /, or the error.
func appAnswer(port int) (string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status)
	}
	return string(b), nil
}

// wantApp fails the test unless the sample app at version answers on port.
func wantApp(t *testing.T, port int, version string) {
	t.Helper()
	got, err := appAnswer(port)
	if err != nil || !strings.HasPrefix(got, "sampleapp "+version+" ") {
		t.Errorf("app on port %d: %q, %v; want sampleapp %s", port, got, err, version)
	}
}

// applies lists the attempts the apply log records for a plan's step.
func applies(log []localtest.ApplyLogEntry, plan, step string) []uint32 {
	var out []uint32
	for _, e := range log {
		if e.Plan == plan && e.Step == step {
			out = append(out, e.Attempt)
		}
	}
	return out
}

// auditDetail decodes an audit record's detail as a JSON object; values
// that are not strings are rendered as JSON.
func auditDetail(r auditlog.Record) map[string]string {
	var raw map[string]json.RawMessage
	if json.Unmarshal(r.Detail, &raw) != nil {
		return nil
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		var s string
		if json.Unmarshal(v, &s) == nil {
			out[k] = s
		} else {
			out[k] = string(v)
		}
	}
	return out
}

// findAudit returns the first record matching ok.
func findAudit(recs []auditlog.Record, ok func(auditlog.Record) bool) (auditlog.Record, bool) {
	i := slices.IndexFunc(recs, ok)
	if i < 0 {
		return auditlog.Record{}, false
	}
	return recs[i], true
}

// TestPlanCrashResume kills the agent (SIGKILL) while the last step of a
// plan, an app upgrade that is slow to start, is running: the restarted
// agent resumes the plan from its journal, never starts a succeeded step
// again, and runs the interrupted step a second time.
func TestPlanCrashResume(t *testing.T) {
	t.Parallel()
	w := newPlanWorld(t)
	port := freePort(t)
	p := w.cp.SubmitPlan(t, "acme", planYAML(
		provisionStep("provision", "config/app.env", "GREETING=hello\n"),
		migrateStep("migrate", "provision"),
		appStep("app", "v1", port, "30s", []string{"migrate"}, "-start-delay", "5s"),
	))

	// The app step started: the provider logged it, and the control plane
	// shows it running (the agent journals and reports a step as running
	// before it calls the provider). The app takes 5s to listen.
	harness.Eventually(t, "the provider to start the app step", 20*time.Second, func() (bool, string) {
		n := len(applies(w.applyLog(t), p.ID, "app"))
		return n == 1, fmt.Sprintf("%d app applies", n)
	})
	var cur apiclient.Plan
	harness.Eventually(t, "the control plane to show step app running", 4*time.Second, func() (bool, string) {
		cur = w.cp.Plan(t, p.ID)
		s := harness.Step(t, cur, "app")
		return s.State == "running", s.State
	})
	if s := harness.Step(t, cur, "migrate"); s.State != "succeeded" {
		t.Fatalf("step migrate is %s before the crash, want succeeded", s.State)
	}
	if _, err := appAnswer(port); err == nil {
		t.Fatal("the app already answers: the crash would not be mid-step (make -start-delay longer)")
	}

	w.agent.Kill()
	w.startAgent(t)
	final := w.cp.AwaitPlan(t, p.ID, harness.PlanSucceeded, 40*time.Second)

	log := w.applyLog(t)
	for _, c := range []struct {
		step string
		want []uint32
	}{
		{"provision", []uint32{1}},
		{"migrate", []uint32{1}},
		{"app", []uint32{1, 2}},
	} {
		if got := applies(log, p.ID, c.step); !slices.Equal(got, c.want) {
			t.Errorf("step %s: the provider applied attempts %v, want %v", c.step, got, c.want)
		}
		if got := harness.Step(t, final, c.step).Attempts; got != uint32(len(c.want)) {
			t.Errorf("control plane: step %s has %d attempts, want %d", c.step, got, len(c.want))
		}
	}
	wantApp(t, port, "v1")
	if n := strings.Count(w.agent.Log(), "executing plan"); n != 1 {
		t.Errorf("restarted agent executed plans %d times, want 1 (the interrupted plan)", n)
	}
}

// TestPlanUpgradeRolledBack upgrades a healthy v1 to a v2 that never gets
// healthy: the provider stops v2 and keeps v1, and the plan fails saying so.
func TestPlanUpgradeRolledBack(t *testing.T) {
	t.Parallel()
	w := newPlanWorld(t)
	port1, port2 := freePort(t), freePort(t)
	w.submit(t, planYAML(appStep("app", "v1", port1, "20s", nil)))
	wantApp(t, port1, "v1")

	p, _, code := w.cp.SubmitPlanWait(t, "acme", planYAML(appStep("app", "v2", port2, "3s", nil, "-unhealthy")))
	if code == 0 || p.State != harness.PlanFailed {
		t.Fatalf("upgrade to an unhealthy v2: %s (exit %d), want failed: %s", p.State, code, p.Message)
	}
	if !strings.Contains(p.Message, "rolled back") || !strings.Contains(p.Message, `step "app" failed`) {
		t.Errorf("plan message %q does not say step app failed and was rolled back", p.Message)
	}
	s := harness.Step(t, p, "app")
	if s.State != "failed" || !strings.Contains(s.Message, "v2 is not healthy") || !strings.Contains(s.Message, "v1") {
		t.Errorf("step app: %s: %q; want failed, saying v2 is not healthy and v1 keeps running", s.State, s.Message)
	}
	wantApp(t, port1, "v1")
	if got, err := appAnswer(port2); err == nil {
		t.Errorf("v2 still answers on port %d after the rollback: %q", port2, got)
	}
}

// TestPlanProviderChecksumMismatch starts an agent whose config pins a
// checksum the provider binary does not have: it refuses to start, naming
// the provider and the mismatch, and never runs the binary.
func TestPlanProviderChecksumMismatch(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")

	genuine := env.Bin(harness.LocalProviderBin)
	b, err := os.ReadFile(genuine)
	if err != nil {
		t.Fatal(err)
	}
	// The binary changed after it was pinned (replaced on disk).
	replaced := filepath.Join(t.TempDir(), harness.LocalProviderBin)
	if err := os.WriteFile(replaced, append(b, "\x00appended"...), 0o755); err != nil {
		t.Fatal(err)
	}
	genuineSum := sha256Hex(b)

	for _, tc := range []struct {
		name, bin, sum string
	}{
		{"binary replaced after pinning", replaced, genuineSum},
		{"wrong pin", genuine, strings.Repeat("ab", 32)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			config, root := env.ProviderConfig(t, tc.bin, tc.sum)
			a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme"), Config: config})
			code, stderr := a.Wait(t, 15*time.Second)
			if code == 0 {
				t.Fatalf("agent started with a provider whose checksum does not match:\n%s", stderr)
			}
			for _, want := range []string{`provider "local"`, tc.bin, "config pins " + tc.sum, "checksum does not match"} {
				if !strings.Contains(stderr, want) {
					t.Errorf("agent's error does not mention %q:\n%s", want, stderr)
				}
			}
			if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the provider's root %s exists (%v): the refused binary ran", root, err)
			}
		})
	}
}

// TestPlanQueuedWhileAgentOffline submits a plan while the agent is
// stopped: it waits, pending, and is applied once the agent is back.
func TestPlanQueuedWhileAgentOffline(t *testing.T) {
	t.Parallel()
	w := newPlanWorld(t)
	w.agent.Stop(t)
	p := w.cp.SubmitPlan(t, "acme", planYAML(provisionStep("provision", "config/queued.env", "QUEUED=1\n")))
	// The control plane's poll for new plans (for sessions on other
	// replicas) sees plans created in the last few seconds; an agent back
	// after a longer outage gets its queued plans only from the offer at
	// the start of its session, which is what this test is about. So the
	// agent stays away a little longer than that window.
	time.Sleep(time.Until(p.CreatedAt.Add(7 * time.Second)))
	if got := w.cp.Plan(t, p.ID); got.State != harness.PlanPending || got.AckedAt != nil {
		t.Fatalf("plan for a stopped agent is %s (acked %v), want pending", got.State, got.AckedAt)
	}
	w.startAgent(t)
	w.cp.AwaitPlan(t, p.ID, harness.PlanSucceeded, 30*time.Second)
	b, err := os.ReadFile(filepath.Join(w.root, "tenants", "acme", "config", "queued.env"))
	if err != nil || string(b) != "QUEUED=1\n" {
		t.Errorf("provisioned file: %q, %v", b, err)
	}
}

// TestPlanResultAcrossControlPlaneRestart stops the control plane while a
// slow plan runs: the agent finishes it meanwhile and reports the result
// once the control plane is back. Then again, with the agent killed and
// restarted while the control plane is down, so the result survives only in
// the agent's journal.
func TestPlanResultAcrossControlPlaneRestart(t *testing.T) {
	t.Parallel()
	w := newPlanWorld(t)
	port1, port2 := freePort(t), freePort(t)

	// outage submits a plan that runs the app at version on port (slow to
	// start), stops the control plane once the app step runs, lets the
	// agent finish the plan, calls meanwhile, then restarts the control
	// plane and waits for the plan to be reported succeeded.
	outage := func(version string, port int, meanwhile func()) apiclient.Plan {
		t.Helper()
		p := w.cp.SubmitPlan(t, "acme", planYAML(
			provisionStep("provision", "config/app.env", "VERSION="+version+"\n"),
			appStep("app", version, port, "30s", []string{"provision"}, "-start-delay", "3s"),
		))
		harness.Eventually(t, "the control plane to show step app running", 20*time.Second, func() (bool, string) {
			cur := w.cp.Plan(t, p.ID)
			if cur.State == harness.PlanSucceeded {
				t.Fatal("the plan succeeded before the control plane could be stopped")
			}
			s := harness.Step(t, cur, "app")
			return s.State == "running", cur.State + ", app " + s.State
		})
		w.cp.Stop(t)
		harness.Eventually(t, "the agent to finish the plan", 20*time.Second, func() (bool, string) {
			done := regexp.MustCompile(`msg="plan finished" .*plan=` + regexp.QuoteMeta(p.ID) + ` .*state=succeeded`)
			return done.MatchString(w.agent.Log()), "no \"plan finished\" in its log"
		})
		wantApp(t, port, version)
		meanwhile()
		w.cp.Restart(t)
		final := w.cp.AwaitPlan(t, p.ID, harness.PlanSucceeded, 30*time.Second)
		if s := harness.Step(t, final, "app"); s.State != "succeeded" || s.Attempts != 1 || s.FinishedAt == nil {
			t.Errorf("step app after the restart: %s, %d attempts, finished %v; want succeeded once", s.State, s.Attempts, s.FinishedAt)
		}
		if got := applies(w.applyLog(t), p.ID, "app"); !slices.Equal(got, []uint32{1}) {
			t.Errorf("app step applied as attempts %v, want [1]", got)
		}
		if !slices.ContainsFunc(w.cp.Audit(t), func(r auditlog.Record) bool {
			return r.Action == "plan.succeeded" && r.Target == p.ID
		}) {
			t.Errorf("audit log has no plan.succeeded record for %s", p.ID)
		}
		return final
	}

	outage("v1", port1, func() {})
	outage("v2", port2, func() {
		// The agent crashes and comes back while the control plane is
		// still down: the unreported result is only in its journal.
		w.agent.Kill()
		w.startAgent(t)
		harness.Eventually(t, "the restarted agent to try the control plane", 10*time.Second, func() (bool, string) {
			return strings.Contains(w.agent.Log(), "reconnecting"), "no \"reconnecting\" in its log"
		})
	})
	wantApp(t, port2, "v2")
}

// TestPlanDryRun submits a dry run through the real binaries: every step
// reports the provider's diff and the provider's root is left as it was.
func TestPlanDryRun(t *testing.T) {
	t.Parallel()
	w := newPlanWorld(t)
	port := freePort(t)
	yaml := planYAML(
		provisionStep("provision", "config/app.env", "GREETING=hello\n"),
		migrateStep("migrate", "provision"),
		appStep("app", "v1", port, "20s", []string{"migrate"}),
	)
	harness.Eventually(t, "the provider to create its root", 10*time.Second, func() (bool, string) {
		_, err := os.Stat(w.root)
		return err == nil, fmt.Sprint(err)
	})
	before := localtest.Snapshot(t, w.root)

	stdout, stderr, code := w.cp.CLIErr(t, "plan", "submit", "--tenant", "acme", "--dry-run", "--wait", "--timeout", "25s", w.env.PlanFile(t, yaml))
	if code != 0 {
		t.Fatalf("dry run: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	for _, want := range []string{"Changes the plan would make (dry run, nothing was changed)", "create", "tenants/acme", "start v1"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, stdout)
		}
	}
	id := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(stdout, "\n", 2)[0], "Plan:"))
	p := w.cp.Plan(t, id)
	if !p.DryRun || p.State != harness.PlanSucceeded {
		t.Errorf("plan %s: dry_run %v, state %s; want a succeeded dry run", id, p.DryRun, p.State)
	}
	for _, s := range p.Steps {
		if s.State != "planned" || len(s.Changes) == 0 {
			t.Errorf("step %s: %s with %d changes; want planned with the provider's diff", s.ID, s.State, len(s.Changes))
		}
		for _, c := range s.Changes {
			if c.Operation != "create" {
				t.Errorf("step %s: change %s %s (%s), want only creations on a fresh root", s.ID, c.Operation, c.Resource, c.Summary)
			}
		}
	}

	if after := localtest.Snapshot(t, w.root); string(after) != string(before) {
		t.Errorf("the dry run changed the provider's root:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if log := w.applyLog(t); len(log) != 0 {
		t.Errorf("the dry run applied steps: %+v", log)
	}
	if got, err := appAnswer(port); err == nil {
		t.Errorf("the dry run started the app: %q", got)
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestPlanJournalLost: the journal holds the agent's replay protection (the
// last accepted sequence), so an enrolled agent whose journal is gone does
// not start until the operator says --new-journal; with it, the agent starts
// and applies new plans.
func TestPlanJournalLost(t *testing.T) {
	t.Parallel()
	w := newPlanWorld(t)
	w.submit(t, planYAML(provisionStep("provision", "config/a.env", "A=1\n")))
	w.agent.Stop(t)
	if err := os.Remove(filepath.Join(w.agent.StateDir, "journal.db")); err != nil {
		t.Fatal(err)
	}
	a := w.env.StartAgent(t, harness.AgentOptions{StateDir: w.agent.StateDir, Config: w.config})
	code, stderr := a.Wait(t, 20*time.Second)
	if code == 0 || !strings.Contains(stderr, "no plan journal") || !strings.Contains(stderr, "--new-journal") {
		t.Fatalf("agent without its journal: exit %d, stderr:\n%s", code, stderr)
	}
	w.agent = w.env.StartAgent(t, harness.AgentOptions{StateDir: w.agent.StateDir, Config: w.config, Args: []string{"--new-journal"}})
	w.submit(t, planYAML(provisionStep("provision", "config/b.env", "B=1\n")))
}
