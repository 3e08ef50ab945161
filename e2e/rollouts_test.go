package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/sign"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
	"attache.dev/attache/testenv/pgtest"
)

// releaseYAML is the sample app's release: provision, migrate (skipped on
// rollback: migrations only expand), then start the version on a free port
// with the tenant's flags. extraArgs are appended to the app's command (a
// bad build passes "-fail-after", "2s").
func releaseYAML(version string, migrations int, extraArgs ...string) string {
	var migs strings.Builder
	for i := 1; i <= migrations; i++ {
		fmt.Fprintf(&migs, "  - {version: %d, name: m%d, sql: \"CREATE TABLE t%d (id INTEGER PRIMARY KEY)\"}\n", i, i, i)
	}
	args := ""
	for _, a := range extraArgs {
		args += fmt.Sprintf(", %q", a)
	}
	return fmt.Sprintf(`name: sampleapp
version: %s
flags: {checkout_v2: "false"}
migrations:
%ssteps:
  - id: provision
    provider: local
    action: tenant.provision
    resource: "{{tenant}}"
  - id: migrate
    provider: local
    action: db.migrate
    resource: app.db
    depends_on: [provision]
    on_rollback: skip
    params: {migrations: "{{migrations}}"}
  - id: app
    provider: local
    action: app.upgrade
    resource: app
    depends_on: [migrate]
    params:
      version: "{{version}}"
      command: [sampleapp, -version, "{{version}}", -addr, "127.0.0.1:{port}"%s]
      port: 0
      health_timeout: 20s
      flags: "{{flags}}"
`, version, migs.String(), args)
}

// pushRelease signs a release with the release key in the control plane's
// data directory (the placeholder the vendor's CI would hold) through the
// offline CLI and pushes it.
func pushRelease(t *testing.T, env *harness.Env, cp *harness.ControlPlane, yaml string) {
	t.Helper()
	dir := t.TempDir()
	src, signed := filepath.Join(dir, "release.yaml"), filepath.Join(dir, "release.signed.json")
	if err := os.WriteFile(src, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cp.CLI(t, "release", "sign", "--key", filepath.Join(cp.DataDir, "release.key"), "--out", signed, src)
	cp.CLI(t, "release", "push", signed)
}

type rolloutJSON struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	Reason     string `json:"reason"`
	Message    string `json:"message"`
	LeaseOwner string `json:"lease_owner"`
	Targets    []struct {
		Tenant  string `json:"tenant"`
		Wave    int    `json:"wave"`
		State   string `json:"state"`
		PlanID  string `json:"plan_id"`
		Message string `json:"message"`
	} `json:"targets"`
}

