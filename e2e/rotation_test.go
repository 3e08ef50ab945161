package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"attache.dev/attache/controlplane/agentapi"
	"attache.dev/attache/controlplane/ca"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/sign"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// awaitKeysReloaded waits until the running control plane has loaded trust
// root version (its key holder polls root.json every 2s).
func awaitKeysReloaded(t *testing.T, cp *harness.ControlPlane, version int) {
	t.Helper()
	re := regexp.MustCompile(`msg="signing keys reloaded after a rotation" .*\broot_version=` + fmt.Sprint(version) + `\b`)
	harness.Eventually(t, fmt.Sprintf("the control plane to reload its keys (root version %d)", version), 15*time.Second, func() (bool, string) {
		return re.MatchString(cp.Log()), "not in its log yet"
	})
}

// submitKeyID is the plans key that signed plan id, from its plan.submit
// audit record.
func submitKeyID(t *testing.T, cp *harness.ControlPlane, id string) string {
	t.Helper()
	r, ok := findAudit(cp.Audit(t), func(r auditlog.Record) bool { return r.Action == "plan.submit" && r.Target == id })
	if !ok {
		t.Fatalf("no plan.submit audit record for %s", id)
	}
	return auditDetail(r)["key_id"]
}

// TestRootRotationFollowed rotates the plans key, then the root key, of a
// running control plane: the connected agent follows each new trust root
// (verified against the one it pins) and applies the plans signed with the
// new keys.
func TestRootRotationFollowed(t *testing.T) {
	t.Parallel()
	w := newPlanWorld(t)
	first := w.submit(t, planYAML(provisionStep("provision", "config/v1.env", "ROOT=1\n")))
	before, v := w.agent.TrustRoot(t)
	if v != 1 {
		t.Fatalf("agent pins trust root version %d, want 1", v)
	}
	oldPlansKey := w.cp.PlansSigner(t).KeyID()
	if got := submitKeyID(t, w.cp, first.ID); got != oldPlansKey {
		t.Fatalf("first plan signed by %s, want the plans key %s", got, oldPlansKey)
	}

	for _, step := range []struct {
		flag    string
		version int
	}{{"--plans", 2}, {"--root", 3}} {
		out := w.cp.Keys(t, "rotate", step.flag)
		if !regexp.MustCompile(fmt.Sprintf(`root version:\s+%d \(was %d\)`, step.version, step.version-1)).MatchString(out) {
			t.Fatalf("keys rotate %s printed:\n%s", step.flag, out)
		}
		awaitKeysReloaded(t, w.cp, step.version)
		p := w.submit(t, planYAML(provisionStep("provision", fmt.Sprintf("config/v%d.env", step.version), fmt.Sprintf("ROOT=%d\n", step.version))))
		if _, v := w.agent.TrustRoot(t); v != step.version {
			t.Errorf("after keys rotate %s and a plan: agent pins trust root version %d, want %d", step.flag, v, step.version)
		}
		if got, want := submitKeyID(t, w.cp, p.ID), w.cp.PlansSigner(t).KeyID(); got != want {
			t.Errorf("plan after keys rotate %s signed by %s, want the current plans key %s", step.flag, got, want)
		}
	}
	if w.cp.PlansSigner(t).KeyID() == oldPlansKey {
		t.Error("the plans key did not change")
	}
	after, _ := w.agent.TrustRoot(t)
	if bytes.Equal(before, after) {
		t.Error("trust-root.json did not change")
	}

	// The agent audited each rotation it followed.
	w.agent.Stop(t)
	recs, err := w.agent.Journal(t).AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"2", "3"} {
		if !slices.ContainsFunc(recs, func(r auditlog.Record) bool {
			return r.Action == "trust_root.follow" && r.Outcome == auditlog.OutcomeSuccess && auditDetail(r)["version"] == v
		}) {
			t.Errorf("agent audit log has no successful trust_root.follow to version %s", v)
		}
	}
}

