package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/internal/auditlog"
)

// exitRevoked is attache-agent's exit status once it has been revoked.
const exitRevoked = 3

func TestRevoke(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme")})
	a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	cp.AwaitAgent(t, "acme", "the agent to be connected", 20*time.Second, isConnected(id))

	out := cp.CLI(t, "agent", "revoke", "acme/"+id)
	if !strings.Contains(out, "revoked") {
		t.Errorf("agent revoke printed %q", out)
	}
	code, stderr := a.Wait(t, 10*time.Second)
	if code != exitRevoked {
		t.Errorf("revoked agent exited with status %d, want %d:\n%s", code, exitRevoked, stderr)
	}
	if !strings.Contains(stderr, "revoked") {
		t.Errorf("revoked agent does not say it was revoked:\n%s", stderr)
	}
	got := cp.Agent(t, "acme", id)
	if got.Status != statusRevoked || got.RevokedAt == nil {
		t.Errorf("after revoke: status %q, revoked_at %v; want %q with a time", got.Status, got.RevokedAt, statusRevoked)
	}
	if list := cp.CLI(t, "agent", "list", "--tenant", "acme"); !lineHas(list, id, statusRevoked) {
		t.Errorf("`attache agent list` does not show %s revoked:\n%s", id, list)
	}

	// Its certificate is still valid, but the control plane refuses it.
	again := env.StartAgent(t, harness.AgentOptions{StateDir: a.StateDir})
	start := time.Now()
	if code, stderr := again.Wait(t, 10*time.Second); code != exitRevoked {
		t.Errorf("restarted revoked agent exited with status %d, want %d:\n%s", code, exitRevoked, stderr)
	}
	t.Logf("restarted revoked agent exited after %s", time.Since(start).Round(time.Millisecond))

	recs := cp.Audit(t)
	if !slices.ContainsFunc(recs, func(r auditlog.Record) bool {
		return r.Action == "agent.revoke" && r.Outcome == auditlog.OutcomeSuccess && r.Target == id && r.Role == "admin"
	}) {
		t.Errorf("audit log has no successful agent.revoke of %s by the admin", id)
	}
	if !slices.ContainsFunc(recs, func(r auditlog.Record) bool {
		return r.Action == "session.open" && r.Outcome == auditlog.OutcomeDenied && strings.HasSuffix(r.Actor, "/agent/"+id)
	}) {
		t.Errorf("audit log has no denied session.open for the revoked agent's reconnection")
	}
}

func TestControlPlaneRestart(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{HeartbeatInterval: time.Second})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme"), ReconnectMaxDelay: 2 * time.Second})
	a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	cp.AwaitAgent(t, "acme", "the agent to be connected", 20*time.Second, isConnected(id))

	cp.Stop(t)
	harness.Eventually(t, "the agent to notice the control plane is gone", 10*time.Second, func() (bool, string) {
		return strings.Contains(a.Log(), "session ended; reconnecting"), "no \"session ended\" in the agent log"
	})
	if code, exited := a.Process().Exited(); exited {
		t.Fatalf("agent exited with status %d while the control plane was down; it should keep retrying", code)
	}

	restarted := time.Now()
	cp.Restart(t)
	got := cp.AwaitAgent(t, "acme", "the agent to reconnect by itself", 20*time.Second, func(ag apiclient.Agent) bool {
		return isConnected(id)(ag) && ag.LastSeenAt != nil && ag.LastSeenAt.After(restarted)
	})
	t.Logf("agent reconnected %s after the restart began", got.LastSeenAt.Sub(restarted).Round(time.Millisecond))
	if n := strings.Count(a.Log(), `msg="session open"`); n != 2 {
		t.Errorf("agent log shows %d sessions opened, want 2 (before and after the restart)", n)
	}
}

func TestSVIDRenewal(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{SVIDTTL: 20 * time.Second, HeartbeatInterval: time.Second})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme")})
	a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	cp.AwaitAgent(t, "acme", "the agent to be connected", 20*time.Second, isConnected(id))

	sessionID := func() string {
		s := cp.Agent(t, "acme", id).SessionID
		if s == "" {
			t.Fatal("agent show reports no session id for a connected agent")
		}
		return s
	}
	session := sessionID()
	before := a.Status(t)["SVID serial"]
	if before == "" {
		t.Fatal("attache-agent status shows no SVID serial")
	}

	var after string
	harness.Eventually(t, "the agent to renew its 20s SVID", 30*time.Second, func() (bool, string) {
		after = a.Status(t)["SVID serial"]
		return after != before, "serial still " + before
	})
	// Renewal is due at half the lifetime: one renewal by now, not a storm.
	if n := strings.Count(a.Log(), `msg="renewed SVID"`); n > 2 {
		t.Errorf("agent renewed its 20s SVID %d times by the time the serial first changed; want 1 (at about 10s)", n)
	}
	harness.Eventually(t, "the control plane to record the agent's current serial", 5*time.Second, func() (bool, string) {
		s, cur := cp.Agent(t, "acme", id).CertSerial, a.Status(t)["SVID serial"]
		return s == cur, "cert_serial " + s + ", agent's " + cur
	})

	// The session survived the renewal.
	got := cp.Agent(t, "acme", id)
	if got.Status != statusConnected {
		t.Errorf("after renewal: status %q, want %q", got.Status, statusConnected)
	}
	if s := sessionID(); s != session {
		t.Errorf("session id changed from %s to %s across the renewal", session, s)
	}
	if log := a.Log(); strings.Contains(log, "session ended") || strings.Count(log, `msg="session open"`) != 1 {
		t.Errorf("agent log shows the session dropped during renewal:\n%s", log)
	}
	if !slices.ContainsFunc(cp.Audit(t), func(r auditlog.Record) bool {
		return r.Action == "agent.svid.renew" && r.Outcome == auditlog.OutcomeSuccess && strings.Contains(string(r.Detail), after)
	}) {
		t.Errorf("audit log has no agent.svid.renew record for serial %s", after)
	}
}
