package agentapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/controlplane/agentapi"
	"attache.dev/attache/controlplane/ca"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/sign"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

const wait = 5 * time.Second

// cp is a control plane's agent endpoint: the real service over real mTLS
// with agents enrolled in a real store.
type cp struct {
	td     spiffeid.TrustDomain
	ca     *ca.CA
	store  store.Store
	svc    *agentapi.Service
	addr   string
	signer *sign.Signer

	mu    sync.Mutex
	roots [][]byte // roots[i] is trust-root version i+1
}

type options struct {
	poll     time.Duration                                           // RevocationPoll; default: an hour (no store polling)
	store    func(store.Store) store.Store                           // wraps the store the service uses
	envelope func(ctx context.Context, p store.Plan) ([]byte, error) // Config.Envelope
}

func startCP(t *testing.T, o options) *cp {
	t.Helper()
	dir := t.TempDir()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	authority, err := ca.LoadOrCreate(dir, td, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(context.Background(), filepath.Join(dir, "attache.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := sign.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	c := &cp{td: td, ca: authority, store: st, signer: signer}
	c.setRoots(3)
	svcStore := store.Store(st)
	if o.store != nil {
		svcStore = o.store(st)
	}
	if o.poll == 0 {
		o.poll = time.Hour
	}
	c.svc = agentapi.New(agentapi.Config{
		Store: svcStore, CA: authority, SVIDTTL: time.Hour, RevocationPoll: o.poll, Logger: logger,
		TrustRoots: c.trustRoots, Envelope: o.envelope,
	})
	svid, err := authority.IssueServer(identity.ControlPlaneID(td), nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpcx.ServerOptions(credentials.NewTLS(identity.ServerTLSConfig(identity.NewSource(svid, authority.Bundle()), td)))...)
	agentv1.RegisterAgentServiceServer(srv, c.svc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served, ran := make(chan struct{}), make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	go func() { defer close(ran); _ = c.svc.Run(ctx) }()
	t.Cleanup(func() {
		srv.Stop()
		<-served
		cancel()
		<-ran
		st.Close()
	})
	return c
}

// setRoots makes versions 1…n the trust roots the control plane has.
func (c *cp) setRoots(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for v := len(c.roots) + 1; v <= n; v++ {
		c.roots = append(c.roots, []byte(fmt.Sprintf(`{"root":%d}`, v)))
	}
}

func (c *cp) trustRoots(after uint32) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if int(after) >= len(c.roots) {
		return nil
	}
	return append([][]byte(nil), c.roots[after:]...)
}

func root(v int) string { return fmt.Sprintf(`{"root":%d}`, v) }

// agent enrolls agent id of tenant (created if missing) and returns its key,
// SPIFFE ID and mTLS credentials.
func (c *cp) agent(t *testing.T, tenant, id string) (store.AgentKey, spiffeid.ID, credentials.TransportCredentials) {
	t.Helper()
	ctx, now := context.Background(), time.Now()
	audit := auditlog.Entry{Actor: "test", Role: "admin", Action: "test", Tenant: tenant, Outcome: auditlog.OutcomeSuccess}
	if _, err := c.store.GetTenant(ctx, tenant); err != nil {
		if err := c.store.CreateTenant(ctx, store.Tenant{Name: tenant, CreatedAt: now}, audit); err != nil {
			t.Fatal(err)
		}
	}
	secret := sha256.Sum256([]byte(tenant + "/" + id))
	tok := store.JoinToken{ID: "tok-" + tenant + "-" + id, Tenant: tenant, SecretHash: secret[:], CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := c.store.CreateJoinToken(ctx, tok, audit); err != nil {
		t.Fatal(err)
	}
	sid, err := identity.AgentID(c.td, tenant, id)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	chain, err := c.ca.IssueFromCSR(csr, sid, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.store.Enroll(ctx, tok.ID, tok.SecretHash, now, store.Agent{
		Tenant: tenant, ID: id, SPIFFEID: sid.String(), EnrolledAt: now,
		CertSerial: chain[0].SerialNumber.Text(16), CertExpiresAt: chain[0].NotAfter,
	}, audit); err != nil {
		t.Fatal(err)
	}
	src := identity.NewSource(&x509svid.SVID{ID: sid, Certificates: chain, PrivateKey: key},
		x509bundle.FromX509Authorities(c.td, []*x509.Certificate{c.ca.Certificate()}))
	return store.AgentKey{Tenant: tenant, ID: id}, sid, credentials.TransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, identity.ControlPlaneID(c.td))))
}

var draft = func() *plan.Draft {
	d, err := plan.ParseYAML([]byte("version: 1\nsteps: [{id: a, provider: local, action: noop, resource: files/x}, {id: b, provider: local, action: noop, resource: files/y, depends_on: [a]}]\n"))
	if err != nil {
		panic(err)
	}
	return d
}()

// submit signs a plan for agent k and stores it; expires overrides the
// stored expiry when not zero.
func (c *cp) submit(t *testing.T, k store.AgentKey, expires time.Time) store.Plan {
	t.Helper()
	sid, _ := identity.AgentID(c.td, k.Tenant, k.ID)
	p, err := c.store.CreatePlan(context.Background(), k, func(seq uint64) (store.Plan, error) {
		now := time.Now()
		pp, err := draft.Build(k.Tenant, sid, seq, now)
		if err != nil {
			return store.Plan{}, err
		}
		env, err := plan.Sign(context.Background(), pp, c.signer)
		if err != nil {
			return store.Plan{}, err
		}
		if expires.IsZero() {
			expires = pp.GetExpiresAt().AsTime()
		}
		return store.Plan{
			ID: pp.GetPlanId(), Tenant: k.Tenant, AgentID: k.ID, Sequence: seq, Envelope: env,
			CreatedBy: "test", CreatedAt: now, ExpiresAt: expires,
		}, nil
	}, auditlog.Entry{Actor: "test", Role: "operator", Action: "plan.submit", Tenant: k.Tenant, Outcome: auditlog.OutcomeSuccess})
	if err != nil {
		t.Fatalf("CreatePlan: %v", err)
	}
	return p
}

func (c *cp) plan(t *testing.T, id string) store.Plan {
	t.Helper()
	p, err := c.store.GetPlan(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (c *cp) audits(t *testing.T, action string) []auditlog.Record {
	t.Helper()
	recs, err := c.store.ListAudit(context.Background(), store.AuditFilter{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	var out []auditlog.Record
	for _, r := range recs {
		if r.Action == action {
			out = append(out, r)
		}
	}
	return out
}

// session is an agent's end of a session stream.
type session struct {
	stream  agentv1.AgentService_SessionClient
	welcome *agentv1.Welcome
	msgs    chan *agentv1.ControlMessage
	end     chan error // the stream's final error
	id      uint64
}

// open dials with creds, sends hello and reads the Welcome.
func (c *cp) open(t *testing.T, creds credentials.TransportCredentials, hello *agentv1.Hello) *session {
	t.Helper()
	conn, err := grpc.NewClient(c.addr, grpcx.DialOptions(creds)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := agentv1.NewAgentServiceClient(conn).Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := &session{stream: stream, msgs: make(chan *agentv1.ControlMessage, 100), end: make(chan error, 1), id: 1}
	if err := stream.Send(&agentv1.AgentMessage{Id: s.id, Body: &agentv1.AgentMessage_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				s.end <- err
				return
			}
			s.msgs <- m
		}
	}()
	m := s.next(t)
	if s.welcome = m.GetWelcome(); s.welcome == nil {
		t.Fatalf("first message %v, want welcome", m)
	}
	return s
}

func (s *session) next(t *testing.T) *agentv1.ControlMessage {
	t.Helper()
	select {
	case m := <-s.msgs:
		return m
	case err := <-s.end:
		t.Fatalf("session ended: %v", err)
	case <-time.After(wait):
		t.Fatalf("nothing received within %s", wait)
	}
	return nil
}

func (s *session) offer(t *testing.T) *agentv1.PlanOffer {
	t.Helper()
	m := s.next(t)
	if m.GetPlanOffer() == nil {
		t.Fatalf("received %v, want a plan offer", m)
	}
	return m.GetPlanOffer()
}

// quiet checks that nothing arrives for a while.
func (s *session) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m := <-s.msgs:
		t.Fatalf("unexpected message %v", m)
	case err := <-s.end:
		t.Fatalf("session ended: %v", err)
	case <-time.After(d):
	}
}

// send sends a plan status and returns its message id.
func (s *session) send(t *testing.T, ps *agentv1.PlanStatus) uint64 {
	t.Helper()
	s.id++
	if err := s.stream.Send(&agentv1.AgentMessage{Id: s.id, Body: &agentv1.AgentMessage_PlanStatus{PlanStatus: ps}}); err != nil {
		t.Fatal(err)
	}
	return s.id
}

func (s *session) ack(t *testing.T, ref uint64) {
	t.Helper()
	m := s.next(t)
	if m.GetAck() == nil || m.GetAck().GetRef() != ref {
		t.Fatalf("received %v, want ack of %d", m, ref)
	}
}

// ended waits for the session to end and returns its status.
func (s *session) ended(t *testing.T) *status.Status {
	t.Helper()
	for {
		select {
		case m := <-s.msgs:
			t.Fatalf("received %v, want the session to end", m)
		case err := <-s.end:
			return status.Convert(err)
		case <-time.After(wait):
			t.Fatalf("session still open after %s", wait)
		}
	}
}

func rootsOf(bs [][]byte) string {
	var out []string
	for _, b := range bs {
		out = append(out, string(b))
	}
	return strings.Join(out, ",")
}

func TestPendingPlansOfferedAfterWelcome(t *testing.T) {
	c := startCP(t, options{})
	k, _, creds := c.agent(t, "acme", "a1")
	other, _, _ := c.agent(t, "acme", "a2")
	var want []store.Plan
	for range 3 {
		want = append(want, c.submit(t, k, time.Time{}))
	}
	c.submit(t, other, time.Time{})

	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test", TrustRootVersion: 1})
	if got := rootsOf(s.welcome.GetTrustRoots()); got != root(2)+","+root(3) {
		t.Fatalf("welcome trust roots %s, want versions 2 and 3", got)
	}
	for _, p := range want {
		o := s.offer(t)
		if o.GetPlanId() != p.ID || o.GetSequence() != p.Sequence || !bytes.Equal(o.GetEnvelope(), p.Envelope) {
			t.Fatalf("offer %s #%d, want %s #%d with the stored envelope", o.GetPlanId(), o.GetSequence(), p.ID, p.Sequence)
		}
		if len(o.GetTrustRoots()) != 0 {
			t.Fatalf("offer of %s repeats trust roots already sent in welcome: %s", p.ID, rootsOf(o.GetTrustRoots()))
		}
	}
	// Another agent's plan is not offered; nothing is offered twice.
	c.svc.NotifyPlans(k)
	s.quiet(t, 300*time.Millisecond)

	// A plan signed after a key rotation carries the new root, once.
	c.setRoots(4)
	p4 := c.submit(t, k, time.Time{})
	c.svc.NotifyPlans(k)
	if o := s.offer(t); o.GetPlanId() != p4.ID || rootsOf(o.GetTrustRoots()) != root(4) {
		t.Fatalf("offer %s with roots %s, want %s with version 4", o.GetPlanId(), rootsOf(o.GetTrustRoots()), p4.ID)
	}
	p5 := c.submit(t, k, time.Time{})
	c.svc.NotifyPlans(k)
	if o := s.offer(t); o.GetPlanId() != p5.ID || len(o.GetTrustRoots()) != 0 {
		t.Fatalf("offer %s with roots %s, want %s with none", o.GetPlanId(), rootsOf(o.GetTrustRoots()), p5.ID)
	}

	// A new session offers the unacknowledged plans again, and an agent
	// already on the newest root is sent none.
	s2 := c.open(t, creds, &agentv1.Hello{AgentVersion: "test", TrustRootVersion: 4})
	if len(s2.welcome.GetTrustRoots()) != 0 {
		t.Fatalf("welcome to an agent on the newest root carries %s", rootsOf(s2.welcome.GetTrustRoots()))
	}
	for _, p := range append(want, p4, p5) {
		if o := s2.offer(t); o.GetPlanId() != p.ID {
			t.Fatalf("new session offered %s, want %s", o.GetPlanId(), p.ID)
		}
	}
	s2.quiet(t, 200*time.Millisecond)
}

// TestNewPlansFromAnotherReplica: a plan stored by another replica (no
// NotifyPlans here) reaches the session through the store poll.
func TestNewPlansFromAnotherReplica(t *testing.T) {
	c := startCP(t, options{poll: 50 * time.Millisecond})
	k, _, creds := c.agent(t, "acme", "a1")
	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test", TrustRootVersion: 3})
	s.quiet(t, 100*time.Millisecond)
	p := c.submit(t, k, time.Time{})
	if o := s.offer(t); o.GetPlanId() != p.ID {
		t.Fatalf("offered %s, want %s", o.GetPlanId(), p.ID)
	}
	// The poll keeps seeing the plan for a few seconds; it is offered once.
	s.quiet(t, 500*time.Millisecond)
}

func TestExpiredPlanNeverOffered(t *testing.T) {
	var short atomic.Value
	short.Store("")
	c := startCP(t, options{envelope: func(ctx context.Context, p store.Plan) ([]byte, error) {
		if p.ID == short.Load().(string) {
			time.Sleep(time.Until(p.ExpiresAt) + 50*time.Millisecond) // re-signing outlasts the plan
		}
		return p.Envelope, nil
	}})
	k, _, creds := c.agent(t, "acme", "a1")
	c.submit(t, k, time.Now().Add(-time.Minute)) // expired before the session
	short.Store(c.submit(t, k, time.Now().Add(300*time.Millisecond)).ID)
	live := c.submit(t, k, time.Time{})

	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	if o := s.offer(t); o.GetPlanId() != live.ID {
		t.Fatalf("offered %s (#%d), want only the live plan %s", o.GetPlanId(), o.GetSequence(), live.ID)
	}
	c.svc.NotifyPlans(k)
	s.quiet(t, 300*time.Millisecond)
}

func step(id, state string) *agentv1.StepStatus {
	return &agentv1.StepStatus{StepId: id, State: state, Attempts: 1, StartedAt: timestamppb.New(time.Unix(1700000000, 0))}
}

func TestPlanStatusStoredThenAcked(t *testing.T) {
	c := startCP(t, options{})
	k, sid, creds := c.agent(t, "acme", "a1")
	p := c.submit(t, k, time.Time{})
	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	s.offer(t)

	s.ack(t, s.send(t, &agentv1.PlanStatus{PlanId: p.ID, Tenant: "acme", Sequence: 1, State: "accepted",
		Steps: []*agentv1.StepStatus{{StepId: "a", State: "pending"}, {StepId: "b", State: "pending"}}}))
	if got := c.plan(t, p.ID); got.State != store.PlanAccepted || got.AckedAt == nil {
		t.Fatalf("after accepted: %+v", got)
	}
	s.ack(t, s.send(t, &agentv1.PlanStatus{PlanId: p.ID, Sequence: 1, State: "running",
		Steps: []*agentv1.StepStatus{step("a", "running"), {StepId: "b", State: "pending"}}}))
	done := &agentv1.PlanStatus{PlanId: p.ID, Tenant: "acme", Sequence: 1, State: "succeeded", Message: strings.Repeat("é", 3000),
		Steps: []*agentv1.StepStatus{
			{StepId: "a", State: "succeeded", Attempts: 1, Changes: []*agentv1.StepChange{{Resource: "x", Operation: "create", Summary: "made x"}}},
			{StepId: "b", State: "succeeded", Attempts: 2, CompensationState: "",
				Outputs: map[string]string{"verification": "tenant acme: 0 rows remain", "rows": "0"}},
		}}
	for i := range 40 {
		done.Steps[1].Outputs[fmt.Sprintf("k%02d", i)] = strings.Repeat("v", 3000)
	}
	s.ack(t, s.send(t, done))
	got := c.plan(t, p.ID)
	if got.State != store.PlanSucceeded || got.FinishedAt == nil || len(got.Message) != 4096 || !strings.HasPrefix(got.Message, "éé") {
		t.Fatalf("after succeeded: state %s finished %v message of %d bytes", got.State, got.FinishedAt, len(got.Message))
	}
	var steps []map[string]any
	if err := json.Unmarshal(got.Steps, &steps); err != nil {
		t.Fatalf("steps %s: %v", got.Steps, err)
	}
	if len(steps) != 2 || steps[0]["step_id"] != "a" || steps[0]["state"] != "succeeded" || steps[1]["attempts"] != 2.0 {
		t.Fatalf("stored steps %s", got.Steps)
	}
	if ch, _ := steps[0]["changes"].([]any); len(ch) != 1 || ch[0].(map[string]any)["operation"] != "create" {
		t.Fatalf("stored changes %s", got.Steps)
	}
	outs, _ := steps[1]["outputs"].(map[string]any)
	if len(outs) != 32 || len(outs["k00"].(string)) != 2048 {
		t.Fatalf("stored outputs: %d kept (want 32), k00 of %d bytes", len(outs), len(outs["k00"].(string)))
	}
	if v, _ := outs["verification"].(string); v != "tenant acme: 0 rows remain" || outs["rows"] != nil {
		t.Fatalf("outputs kept: verification %q, rows %v (want the verification, then the first in key order)", v, outs["rows"])
	}

	if recs := c.audits(t, "plan.succeeded"); len(recs) != 1 || !strings.Contains(string(recs[0].Detail), `"verification.b":"tenant acme: 0 rows remain"`) {
		t.Fatalf("verification missing from the audit record: %+v", recs)
	}
	for _, action := range []string{"plan.accepted", "plan.running", "plan.succeeded"} {
		recs := c.audits(t, action)
		if len(recs) != 1 {
			t.Fatalf("%d %s audit records, want 1", len(recs), action)
		}
		if r := recs[0]; r.Actor != sid.String() || r.Role != "agent" || r.Tenant != "acme" || r.Target != p.ID || r.Outcome != auditlog.OutcomeSuccess {
			t.Fatalf("%s audit record %+v", action, r)
		}
	}

	// Re-sent (the ack was lost): acknowledged again, changes nothing.
	s.ack(t, s.send(t, done))
	if again := c.plan(t, p.ID); !again.UpdatedAt.Equal(got.UpdatedAt) || again.State != store.PlanSucceeded {
		t.Fatalf("re-sent status changed the plan: %+v", again)
	}
	if n := len(c.audits(t, "plan.succeeded")); n != 1 {
		t.Fatalf("re-sent status audited again: %d records", n)
	}
	// A late failure report does not change a finished plan.
	s.ack(t, s.send(t, &agentv1.PlanStatus{PlanId: p.ID, State: "failed", Message: "late"}))
	if again := c.plan(t, p.ID); again.State != store.PlanSucceeded {
		t.Fatalf("finished plan changed: %+v", again)
	}
}

func TestPlanRefusedAndFailed(t *testing.T) {
	c := startCP(t, options{})
	k, _, creds := c.agent(t, "acme", "a1")
	refused, failed := c.submit(t, k, time.Time{}), c.submit(t, k, time.Time{})
	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	s.offer(t)
	s.offer(t)
	s.ack(t, s.send(t, &agentv1.PlanStatus{PlanId: refused.ID, Tenant: "acme", Sequence: 1, State: "refused", Reason: "REPLAY", Message: "sequence 1 is not after 7"}))
	s.ack(t, s.send(t, &agentv1.PlanStatus{PlanId: failed.ID, Sequence: 2, State: "failed", Message: "step b failed: boom",
		Steps: []*agentv1.StepStatus{step("a", "succeeded"), step("b", "failed")}}))
	if p := c.plan(t, refused.ID); p.State != store.PlanRefused || p.Message != "REPLAY: sequence 1 is not after 7" || p.FinishedAt == nil {
		t.Fatalf("refused plan %+v", p)
	}
	if p := c.plan(t, failed.ID); p.State != store.PlanFailed || p.Message != "step b failed: boom" {
		t.Fatalf("failed plan %+v", p)
	}
	if recs := c.audits(t, "plan.refused"); len(recs) != 1 || recs[0].Outcome != auditlog.OutcomeDenied || !strings.Contains(string(recs[0].Detail), `"reason":"REPLAY"`) {
		t.Fatalf("refusal audit %+v", recs)
	}
	if recs := c.audits(t, "plan.failed"); len(recs) != 1 || recs[0].Outcome != auditlog.OutcomeFailure || recs[0].Target != failed.ID {
		t.Fatalf("failure audit %+v", recs)
	}
	// Acknowledged plans are not offered to the next session.
	s2 := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	s2.quiet(t, 200*time.Millisecond)
}

func TestPlanStatusForAnotherAgentsPlan(t *testing.T) {
	c := startCP(t, options{})
	_, _, creds := c.agent(t, "acme", "a1")
	k2, _, _ := c.agent(t, "acme", "a2")
	kb, _, _ := c.agent(t, "globex", "b1")
	sibling, foreign := c.submit(t, k2, time.Time{}), c.submit(t, kb, time.Time{})
	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	for _, id := range []string{sibling.ID, foreign.ID, "no-such-plan"} {
		// Nothing to retry: acknowledged, not applied, audited.
		s.ack(t, s.send(t, &agentv1.PlanStatus{PlanId: id, State: "failed", Message: "hijack"}))
	}
	for _, p := range []store.Plan{sibling, foreign} {
		if got := c.plan(t, p.ID); got.State != store.PlanPending || got.AckedAt != nil {
			t.Fatalf("another agent's plan changed: %+v", got)
		}
	}
	recs := c.audits(t, "plan.status")
	if len(recs) != 3 || recs[0].Outcome != auditlog.OutcomeDenied || recs[0].Target != sibling.ID || recs[0].Tenant != "acme" {
		t.Fatalf("audit records %+v", recs)
	}
	if n := len(c.audits(t, "plan.failed")); n != 0 {
		t.Fatalf("%d plan.failed records", n)
	}
	// Naming the other tenant ends the session.
	s.send(t, &agentv1.PlanStatus{PlanId: foreign.ID, Tenant: "globex", State: "failed"})
	if st := s.ended(t); st.Code() != codes.PermissionDenied || !grpcx.HasReason(st.Err(), grpcx.ReasonCrossTenant) {
		t.Fatalf("cross-tenant status: %v", st)
	}
}

func TestInvalidPlanStatus(t *testing.T) {
	c := startCP(t, options{})
	_, _, creds := c.agent(t, "acme", "a1")
	for _, tc := range []struct {
		name, field string
		ps          *agentv1.PlanStatus
	}{
		{"no plan id", "plan_id", &agentv1.PlanStatus{State: "running"}},
		{"long plan id", "plan_id", &agentv1.PlanStatus{PlanId: strings.Repeat("p", 129), State: "running"}},
		{"unknown state", "state", &agentv1.PlanStatus{PlanId: "p", State: "done"}},
		{"pending", "state", &agentv1.PlanStatus{PlanId: "p", State: "pending"}},
		{"too many steps", "steps", &agentv1.PlanStatus{PlanId: "p", State: "running", Steps: make([]*agentv1.StepStatus, 1001)}},
		{"long reason", "reason", &agentv1.PlanStatus{PlanId: "p", State: "refused", Reason: strings.Repeat("R", 65)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.ps.Steps {
				tc.ps.Steps[i] = &agentv1.StepStatus{StepId: "s"}
			}
			s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
			s.send(t, tc.ps)
			if st := s.ended(t); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.field) {
				t.Fatalf("status %v, want InvalidArgument naming %s", st, tc.field)
			}
		})
	}
}

// flakyStore holds or fails UpdatePlan.
type flakyStore struct {
	store.Store
	mu   sync.Mutex
	hold chan struct{} // when not nil, UpdatePlan waits for it to close
	fail error
}

func (f *flakyStore) set(hold chan struct{}, fail error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hold, f.fail = hold, fail
}

func (f *flakyStore) UpdatePlan(ctx context.Context, k store.AgentKey, id string, u store.PlanUpdate, a *auditlog.Entry) (store.Plan, error) {
	f.mu.Lock()
	hold, fail := f.hold, f.fail
	f.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if fail != nil {
		return store.Plan{}, fail
	}
	return f.Store.UpdatePlan(ctx, k, id, u, a)
}

// TestAckOnlyAfterStored: no ack while the store has not taken the status;
// a store failure ends the session unacknowledged.
func TestAckOnlyAfterStored(t *testing.T) {
	hold := make(chan struct{})
	flaky := &flakyStore{hold: hold}
	c := startCP(t, options{store: func(s store.Store) store.Store { flaky.Store = s; return flaky }})
	k, _, creds := c.agent(t, "acme", "a1")
	p := c.submit(t, k, time.Time{})
	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	s.offer(t)
	ref := s.send(t, &agentv1.PlanStatus{PlanId: p.ID, State: "accepted"})
	s.quiet(t, 300*time.Millisecond)
	close(hold)
	s.ack(t, ref)
	if got := c.plan(t, p.ID); got.State != store.PlanAccepted {
		t.Fatalf("acked but stored %s", got.State)
	}

	flaky.set(nil, errors.New("database is on fire"))
	s.send(t, &agentv1.PlanStatus{PlanId: p.ID, State: "running"})
	if st := s.ended(t); st.Code() != codes.Unavailable {
		t.Fatalf("store failure: %v, want Unavailable", st)
	}
	if got := c.plan(t, p.ID); got.State != store.PlanAccepted {
		t.Fatalf("state %s after a failed store", got.State)
	}
}

// TestEnvelopeHook: the offered envelope comes from Config.Envelope; when it
// fails the plan and later ones wait, and are offered once it works.
func TestEnvelopeHook(t *testing.T) {
	var (
		mu   sync.Mutex
		fail = true
	)
	c := startCP(t, options{envelope: func(ctx context.Context, p store.Plan) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errors.New("plans key unavailable")
		}
		return append([]byte("resigned:"), p.Envelope...), nil
	}})
	k, _, creds := c.agent(t, "acme", "a1")
	p1, p2 := c.submit(t, k, time.Time{}), c.submit(t, k, time.Time{})
	s := c.open(t, creds, &agentv1.Hello{AgentVersion: "test"})
	s.quiet(t, 200*time.Millisecond)
	mu.Lock()
	fail = false
	mu.Unlock()
	c.svc.NotifyPlans(k)
	for _, p := range []store.Plan{p1, p2} {
		if o := s.offer(t); o.GetPlanId() != p.ID || string(o.GetEnvelope()) != "resigned:"+string(p.Envelope) {
			t.Fatalf("offered %s with %.20q, want %s re-signed", o.GetPlanId(), o.GetEnvelope(), p.ID)
		}
	}
}