// forgedRotation returns version prev.Version+1 of the trust root with a new
// root key and a new plans key, signed by the new root key alone, not by
// the root key of prev: a rotation signed by too few old keys (none of a
// threshold of one). It returns the root, its envelope and the new keys.
func forgedRotation(t *testing.T, prevEnv []byte) (env []byte, rootKey, plansKey *sign.Signer) {
	t.Helper()
	prev, err := sign.VerifyPinnedRoot(context.Background(), prevEnv)
	if err != nil {
		t.Fatal(err)
	}
	if rootKey, err = sign.GenerateSigner(); err != nil {
		t.Fatal(err)
	}
	if plansKey, err = sign.GenerateSigner(); err != nil {
		t.Fatal(err)
	}
	next := *prev
	next.Version++
	next.Expires = time.Now().Add(30 * 24 * time.Hour).UTC().Truncate(time.Second)
	next.Keys = maps.Clone(prev.Keys)
	next.Roles = maps.Clone(prev.Roles)
	for _, role := range []string{sign.RoleRoot, sign.RolePlans} {
		for _, id := range prev.Roles[role].KeyIDs {
			delete(next.Keys, id)
		}
	}
	next.Keys[rootKey.KeyID()] = rootKey.PublicKey()
	next.Keys[plansKey.KeyID()] = plansKey.PublicKey()
	next.Roles[sign.RoleRoot] = sign.RoleKeys{KeyIDs: []string{rootKey.KeyID()}, Threshold: 1}
	next.Roles[sign.RolePlans] = sign.RoleKeys{KeyIDs: []string{plansKey.KeyID()}, Threshold: 1}
	if env, err = sign.SignRoot(context.Background(), &next, rootKey); err != nil {
		t.Fatal(err)
	}
	if _, err := sign.VerifyRoot(context.Background(), env, time.Now()); err != nil {
		t.Fatalf("the forged root does not even verify on its own: %v", err)
	}
	if _, err := sign.VerifyRootUpdate(context.Background(), prev, env, time.Now()); err == nil {
		t.Fatal("the forged rotation verifies as an update; the test would prove nothing")
	}
	return env, rootKey, plansKey
}