func rolloutStatus(t *testing.T, cp *harness.ControlPlane, id string) rolloutJSON {
	t.Helper()
	var r rolloutJSON
	if err := json.Unmarshal([]byte(cp.CLI(t, "-o", "json", "rollout", "status", id)), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func startRollout(t *testing.T, cp *harness.ControlPlane, args ...string) string {
	t.Helper()
	var r rolloutJSON
	out := cp.CLI(t, append([]string{"-o", "json", "rollout", "start"}, args...)...)
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.ID == "" {
		t.Fatalf("rollout start: %q: %v", out, err)
	}
	return r.ID
}

// awaitRollout waits until the rollout's condition satisfies ok.
func awaitRollout(t *testing.T, cp *harness.ControlPlane, id, what string, timeout time.Duration, ok func(rolloutJSON) bool) rolloutJSON {
	t.Helper()
	var last rolloutJSON
	harness.Eventually(t, what, timeout, func() (bool, string) {
		last = rolloutStatus(t, cp, id)
		return ok(last), fmt.Sprintf("%s/%s: %s", last.State, last.Reason, last.Message)
	})
	return last
}

type fleetAgent struct {
	tenant string
	agent  *harness.Agent
	root   string
}

// startFleet creates n tenants labelled env=e2e, each with one agent that
// runs only plans rendered from signed releases.
func startFleet(t *testing.T, env *harness.Env, cp *harness.ControlPlane, n int) []*fleetAgent {
	t.Helper()
	fleet := make([]*fleetAgent, n)
	var wg sync.WaitGroup
	for i := range n {
		name := fmt.Sprintf("t%02d", i+1)
		cp.CLI(t, "tenant", "create", name, "--label", "env=e2e")
		config, root := env.LocalProvider(t)
		fleet[i] = &fleetAgent{tenant: name, root: root, agent: env.StartAgent(t, harness.AgentOptions{
			Token: cp.JoinToken(t, name), Config: config, RequireRelease: true,
			Args: []string{"--usage-interval", "500ms"},
		})}
	}
	for _, f := range fleet {
		wg.Add(1)
		go func() { defer wg.Done(); f.agent.AwaitEnrolled(t) }()
	}
	wg.Wait()
	for _, f := range fleet {
		cp.AwaitAgent(t, f.tenant, "connected", 30*time.Second, func(a apiclient.Agent) bool { return a.Connected })
	}
	return fleet
}

// appVersion is the version the tenant's app runs (the local provider's
// current.json).
func appVersion(t *testing.T, root, tenant string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "apps", tenant, "current.json"))
	if err != nil {
		return ""
	}
	var cur struct {
		Version string `json:"version"`
	}
	_ = json.Unmarshal(b, &cur)
	return cur.Version
}

// plansPerTenant counts each tenant's plans for release ref in the store.
func plansPerTenant(t *testing.T, db *sql.DB, ref string) map[string]int {
	t.Helper()
	rows, err := db.Query(`SELECT tenant, COUNT(*) FROM plans WHERE release_ref = ? GROUP BY tenant`, ref)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var tenant string
		var n int
		if err := rows.Scan(&tenant, &n); err != nil {
			t.Fatal(err)
		}
		out[tenant] = n
	}
	return out
}

