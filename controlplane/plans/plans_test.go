package plans_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/plans"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/planverify"
	"attache.dev/attache/internal/sign"
)

const (
	td = "attache.test"

	goodYAML = `
version: 1
release: app@v2
expires_in: 2h
steps:
  - id: dir
    provider: local
    action: dir.ensure
    resource: tenants/acme
  - id: db
    provider: local
    action: sqlite.ensure
    resource: tenants/acme/db
    depends_on: [dir]
`
)

// env is a plans service on a real SQLite store and real keys.
type env struct {
	t        *testing.T
	ctx      context.Context
	store    store.Store
	keys     atomic.Pointer[keys.Material]
	first    *keys.Material // the material LoadOrCreate made
	keysDir  string
	now      time.Time
	svc      *plans.Service
	mu       sync.Mutex
	notified []store.AgentKey
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "cp.db"), nil)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now().UTC().Truncate(time.Second)
	m, err := keys.LoadOrCreate(ctx, filepath.Join(dir, "keys"), td, now)
	if err != nil {
		t.Fatalf("keys: %v", err)
	}
	e := &env{t: t, ctx: ctx, store: st, first: m, keysDir: filepath.Join(dir, "keys"), now: now}
	e.keys.Store(m)
	e.svc = plans.New(plans.Config{
		Store: st,
		Keys:  e.keys.Load,
		Notify: func(k store.AgentKey) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.notified = append(e.notified, k)
		},
		Now: func() time.Time { return e.now },
	})
	return e
}

func (e *env) tenant(name string) {
	e.t.Helper()
	if err := e.store.CreateTenant(e.ctx, store.Tenant{Name: name, CreatedAt: e.now}, e.entry("tenant.create", name)); err != nil {
		e.t.Fatalf("CreateTenant: %v", err)
	}
}

func (e *env) entry(action, tenant string) auditlog.Entry {
	return auditlog.Entry{Time: e.now, Actor: "test", Role: "admin", Action: action, Tenant: tenant, Outcome: auditlog.OutcomeSuccess}
}

// enroll enrolls agent id of tenant through a join token, as enrollment does.
func (e *env) enroll(tenant, id string) {
	e.t.Helper()
	secret := []byte("secret-" + tenant + "-" + id)
	hash := sha256.Sum256(secret)
	tokID := "tok-" + tenant + "-" + id
	if err := e.store.CreateJoinToken(e.ctx, store.JoinToken{ID: tokID, Tenant: tenant, SecretHash: hash[:], CreatedBy: "test",
		CreatedAt: e.now, ExpiresAt: e.now.Add(time.Hour)}, e.entry("jointoken.create", tenant)); err != nil {
		e.t.Fatalf("CreateJoinToken: %v", err)
	}
	sid := e.agentID(tenant, id)
	if _, err := e.store.Enroll(e.ctx, tokID, hash[:], e.now, store.Agent{Tenant: tenant, ID: id, SPIFFEID: sid.String(),
		EnrolledAt: e.now, CertSerial: "01", CertExpiresAt: e.now.Add(time.Hour)}, e.entry("agent.enroll", tenant)); err != nil {
		e.t.Fatalf("Enroll: %v", err)
	}
}

