package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/internal/auditlog"
)

func TestAuditTamper(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	cp.CreateTenant(t, "globex")
	cp.JoinToken(t, "acme")

	if out := cp.CLI(t, "audit", "verify"); !strings.Contains(out, "audit log verified") {
		t.Fatalf("audit verify before tampering: %s", out)
	}

	// Someone with access to the database rewrites history.
	db := cp.SQLite(t)
	var actor string
	if err := db.QueryRow(`SELECT actor FROM audit_log WHERE seq = 2`).Scan(&actor); err != nil {
		t.Fatalf("read audit record 2: %v", err)
	}
	if actor == "mallory" {
		t.Fatal("audit record 2 is already by mallory")
	}
	res, err := db.Exec(`UPDATE audit_log SET actor = 'mallory' WHERE seq = 2`)
	if err != nil {
		t.Fatalf("tamper with audit record 2: %v", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("tampering changed %d rows, want 1", n)
	}

	stdout, stderr, code := cp.CLIErr(t, "audit", "verify")
	if code == 0 {
		t.Fatalf("audit verify passed after record 2 was altered:\n%s", stdout)
	}
	if !strings.Contains(stderr, "audit record 2") {
		t.Errorf("audit verify does not name record 2:\n%s", stderr)
	}

	// An export verified offline finds the same break.
	export := cp.CLI(t, "audit", "export")
	if !strings.Contains(export, "mallory") {
		t.Fatalf("export does not hold the altered record:\n%s", export)
	}
}

func TestAuditorCannotMutate(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme")})
	a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	cp.AwaitAgent(t, "acme", "the agent to be connected", 20*time.Second, isConnected(id))

	auditor := cp.As(cp.APIToken(t, "reviewer", "auditor"))
	for _, tc := range []struct {
		args   []string
		action string
	}{
		{[]string{"tenant", "create", "globex"}, "tenant.create"},
		{[]string{"token", "create", "--tenant", "acme"}, "jointoken.create"},
		{[]string{"agent", "revoke", "acme/" + id}, "agent.revoke"},
	} {
		stdout, stderr, code := auditor.CLIErr(t, tc.args...)
		if code == 0 {
			t.Errorf("auditor: attache %s succeeded:\n%s", strings.Join(tc.args, " "), stdout)
			continue
		}
		if !strings.Contains(stderr, "403") || !strings.Contains(stderr, "role auditor may not "+tc.action) {
			t.Errorf("auditor: attache %s: want a 403 saying the auditor may not %s, got:\n%s", strings.Join(tc.args, " "), tc.action, stderr)
		}
		if strings.TrimSpace(stdout) != "" {
			t.Errorf("auditor: attache %s printed %q on stdout", strings.Join(tc.args, " "), stdout)
		}
	}

	if out := auditor.CLI(t, "tenant", "list"); !strings.Contains(out, "acme") || strings.Contains(out, "globex") {
		t.Errorf("auditor: tenant list should show acme and no globex:\n%s", out)
	}
	if out := auditor.CLI(t, "audit", "verify"); !strings.Contains(out, "audit log verified") {
		t.Errorf("auditor: audit verify: %s", out)
	}
	if got := cp.Agent(t, "acme", id); got.Status != statusConnected {
		t.Errorf("agent status %q after the auditor's revoke attempt, want %q", got.Status, statusConnected)
	}

	recs := cp.Audit(t)
	for _, action := range []string{"tenant.create", "jointoken.create", "agent.revoke"} {
		if !slices.ContainsFunc(recs, func(r auditlog.Record) bool {
			return r.Action == action && r.Outcome == auditlog.OutcomeDenied && r.Role == "auditor" && strings.Contains(r.Actor, "reviewer")
		}) {
			t.Errorf("audit log has no denied %s by the auditor", action)
		}
	}
}