// TestRollouts runs 20 agents (one per tenant, local provider) through the
// release life cycle: a good release through every wave; a second one with
// a pinned tenant, a tenant outside its maintenance window, a flag set for
// the canary wave first, and the control plane killed mid-wave; a freeze;
// and a bad release that fails health in the canary wave, halts there,
// rolls the canary tenants back and never reaches the other 18.
func TestRollouts(t *testing.T) {
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{HeartbeatInterval: time.Second})
	cp.WaitReady(t)
	fleet := startFleet(t, env, cp, 20)
	byTenant := map[string]*fleetAgent{}
	for _, f := range fleet {
		byTenant[f.tenant] = f
	}

	// 1. A good release reaches everyone, wave by wave.
	pushRelease(t, env, cp, releaseYAML("1.0.0", 1))
	id := startRollout(t, cp, "--release", "1.0.0", "--selector", "env=e2e", "--waves", "canary:2,50%,100%",
		"--bake", "1s", "--max-failed", "0", "--max-error-rate", "2%", "--concurrency", "10")
	r := awaitRollout(t, cp, id, "1.0.0 complete", 3*time.Minute, func(r rolloutJSON) bool { return r.State == "Complete" || r.State == "Failed" })
	if r.State != "Complete" {
		t.Fatalf("1.0.0 rollout %s/%s: %s", r.State, r.Reason, r.Message)
	}
	for _, f := range fleet {
		if v := appVersion(t, f.root, f.tenant); v != "1.0.0" {
			t.Fatalf("%s runs %q after the 1.0.0 rollout", f.tenant, v)
		}
	}

	// 2. The second release: t20 is pinned to 1.0.0, t19 only accepts
	// changes in a window that is closed now, and the canary tenants get a
	// flag before the release reaches the rest.
	cp.CLI(t, "tenant", "set", "t20", "--pin", "1.0.0")
	closed := time.Now().UTC().Add(3 * time.Hour).Format("15:04")
	cp.CLI(t, "tenant", "set", "t19", "--window", "daily "+closed+"+1h UTC")
	pushRelease(t, env, cp, releaseYAML("2.0.0", 2))
	id = startRollout(t, cp, "--release", "2.0.0", "--selector", "env=e2e", "--waves", "canary:2,50%,100%",
		"--bake", "4s", "--max-failed", "0", "--concurrency", "10")
	// Kill the control plane while the canary wave bakes, start it again:
	// the rollout continues from the store, issuing no plan twice. The
	// canary tenants get a flag the rest of the fleet does not.
	awaitRollout(t, cp, id, "canary wave baking", time.Minute, func(r rolloutJSON) bool { return r.Reason == "Bake" })
	cp.CLI(t, "flag", "set", "--rollout", id, "--wave", "canary", "checkout_v2=true")
	cp.Process().Kill()
	cp.Restart(t)
	r = awaitRollout(t, cp, id, "2.0.0 waiting for t19's window", 3*time.Minute, func(r rolloutJSON) bool {
		return r.State == "Waiting" && r.Reason == "MaintenanceWindow" || r.State == "Failed" || r.State == "Complete"
	})
	if r.State != "Waiting" || !strings.Contains(r.Message, "t19 outside its maintenance window") {
		t.Fatalf("2.0.0 rollout %s/%s: %s", r.State, r.Reason, r.Message)
	}
	for _, tg := range r.Targets {
		switch tg.Tenant {
		case "t20":
			if tg.State != "skipped" || tg.Message != "pinned to 1.0.0" {
				t.Fatalf("pinned t20: %+v", tg)
			}
		case "t19":
			if tg.State != "waiting" {
				t.Fatalf("t19: %+v", tg)
			}
		}
	}
	// The window opens (the operator widens it): t19 gets the release.
	cp.CLI(t, "tenant", "set", "t19", "--clear-windows")
	r = awaitRollout(t, cp, id, "2.0.0 complete", 2*time.Minute, func(r rolloutJSON) bool { return r.State == "Complete" || r.State == "Failed" })
	if r.State != "Complete" {
		t.Fatalf("2.0.0 rollout %s/%s: %s", r.State, r.Reason, r.Message)
	}
	for _, f := range fleet {
		want := "2.0.0"
		if f.tenant == "t20" {
			want = "1.0.0"
		}
		if v := appVersion(t, f.root, f.tenant); v != want {
			t.Fatalf("%s runs %q, want %s", f.tenant, v, want)
		}
	}
	// The canary wave's flag reached its tenants' config, and only theirs.
	for _, f := range fleet {
		b, _ := os.ReadFile(filepath.Join(f.root, "tenants", f.tenant, "config", "flags.json"))
		on := strings.Contains(string(b), `"checkout_v2": "true"`)
		if canary := f.tenant == "t01" || f.tenant == "t02"; on != canary {
			t.Fatalf("%s flags.json = %s (canary %v)", f.tenant, b, canary)
		}
	}

	// 3. Freeze: a flag change is stored and its plan issued, but nothing is
	// offered to any agent until the fleet is unfrozen.
	cp.CLI(t, "freeze", "--reason", "incident 42: checkout errors")
	time.Sleep(1500 * time.Millisecond) // every replica polls the freeze each second
	cp.CLI(t, "flag", "set", "--tenant", "t05", "checkout_v2=true")
	flagsFile := filepath.Join(byTenant["t05"].root, "tenants", "t05", "config", "flags.json")
	time.Sleep(3 * time.Second)
	if b, _ := os.ReadFile(flagsFile); strings.Contains(string(b), `"true"`) {
		t.Fatalf("a plan was applied while the fleet was frozen: %s", b)
	}
	cp.CLI(t, "unfreeze")
	harness.Eventually(t, "t05's flag after unfreeze", 30*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(flagsFile)
		return strings.Contains(string(b), `"checkout_v2": "true"`), string(b)
	})

	// 4. A bad build: healthy at start, failing 2s later. It halts in the
	// canary wave, the canary tenants roll back to 2.0.0, and the other 18
	// never see it.
	pushRelease(t, env, cp, releaseYAML("3.0.0", 3, "-fail-after", "2s"))
	id = startRollout(t, cp, "--release", "3.0.0", "--selector", "env=e2e", "--waves", "canary:2,100%",
		"--bake", "15s", "--max-failed", "0", "--max-error-rate", "2%", "--concurrency", "10")
	r = awaitRollout(t, cp, id, "3.0.0 failed", 3*time.Minute, func(r rolloutJSON) bool { return r.State == "Complete" || r.State == "Failed" })
	if r.State != "Failed" || r.Reason != "GateFailed" || !strings.Contains(r.Message, "gate failed") ||
		!strings.Contains(r.Message, "rolled back 2 tenants of wave canary") {
		t.Fatalf("3.0.0 rollout %s/%s: %s", r.State, r.Reason, r.Message)
	}
	t.Logf("bad release halted: %s", r.Message)
	db := cp.SQLite(t)
	got3 := plansPerTenant(t, db, "sampleapp@3.0.0")
	for _, f := range fleet {
		canary := f.tenant == "t01" || f.tenant == "t02"
		want := map[bool]int{true: 1, false: 0}[canary]
		if got3[f.tenant] != want {
			t.Fatalf("%s got %d plans of 3.0.0, want %d", f.tenant, got3[f.tenant], want)
		}
		wantV := "2.0.0"
		if f.tenant == "t20" {
			wantV = "1.0.0"
		}
		harness.Eventually(t, f.tenant+" back at "+wantV, 30*time.Second, func() (bool, string) {
			v := appVersion(t, f.root, f.tenant)
			return v == wantV, v
		})
	}
	for _, tg := range r.Targets {
		canary := tg.Tenant == "t01" || tg.Tenant == "t02"
		if canary && tg.State != "rolled_back" || !canary && tg.State != "cancelled" {
			t.Fatalf("target after the bad release: %+v", tg)
		}
	}

	// No plan was issued twice: one plan per tenant and release in the
	// store, and each agent's journal has exactly the sequences the store
	// issued to it (the restart in step 2 included).
	for _, ref := range []string{"sampleapp@1.0.0", "sampleapp@2.0.0"} {
		for tenant, n := range plansPerTenant(t, db, ref) {
			// t01, t02 and t05 got extra 2.0.0 plans for flags and the
			// rollback; count only rollout plans through the audit below.
			if ref == "sampleapp@1.0.0" && n != 1 {
				t.Fatalf("%s got %d plans of %s", tenant, n, ref)
			}
		}
	}
	var dups int
	if err := db.QueryRow(`SELECT COUNT(*) FROM (SELECT rollout_id, tenant FROM rollout_targets WHERE plan_id != '' GROUP BY rollout_id, plan_id HAVING COUNT(*) > 1)`).Scan(&dups); err != nil || dups != 0 {
		t.Fatalf("rollout targets sharing a plan: %d, %v", dups, err)
	}
	for _, f := range fleet {
		var issued uint64
		if err := db.QueryRow(`SELECT plan_seq FROM agents WHERE tenant = ?`, f.tenant).Scan(&issued); err != nil {
			t.Fatal(err)
		}
		var count uint64
		if err := db.QueryRow(`SELECT COUNT(*) FROM plans WHERE tenant = ?`, f.tenant).Scan(&count); err != nil {
			t.Fatal(err)
		}
		if issued != count {
			t.Fatalf("%s: store issued sequence %d but holds %d plans", f.tenant, issued, count)
		}
		f.agent.Stop(t)
		last, err := f.agent.Journal(t).LastSequence()
		if err != nil || last != issued {
			t.Fatalf("%s: journal's last sequence %d, store issued %d (%v)", f.tenant, last, issued, err)
		}
	}
	// The freeze and the halt are in the audit trail.
	var froze, halted bool
	for _, rec := range cp.Audit(t) {
		froze = froze || rec.Action == "fleet.freeze"
		halted = halted || rec.Action == "rollout.halt"
	}
	if !froze || !halted {
		t.Fatalf("audit: fleet.freeze %v, rollout.halt %v", froze, halted)
	}
}