// TestRootRotationTooFewSignatures delivers a trust root rotation that the
// previous root's key did not sign, and checks that the agent keeps its
// root, audits the refusal and refuses the plans signed with the forged
// root's plans key.
//
// How the rotation reaches the agent: the control plane itself never sends
// it. It verifies its whole root history on every load (roots/<v>.json,
// each an update of the one before) and refuses to start with a history
// that does not verify — the test checks that first, through the real
// binary. So, like an attacker who has taken the control plane's host
// (its CA key and database) but not its root key, the test serves the
// agent endpoint itself: the control plane's own agent API code
// (controlplane/agentapi) with its CA and store, on its address, differing
// only in the trust roots it hands out. The agent under test is the real
// binary, reconnecting as it would to its control plane; it is the only
// verifier in the path. Afterwards the real control plane takes over again
// and the forged plans key is tried without the forged root.
func TestRootRotationTooFewSignatures(t *testing.T) {
	t.Parallel()
	w := newPlanWorld(t)
	w.submit(t, planYAML(provisionStep("provision", "config/app.env", "GREETING=hello\n")))
	pinned, v := w.agent.TrustRoot(t)
	if v != 1 {
		t.Fatalf("agent pins trust root version %d, want 1", v)
	}
	forgedEnv, forgedRootKey, forgedPlansKey := forgedRotation(t, pinned)
	self := w.agent.Identity(t).ID

	// 1. The control plane refuses to load such a rotation.
	w.cp.Stop(t)
	restore := installRoot(t, w.cp.DataDir, 2, forgedEnv, forgedRootKey, forgedPlansKey)
	code, stderr := w.cp.StartErr(t)
	if code == 0 || !strings.Contains(stderr, "signing keys") || !strings.Contains(stderr, "does not follow") {
		t.Fatalf("control plane with a root history whose version 2 the old root key did not sign: exit %d; want a refusal naming the broken history:\n%s", code, stderr)
	}
	restore()

	// 2. A forged agent endpoint hands the rotation to the agent: in
	// Welcome, and with a plan signed by the forged plans key.
	seq := w.cp.PlanSequence(t, "acme", w.agentID) + 1
	withRoot := forgedPlan(t, "with-forged-root", "acme", self, seq, time.Now(), time.Hour)
	w.cp.InsertPlan(t, harness.PlanRow{ID: withRoot.GetPlanId(), Tenant: "acme", AgentID: w.agentID, Sequence: seq,
		Envelope: signPlan(t, withRoot, forgedPlansKey)})
	rogue := startRogueEndpoint(t, w.cp, [][]byte{forgedEnv})
	harness.Eventually(t, "the agent to answer the forged endpoint's offer", 30*time.Second, func() (bool, string) {
		p, err := rogue.store.GetPlan(context.Background(), withRoot.GetPlanId())
		if err != nil {
			return false, err.Error()
		}
		return p.State != store.PlanPending, string(p.State)
	})
	rogue.stop()

	// 3. The real control plane again; the forged plans key without the root.
	w.cp.Restart(t)
	seq = w.cp.PlanSequence(t, "acme", w.agentID) + 1
	bare := forgedPlan(t, "forged-key-only", "acme", self, seq, time.Now(), time.Hour)
	w.cp.InsertPlan(t, harness.PlanRow{ID: bare.GetPlanId(), Tenant: "acme", AgentID: w.agentID, Sequence: seq,
		Envelope: signPlan(t, bare, forgedPlansKey)})

	for _, c := range []struct{ id, reason string }{
		{withRoot.GetPlanId(), "ROOT_ROTATION"},
		{bare.GetPlanId(), "SIGNATURE"},
	} {
		p := w.cp.AwaitPlan(t, c.id, harness.PlanRefused, 30*time.Second)
		t.Logf("plan %s refused: %s", c.id, p.Message)
		if !strings.HasPrefix(p.Message, c.reason+": ") {
			t.Errorf("plan %s: message %q, want it to start with %s", c.id, p.Message, c.reason+": ")
		}
		if !slices.ContainsFunc(w.cp.Audit(t), func(r auditlog.Record) bool {
			return r.Action == "plan.refused" && r.Target == c.id && auditDetail(r)["reason"] == c.reason
		}) {
			t.Errorf("control plane audit log has no plan.refused record for %s with reason %s", c.id, c.reason)
		}
	}

	// The agent kept its root and still applies genuine plans.
	if now, v := w.agent.TrustRoot(t); !bytes.Equal(now, pinned) || v != 1 {
		t.Errorf("agent's trust-root.json changed (now version %d)", v)
	}
	good := w.submit(t, planYAML(provisionStep("provision", "config/after.env", "AFTER=1\n")))
	log := w.applyLog(t)
	if len(applies(log, withRoot.GetPlanId(), "provision")) != 0 || len(applies(log, bare.GetPlanId(), "provision")) != 0 {
		t.Errorf("a plan signed by the forged plans key was applied: %+v", log)
	}
	if len(applies(log, good.ID, "provision")) != 1 {
		t.Errorf("the genuine plan after the forgery was not applied once: %+v", log)
	}
	if !strings.Contains(w.agent.Log(), "trust root rotation refused") {
		t.Errorf("agent log does not say it refused the trust root rotation")
	}

	// The agent audited every refusal of the rotation (Welcome and offer).
	w.agent.Stop(t)
	recs, err := w.agent.Journal(t).AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	var refusals int
	for _, r := range recs {
		switch {
		case r.Action == "trust_root.follow" && r.Outcome == auditlog.OutcomeSuccess:
			t.Errorf("agent audit log records a followed rotation: %s", r.Detail)
		case r.Action == "trust_root.follow" && r.Outcome == auditlog.OutcomeDenied && auditDetail(r)["version"] == "2":
			refusals++
		}
	}
	if refusals < 2 {
		t.Errorf("agent audit log has %d denied trust_root.follow records for version 2, want at least 2 (Welcome and plan offer)", refusals)
	}
}

