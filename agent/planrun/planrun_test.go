package planrun

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/agent/journal"
	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/planverify"
	"attache.dev/attache/internal/sign"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

var (
	testNow = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	selfID  = spiffeid.RequireFromString("spiffe://example.org/tenant/acme/agent/a1")
	seeds   = map[string]byte{"root1": 1, "root2": 2, "plans1": 3, "plans2": 4, "releases": 5, "stranger": 6, "root3": 7, "plans3": 8}
)

// key derives a signer from a fixed seed.
func key(name string) *sign.Signer {
	seed, ok := seeds[name]
	if !ok {
		panic("no seed for " + name)
	}
	return sign.NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
}

// makeRoot builds a root: root role rootKey (threshold 1), plans role
// plansKey, expiring at expires.
func makeRoot(version int, rootKey, plansKey string, expires time.Time) *sign.Root {
	r := &sign.Root{
		Type: sign.RootType, Version: version, TrustDomain: "example.org", Expires: expires,
		Keys: map[string]sign.Key{}, Roles: map[string]sign.RoleKeys{},
	}
	for role, k := range map[string]string{sign.RoleRoot: rootKey, sign.RolePlans: plansKey, sign.RoleReleases: "releases"} {
		s := key(k)
		r.Keys[s.KeyID()] = s.PublicKey()
		r.Roles[role] = sign.RoleKeys{KeyIDs: []string{s.KeyID()}, Threshold: 1}
	}
	return r
}