// TestStolenPlanKeyCannotChangeWhatRuns: whoever holds the control plane's
// plan key (and its store) can sign plans, but an agent runs only steps a
// release signed by the release key renders to. A plan signed with the
// real plan key, carrying the real signed release, but with a migration
// the release does not contain, is refused and audited; so is an ad hoc
// plan without a release.
func TestStolenPlanKeyCannotChangeWhatRuns(t *testing.T) {
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	fleet := startFleet(t, env, cp, 1)
	a := fleet[0]
	pushRelease(t, env, cp, releaseYAML("1.0.0", 1))

	// The attacker's tools: the plans key from the data dir, the store.
	pemBytes, err := os.ReadFile(filepath.Join(cp.DataDir, "plans.key"))
	if err != nil {
		t.Fatal(err)
	}
	planKey, err := sign.ParsePKCS8PEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	db := cp.SQLite(t)
	var relEnv []byte
	if err := db.QueryRow(`SELECT envelope FROM releases WHERE version = '1.0.0'`).Scan(&relEnv); err != nil {
		t.Fatal(err)
	}
	rel, err := release.Peek(relEnv)
	if err != nil {
		t.Fatal(err)
	}
	rc := &planv1.ReleaseContext{Tenant: a.tenant, Tier: "pool"}
	steps, err := release.Render(rel, rc)
	if err != nil {
		t.Fatal(err)
	}
	// The evil migration: the release's own list plus a DROP.
	for _, s := range steps {
		if s.GetId() == "migrate" {
			list := s.GetParams().GetFields()["migrations"].GetListValue()
			evil, err := structpb.NewValue(map[string]any{"version": 2, "name": "exfiltrate", "sql": "DROP TABLE t1"})
			if err != nil {
				t.Fatal(err)
			}
			list.Values = append(list.Values, evil)
		}
	}
	tenant, agentID := a.agent.Ref(t)
	self, err := identity.AgentID(spiffeid.RequireTrustDomainFromString(cp.TrustDomain), tenant, agentID)
	if err != nil {
		t.Fatal(err)
	}
	inject := func(p *planv1.Plan) string {
		t.Helper()
		var seq uint64
		if err := db.QueryRow(`SELECT plan_seq FROM agents WHERE tenant = ? AND id = ?`, tenant, agentID).Scan(&seq); err != nil {
			t.Fatal(err)
		}
		seq++
		now := time.Now()
		p.PlanId, p.Tenant, p.AgentSpiffeId, p.Sequence = plan.NewID(now), tenant, self.String(), seq
		p.IssuedAt, p.ExpiresAt = timestamppb.New(now), timestamppb.New(now.Add(time.Hour))
		envl, err := plan.Sign(context.Background(), p, planKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO plans (id, tenant, agent_id, sequence, release_ref, dry_run, envelope, state, message, steps, created_by, created_at, expires_at, updated_at)
			VALUES (?, ?, ?, ?, ?, 0, ?, 'pending', '', NULL, 'attacker', ?, ?, ?)`,
			p.PlanId, tenant, agentID, seq, p.ReleaseRef, envl, now.UnixMicro(), now.Add(time.Hour).UnixMicro(), now.UnixMicro()); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`UPDATE agents SET plan_seq = ? WHERE tenant = ? AND id = ?`, seq, tenant, agentID); err != nil {
			t.Fatal(err)
		}
		return p.PlanId
	}
	awaitRefused := func(id, want string) {
		t.Helper()
		harness.Eventually(t, "plan "+id+" refused", 30*time.Second, func() (bool, string) {
			var state, msg string
			if err := db.QueryRow(`SELECT state, message FROM plans WHERE id = ?`, id).Scan(&state, &msg); err != nil {
				return false, err.Error()
			}
			return state == "refused" && strings.Contains(msg, want), state + ": " + msg
		})
	}
	evilID := inject(&planv1.Plan{ReleaseRef: release.Ref(rel), Steps: steps, ReleaseEnvelope: relEnv, ReleaseContext: rc})
	awaitRefused(evilID, `step "migrate" params.migrations`)
	adhoc := inject(&planv1.Plan{ReleaseRef: "anything@1", Steps: steps[:1]})
	awaitRefused(adhoc, "no signed release")
	// Nothing ran: the tenant directory was never provisioned.
	if _, err := os.Stat(filepath.Join(a.root, "tenants", a.tenant)); err == nil {
		t.Fatal("a step of a refused plan ran")
	}
	// A real rollout of the same release still goes through.
	id := startRollout(t, cp, "--release", "1.0.0", "--tenants", a.tenant, "--waves", "100%")
	r := awaitRollout(t, cp, id, "rollout complete", time.Minute, func(r rolloutJSON) bool { return r.State == "Complete" || r.State == "Failed" })
	if r.State != "Complete" {
		t.Fatalf("rollout %s: %s", r.State, r.Message)
	}
}

// TestRolloutFailover: two control-plane replicas on one PostgreSQL; agents
// are connected to either. Killing the replica driving a rollout hands it
// to the other, which finishes it without issuing any plan twice.
func TestRolloutFailover(t *testing.T) {
	env := harness.New(t)
	dsn := pgtest.DSN(t)
	a := env.StartControlPlane(t, harness.CPOptions{StoreDSN: dsn, HeartbeatInterval: time.Second})
	a.WaitReady(t)
	b := env.StartReplica(t, a)
	// Three tenants' agents on each replica.
	var roots = map[string]string{}
	for i := range 6 {
		cp := a
		if i%2 == 1 {
			cp = b
		}
		name := fmt.Sprintf("f%d", i+1)
		a.CLI(t, "tenant", "create", name, "--label", "env=failover")
		config, root := env.LocalProvider(t)
		roots[name] = root
		ag := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, name), Config: config, RequireRelease: true})
		ag.AwaitEnrolled(t)
	}
	pushRelease(t, env, a, releaseYAML("1.0.0", 1))
	id := startRollout(t, a, "--release", "1.0.0", "--selector", "env=failover", "--waves", "first:1,50%,100%",
		"--bake", "3s", "--concurrency", "1")
	r := awaitRollout(t, a, id, "a driver", 30*time.Second, func(r rolloutJSON) bool { return r.LeaseOwner != "" && r.Reason == "Bake" })
	first := r.LeaseOwner
	driver, other := a, b
	if !strings.Contains(a.Log(), first) {
		driver, other = b, a
	}
	driver.Process().Kill()
	r = awaitRollout(t, other, id, "the other replica takes over", time.Minute, func(r rolloutJSON) bool { return r.LeaseOwner != "" && r.LeaseOwner != first })
	// The killed replica's agents reconnect once it is back.
	driver.Restart(t)
	r = awaitRollout(t, other, id, "complete", 3*time.Minute, func(r rolloutJSON) bool { return r.State == "Complete" || r.State == "Failed" })
	if r.State != "Complete" {
		t.Fatalf("after failover %s/%s: %s", r.State, r.Reason, r.Message)
	}
	for name, root := range roots {
		if v := appVersion(t, root, name); v != "1.0.0" {
			t.Fatalf("%s runs %q", name, v)
		}
	}
	// Exactly one plan per tenant.
	pg, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	rows, err := pg.Query(`SELECT tenant, COUNT(*), MAX(sequence) FROM plans GROUP BY tenant`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var tenant string
		var count, maxSeq int
		if err := rows.Scan(&tenant, &count, &maxSeq); err != nil {
			t.Fatal(err)
		}
		if count != 1 || maxSeq != 1 {
			t.Fatalf("%s: %d plans, last sequence %d", tenant, count, maxSeq)
		}
		n++
	}
	if n != 6 {
		t.Fatalf("%d tenants have plans, want 6", n)
	}
}
