package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"attache.dev/attache/controlplane/ca"
	"attache.dev/attache/controlplane/config"
	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/jointoken"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// testCP is an in-process control plane built from the real server package.
type testCP struct {
	*Server
	dir string
	td  spiffeid.TrustDomain
}

func startCP(t *testing.T) *testCP {
	t.Helper()
	return startCPWith(t, nil, io.Discard)
}

// startCPWith starts a control plane whose default test configuration
// change has adjusted, logging to logs.
func startCPWith(t *testing.T, change func(*config.Config), logs io.Writer) *testCP {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.TrustDomain = "example.org"
	cfg.Agent.Listen = "127.0.0.1:0"
	cfg.API.Listen = "127.0.0.1:0"
	cfg.HeartbeatInterval = config.Duration(time.Second)
	if change != nil {
		change(&cfg)
	}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	s, err := New(ctx, cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server Run: %v", err)
		}
	})
	return &testCP{Server: s, dir: dir, td: spiffeid.RequireTrustDomainFromString("example.org")}
}

// agent enrolls a new agent of tenant (created if missing) and returns its
// SVID and mTLS credentials.
func (cp *testCP) agent(t *testing.T, tenant string) (*x509svid.SVID, credentials.TransportCredentials) {
	t.Helper()
	ctx := context.Background()
	st := cp.Store()
	if _, err := st.GetTenant(ctx, tenant); err != nil {
		if err := st.CreateTenant(ctx, store.Tenant{Name: tenant, CreatedAt: time.Now()}, auditlog.Entry{Actor: "test", Role: "admin", Action: "tenant.create", Tenant: tenant, Outcome: auditlog.OutcomeSuccess}); err != nil {
			t.Fatal(err)
		}
	}
	authority, err := ca.LoadOrCreate(cp.dir, cp.td, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	mat, err := keys.LoadOrCreate(ctx, cp.dir, cp.td.Name(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jointoken.New(cp.AgentAddr().String(), cp.td.Name(), authority.KeySHA256(), mat.RootHash(), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateJoinToken(ctx, store.JoinToken{ID: tok.ID, Tenant: tenant, SecretHash: tok.SecretHash(), CreatedAt: time.Now(), ExpiresAt: tok.ExpiresAt},
		auditlog.Entry{Actor: "test", Role: "admin", Action: "token.create", Tenant: tenant, Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	tlsConfig, _ := identity.EnrollTLSConfig(cp.td, tok.CAKeySHA256)
	conn, err := grpc.NewClient(tok.Addr, grpcx.DialOptions(credentials.NewTLS(tlsConfig))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := agentv1.NewEnrollmentServiceClient(conn).Enroll(ctx, &agentv1.EnrollRequest{JoinToken: tok.String(), Csr: csr})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	chain, err := identity.ParseChain(resp.GetSvidChain())
	if err != nil {
		t.Fatal(err)
	}
	id, _ := spiffeid.FromString(resp.GetSpiffeId())
	sv := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	src := identity.NewSource(sv, x509bundle.FromX509Authorities(cp.td, []*x509.Certificate{authority.Certificate()}))
	return sv, credentials.NewTLS(identity.ClientTLSConfig(src, identity.ControlPlaneID(cp.td)))
}

func (cp *testCP) dial(t *testing.T, creds credentials.TransportCredentials) agentv1.AgentServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(cp.AgentAddr().String(), grpcx.DialOptions(creds)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewAgentServiceClient(conn)
}

// openSession opens a session and reads the Welcome.
func openSession(t *testing.T, c agentv1.AgentServiceClient) agentv1.AgentService_SessionClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{AgentVersion: "test", CapabilityVersion: 1}}}); err != nil {
		t.Fatal(err)
	}
	m, err := s.Recv()
	if err != nil {
		t.Fatalf("welcome: %v", err)
	}
	if m.GetWelcome() == nil {
		t.Fatalf("first message %v, want welcome", m)
	}
	return s
}

// recvStatus reads until the stream ends and returns its status.
func recvStatus(t *testing.T, s agentv1.AgentService_SessionClient, within time.Duration) *status.Status {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err := <-errc:
		return status.Convert(err)
	case <-time.After(within):
		t.Fatalf("stream still open after %s", within)
		return nil
	}
}

func auditActions(t *testing.T, st store.Store, action string) []auditlog.Record {
	t.Helper()
	recs, err := st.ListAudit(context.Background(), store.AuditFilter{Limit: 10000})
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

func TestCrossTenantMessagesRefusedAndAudited(t *testing.T) {
	cp := startCP(t)
	cp.agent(t, "globex") // tenant B exists
	for _, tc := range []struct {
		name string
		msg  *agentv1.AgentMessage
	}{
		{"plan status", &agentv1.AgentMessage{Body: &agentv1.AgentMessage_PlanStatus{PlanStatus: &agentv1.PlanStatus{PlanId: "p1", Tenant: "globex"}}}},
		{"usage", &agentv1.AgentMessage{Body: &agentv1.AgentMessage_UsageBatch{UsageBatch: &agentv1.UsageBatch{Sequence: 1, Records: []*agentv1.UsageRecord{
			{Tenant: "acme", Meter: "api_calls", Value: 1}, {Tenant: "globex", Meter: "api_calls", Value: 1e6},
		}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(auditActions(t, cp.Store(), "session.cross_tenant"))
			_, creds := cp.agent(t, "acme")
			s := openSession(t, cp.dial(t, creds))
			if err := s.Send(tc.msg); err != nil {
				t.Fatal(err)
			}
			st := recvStatus(t, s, 5*time.Second)
			if st.Code() != codes.PermissionDenied || !grpcx.HasReason(st.Err(), grpcx.ReasonCrossTenant) {
				t.Fatalf("status %v, want PermissionDenied/CROSS_TENANT", st)
			}
			if !strings.Contains(st.Message(), `"globex"`) {
				t.Fatalf("message does not name the tenant: %q", st.Message())
			}
			recs := auditActions(t, cp.Store(), "session.cross_tenant")
			if len(recs) != before+1 {
				t.Fatalf("%d cross-tenant audit records, want %d", len(recs), before+1)
			}
			if r := recs[len(recs)-1]; r.Tenant != "acme" || r.Outcome != auditlog.OutcomeDenied || !strings.Contains(string(r.Detail), "globex") {
				t.Fatalf("audit record %+v", r)
			}
		})
	}
}

func TestRevocationCutsLiveSessionAndRefusesNew(t *testing.T) {
	cp := startCP(t)
	sv, creds := cp.agent(t, "acme")
	client := cp.dial(t, creds)
	s := openSession(t, client)
	tenant, id, _ := identity.ParseAgentID(cp.td, sv.ID)
	if _, err := cp.Store().RevokeAgent(context.Background(), store.AgentKey{Tenant: tenant, ID: id}, "test", time.Now(),
		auditlog.Entry{Actor: "test", Role: "admin", Action: "agent.revoke", Tenant: tenant, Target: id, Outcome: auditlog.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	st := recvStatus(t, s, 5*time.Second)
	if !grpcx.HasReason(st.Err(), grpcx.ReasonAgentRevoked) {
		t.Fatalf("live session ended with %v, want AGENT_REVOKED", st)
	}
	s2, err := client.Session(context.Background())
	if err == nil {
		_ = s2.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{}}})
		_, err = s2.Recv()
	}
	if !grpcx.HasReason(err, grpcx.ReasonAgentRevoked) {
		t.Fatalf("new session after revoke: %v, want AGENT_REVOKED", err)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	if _, err := client.RenewSVID(context.Background(), &agentv1.RenewSVIDRequest{Csr: csr}); !grpcx.HasReason(err, grpcx.ReasonAgentRevoked) {
		t.Fatalf("RenewSVID after revoke: %v, want AGENT_REVOKED", err)
	}
}

func TestUnauthenticatedCallerMayOnlyEnroll(t *testing.T) {
	cp := startCP(t)
	// No client certificate; the server is not verified either (this probe
	// is about what the server allows).
	client := cp.dial(t, credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}))
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	if _, err := client.RenewSVID(context.Background(), &agentv1.RenewSVIDRequest{Csr: csr}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("RenewSVID without a certificate: %v, want Unauthenticated", err)
	}
	s, err := client.Session(context.Background())
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Session without a certificate: %v, want Unauthenticated", err)
	}
}

// TestAbusivePeer sends an oversized message and opens more streams than a
// connection may have; the server refuses both and keeps serving others.
func TestAbusivePeer(t *testing.T) {
	cp := startCP(t)
	_, creds := cp.agent(t, "acme")
	client := cp.dial(t, creds)

	s := openSession(t, client)
	big := &agentv1.AgentMessage{Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{
		Components: []*agentv1.ComponentHealth{{Name: "x", Message: strings.Repeat("A", grpcx.MaxRecvMsgSize+1)}},
	}}}
	_ = s.Send(big)
	if st := recvStatus(t, s, 5*time.Second); st.Code() != codes.ResourceExhausted {
		t.Fatalf("oversized message: %v, want ResourceExhausted", st)
	}

	// Open twice the per-connection stream limit on one raw HTTP/2
	// connection, ignoring the limit the server advertised as an abusive
	// client would: the server refuses the excess with REFUSED_STREAM.
	sv, _ := cp.agent(t, "acme")
	advertised, refused := flood(t, cp.AgentAddr().String(), sv, 2*grpcx.MaxConcurrentStreams)
	if advertised != grpcx.MaxConcurrentStreams {
		t.Fatalf("server advertises MAX_CONCURRENT_STREAMS=%d, want %d", advertised, grpcx.MaxConcurrentStreams)
	}
	if refused < grpcx.MaxConcurrentStreams {
		t.Fatalf("%d of %d streams refused, want at least %d", refused, 2*grpcx.MaxConcurrentStreams, grpcx.MaxConcurrentStreams)
	}
	// Meanwhile another agent on its own connection is served normally.
	_, other := cp.agent(t, "acme")
	openSession(t, cp.dial(t, other))
	// And the server is still up for a fresh agent after all that.
	_, third := cp.agent(t, "acme")
	openSession(t, cp.dial(t, third))
}

func TestDataDirFileModes(t *testing.T) {
	cp := startCP(t)
	for _, name := range []string{ca.KeyFile, AdminTokenFile} {
		p := filepath.Join(cp.dir, name)
		if err := checkMode(p); err != nil {
			t.Error(err)
		}
	}
}

// TestStopRecordsSessionClose: stopping the control plane records the open
// sessions as closed (they are written in one batch after the gRPC server
// stopped), so agent status is right while it is down.
func TestStopRecordsSessionClose(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir, cfg.TrustDomain = dir, "example.org"
	cfg.Agent.Listen, cfg.API.Listen = "127.0.0.1:0", "127.0.0.1:0"
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	s, err := New(ctx, cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	cp := &testCP{Server: s, dir: dir, td: spiffeid.RequireTrustDomainFromString("example.org")}
	sv, creds := cp.agent(t, "acme")
	openSession(t, cp.dial(t, creds))
	tenant, id, _ := identity.ParseAgentID(cp.td, sv.ID)
	key := store.AgentKey{Tenant: tenant, ID: id}
	deadline := time.Now().Add(5 * time.Second)
	for {
		a, err := s.Store().GetAgent(context.Background(), key)
		if err == nil && a.Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session never recorded as open: %+v %v", a, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), filepath.Join(dir, "attache.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, err := st.GetAgent(context.Background(), key)
	if err != nil || a.Connected {
		t.Fatalf("after stop: connected=%v, %v; want the session recorded as closed", a.Connected, err)
	}
}

func TestSessionMustStartWithHello(t *testing.T) {
	cp := startCP(t)
	_, creds := cp.agent(t, "acme")
	s, err := cp.dial(t, creds).Session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}}); err != nil {
		t.Fatal(err)
	}
	if st := recvStatus(t, s, 5*time.Second); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "hello") {
		t.Fatalf("session opened with a heartbeat: %v, want InvalidArgument naming hello", st)
	}
}
