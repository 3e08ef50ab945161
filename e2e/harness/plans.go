package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/internal/sign"
)

// Plan states as the ops API reports them.
const (
	PlanPending   = "pending"
	PlanAccepted  = "accepted"
	PlanRunning   = "running"
	PlanSucceeded = "succeeded"
	PlanFailed    = "failed"
	PlanRefused   = "refused"
	PlanExpired   = "expired"
)

// planDone reports whether a plan in state will not change any more.
func planDone(state string) bool {
	switch state {
	case PlanSucceeded, PlanFailed, PlanRefused, PlanExpired:
		return true
	}
	return false
}

// PlanFile writes a plan's YAML to a new file in the test's directory and
// returns its path, for `attache plan submit`.
func (e *Env) PlanFile(t testing.TB, yaml string) string {
	t.Helper()
	path := filepath.Join(e.dir, e.name("plan")+".yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// SubmitPlan submits yaml for tenant with `attache plan submit -o json`
// (extra flags such as "--agent", ID or "--dry-run" are passed through,
// but not --wait: see SubmitPlanWait) and returns the stored plan.
func (cp *ControlPlane) SubmitPlan(t testing.TB, tenant, yaml string, extra ...string) apiclient.Plan {
	t.Helper()
	args := append([]string{"plan", "submit", "-o", "json", "--tenant", tenant}, extra...)
	args = append(args, cp.env.PlanFile(t, yaml))
	var p apiclient.Plan
	decodeJSON(t, cp.CLI(t, args...), &p)
	if p.ID == "" || p.State != PlanPending {
		t.Fatalf("plan submit: got plan %q in state %q, want a new pending plan", p.ID, p.State)
	}
	return p
}

// SubmitPlanWait submits yaml for tenant with `attache plan submit --wait
// -o json` and returns the final plan as the CLI printed it, its stderr
// (the progress lines) and its exit status (non-zero unless the plan
// succeeded).
func (cp *ControlPlane) SubmitPlanWait(t testing.TB, tenant, yaml string, extra ...string) (p apiclient.Plan, stderr string, exitCode int) {
	t.Helper()
	args := append([]string{"plan", "submit", "-o", "json", "--tenant", tenant, "--wait", "--timeout", "25s"}, extra...)
	args = append(args, cp.env.PlanFile(t, yaml))
	stdout, stderr, code := cp.CLIErr(t, args...)
	decodeJSON(t, stdout, &p)
	return p, stderr, code
}

// Plan shows one plan, with its steps, through `attache plan show -o json`.
func (cp *ControlPlane) Plan(t testing.TB, id string) apiclient.Plan {
	t.Helper()
	var p apiclient.Plan
	decodeJSON(t, cp.CLI(t, "plan", "show", id, "-o", "json"), &p)
	return p
}

// AwaitPlan polls `attache plan show` until the plan is in state want and
// returns it. It fails at once if the plan ends in another state.
func (cp *ControlPlane) AwaitPlan(t testing.TB, id, want string, timeout time.Duration) apiclient.Plan {
	t.Helper()
	var p apiclient.Plan
	Eventually(t, fmt.Sprintf("plan %s to be %s", id, want), timeout, func() (bool, string) {
		t.Helper()
		p = cp.Plan(t, id)
		if p.State != want && planDone(p.State) {
			t.Fatalf("plan %s ended %s, want %s: %s\nsteps: %s", id, p.State, want, p.Message, StepSummary(p))
		}
		return p.State == want, p.State + ": " + p.Message
	})
	return p
}

// Step returns the plan's step id; it fails the test if there is none.
func Step(t testing.TB, p apiclient.Plan, id string) apiclient.PlanStep {
	t.Helper()
	i := slices.IndexFunc(p.Steps, func(s apiclient.PlanStep) bool { return s.ID == id })
	if i < 0 {
		t.Fatalf("plan %s has no step %q (steps: %s)", p.ID, id, StepSummary(p))
	}
	return p.Steps[i]
}

// StepSummary is one line per step: id, state, attempts and message.
func StepSummary(p apiclient.Plan) string {
	var b strings.Builder
	for _, s := range p.Steps {
		fmt.Fprintf(&b, "\n  %s: %s (attempts %d) %s", s.ID, s.State, s.Attempts, s.Message)
	}
	return b.String()
}

// PlansSigner returns the control plane's current plans key, read from its
// data directory (plans.key): what it signs plans with.
func (cp *ControlPlane) PlansSigner(t testing.TB) *sign.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cp.DataDir, "plans.key"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.ParsePKCS8PEM(b)
	if err != nil {
		t.Fatalf("%s/plans.key: %v", cp.DataDir, err)
	}
	return s
}

// PlanRow is a plan written straight into the control plane's store, as
// someone with write access to its database could: the control plane
// offers what its store holds.
type PlanRow struct {
	ID, Tenant, AgentID string
	Sequence            uint64
	Envelope            []byte
	// ExpiresAt is the row's expiry, after which the control plane no
	// longer offers the plan; zero means an hour from now. It need not be
	// what the signed plan says.
	ExpiresAt time.Time
}

// InsertPlan inserts a pending plan row into the control plane's SQLite
// store and advances the agent's plan sequence (agents.plan_seq) to at
// least its sequence, as store.CreatePlan does, so plans submitted later get
// higher numbers. No audit record is written: this is not a submission.
// The agent's session offers the plan when it next connects.
func (cp *ControlPlane) InsertPlan(t testing.TB, r PlanRow) {
	t.Helper()
	if r.ExpiresAt.IsZero() {
		r.ExpiresAt = time.Now().Add(time.Hour)
	}
	db := cp.SQLite(t)
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	now := time.Now().UnixMicro()
	if _, err := tx.ExecContext(ctx, `INSERT INTO plans (id, tenant, agent_id, sequence, release_ref, dry_run, envelope, state, message,
		steps, created_by, created_at, expires_at, updated_at) VALUES (?, ?, ?, ?, '', 0, ?, 'pending', '', NULL, 'e2e-forger', ?, ?, ?)`,
		r.ID, r.Tenant, r.AgentID, int64(r.Sequence), r.Envelope, now, r.ExpiresAt.UnixMicro(), now); err != nil {
		t.Fatalf("insert plan %s: %v", r.ID, err)
	}
	res, err := tx.ExecContext(ctx, `UPDATE agents SET plan_seq = max(plan_seq, ?) WHERE tenant = ? AND id = ?`, int64(r.Sequence), r.Tenant, r.AgentID)
	if err != nil {
		t.Fatalf("advance plan_seq: %v", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("advance plan_seq: agent %s/%s not found", r.Tenant, r.AgentID)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// PlanSequence returns the agent's last issued plan sequence
// (agents.plan_seq in the store).
func (cp *ControlPlane) PlanSequence(t testing.TB, tenant, agentID string) uint64 {
	t.Helper()
	var seq int64
	if err := cp.SQLite(t).QueryRow(`SELECT plan_seq FROM agents WHERE tenant = ? AND id = ?`, tenant, agentID).Scan(&seq); err != nil {
		t.Fatalf("read plan_seq of %s/%s: %v", tenant, agentID, err)
	}
	return uint64(seq)
}

// Keys runs `attache-controlplane keys ARGS… --data-dir DATADIR` (for
// example "rotate", "--plans") and returns its stdout; a non-zero exit
// fails the test. It may run while the control plane does.
func (cp *ControlPlane) Keys(t testing.TB, args ...string) string {
	t.Helper()
	full := append([]string{"keys"}, args...)
	full = append(full, "--data-dir", cp.DataDir, "--trust-domain", cp.TrustDomain)
	stdout, stderr, code := runBin(t, cp.env.Bin(ControlPlaneBin), full...)
	if code != 0 {
		t.Fatalf("attache-controlplane %s: exit status %d\nstdout: %s\nstderr: %s", strings.Join(full, " "), code, stdout, stderr)
	}
	return stdout
}

// StartErr starts the control plane again with the same data directory,
// ports and flags, expecting it to refuse to start: it waits up to 30s for
// the process to exit and returns its exit status and what it logged. A
// control plane that keeps running fails the test.
func (cp *ControlPlane) StartErr(t testing.TB) (exitCode int, stderr string) {
	t.Helper()
	if _, exited := cp.proc.Exited(); !exited {
		t.Fatalf("%s is still running", cp.name)
	}
	name := cp.env.name(cp.name + "-refused")
	p := cp.env.start(t, name, cp.env.Bin(ControlPlaneBin), cp.args, nil, true)
	code, ok := p.Wait(30 * time.Second)
	if !ok {
		t.Fatalf("%s kept running; expected it to refuse to start", name)
	}
	return code, p.Stderr()
}