// installRoot makes the data directory hold root version (envelope env)
// with rootKey and plansKey as its keys, the way a rotation leaves it
// (roots/<version>.json, root.json, root.key, plans.key), and returns a
// function that puts the original files back.
func installRoot(t *testing.T, dir string, version int, env []byte, rootKey, plansKey *sign.Signer) (restore func()) {
	t.Helper()
	files := []string{"root.json", "root.key", "plans.key"}
	saved := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		saved[f] = b
	}
	history := filepath.Join(dir, "roots", fmt.Sprintf("%d.json", version))
	if _, err := os.Stat(history); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists already (%v)", history, err)
	}
	write := func(path string, b []byte) {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pem := func(s *sign.Signer) []byte {
		b, err := s.MarshalPKCS8PEM()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	write(history, env)
	write(filepath.Join(dir, "root.json"), env)
	write(filepath.Join(dir, "root.key"), pem(rootKey))
	write(filepath.Join(dir, "plans.key"), pem(plansKey))
	return func() {
		t.Helper()
		for _, f := range files {
			write(filepath.Join(dir, f), saved[f])
		}
		if err := os.Remove(history); err != nil {
			t.Fatal(err)
		}
	}
}

// rogueEndpoint is an agent endpoint run by the test on a stopped control
// plane's address, with its CA and its store.
type rogueEndpoint struct {
	store store.Store
	stop  func()
}

// startRogueEndpoint serves the control plane's agent API (controlplane/
// agentapi, the code attache-controlplane runs) on cp's agent address, with
// cp's CA and store, but handing every agent the trust roots roots, in
// Welcome and with every plan offer, whatever version it pins. cp must be
// stopped. stop (also run in t.Cleanup) shuts it down.
func startRogueEndpoint(t *testing.T, cp *harness.ControlPlane, roots [][]byte) *rogueEndpoint {
	t.Helper()
	if _, exited := cp.Process().Exited(); !exited {
		t.Fatal("the control plane is running; stop it first")
	}
	td := spiffeid.RequireTrustDomainFromString(cp.TrustDomain)
	now := time.Now()
	authority, err := ca.LoadOrCreate(cp.DataDir, td, now)
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(t.TempDir(), "rogue.log"))
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, filepath.Join(cp.DataDir, "attache.db"), logger)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	svid, err := authority.IssueServer(identity.ControlPlaneID(td), nil, time.Hour, now)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	api := agentapi.New(agentapi.Config{
		Store:      st,
		CA:         authority,
		SVIDTTL:    time.Hour,
		Logger:     logger,
		TrustRoots: func(uint32) [][]byte { return roots },
	})
	srv := grpc.NewServer(grpcx.ServerOptions(
		credentials.NewTLS(identity.ServerTLSConfig(identity.NewSource(svid, authority.Bundle()), td)),
		agentv1.EnrollmentService_Enroll_FullMethodName,
	)...)
	agentv1.RegisterAgentServiceServer(srv, api)
	var ln net.Listener
	harness.Eventually(t, "the control plane's agent address to be free", 10*time.Second, func() (bool, string) {
		ln, err = net.Listen("tcp", cp.AgentAddr)
		return err == nil, fmt.Sprint(err)
	})
	var wg sync.WaitGroup
	wg.Go(func() { _ = api.Run(ctx) })
	wg.Go(func() { _ = srv.Serve(ln) })
	var once sync.Once
	stop := func() {
		once.Do(func() {
			srv.Stop()
			cancel()
			wg.Wait()
			api.Flush(context.Background())
			st.Close()
			logFile.Close()
			if t.Failed() {
				if b, err := os.ReadFile(logFile.Name()); err == nil {
					t.Logf("---- forged endpoint log ----\n%s", b)
				}
			}
		})
	}
	t.Cleanup(stop)
	return &rogueEndpoint{store: st, stop: stop}
}