func signRoot(t testing.TB, r *sign.Root, signers ...string) []byte {
	t.Helper()
	var ss []*sign.Signer
	for _, n := range signers {
		ss = append(ss, key(n))
	}
	env, err := sign.SignRoot(context.Background(), r, ss...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

var (
	yearFromNow = testNow.Add(365 * 24 * time.Hour)
	// rootV2 rotates root1 → root2 and plans1 → plans2.
	rootV2 = makeRoot(2, "root2", "plans2", yearFromNow)
)

func testPlan(id string, seq uint64) *planv1.Plan {
	params, _ := structpb.NewStruct(map[string]any{"to": 3})
	return &planv1.Plan{
		PlanId:        id,
		Tenant:        "acme",
		AgentSpiffeId: selfID.String(),
		Sequence:      seq,
		IssuedAt:      timestamppb.New(testNow.Add(-time.Minute)),
		ExpiresAt:     timestamppb.New(testNow.Add(time.Hour)),
		ReleaseRef:    "app@v2.0.0",
		Steps: []*planv1.Step{
			// Declared out of order: migrate depends on db.
			{Id: "migrate", Provider: "local", Action: "sqlite.migrate", Resource: "tenants/acme/db", Params: params, DependsOn: []string{"db"},
				Compensation: &planv1.Compensation{Action: "sqlite.migrate"}},
			{Id: "db", Provider: "local", Action: "sqlite.ensure", Resource: "tenants/acme/db"},
		},
	}
}

func planID(n int) string { return fmt.Sprintf("0193a0c0-0000-7000-8000-%012d", n) }

func signPlan(t testing.TB, p *planv1.Plan, signers ...string) []byte {
	t.Helper()
	var ss []*sign.Signer
	for _, n := range signers {
		ss = append(ss, key(n))
	}
	env, err := plan.Sign(context.Background(), p, ss...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func signRaw(t testing.TB, payloadType string, payload []byte, signer string) []byte {
	t.Helper()
	env, err := sign.SignPayload(context.Background(), payloadType, payload, key(signer))
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func offer(t testing.TB, p *planv1.Plan, signers ...string) *agentv1.PlanOffer {
	return &agentv1.PlanOffer{PlanId: p.GetPlanId(), Sequence: p.GetSequence(), Envelope: signPlan(t, p, signers...)}
}

// fakeExecutor records the plans it is asked to execute and marks them
// succeeded in the journal, failing the first failures[id] calls for a plan.
type fakeExecutor struct {
	j *journal.Journal

	mu       sync.Mutex
	calls    []string
	failures map[string]int
	called   chan string
}

func (f *fakeExecutor) Execute(ctx context.Context, p *planv1.Plan) error {
	f.mu.Lock()
	f.calls = append(f.calls, p.GetPlanId())
	fail := f.failures[p.GetPlanId()] > 0
	if fail {
		f.failures[p.GetPlanId()]--
	}
	f.mu.Unlock()
	defer func() {
		select {
		case f.called <- p.GetPlanId():
		default:
		}
	}()
	if fail {
		return errors.New("provider crashed")
	}
	_, err := f.j.Update(p.GetPlanId(), func(r *journal.PlanRecord) error {
		r.State = journal.PlanSucceeded
		for i := range r.Steps {
			r.Steps[i].State = journal.StepSucceeded
		}
		return nil
	})
	return err
}

func (f *fakeExecutor) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

type fixture struct {
	r     *Runner
	j     *journal.Journal
	exec  *fakeExecutor
	state *svid.State
	now   time.Time
	mu    sync.Mutex
}

func (fx *fixture) clock() time.Time {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	return fx.now
}

func (fx *fixture) setNow(t time.Time) {
	fx.mu.Lock()
	fx.now = t
	fx.mu.Unlock()
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newFixture builds a runner over a fresh journal and a state directory
// pinning rootEnv (version 1 signed by root1 when nil).
func newFixture(t *testing.T, rootEnv []byte) *fixture {
	t.Helper()
	if rootEnv == nil {
		rootEnv = signRoot(t, makeRoot(1, "root1", "plans1", yearFromNow), "root1")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, svid.TrustRootFile), rootEnv, 0o600); err != nil {
		t.Fatal(err)
	}
	fx := &fixture{now: testNow}
	j, err := journal.Open(filepath.Join(dir, "journal.db"), journal.Options{Now: fx.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	fx.j = j
	fx.exec = &fakeExecutor{j: j, failures: map[string]int{}, called: make(chan string, 16)}
	fx.state = &svid.State{Dir: dir, ID: selfID, TrustRoot: rootEnv}
	r, err := New(Config{Journal: j, Executor: fx.exec, State: fx.state, Logger: testLogger(t), Now: fx.clock, AllowUnreleased: true})
	if err != nil {
		t.Fatal(err)
	}
	r.retryBase, r.retryMax = 10*time.Millisecond, 40*time.Millisecond
	fx.r = r
	return fx
}

// accept offers p signed by plans1 and requires it accepted.
func (fx *fixture) accept(t *testing.T, p *planv1.Plan) {
	t.Helper()
	fx.r.Offer(context.Background(), offer(t, p, "plans1"))
	rec, err := fx.j.Get(p.GetPlanId())
	if err != nil || rec.State != journal.PlanAccepted {
		t.Fatalf("plan %s not accepted: %+v, %v", p.GetPlanId(), rec, err)
	}
}

func (fx *fixture) auditActions(t *testing.T) []auditlog.Record {
	t.Helper()
	log, err := fx.j.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.j.VerifyAudit(); err != nil {
		t.Fatal(err)
	}
	return log
}

func TestOfferRefusals(t *testing.T) {
	marshal := func(p *planv1.Plan) []byte {
		b, err := plan.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	mutate := func(id string, seq uint64, f func(p *planv1.Plan)) *planv1.Plan {
		p := testPlan(id, seq)
		f(p)
		return p
	}
	id := planID(100)
	good := testPlan(id, 10)
	rotationByNewKeyOnly := signRoot(t, rootV2, "root2")

	cases := []struct {
		name   string
		offer  *agentv1.PlanOffer
		setup  func(fx *fixture)
		reason string
		detail string
	}{
		{name: "too large", reason: "TOO_LARGE", detail: "limit 1048576",
			offer: &agentv1.PlanOffer{PlanId: id, Sequence: 10, Envelope: bytes.Repeat([]byte(" "), plan.MaxPlanBytes+1)}},
		{name: "root expired", reason: "ROOT_EXPIRED", offer: offer(t, good, "plans1"),
			setup: func(fx *fixture) { fx.setNow(yearFromNow.Add(time.Hour)) }},
		{name: "signature by a stranger", reason: "SIGNATURE", offer: offer(t, good, "stranger")},
		{name: "signature by the root key", reason: "SIGNATURE", offer: offer(t, good, "root1")},
		{name: "payload type", reason: "PAYLOAD_TYPE",
			offer: &agentv1.PlanOffer{PlanId: id, Sequence: 10, Envelope: signRaw(t, "text/plain", marshal(good), "plans1")}},
		{name: "malformed", reason: "MALFORMED",
			offer: &agentv1.PlanOffer{PlanId: id, Sequence: 10, Envelope: signRaw(t, plan.PayloadType, []byte("\xff\xff\xff"), "plans1")}},
		{name: "invalid", reason: "INVALID", detail: "cycle",
			offer: &agentv1.PlanOffer{PlanId: id, Sequence: 10, Envelope: signRaw(t, plan.PayloadType, marshal(mutate(id, 10, func(p *planv1.Plan) {
				p.Steps[1].DependsOn = []string{"migrate"}
			})), "plans1")}},
		{name: "wrong tenant", reason: "WRONG_TENANT", offer: offer(t, mutate(id, 10, func(p *planv1.Plan) {
			p.Tenant = "beta"
			p.AgentSpiffeId = "spiffe://example.org/tenant/beta/agent/a1"
		}), "plans1")},
		{name: "wrong agent", reason: "WRONG_AGENT", offer: offer(t, mutate(id, 10, func(p *planv1.Plan) {
			p.AgentSpiffeId = "spiffe://example.org/tenant/acme/agent/a2"
		}), "plans1")},
		{name: "replay", reason: "REPLAY", detail: "rolled back", offer: offer(t, testPlan(id, 4), "plans1"),
			setup: func(fx *fixture) { fx.accept(t, testPlan(planID(1), 5)) }},
		{name: "replay of the same sequence", reason: "REPLAY", detail: "replayed", offer: offer(t, testPlan(id, 5), "plans1"),
			setup: func(fx *fixture) { fx.accept(t, testPlan(planID(1), 5)) }},
		{name: "expired", reason: "EXPIRED", offer: offer(t, good, "plans1"),
			setup: func(fx *fixture) { fx.setNow(testNow.Add(2 * time.Hour)) }},
		{name: "from the future", reason: "FROM_FUTURE", offer: offer(t, mutate(id, 10, func(p *planv1.Plan) {
			p.IssuedAt = timestamppb.New(testNow.Add(time.Hour))
			p.ExpiresAt = timestamppb.New(testNow.Add(2 * time.Hour))
		}), "plans1")},
		{name: "root rotation signed only by the new key", reason: "ROOT_ROTATION", detail: "previous root role",
			offer: func() *agentv1.PlanOffer {
				o := offer(t, good, "plans2")
				o.TrustRoots = [][]byte{rotationByNewKeyOnly}
				return o
			}()},
		{name: "unreleased plan refused by default", reason: "UNRELEASED", detail: "--allow-unreleased-plans", offer: offer(t, good, "plans1"),
			setup: func(fx *fixture) { fx.r.v.AllowUnreleased = false }},
		{name: "release that does not verify", reason: "RELEASE", detail: "the release it carries is refused", offer: offer(t, mutate(id, 10, func(p *planv1.Plan) {
			p.ReleaseEnvelope = []byte(`{"payloadType":"application/vnd.attache.release.v1+json","payload":"e30=","signatures":[]}`)
			p.ReleaseContext = &planv1.ReleaseContext{Tenant: "acme", Tier: "pool"}
		}), "plans1")},
		{name: "offer names another plan", reason: "INVALID", detail: "the offer names plan",
			offer: func() *agentv1.PlanOffer { o := offer(t, good, "plans1"); o.PlanId = planID(101); return o }()},
		{name: "offer names another sequence", reason: "INVALID", detail: "sequence 11",
			offer: func() *agentv1.PlanOffer { o := offer(t, good, "plans1"); o.Sequence = 11; return o }()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t, nil)
			if tc.setup != nil {
				tc.setup(fx)
			}
			lastBefore, rootBefore := fx.r.HelloState()
			auditBefore := len(fx.auditActions(t))
			<-drained(fx.r.Changed())

			fx.r.Offer(context.Background(), tc.offer)

			rec, err := fx.j.Get(tc.offer.GetPlanId())
			if err != nil {
				t.Fatal(err)
			}
			if rec.State != journal.PlanRefused || rec.Reason != tc.reason || rec.Version != 1 || rec.Sequence != tc.offer.GetSequence() {
				t.Fatalf("journaled %+v, want refused %s", rec, tc.reason)
			}
			if !strings.Contains(rec.Message, tc.detail) {
				t.Errorf("message %q does not contain %q", rec.Message, tc.detail)
			}
			if len(rec.Envelope) != 0 || len(rec.Steps) != 0 {
				t.Errorf("refused record keeps envelope or steps: %+v", rec)
			}
			if last, root := fx.r.HelloState(); last != lastBefore || root != rootBefore {
				t.Errorf("HelloState changed from (%d, %d) to (%d, %d)", lastBefore, rootBefore, last, root)
			}
			if seq, _ := fx.j.LastSequence(); seq != lastBefore {
				t.Errorf("journal LastSequence %d, want %d", seq, lastBefore)
			}
			select {
			case <-fx.r.Changed():
			default:
				t.Error("refusal did not signal Changed")
			}

			log := fx.auditActions(t)[auditBefore:]
			var refusal *auditlog.Record
			for i := range log {
				if log[i].Action == ActionRefuse {
					refusal = &log[i]
				}
			}
			if refusal == nil {
				t.Fatalf("no %s audit record in %+v", ActionRefuse, log)
			}
			var detail struct {
				Reason   string `json:"reason"`
				Sequence uint64 `json:"sequence"`
			}
			if err := json.Unmarshal(refusal.Detail, &detail); err != nil {
				t.Fatal(err)
			}
			if refusal.Target != tc.offer.GetPlanId() || refusal.Outcome != auditlog.OutcomeDenied || detail.Reason != tc.reason ||
				refusal.Actor != selfID.String() || refusal.Tenant != "acme" || detail.Sequence != tc.offer.GetSequence() {
				t.Errorf("audit record %+v (detail %s)", refusal, refusal.Detail)
			}

			// The report names the agent's own tenant and the reason.
			reports := fx.r.Unreported()
			st := reports[len(reports)-1].Status
			if st.GetPlanId() != tc.offer.GetPlanId() || st.GetState() != "refused" || st.GetReason() != tc.reason || st.GetTenant() != "acme" {
				t.Errorf("reported %v", st)
			}
			if _, err := proto.Marshal(st); err != nil {
				t.Errorf("status does not marshal: %v", err)
			}
		})
	}
}

// drained empties a signal channel and returns a closed one.
func drained(ch <-chan struct{}) <-chan struct{} {
	select {
	case <-ch:
	default:
	}
	c := make(chan struct{})
	close(c)
	return c
}

func TestOfferAccept(t *testing.T) {
	fx := newFixture(t, nil)
	p := testPlan(planID(1), 10)
	p.DryRun = true
	<-drained(fx.r.Changed())
	fx.r.Offer(context.Background(), offer(t, p, "plans1"))

	rec, err := fx.j.Get(p.PlanId)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != journal.PlanAccepted || rec.Version != 1 || rec.Sequence != 10 || rec.Tenant != "acme" || !rec.DryRun || len(rec.Envelope) == 0 {
		t.Fatalf("journaled %+v", rec)
	}
	// Steps in execution order, with their compensation flag.
	if len(rec.Steps) != 2 || rec.Steps[0].ID != "db" || rec.Steps[1].ID != "migrate" ||
		rec.Steps[0].HasCompensation || !rec.Steps[1].HasCompensation || rec.Steps[1].State != journal.StepPending ||
		rec.Steps[1].Provider != "local" || rec.Steps[1].Action != "sqlite.migrate" {
		t.Fatalf("steps %+v", rec.Steps)
	}
	decoded, err := rec.Plan()
	if err != nil || !proto.Equal(decoded, p) {
		t.Fatalf("journaled envelope decodes to %v, %v", decoded, err)
	}
	if last, root := fx.r.HelloState(); last != 10 || root != 1 {
		t.Fatalf("HelloState = %d, %d; want 10, 1", last, root)
	}
	if seq, _ := fx.j.LastSequence(); seq != 10 {
		t.Fatalf("journal LastSequence %d", seq)
	}
	select {
	case <-fx.r.Changed():
	default:
		t.Fatal("accept did not signal Changed")
	}
	log := fx.auditActions(t)
	if len(log) != 1 || log[0].Action != ActionAccept || log[0].Target != p.PlanId || log[0].Outcome != auditlog.OutcomeSuccess {
		t.Fatalf("audit log %+v", log)
	}
	reports := fx.r.Unreported()
	if len(reports) != 1 || reports[0].Version != 1 || reports[0].Status.GetState() != "accepted" || !reports[0].Status.GetDryRun() ||
		reports[0].Status.GetReason() != "" || len(reports[0].Status.GetSteps()) != 2 {
		t.Fatalf("reports %+v", reports)
	}

	// The next plan must have a higher sequence; a new runner over the same
	// journal starts from it.
	fx.r.Offer(context.Background(), offer(t, testPlan(planID(2), 10), "plans1"))
	if rec, _ := fx.j.Get(planID(2)); rec.Reason != "REPLAY" {
		t.Fatalf("second plan with sequence 10: %+v", rec)
	}
	fx.accept(t, testPlan(planID(3), 11))
	r2, err := New(Config{Journal: fx.j, Executor: fx.exec, State: fx.state, Now: fx.clock, AllowUnreleased: true})
	if err != nil {
		t.Fatal(err)
	}
	if last, _ := r2.HelloState(); last != 11 {
		t.Fatalf("new runner's last sequence %d, want 11", last)
	}
}

func TestReofferBumpsVersion(t *testing.T) {
	fx := newFixture(t, nil)
	p := testPlan(planID(1), 10)
	fx.accept(t, p)
	refused := &agentv1.PlanOffer{PlanId: planID(2), Sequence: 11, Envelope: []byte("junk")}
	fx.r.Offer(context.Background(), refused)
	auditBefore := len(fx.auditActions(t))

	// Offered again, even with an envelope that would not verify any more
	// (the sequence is no longer new): reported again, not re-verified.
	for i, o := range []*agentv1.PlanOffer{
		offer(t, p, "plans1"),
		{PlanId: p.PlanId, Sequence: 10, Envelope: []byte("junk")},
	} {
		<-drained(fx.r.Changed())
		fx.r.Offer(context.Background(), o)
		rec, err := fx.j.Get(p.PlanId)
		if err != nil {
			t.Fatal(err)
		}
		if rec.State != journal.PlanAccepted || rec.Version != uint64(2+i) {
			t.Fatalf("after re-offer %d: %+v", i, rec)
		}
		select {
		case <-fx.r.Changed():
		default:
			t.Fatal("re-offer did not signal Changed")
		}
	}
	fx.r.Offer(context.Background(), refused)
	if rec, _ := fx.j.Get(planID(2)); rec.State != journal.PlanRefused || rec.Version != 2 || rec.Reason != "SIGNATURE" {
		t.Fatalf("re-offered refusal: %+v", rec)
	}
	if n := len(fx.auditActions(t)); n != auditBefore {
		t.Fatalf("re-offers wrote %d audit records", n-auditBefore)
	}
}

func TestFollowRoots(t *testing.T) {
	rootV1 := makeRoot(1, "root1", "plans1", yearFromNow)
	envV1 := signRoot(t, rootV1, "root1")
	proper := signRoot(t, rootV2, "root1", "root2")
	p := testPlan(planID(1), 10)

	t.Run("proper rotation", func(t *testing.T) {
		fx := newFixture(t, envV1)
		// Not yet rotated: a plan signed by the new plans key is refused.
		if err := fx.r.FollowRoots(context.Background(), [][]byte{envV1}); err != nil {
			t.Fatalf("following the pinned root again: %v", err)
		}
		if _, v := fx.r.HelloState(); v != 1 {
			t.Fatalf("root version %d", v)
		}
		if err := fx.r.FollowRoots(context.Background(), [][]byte{envV1, proper}); err != nil {
			t.Fatal(err)
		}
		if _, v := fx.r.HelloState(); v != 2 {
			t.Fatalf("root version %d after rotation, want 2", v)
		}
		onDisk, err := os.ReadFile(filepath.Join(fx.state.Dir, svid.TrustRootFile))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(onDisk, proper) || !bytes.Equal(fx.state.TrustRoot, proper) {
			t.Fatal("rotated root not persisted to trust-root.json and State")
		}
		if fi, _ := os.Stat(filepath.Join(fx.state.Dir, svid.TrustRootFile)); fi.Mode().Perm() != 0o600 {
			t.Fatalf("trust-root.json mode %04o", fi.Mode().Perm())
		}
		log := fx.auditActions(t)
		if len(log) != 1 || log[0].Action != ActionRootFollow || log[0].Outcome != auditlog.OutcomeSuccess || log[0].Target != "version 2" {
			t.Fatalf("audit %+v", log)
		}
		// Plans signed by the new plans key verify; the old key's do not.
		fx.r.Offer(context.Background(), offer(t, testPlan(planID(2), 11), "plans1"))
		if rec, _ := fx.j.Get(planID(2)); rec.Reason != "SIGNATURE" {
			t.Fatalf("plan signed by the rotated-away key: %+v", rec)
		}
		fx.r.Offer(context.Background(), offer(t, p, "plans2"))
		if rec, _ := fx.j.Get(p.PlanId); rec.State != journal.PlanAccepted {
			t.Fatalf("plan signed by the new key: %+v", rec)
		}
		// A runner built from the persisted state starts at version 2.
		r2, err := New(Config{Journal: fx.j, Executor: fx.exec, State: &svid.State{Dir: fx.state.Dir, ID: selfID, TrustRoot: onDisk}, AllowUnreleased: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, v := r2.HelloState(); v != 2 {
			t.Fatalf("reloaded root version %d", v)
		}
	})

	t.Run("rotation delivered with the offer, from an expired root", func(t *testing.T) {
		expiredV1 := makeRoot(1, "root1", "plans1", testNow.Add(-time.Hour))
		fx := newFixture(t, signRoot(t, expiredV1, "root1"))
		// Under the expired root nothing verifies.
		fx.r.Offer(context.Background(), offer(t, testPlan(planID(2), 9), "plans1"))
		if rec, _ := fx.j.Get(planID(2)); rec.Reason != "ROOT_EXPIRED" {
			t.Fatalf("plan under an expired root: %+v", rec)
		}
		o := offer(t, p, "plans2")
		o.TrustRoots = [][]byte{proper}
		fx.r.Offer(context.Background(), o)
		if rec, _ := fx.j.Get(p.PlanId); rec.State != journal.PlanAccepted {
			t.Fatalf("plan after rotation: %+v", rec)
		}
		if last, v := fx.r.HelloState(); v != 2 || last != 10 {
			t.Fatalf("HelloState %d, %d", last, v)
		}
	})

	for _, tc := range []struct {
		name   string
		env    []byte
		detail string
	}{
		{"signed only by the new key", signRoot(t, rootV2, "root2"), "previous root role"},
		{"signed only by the old key", signRoot(t, rootV2, "root1"), "new root role"},
		{"skips a version", signRoot(t, makeRoot(3, "root2", "plans2", yearFromNow), "root1", "root2"), "version 3 does not follow version 1"},
		{"expired", signRoot(t, makeRoot(2, "root2", "plans2", testNow.Add(-time.Minute)), "root1", "root2"), "expired"},
		{"garbage", []byte("{"), "decode envelope"},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			fx := newFixture(t, envV1)
			err := fx.r.FollowRoots(context.Background(), [][]byte{tc.env, proper})
			if !errors.Is(err, planverify.ErrRootRotation) || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("FollowRoots = %v, want ErrRootRotation …%s…", err, tc.detail)
			}
			if Reason(err) != "ROOT_ROTATION" {
				t.Fatalf("Reason = %s", Reason(err))
			}
			if _, v := fx.r.HelloState(); v != 1 {
				t.Fatalf("pinned root version %d after a refused rotation", v)
			}
			onDisk, _ := os.ReadFile(filepath.Join(fx.state.Dir, svid.TrustRootFile))
			if !bytes.Equal(onDisk, envV1) || !bytes.Equal(fx.state.TrustRoot, envV1) {
				t.Fatal("pinned root changed after a refused rotation")
			}
			log := fx.auditActions(t)
			if len(log) != 1 || log[0].Action != ActionRootFollow || log[0].Outcome != auditlog.OutcomeDenied {
				t.Fatalf("audit %+v", log)
			}
			// Plans under the pinned root still verify.
			fx.accept(t, p)
		})
	}
}

// TestFollowRootChain: an agent offline across several rotations follows
// the whole chain, TUF-style: only the final root's expiry counts, and the
// pinned root changes all at once (to the final root) or not at all.
func TestFollowRootChain(t *testing.T) {
	longAgo := testNow.Add(-400 * 24 * time.Hour)
	// The agent enrolled under v1, which expired while it was offline.
	envV1 := signRoot(t, makeRoot(1, "root1", "plans1", longAgo), "root1")
	// v2 rotated root1 → root2 and has expired too; v3 rotated root2 →
	// root3 and plans2 → plans3, and is in force.
	envV2 := signRoot(t, makeRoot(2, "root2", "plans2", testNow.Add(-24*time.Hour)), "root1", "root2")
	envV3 := signRoot(t, makeRoot(3, "root3", "plans3", yearFromNow), "root2", "root3")
	expiredV3 := signRoot(t, makeRoot(3, "root3", "plans3", testNow.Add(-time.Minute)), "root2", "root3")
	v3OldKeyOnly := signRoot(t, makeRoot(3, "root3", "plans3", yearFromNow), "root2")

	// unchanged checks that the refused chain left version 1 pinned, in
	// memory and on disk, and that plans under it are still judged by it.
	unchanged := func(t *testing.T, fx *fixture) {
		t.Helper()
		if _, v := fx.r.HelloState(); v != 1 {
			t.Fatalf("pinned root version %d after a refused chain", v)
		}
		onDisk, _ := os.ReadFile(filepath.Join(fx.state.Dir, svid.TrustRootFile))
		if !bytes.Equal(onDisk, envV1) || !bytes.Equal(fx.state.TrustRoot, envV1) {
			t.Fatal("pinned root changed after a refused chain")
		}
	}

	t.Run("followed across an expired intermediate", func(t *testing.T) {
		fx := newFixture(t, envV1)
		p := testPlan(planID(1), 1)
		o := offer(t, p, "plans3")
		// The control plane sends the chain after the version the agent
		// reported; a stale copy of the pinned root is skipped.
		o.TrustRoots = [][]byte{envV1, envV2, envV3}
		fx.r.Offer(context.Background(), o)
		if rec, _ := fx.j.Get(p.PlanId); rec.State != journal.PlanAccepted {
			t.Fatalf("plan after following the chain: %+v", rec)
		}
		if _, v := fx.r.HelloState(); v != 3 {
			t.Fatalf("pinned root version %d, want 3", v)
		}
		onDisk, err := os.ReadFile(filepath.Join(fx.state.Dir, svid.TrustRootFile))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(onDisk, envV3) || !bytes.Equal(fx.state.TrustRoot, envV3) {
			t.Fatal("final root not persisted to trust-root.json and State")
		}
		log := fx.auditActions(t)
		if len(log) != 3 {
			t.Fatalf("audit %+v", log)
		}
		for i, want := range []string{"version 2", "version 3"} {
			if log[i].Action != ActionRootFollow || log[i].Outcome != auditlog.OutcomeSuccess || log[i].Target != want {
				t.Fatalf("audit record %d: %+v", i, log[i])
			}
		}
		var d2, d3 map[string]any
		if json.Unmarshal(log[0].Detail, &d2) != nil || json.Unmarshal(log[1].Detail, &d3) != nil {
			t.Fatal("audit detail does not decode")
		}
		if d2["from_version"] != float64(1) || d2["expired_intermediate"] != true || d3["from_version"] != float64(2) || d3["expired_intermediate"] != nil {
			t.Fatalf("audit details %v, %v", d2, d3)
		}
		if log[2].Action != ActionAccept {
			t.Fatalf("audit record 2: %+v", log[2])
		}
		// The chain, delivered again, is all skipped.
		if err := fx.r.FollowRoots(context.Background(), [][]byte{envV2, envV3}); err != nil {
			t.Fatal(err)
		}
		if n := len(fx.auditActions(t)); n != 3 {
			t.Fatalf("following known roots wrote %d audit records", n-3)
		}
	})

	for _, tc := range []struct {
		name    string
		chain   [][]byte
		detail  string
		expired bool
	}{
		{"final root expired", [][]byte{envV2, expiredV3}, "final root version 3: trust root expired", true},
		{"only root expired", [][]byte{envV2}, "trust root expired", true},
		{"refused link after a good one", [][]byte{envV2, v3OldKeyOnly}, "root 2 of 2, after version 2: root update: new root role", false},
		{"gap", [][]byte{envV3}, "version 3 does not follow version 1", false},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			fx := newFixture(t, envV1)
			err := fx.r.FollowRoots(context.Background(), tc.chain)
			if !errors.Is(err, planverify.ErrRootRotation) || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("FollowRoots = %v, want ErrRootRotation …%s…", err, tc.detail)
			}
			if errors.Is(err, sign.ErrRootExpired) != tc.expired {
				t.Fatalf("FollowRoots = %v; matches ErrRootExpired: %v, want %v", err, !tc.expired, tc.expired)
			}
			if Reason(err) != ReasonRootRotation {
				t.Fatalf("Reason = %s", Reason(err))
			}
			unchanged(t, fx)
			log := fx.auditActions(t)
			if len(log) != 1 || log[0].Action != ActionRootFollow || log[0].Outcome != auditlog.OutcomeDenied {
				t.Fatalf("audit %+v", log)
			}
			// A plan offered with the chain is refused for it.
			p := testPlan(planID(1), 1)
			o := offer(t, p, "plans3")
			o.TrustRoots = tc.chain
			fx.r.Offer(context.Background(), o)
			if rec, _ := fx.j.Get(p.PlanId); rec.State != journal.PlanRefused || rec.Reason != ReasonRootRotation || !strings.Contains(rec.Message, tc.detail) {
				t.Fatalf("plan offered with a refused chain: %+v", rec)
			}
			unchanged(t, fx)
		})
	}

	t.Run("persisting fails: nothing pinned", func(t *testing.T) {
		fx := newFixture(t, envV1)
		fx.state.Dir = filepath.Join(fx.state.Dir, "gone")
		if err := fx.r.FollowRoots(context.Background(), [][]byte{envV2, envV3}); err == nil || !strings.Contains(err.Error(), "follow trust root version 3") {
			t.Fatalf("FollowRoots = %v", err)
		}
		if _, v := fx.r.HelloState(); v != 1 || !bytes.Equal(fx.state.TrustRoot, envV1) {
			t.Fatalf("pinned root version %d after a failed write", v)
		}
		if n := len(fx.auditActions(t)); n != 0 {
			t.Fatalf("%d audit records for a root not pinned", n)
		}
		// A plan offered with the chain is not refused for the agent's own
		// failure: Offer returns the error (the session reconnects), and
		// nothing is journaled, so the plan is offered again.
		p := testPlan(planID(1), 1)
		o := offer(t, p, "plans3")
		o.TrustRoots = [][]byte{envV2, envV3}
		if err := fx.r.Offer(context.Background(), o); err == nil {
			t.Fatal("Offer = nil, want the persistence error")
		}
		if _, err := fx.j.Get(p.PlanId); !errors.Is(err, journal.ErrNotFound) {
			t.Fatalf("plan journaled after an internal failure: %v", err)
		}
	})
}

func TestRun(t *testing.T) {
	fx := newFixture(t, nil)
	// Offered before Run starts, so Run must order them itself.
	for i := 1; i <= 3; i++ {
		fx.accept(t, testPlan(planID(i), uint64(i)))
	}
	fx.exec.mu.Lock()
	fx.exec.failures[planID(2)] = 2
	fx.exec.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fx.r.Run(ctx) }()

	waitFor := func(id string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			if rec, _ := fx.j.Get(id); rec.State == journal.PlanSucceeded {
				return
			}
			select {
			case <-fx.exec.called:
			case <-time.After(10 * time.Millisecond):
			case <-deadline:
				t.Fatalf("plan %s not executed; calls %v", id, fx.exec.Calls())
			}
		}
	}
	waitFor(planID(3))
	want := []string{planID(1), planID(2), planID(2), planID(2), planID(3)}
	if got := fx.exec.Calls(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("execution order %v, want %v", got, want)
	}
	// A plan accepted while Run waits is executed.
	fx.accept(t, testPlan(planID(4), 4))
	waitFor(planID(4))
	if un, _ := fx.j.Unfinished(); len(un) != 0 {
		t.Fatalf("unfinished after Run: %v", un)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// stuckExecutor returns nil without finishing the plan, the first time.
type stuckExecutor struct {
	fakeExecutor
	stuck bool
}

func (s *stuckExecutor) Execute(ctx context.Context, p *planv1.Plan) error {
	s.mu.Lock()
	first := !s.stuck
	s.stuck = true
	s.mu.Unlock()
	if first {
		return nil
	}
	return s.fakeExecutor.Execute(ctx, p)
}

func TestRunRetriesUnfinishedAndUndecodable(t *testing.T) {
	fx := newFixture(t, nil)
	exec := &stuckExecutor{fakeExecutor: fakeExecutor{j: fx.j, failures: map[string]int{}, called: make(chan string, 16)}}
	fx.r.exec = exec
	fx.accept(t, testPlan(planID(1), 1))
	fx.accept(t, testPlan(planID(2), 2))
	// Corrupt plan 1's journaled envelope: Run fails it and moves on.
	if _, err := fx.j.Update(planID(1), func(r *journal.PlanRecord) error { r.Envelope = []byte("{"); return nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fx.r.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, _ := fx.j.Get(planID(2))
		if rec.State == journal.PlanSucceeded {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("plan 2 is %s; calls %v", rec.State, exec.Calls())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if rec, _ := fx.j.Get(planID(1)); rec.State != journal.PlanFailed || !strings.Contains(rec.Message, "could not decode") {
		t.Fatalf("undecodable plan: %+v", rec)
	}
	if got := exec.Calls(); strings.Join(got, ",") != planID(2) {
		// The stuck first call is not recorded by the embedded executor.
		t.Fatalf("calls %v", got)
	}
	cancel()
	<-done
}

func TestUnreportedAcked(t *testing.T) {
	fx := newFixture(t, nil)
	p := testPlan(planID(1), 1)
	fx.accept(t, p)
	fx.r.Offer(context.Background(), &agentv1.PlanOffer{PlanId: planID(9), Sequence: 9, Envelope: []byte("junk")})

	versions := func() string {
		var out []string
		for _, r := range fx.r.Unreported() {
			out = append(out, fmt.Sprintf("%s@%d", r.Status.GetPlanId()[len(r.Status.GetPlanId())-1:], r.Version))
		}
		return strings.Join(out, ",")
	}
	if got := versions(); got != "1@1,9@1" {
		t.Fatalf("Unreported %s", got)
	}
	fx.r.Acked(planID(1), 1)
	fx.r.Acked(planID(9), 1)
	if got := versions(); got != "" {
		t.Fatalf("Unreported after acks %s", got)
	}
	// A change (here a re-offer) makes it unreported again; an ack of an
	// older version does not settle it.
	fx.r.Offer(context.Background(), offer(t, p, "plans1"))
	if got := versions(); got != "1@2" {
		t.Fatalf("Unreported after re-offer %s", got)
	}
	fx.r.Acked(planID(1), 1)
	if got := versions(); got != "1@2" {
		t.Fatalf("Unreported after a stale ack %s", got)
	}
	fx.r.Acked(planID(1), 2)
	fx.r.Acked("unknown", 1) // logged, harmless
	if got := versions(); got != "" {
		t.Fatalf("Unreported after the ack %s", got)
	}
}

func TestStatusOf(t *testing.T) {
	t0 := testNow
	rec := journal.PlanRecord{
		ID: "p1", Sequence: 7, Tenant: "acme", DryRun: true, State: journal.PlanFailed, Message: "step migrate failed",
		Reason: "IGNORED", // only refused plans carry a reason
		Steps: []journal.StepRecord{
			{ID: "db", State: journal.StepSucceeded, StartedAt: t0, FinishedAt: t0.Add(time.Second), Attempts: 2,
				Changes:         []journal.Change{{Resource: "tenants/acme/db", Operation: "create", Summary: "created db"}},
				HasCompensation: true, CompensationState: journal.CompensationSucceeded, CompensationMessage: "dropped",
				Outputs: map[string]string{"verification": "ok \xff", "rows": "3"}},
			{ID: "migrate", State: journal.StepFailed, Message: "bad \xff byte", StartedAt: t0.Add(2 * time.Second)},
			{ID: "after", State: journal.StepSkipped},
		},
	}
	got := StatusOf(rec, "own")
	want := &agentv1.PlanStatus{
		PlanId: "p1", Tenant: "own", Sequence: 7, State: "failed", Message: "step migrate failed", DryRun: true,
		Steps: []*agentv1.StepStatus{
			{StepId: "db", State: "succeeded", StartedAt: timestamppb.New(t0), FinishedAt: timestamppb.New(t0.Add(time.Second)), Attempts: 2,
				Changes:           []*agentv1.StepChange{{Resource: "tenants/acme/db", Operation: "create", Summary: "created db"}},
				CompensationState: "succeeded", CompensationMessage: "dropped",
				Outputs: map[string]string{"verification": "ok \uFFFD", "rows": "3"}},
			{StepId: "migrate", State: "failed", Message: "bad \uFFFD byte", StartedAt: timestamppb.New(t0.Add(2 * time.Second))},
			{StepId: "after", State: "skipped"},
		},
	}
	if !proto.Equal(got, want) {
		t.Fatalf("StatusOf =\n%v\nwant\n%v", got, want)
	}
	if _, err := proto.Marshal(got); err != nil {
		t.Fatal(err)
	}
	refused := StatusOf(journal.PlanRecord{ID: "p2", Tenant: "beta", State: journal.PlanRefused, Reason: "WRONG_TENANT", Message: "no"}, "acme")
	if refused.GetReason() != "WRONG_TENANT" || refused.GetTenant() != "acme" || refused.GetState() != "refused" || len(refused.GetSteps()) != 0 {
		t.Fatalf("refused status %v", refused)
	}
}

// TestStatusOfFitsOneMessage: however much the journal holds within its own
// bounds, the status fits one session message; otherwise gRPC ends the
// stream on Send and the agent, sending the same status first on every new
// session, would never get through again.
func TestStatusOfFitsOneMessage(t *testing.T) {
	long := strings.Repeat("x", 512)
	manyChanges := journal.PlanRecord{ID: "p1", Sequence: 1, State: journal.PlanRunning}
	for i := range 100 {
		st := journal.StepRecord{ID: fmt.Sprintf("s%d", i), State: journal.StepSucceeded, Message: "ok"}
		for range 256 {
			st.Changes = append(st.Changes, journal.Change{Resource: long, Operation: "create", Summary: long})
		}
		manyChanges.Steps = append(manyChanges.Steps, st)
	}
	longMessages := journal.PlanRecord{ID: "p2", Sequence: 2, State: journal.PlanFailed}
	for i := range plan.MaxSteps {
		longMessages.Steps = append(longMessages.Steps, journal.StepRecord{ID: fmt.Sprintf("s%d", i), State: journal.StepSucceeded,
			Message: strings.Repeat("m", 4<<10), CompensationState: journal.CompensationFailed, CompensationMessage: strings.Repeat("c", 4<<10)})
	}
	manyOutputs := journal.PlanRecord{ID: "p3", Sequence: 3, State: journal.PlanSucceeded}
	for i := range 200 {
		st := journal.StepRecord{ID: fmt.Sprintf("s%d", i), State: journal.StepSucceeded, Outputs: map[string]string{"verification": "gone"}}
		for k := range 31 {
			st.Outputs[fmt.Sprintf("k%d", k)] = strings.Repeat("o", 2<<10)
		}
		manyOutputs.Steps = append(manyOutputs.Steps, st)
	}
	for _, rec := range []journal.PlanRecord{manyChanges, longMessages, manyOutputs} {
		st := StatusOf(rec, "acme")
		msg := &agentv1.AgentMessage{Id: 1 << 62, Body: &agentv1.AgentMessage_PlanStatus{PlanStatus: st}}
		if n := proto.Size(msg); n > grpcx.MaxRecvMsgSize {
			t.Fatalf("plan %s: status message is %d bytes, limit %d", rec.ID, n, grpcx.MaxRecvMsgSize)
		}
		if len(st.GetSteps()) != len(rec.Steps) {
			t.Fatalf("plan %s: %d steps reported, want %d", rec.ID, len(st.GetSteps()), len(rec.Steps))
		}
		for i, s := range st.GetSteps() {
			if s.GetStepId() != rec.Steps[i].ID || s.GetState() != rec.Steps[i].State {
				t.Fatalf("plan %s: step %d reported as %s %s", rec.ID, i, s.GetStepId(), s.GetState())
			}
		}
	}
	if c := StatusOf(manyChanges, "acme").GetSteps()[0].GetChanges(); len(c) != 1 || !strings.Contains(c[0].GetSummary(), "256 changes not reported") {
		t.Fatalf("changes of a status that did not fit: %v", c)
	}
	if o := StatusOf(manyOutputs, "acme").GetSteps()[0].GetOutputs(); len(o) != 1 || o["verification"] != "gone" {
		t.Fatalf("outputs of a status that did not fit: %d kept, verification %q", len(o), o["verification"])
	}
}

func TestReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{planverify.ErrTooLarge, "TOO_LARGE"},
		{planverify.ErrRootExpired, "ROOT_EXPIRED"},
		{planverify.ErrSignature, "SIGNATURE"},
		{planverify.ErrPayloadType, "PAYLOAD_TYPE"},
		{planverify.ErrMalformed, "MALFORMED"},
		{planverify.ErrInvalid, "INVALID"},
		{planverify.ErrWrongTenant, "WRONG_TENANT"},
		{planverify.ErrWrongAgent, "WRONG_AGENT"},
		{planverify.ErrReplay, "REPLAY"},
		{planverify.ErrExpired, "EXPIRED"},
		{planverify.ErrFromFuture, "FROM_FUTURE"},
		{planverify.ErrRootRotation, "ROOT_ROTATION"},
		{planverify.ErrRelease, "RELEASE"},
		{planverify.ErrUnreleased, "UNRELEASED"},
		{fmt.Errorf("plan x: %w", planverify.ErrExpired), "EXPIRED"},
		{fmt.Errorf("%w: %w", planverify.ErrRootRotation, sign.ErrRootExpired), "ROOT_ROTATION"},
		{fmt.Errorf("accept: %w", journal.ErrReplay), "REPLAY"},
		{errors.New("disk full"), "INTERNAL"},
		{context.Canceled, "INTERNAL"},
	} {
		if got := Reason(tc.err); got != tc.want {
			t.Errorf("Reason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestNew(t *testing.T) {
	fx := newFixture(t, nil)
	otherTD := makeRoot(1, "root1", "plans1", yearFromNow)
	otherTD.TrustDomain = "other.org"
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no journal", Config{Executor: fx.exec, State: fx.state}, "no journal"},
		{"no executor", Config{Journal: fx.j, State: fx.state}, "no executor"},
		{"no state", Config{Journal: fx.j, Executor: fx.exec}, "no agent state"},
		{"root not signed", Config{Journal: fx.j, Executor: fx.exec, State: &svid.State{ID: selfID,
			TrustRoot: signRoot(t, makeRoot(1, "root1", "plans1", yearFromNow), "stranger")}}, "pinned trust root"},
		{"root of another trust domain", Config{Journal: fx.j, Executor: fx.exec, State: &svid.State{ID: selfID,
			TrustRoot: signRoot(t, otherTD, "root1")}}, `trust domain "other.org"`},
		{"not an agent id", Config{Journal: fx.j, Executor: fx.exec, State: &svid.State{ID: spiffeid.RequireFromString("spiffe://example.org/control-plane"),
			TrustRoot: fx.state.TrustRoot}}, "not an agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want …%s…", err, tc.want)
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"abcdefghij", 6, "abc…"},
		{"ééééé", 6, "é…"}, // never splits a rune
	} {
		if got := truncate(tc.s, tc.n); got != tc.want || len(got) > tc.n {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
}