func (e *env) agentID(tenant, id string) spiffeid.ID {
	e.t.Helper()
	sid, err := identity.AgentID(spiffeid.RequireTrustDomainFromString(td), tenant, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return sid
}

func (e *env) revoke(tenant, id string) {
	e.t.Helper()
	if _, err := e.store.RevokeAgent(e.ctx, store.AgentKey{Tenant: tenant, ID: id}, "test", e.now, e.entry("agent.revoke", tenant)); err != nil {
		e.t.Fatalf("RevokeAgent: %v", err)
	}
}

func (e *env) submit(tenant, agent, yaml string) (store.Plan, error) {
	e.t.Helper()
	return e.svc.Submit(e.ctx, plans.SubmitRequest{Actor: "apitoken:ops/1", Role: "operator", Source: "127.0.0.1:1", RequestID: "req-1",
		Tenant: tenant, AgentID: agent, YAML: []byte(yaml)})
}

func (e *env) mustSubmit(tenant, agent, yaml string) store.Plan {
	e.t.Helper()
	p, err := e.submit(tenant, agent, yaml)
	if err != nil {
		e.t.Fatalf("Submit(%s, %q): %v", tenant, agent, err)
	}
	return p
}

func (e *env) auditHead() uint64 {
	e.t.Helper()
	seq, _, err := e.store.AuditHead(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return seq
}

func (e *env) lastAudit() auditlog.Record {
	e.t.Helper()
	recs, err := e.store.ListAudit(e.ctx, store.AuditFilter{Limit: 1000})
	if err != nil || len(recs) == 0 {
		e.t.Fatalf("ListAudit: %d records, %v", len(recs), err)
	}
	return recs[len(recs)-1]
}

func (e *env) plans(tenant string) []store.Plan {
	e.t.Helper()
	ps, err := e.store.ListPlans(e.ctx, store.PlanFilter{Tenant: tenant})
	if err != nil {
		e.t.Fatal(err)
	}
	return ps
}

func (e *env) verifier(tenant, id string, root *sign.Root) *planverify.Verifier {
	return &planverify.Verifier{AllowUnreleased: true, Root: root, Self: e.agentID(tenant, id), Now: func() time.Time { return e.now }}
}

func TestSubmitSignsAPlanTheAgentAccepts(t *testing.T) {
	e := newEnv(t)
	e.tenant("acme")
	e.enroll("acme", "a1")

	p := e.mustSubmit("acme", "", goodYAML)
	if p.Tenant != "acme" || p.AgentID != "a1" || p.Sequence != 1 || p.Release != "app@v2" || p.DryRun ||
		p.State != store.PlanPending || p.CreatedBy != "apitoken:ops/1" || !p.ExpiresAt.Equal(e.now.Add(2*time.Hour)) {
		t.Fatalf("stored plan = %+v", p)
	}
	got, err := e.verifier("acme", "a1", e.first.Root).Verify(e.ctx, p.Envelope)
	if err != nil {
		t.Fatalf("the agent refuses the plan: %v", err)
	}
	if got.GetPlanId() != p.ID || got.GetSequence() != 1 || len(got.GetSteps()) != 2 || got.GetSteps()[1].GetDependsOn()[0] != "dir" {
		t.Fatalf("signed plan = %v", got)
	}
	// Another agent of the tenant refuses it.
	if _, err := e.verifier("acme", "a2", e.first.Root).Verify(e.ctx, p.Envelope); !errors.Is(err, planverify.ErrWrongAgent) {
		t.Fatalf("other agent: %v", err)
	}
	if d, err := plans.Decode(p.Envelope); err != nil || d.GetPlanId() != p.ID {
		t.Fatalf("Decode = %v, %v", d, err)
	}

	rec := e.lastAudit()
	var detail map[string]any
	if err := json.Unmarshal(rec.Detail, &detail); err != nil {
		t.Fatal(err)
	}
	if rec.Action != "plan.submit" || rec.Tenant != "acme" || rec.Target != p.ID || rec.Actor != "apitoken:ops/1" || rec.Role != "operator" ||
		rec.RequestID != "req-1" || rec.Source != "127.0.0.1:1" || rec.Outcome != auditlog.OutcomeSuccess ||
		detail["plan_id"] != p.ID || detail["agent"] != "a1" || detail["steps"] != 2.0 || detail["dry_run"] != false || detail["release"] != "app@v2" {
		t.Fatalf("audit = %+v, detail %v", rec, detail)
	}
	if len(e.notified) != 1 || e.notified[0] != (store.AgentKey{Tenant: "acme", ID: "a1"}) {
		t.Fatalf("notified = %v", e.notified)
	}

	// Dry run is carried in the signed plan.
	dry, err := e.svc.Submit(e.ctx, plans.SubmitRequest{Actor: "x", Role: "admin", Tenant: "acme", YAML: []byte(goodYAML), DryRun: true})
	if err != nil || !dry.DryRun {
		t.Fatalf("dry run = %+v, %v", dry, err)
	}
	v := e.verifier("acme", "a1", e.first.Root)
	v.LastSequence = 1
	if got, err := v.Verify(e.ctx, dry.Envelope); err != nil || !got.GetDryRun() || got.GetSequence() != 2 {
		t.Fatalf("dry-run plan: %v, %v", got, err)
	}
}

func TestSequenceIsPerAgent(t *testing.T) {
	e := newEnv(t)
	e.tenant("acme")
	e.tenant("beta")
	e.enroll("acme", "a1")
	e.enroll("acme", "a2")
	e.enroll("beta", "b1")
	for i, c := range []struct {
		tenant, agent string
		want          uint64
	}{{"acme", "a1", 1}, {"acme", "a1", 2}, {"acme", "a2", 1}, {"beta", "", 1}, {"acme", "a1", 3}, {"beta", "b1", 2}} {
		p := e.mustSubmit(c.tenant, c.agent, goodYAML)
		if p.Sequence != c.want {
			t.Fatalf("submit %d (%s/%s): sequence %d, want %d", i, c.tenant, c.agent, p.Sequence, c.want)
		}
	}
}

func TestAgentSelection(t *testing.T) {
	e := newEnv(t)
	e.tenant("acme")
	e.tenant("beta")
	e.tenant("empty")
	e.enroll("acme", "a1")
	e.enroll("acme", "a2")
	e.enroll("beta", "b1")

	for _, c := range []struct {
		name, tenant, agent string
		want                error
		contains            []string
	}{
		{"several agents", "acme", "", plans.ErrAmbiguousAgent, []string{"a1, a2", "--agent"}},
		{"no agent", "empty", "", plans.ErrNoAgent, []string{"tenant empty has none", "attache token create --tenant empty"}},
		{"unknown tenant", "initech", "", store.ErrNotFound, []string{"tenant initech not found"}},
		{"agent of another tenant", "acme", "b1", store.ErrNotFound, []string{"agent acme/b1 not found"}},
		{"unknown agent", "acme", "a9", store.ErrNotFound, []string{"agent acme/a9 not found"}},
		{"bad tenant name", "Acme", "", plans.ErrInvalid, []string{`tenant "Acme"`}},
		{"bad agent id", "acme", "A_1", plans.ErrInvalid, []string{`agent "A_1"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			head := e.auditHead()
			_, err := e.submit(c.tenant, c.agent, goodYAML)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			for _, s := range c.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if e.auditHead() != head {
				t.Error("a refused submission was audited by the service (the API audits failures)")
			}
		})
	}
	if n := len(e.plans("")); n != 0 {
		t.Fatalf("%d plans stored by refused submissions", n)
	}

	if p := e.mustSubmit("acme", "a2", goodYAML); p.AgentID != "a2" {
		t.Fatalf("named agent: %s", p.AgentID)
	}
	// Revoked agents do not count, and are refused by name.
	e.revoke("acme", "a1")
	if p := e.mustSubmit("acme", "", goodYAML); p.AgentID != "a2" || p.Sequence != 2 {
		t.Fatalf("only active agent: %s #%d", p.AgentID, p.Sequence)
	}
	_, err := e.submit("acme", "a1", goodYAML)
	if !errors.Is(err, store.ErrRevoked) || !strings.Contains(err.Error(), "agent acme/a1") {
		t.Fatalf("revoked agent: %v", err)
	}
	e.revoke("beta", "b1")
	if _, err := e.submit("beta", "", goodYAML); !errors.Is(err, plans.ErrNoAgent) || !strings.Contains(err.Error(), "1 revoked") {
		t.Fatalf("only revoked agents: %v", err)
	}
}

func TestInvalidPlanStoresNothing(t *testing.T) {
	e := newEnv(t)
	e.tenant("acme")
	e.enroll("acme", "a1")
	step := "{id: a, provider: local, action: noop, resource: x}"
	for _, c := range []struct {
		name, yaml string
		contains   []string
	}{
		{"empty", "  \n", []string{"empty"}},
		{"not yaml", "version: 1\nsteps: [", []string{"plan YAML"}},
		{"unknown key", "version: 1\nsteps:\n- {id: a, provider: local, action: noop, resource: x, dependson: [b]}\n", []string{`steps[0] "a": unknown key "dependson"`}},
		{"missing fields", "version: 1\nsteps: [{id: a, action: noop}]\n", []string{`steps[0] "a": provider is missing`, "resource is missing"}},
		{"wrong version", "version: 2\nsteps: [" + step + "]\n", []string{"version is 2, want 1"}},
		{"cycle", "version: 1\nsteps:\n- {id: a, provider: p, action: x, resource: r, depends_on: [b]}\n- {id: b, provider: p, action: x, resource: r, depends_on: [a]}\n", []string{"cycle"}},
		{"unknown dependency", "version: 1\nsteps:\n- {id: a, provider: p, action: x, resource: r, depends_on: [nope]}\n", []string{`depends_on[0] names unknown step "nope"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			head := e.auditHead()
			_, err := e.submit("acme", "", c.yaml)
			if !errors.Is(err, plans.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			for _, s := range c.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			if e.auditHead() != head || len(e.plans("acme")) != 0 {
				t.Fatal("an invalid plan left a trace in the store")
			}
		})
	}
	if len(e.notified) != 0 {
		t.Fatalf("notified for invalid plans: %v", e.notified)
	}
	// No sequence number was burnt.
	if p := e.mustSubmit("acme", "", goodYAML); p.Sequence != 1 {
		t.Fatalf("first valid plan has sequence %d", p.Sequence)
	}
}

func TestOversizedPlanRefusedAtSubmit(t *testing.T) {
	e := newEnv(t)
	e.tenant("acme")
	e.enroll("acme", "a1")
	big := fmt.Sprintf("version: 1\nsteps:\n- id: a\n  provider: local\n  action: file.write\n  resource: x\n  params: {content: %q}\n",
		strings.Repeat("x", plan.MaxPlanBytes))
	head := e.auditHead()
	_, err := e.submit("acme", "", big)
	if !errors.Is(err, plan.ErrTooLarge) {
		t.Fatalf("err = %v, want plan.ErrTooLarge", err)
	}
	for _, s := range []string{"limit 1048576 bytes", "split the plan"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
	if e.auditHead() != head || len(e.plans("acme")) != 0 || len(e.notified) != 0 {
		t.Fatal("an oversized plan left a trace")
	}
	if p := e.mustSubmit("acme", "", goodYAML); p.Sequence != 1 {
		t.Fatalf("sequence after refusal = %d, want 1", p.Sequence)
	}

	// YAML beyond plan.MaxYAMLBytes is refused before parsing.
	huge := "version: 1\n#" + strings.Repeat("x", plan.MaxYAMLBytes)
	if _, err := e.submit("acme", "", huge); !errors.Is(err, plan.ErrTooLarge) || !strings.Contains(err.Error(), "limit 4194304") {
		t.Fatalf("huge YAML: %v", err)
	}
}

// rotate rotates the plans key as `attache-controlplane keys rotate` does
// and makes the new material current.
func (e *env) rotate() *keys.Material {
	e.t.Helper()
	cur := e.keys.Load()
	m, err := keys.RotatePlans(e.ctx, e.keysDir, td, e.now)
	if err != nil {
		e.t.Fatalf("RotatePlans: %v", err)
	}
	if m.PlanSigner.KeyID() == cur.PlanSigner.KeyID() || m.Root.Version != cur.Root.Version+1 {
		e.t.Fatalf("rotation kept the plans key or the version: %d -> %d", cur.Root.Version, m.Root.Version)
	}
	if _, err := planverify.FollowRootAt(e.ctx, cur.Root, m.RootEnvelope, e.now); err != nil {
		e.t.Fatalf("the agent would not follow the rotation: %v", err)
	}
	e.keys.Store(m)
	return m
}

func TestEnvelopeResignsAfterPlanKeyRotation(t *testing.T) {
	e := newEnv(t)
	e.tenant("acme")
	e.enroll("acme", "a1")
	p := e.mustSubmit("acme", "", goodYAML)
	acked := e.mustSubmit("acme", "", goodYAML)
	if _, err := e.store.UpdatePlan(e.ctx, acked.Agent(), acked.ID, store.PlanUpdate{State: store.PlanAccepted}, nil); err != nil {
		t.Fatal(err)
	}
	acked, _ = e.store.GetPlan(e.ctx, acked.ID)

	// Before any rotation the stored envelope is returned untouched.
	got, err := e.svc.Envelope(e.ctx, p)
	if err != nil || !bytes.Equal(got, p.Envelope) {
		t.Fatalf("Envelope before rotation changed the envelope (%v)", err)
	}

	m2 := e.rotate()
	head := e.auditHead()
	got, err = e.svc.Envelope(e.ctx, p)
	if err != nil {
		t.Fatalf("Envelope after rotation: %v", err)
	}
	if bytes.Equal(got, p.Envelope) {
		t.Fatal("not re-signed")
	}
	// The agent, once it follows the new root, accepts it; the payload is the
	// same plan.
	pl, err := e.verifier("acme", "a1", m2.Root).Verify(e.ctx, got)
	if err != nil {
		t.Fatalf("agent refuses the re-signed plan: %v", err)
	}
	orig, _ := plans.Decode(p.Envelope)
	ob, _ := plan.Marshal(orig)
	nb, _ := plan.Marshal(pl)
	if !bytes.Equal(ob, nb) {
		t.Fatal("re-signing changed the payload")
	}
	if _, err := e.verifier("acme", "a1", e.first.Root).Verify(e.ctx, got); !errors.Is(err, planverify.ErrSignature) {
		t.Fatalf("old root accepts the new key's signature: %v", err)
	}
	stored, err := e.store.GetPlan(e.ctx, p.ID)
	if err != nil || !bytes.Equal(stored.Envelope, got) {
		t.Fatalf("re-signed envelope not stored (%v)", err)
	}
	rec := e.lastAudit()
	if e.auditHead() != head+1 || rec.Action != "plan.resign" || rec.Target != p.ID || rec.Tenant != "acme" || rec.Outcome != auditlog.OutcomeSuccess {
		t.Fatalf("audit = %+v", rec)
	}
	// Once stored, it verifies and is returned as is.
	again, err := e.svc.Envelope(e.ctx, stored)
	if err != nil || !bytes.Equal(again, got) || e.auditHead() != head+1 {
		t.Fatalf("second Envelope: %v (audit head %d)", err, e.auditHead())
	}
	// A plan the agent already acknowledged is not re-signed.
	if got, err := e.svc.Envelope(e.ctx, acked); err != nil || !bytes.Equal(got, acked.Envelope) {
		t.Fatalf("acknowledged plan: %v", err)
	}
	// New plans are signed with the new key.
	p3 := e.mustSubmit("acme", "", goodYAML)
	v := e.verifier("acme", "a1", m2.Root)
	v.LastSequence = 2
	if _, err := v.Verify(e.ctx, p3.Envelope); err != nil {
		t.Fatalf("new plan after rotation: %v", err)
	}
}

func TestEnvelopeNeverSignsWhatNoRootSigned(t *testing.T) {
	e := newEnv(t)
	e.tenant("acme")
	e.enroll("acme", "a1")
	k := store.AgentKey{Tenant: "acme", ID: "a1"}

	// A row written straight into the store, signed by a key no root lists.
	rogue, err := sign.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	d, err := plan.ParseYAML([]byte(goodYAML))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := e.store.CreatePlan(e.ctx, k, func(seq uint64) (store.Plan, error) {
		p, err := d.Build("acme", e.agentID("acme", "a1"), seq, e.now)
		if err != nil {
			return store.Plan{}, err
		}
		env, err := plan.Sign(e.ctx, p, rogue)
		if err != nil {
			return store.Plan{}, err
		}
		return store.Plan{ID: p.GetPlanId(), Tenant: "acme", AgentID: "a1", Sequence: seq, Envelope: env, CreatedBy: "x",
			CreatedAt: e.now, ExpiresAt: p.GetExpiresAt().AsTime()}, nil
	}, e.entry("plan.submit", "acme"))
	if err != nil {
		t.Fatal(err)
	}
	e.rotate() // the forged envelope verifies under neither root
	head := e.auditHead()
	// Offered unchanged, for the agent to refuse (SIGNATURE): never re-signed.
	if env, err := e.svc.Envelope(e.ctx, forged); err != nil || !bytes.Equal(env, forged.Envelope) {
		t.Fatalf("forged plan: err %v, envelope changed %v", err, !bytes.Equal(env, forged.Envelope))
	}
	if e.auditHead() != head {
		t.Fatal("refused re-signing was recorded")
	}

	// A genuine plan whose row was altered to point at another sequence.
	p := e.mustSubmit("acme", "", goodYAML)
	e.rotate()
	head = e.auditHead()
	moved := p
	moved.Sequence = 9
	if env, err := e.svc.Envelope(e.ctx, moved); err != nil || !bytes.Equal(env, moved.Envelope) {
		t.Fatalf("altered row: err %v, re-signed %v", err, !bytes.Equal(env, moved.Envelope))
	}
	// Material without the root history (hand-made) re-signs nothing.
	cur := e.keys.Load()
	e.keys.Store(&keys.Material{RootSigner: cur.RootSigner, PlanSigner: cur.PlanSigner, ReleaseKey: cur.ReleaseKey, Root: cur.Root, RootEnvelope: cur.RootEnvelope})
	if env, err := e.svc.Envelope(e.ctx, p); err != nil || !bytes.Equal(env, p.Envelope) {
		t.Fatalf("re-signed without knowing earlier roots: err %v", err)
	}
	if e.auditHead() != head {
		t.Fatal("refused re-signing was recorded")
	}
}
