package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"attache.dev/attache/agent/journal"
	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/sign"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

// forgedPlan builds a one-step plan that, if it were ever applied, would
// write forged/<name>.txt below its tenant's directory in the local
// provider's root: tenant and agent are what the plan names, seq its
// sequence, issued its issue time and lifetime how long it is valid from
// then.
func forgedPlan(t *testing.T, name, tenant string, agent spiffeid.ID, seq uint64, issued time.Time, lifetime time.Duration) *planv1.Plan {
	t.Helper()
	d, err := plan.ParseYAML([]byte(planYAML(provisionStep("provision", "forged/"+name+".txt", "forged by "+name+"\n"))))
	if err != nil {
		t.Fatal(err)
	}
	d.ExpiresIn = lifetime
	p, err := d.Build(tenant, agent, seq, issued)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// signPlan signs p with s (plan.Sign, what the control plane does).
func signPlan(t *testing.T, p *planv1.Plan, s *sign.Signer) []byte {
	t.Helper()
	env, err := plan.Sign(context.Background(), p, s)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// tamper rewrites the plan inside a signed envelope with edit, keeping the
// signatures: what someone who can write the store but holds no key can do.
func tamper(t *testing.T, envelope []byte, edit func(*planv1.Plan)) []byte {
	t.Helper()
	var env map[string]any
	if err := json.Unmarshal(envelope, &env); err != nil {
		t.Fatal(err)
	}
	payload, err := base64.StdEncoding.DecodeString(env["payload"].(string))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Unmarshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	edit(p)
	if payload, err = plan.Marshal(p); err != nil {
		t.Fatal(err)
	}
	env["payload"] = base64.StdEncoding.EncodeToString(payload)
	out, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPlanRefusals puts plans into the control plane's store behind its
// back — it offers what its store holds, and passes on an envelope none of
// its keys signed unchanged — and checks that the agent, the verifier of
// record, refuses each with its reason, reported to the control plane and
// audited on both sides, applies none of them, and still applies the next
// genuine plan.
func TestPlanRefusals(t *testing.T) {
	t.Parallel()
	w := newPlanWorld(t)
	// A first plan, applied: the agent's last accepted sequence is now 1.
	first := w.submit(t, planYAML(provisionStep("provision", "config/app.env", "GREETING=hello\n")))
	if first.Sequence != 1 {
		t.Fatalf("first plan has sequence %d, want 1", first.Sequence)
	}
	w.agent.Stop(t)

	self := w.agent.Identity(t).ID
	td := self.TrustDomain()
	key := w.cp.PlansSigner(t) // the control plane's genuine plans key
	stranger, err := sign.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	otherTenant, err := identity.AgentID(td, "globex", w.agentID) // same agent ID, other tenant
	if err != nil {
		t.Fatal(err)
	}
	sibling, err := identity.AgentID(td, "acme", "sibling")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	seq := w.cp.PlanSequence(t, "acme", w.agentID)

	type forged struct {
		name, reason string
		// envelope builds the signed plan offered with sequence rowSeq.
		envelope func(name string, rowSeq uint64) (id string, env []byte)
	}
	genuine := func(tenant string, agent spiffeid.ID, planSeq func(rowSeq uint64) uint64, issued time.Time, lifetime time.Duration) func(string, uint64) (string, []byte) {
		return func(name string, rowSeq uint64) (string, []byte) {
			p := forgedPlan(t, name, tenant, agent, planSeq(rowSeq), issued, lifetime)
			return p.GetPlanId(), signPlan(t, p, key)
		}
	}
	same := func(rowSeq uint64) uint64 { return rowSeq }
	cases := []forged{
		{"tampered", "SIGNATURE", func(name string, rowSeq uint64) (string, []byte) {
			p := forgedPlan(t, name, "acme", self, rowSeq, now, time.Hour)
			env := tamper(t, signPlan(t, p, key), func(p *planv1.Plan) {
				file := p.Steps[0].GetParams().GetFields()["files"].GetListValue().GetValues()[0].GetStructValue()
				file.Fields["content"] = structpb.NewStringValue("tampered\n")
			})
			return p.GetPlanId(), env
		}},
		{"unknown-key", "SIGNATURE", func(name string, rowSeq uint64) (string, []byte) {
			p := forgedPlan(t, name, "acme", self, rowSeq, now, time.Hour)
			return p.GetPlanId(), signPlan(t, p, stranger)
		}},
		{"other-tenant", "WRONG_TENANT", genuine("globex", otherTenant, same, now, time.Hour)},
		{"other-agent", "WRONG_AGENT", genuine("acme", sibling, same, now, time.Hour)},
		// Signed for sequence 1, which the agent has already accepted
		// (another plan, so it is not mistaken for a re-offer).
		{"replay", "REPLAY", genuine("acme", self, func(uint64) uint64 { return first.Sequence }, now, time.Hour)},
		// Issued two hours ago for one hour; the row says it is still
		// valid, so the control plane offers it.
		{"expired", "EXPIRED", genuine("acme", self, same, now.Add(-2*time.Hour), time.Hour)},
	}
	ids := map[string]string{} // case → plan id
	for i, c := range cases {
		rowSeq := seq + uint64(i) + 1
		id, env := c.envelope(c.name, rowSeq)
		ids[c.name] = id
		w.cp.InsertPlan(t, harness.PlanRow{ID: id, Tenant: "acme", AgentID: w.agentID, Sequence: rowSeq, Envelope: env})
	}

	w.startAgent(t)
	for _, c := range cases {
		p := w.cp.AwaitPlan(t, ids[c.name], harness.PlanRefused, 30*time.Second)
		t.Logf("%s: refused: %s", c.name, p.Message)
		if !strings.HasPrefix(p.Message, c.reason+": ") {
			t.Errorf("%s: control plane message %q does not start with %q", c.name, p.Message, c.reason+": ")
		}
		if p.AckedAt == nil {
			t.Errorf("%s: refused plan not acknowledged", c.name)
		}
	}

	// A refusal blocks nothing: the next genuine plan is applied.
	next := w.submit(t, planYAML(provisionStep("provision", "config/next.env", "NEXT=1\n")))
	if want := seq + uint64(len(cases)) + 1; next.Sequence != want {
		t.Errorf("next plan has sequence %d, want %d", next.Sequence, want)
	}

	// Nothing forged ran.
	log := w.applyLog(t)
	for _, c := range cases {
		if n := len(applies(log, ids[c.name], "provision")); n != 0 {
			t.Errorf("%s: the provider applied the refused plan %d times", c.name, n)
		}
	}
	for _, tenant := range []string{"acme", "globex"} {
		if _, err := os.Stat(filepath.Join(w.root, "tenants", tenant, "forged")); !os.IsNotExist(err) {
			t.Errorf("tenants/%s/forged exists (%v): a refused plan was applied", tenant, err)
		}
	}
	if len(applies(log, first.ID, "provision")) != 1 || len(applies(log, next.ID, "provision")) != 1 {
		t.Errorf("genuine plans not applied once each: %+v", log)
	}

	// Audited by the control plane, as reported by the agent…
	recs := w.cp.Audit(t)
	for _, c := range cases {
		r, ok := findAudit(recs, func(r auditlog.Record) bool { return r.Action == "plan.refused" && r.Target == ids[c.name] })
		if !ok {
			t.Errorf("%s: control plane audit log has no plan.refused record for %s", c.name, ids[c.name])
			continue
		}
		d := auditDetail(r)
		if r.Outcome != auditlog.OutcomeDenied || d["reason"] != c.reason || r.Actor != self.String() || r.Tenant != "acme" {
			t.Errorf("%s: plan.refused record: outcome %s, reason %q, actor %s, tenant %s; want denied, %s, by %s of acme",
				c.name, r.Outcome, d["reason"], r.Actor, r.Tenant, c.reason, self)
		}
	}
	if out := w.cp.CLI(t, "audit", "verify"); !strings.Contains(out, "audit log verified") {
		t.Errorf("audit verify: %s", out)
	}

	// … and by the agent in its own journal.
	w.agent.Stop(t)
	j := w.agent.Journal(t)
	if err := j.VerifyAudit(); err != nil {
		t.Errorf("agent audit log does not verify: %v", err)
	}
	agentRecs, err := j.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		r, ok := findAudit(agentRecs, func(r auditlog.Record) bool { return r.Action == "plan.refuse" && r.Target == ids[c.name] })
		if !ok || auditDetail(r)["reason"] != c.reason || r.Outcome != auditlog.OutcomeDenied {
			t.Errorf("%s: agent audit log: %+v (found %v); want a denied plan.refuse with reason %s", c.name, r, ok, c.reason)
		}
		rec, err := j.Get(ids[c.name])
		if err != nil || rec.State != journal.PlanRefused || rec.Reason != c.reason {
			t.Errorf("%s: agent journal: %s/%s, %v; want refused with %s", c.name, rec.State, rec.Reason, err, c.reason)
		}
	}
	if last, err := j.LastSequence(); err != nil || last != next.Sequence {
		t.Errorf("agent's last accepted sequence: %d, %v; want %d (refusals do not advance it)", last, err, next.Sequence)
	}
	if !slices.ContainsFunc(agentRecs, func(r auditlog.Record) bool { return r.Action == "plan.accept" && r.Target == next.ID }) {
		t.Errorf("agent audit log has no plan.accept for %s", next.ID)
	}
}
