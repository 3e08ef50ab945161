package e2e

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/testenv/pgtest"
)

// Agent statuses as the ops API reports them.
const (
	statusConnected = "connected"
	statusRevoked   = "revoked"
)

// isConnected matches the agent id when its session is up.
func isConnected(id string) func(apiclient.Agent) bool {
	return func(a apiclient.Agent) bool { return a.ID == id && a.Status == statusConnected && a.Connected }
}

func TestEnrollAndSession(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{TrustDomain: "vendor.test"})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")

	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme")})
	st := a.AwaitEnrolled(t)
	tenant, id := a.Ref(t)

	want := "spiffe://vendor.test/tenant/acme/agent/" + id
	if tenant != "acme" || st.ID.String() != want {
		t.Errorf("agent SPIFFE ID = %s, want %s", st.ID, want)
	}

	got := cp.AwaitAgent(t, "acme", "the new agent to be connected", 20*time.Second, isConnected(id))
	if got.SPIFFEID != want {
		t.Errorf("agent list: spiffe_id = %q, want %q", got.SPIFFEID, want)
	}
	if table := cp.CLI(t, "agent", "list"); !lineHas(table, id, "acme", statusConnected) {
		t.Errorf("`attache agent list` has no line with acme, %s and %q:\n%s", id, statusConnected, table)
	}

	// The customer's state directory holds a private key: owner only.
	fi, err := os.Stat(a.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("state dir %s has mode %04o, want 0700", a.StateDir, perm)
	}
	var files []string
	err = filepath.WalkDir(a.StateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		files = append(files, d.Name())
		if perm := info.Mode().Perm(); perm != 0o600 {
			t.Errorf("state file %s has mode %04o, want 0600", d.Name(), perm)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"agent.json", "svid.pem", "bundle.pem", "trust-root.json"} {
		if !slices.Contains(files, f) {
			t.Errorf("state dir lacks %s (has %v)", f, files)
		}
	}

	if !slices.ContainsFunc(cp.Audit(t), func(r auditlog.Record) bool {
		return r.Action == "agent.enroll" && r.Outcome == auditlog.OutcomeSuccess && r.Tenant == "acme" && r.Target == id
	}) {
		t.Errorf("audit log has no successful agent.enroll record for acme/%s", id)
	}
}

// componentHealth is one entry of an agent's reported health.
type componentHealth struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func TestHeartbeatsVisible(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{HeartbeatInterval: time.Second})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme")})
	a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	cp.AwaitAgent(t, "acme", "the agent to be connected", 20*time.Second, isConnected(id))

	first := awaitSeen(t, cp, id)
	var later apiclient.Agent
	harness.Eventually(t, "agent show to report a newer last-seen", 10*time.Second, func() (bool, string) {
		later = cp.Agent(t, "acme", id)
		return later.LastSeenAt != nil && later.LastSeenAt.After(*first.LastSeenAt),
			"last_seen_at " + fmtTime(later.LastSeenAt) + ", first " + fmtTime(first.LastSeenAt)
	})
	if later.Status != statusConnected {
		t.Errorf("status = %q, want %q", later.Status, statusConnected)
	}

	var health []componentHealth
	if err := json.Unmarshal(later.Health, &health); err != nil {
		t.Fatalf("agent show: health %s: %v", later.Health, err)
	}
	for _, name := range []string{"agent", "svid"} {
		i := slices.IndexFunc(health, func(h componentHealth) bool { return h.Name == name })
		if i < 0 {
			t.Errorf("agent show: no health for component %q in %s", name, later.Health)
			continue
		}
		if health[i].Status != "HEALTH_STATUS_HEALTHY" {
			t.Errorf("component %s: status %s (%s), want HEALTH_STATUS_HEALTHY", name, health[i].Status, health[i].Message)
		}
	}

	// The human-readable form tells the same story.
	if out := cp.CLI(t, "agent", "show", "acme/"+id); !strings.Contains(out, "s ago") || !lineHas(out, "Status", statusConnected) {
		t.Errorf("`attache agent show` does not say the agent is connected and seen seconds ago:\n%s", out)
	}
}

// awaitSeen waits until the agent has a last-seen time and returns it.
func awaitSeen(t *testing.T, cp *harness.ControlPlane, id string) apiclient.Agent {
	t.Helper()
	var a apiclient.Agent
	harness.Eventually(t, "a first heartbeat of agent "+id, 10*time.Second, func() (bool, string) {
		a = cp.Agent(t, "acme", id)
		return a.LastSeenAt != nil, "no last_seen_at"
	})
	return a
}

func TestPostgresStore(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{StoreDSN: dsn, HeartbeatInterval: time.Second})
	cp.WaitReady(t)
	if _, err := os.Stat(filepath.Join(cp.DataDir, "attache.db")); err == nil {
		t.Errorf("control plane on PostgreSQL also created a SQLite store in %s", cp.DataDir)
	}
	cp.CreateTenant(t, "acme")

	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme")})
	st := a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	got := cp.AwaitAgent(t, "acme", "the agent to be connected", 20*time.Second, isConnected(id))
	if got.SPIFFEID != st.ID.String() {
		t.Errorf("spiffe_id = %q, want %q", got.SPIFFEID, st.ID)
	}
	first := awaitSeen(t, cp, id)
	harness.Eventually(t, "heartbeats to advance last-seen in PostgreSQL", 10*time.Second, func() (bool, string) {
		a := cp.Agent(t, "acme", id)
		return a.LastSeenAt.After(*first.LastSeenAt), "last_seen_at " + fmtTime(a.LastSeenAt)
	})

	// The trail kept in PostgreSQL verifies, and the data survives a restart.
	if out := cp.CLI(t, "audit", "verify"); !strings.Contains(out, "audit log verified") {
		t.Errorf("audit verify: %s", out)
	}
	restarted := time.Now()
	cp.Restart(t)
	cp.AwaitAgent(t, "acme", "the agent to reconnect after the restart", 20*time.Second, func(a apiclient.Agent) bool {
		return isConnected(id)(a) && a.LastSeenAt != nil && a.LastSeenAt.After(restarted)
	})
}

// lineHas reports whether one line of out contains every word.
func lineHas(out string, words ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		if !slices.ContainsFunc(words, func(w string) bool { return !strings.Contains(line, w) }) {
			return true
		}
	}
	return false
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.Format(time.RFC3339Nano)
}
