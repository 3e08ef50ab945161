package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"attache.dev/attache/agent/svid"
	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/jointoken"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

func TestBadTokens(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")

	expired := cp.JoinToken(t, "acme", "--ttl", "1s")
	reused := cp.JoinToken(t, "acme")
	first := env.StartAgent(t, harness.AgentOptions{Token: reused})
	first.AwaitEnrolled(t)
	waitPast(t, parseToken(t, expired).ExpiresAt)

	for _, tc := range []struct {
		name  string
		token string
		// want is what the agent's error must say.
		want string
		// reachesCP: the agent sends the token to the control plane, which
		// refuses it and audits the refusal. A token that does not parse
		// has no address, and the agent does not send a token it can see
		// has expired; both are checked against the control plane directly
		// below.
		reachesCP bool
	}{
		{"garbage", "attache-join-v1.bm90LWEtdG9rZW4", "join token", false},
		{"expired", expired, "expired", false},
		{"reused", reused, "already been used", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := env.StartAgent(t, harness.AgentOptions{Token: tc.token})
			code, stderr := a.Wait(t, 30*time.Second)
			if code == 0 {
				t.Fatalf("agent with a %s token exited 0; want a refusal", tc.name)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("agent with a %s token: stderr does not mention %q:\n%s", tc.name, tc.want, stderr)
			}
			if _, err := svid.Load(a.StateDir); !errors.Is(err, svid.ErrNotEnrolled) {
				t.Errorf("refused agent has an identity anyway (Load: %v)", err)
			}
			if tc.reachesCP {
				id := parseToken(t, tc.token).ID
				if !slices.ContainsFunc(cp.Audit(t), deniedEnroll(id)) {
					t.Errorf("audit log has no denied agent.enroll record for token %s", id)
				}
			}
		})
	}

	// What a well-behaved agent never sends, the control plane still
	// refuses and audits (an agent with a slow clock, a hand-made client).
	t.Run("control plane refuses directly", func(t *testing.T) {
		pin := parseToken(t, reused).CAKeySHA256
		for _, tc := range []struct {
			name, token string
			code        codes.Code
			want        string
			tokenID     string
		}{
			{"garbage", "attache-join-v1.bm90LWEtdG9rZW4", codes.InvalidArgument, "join token", ""},
			{"expired", expired, codes.Unauthenticated, "expired", parseToken(t, expired).ID},
		} {
			err := enrollDirect(t, cp, tc.token, pin)
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Errorf("Enroll with a %s token: %v; want %s mentioning %q", tc.name, err, tc.code, tc.want)
			}
		}
		recs := cp.Audit(t)
		if !slices.ContainsFunc(recs, deniedEnroll(parseToken(t, expired).ID)) {
			t.Errorf("audit log has no denied agent.enroll record for the expired token")
		}
		if !slices.ContainsFunc(recs, func(r auditlog.Record) bool {
			// A token that does not parse has no id to name.
			return r.Action == "agent.enroll" && r.Outcome == auditlog.OutcomeDenied && r.Target == "" &&
				strings.Contains(string(r.Detail), "join token")
		}) {
			t.Errorf("audit log has no denied agent.enroll record for the malformed token")
		}
	})
}

func TestCAPinMismatch(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	raw := cp.JoinToken(t, "acme")

	// Someone hands the customer a token whose CA pin is not this control
	// plane's (a typo, or a control plane in the middle).
	tok := parseToken(t, raw)
	tok.CAKeySHA256[0] ^= 0xff
	a := env.StartAgent(t, harness.AgentOptions{Token: tok.String()})
	code, stderr := a.Wait(t, 30*time.Second)
	if code == 0 {
		t.Fatal("agent enrolled with a control plane that does not match the CA pin")
	}
	// "refusing this control plane" is what the agent says when it
	// recognized the pin failure itself (errors.Is on the TLS verifier's
	// error), not just a connection error that happens to mention it.
	if !strings.Contains(stderr, "CA hash") || !strings.Contains(stderr, "refusing this control plane") {
		t.Errorf("agent's error does not say it refused the control plane for its CA hash:\n%s", stderr)
	}

	// The token never reached the control plane: no enrollment with it in
	// the audit trail (only its creation), nothing in the log, and it still
	// works.
	for _, r := range cp.Audit(t) {
		if r.Action == "agent.enroll" && mentionsToken(r, tok.ID) {
			t.Errorf("audit record %d (%s, %s) mentions token %s: the control plane saw it", r.Seq, r.Action, r.Outcome, tok.ID)
		}
	}
	if strings.Contains(cp.Log(), tok.ID) {
		t.Errorf("control plane log mentions token %s", tok.ID)
	}
	env.StartAgent(t, harness.AgentOptions{Token: raw}).AwaitEnrolled(t)
}

func TestForeignTrustDomain(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	ours := env.StartControlPlane(t, harness.CPOptions{TrustDomain: "ours.test"})
	theirs := env.StartControlPlane(t, harness.CPOptions{TrustDomain: "theirs.test"})
	ours.WaitReady(t)
	theirs.WaitReady(t)
	ours.CreateTenant(t, "acme")
	theirs.CreateTenant(t, "acme") // same tenant name, other trust domain

	own := env.StartAgent(t, harness.AgentOptions{Token: ours.JoinToken(t, "acme")})
	foreign := env.StartAgent(t, harness.AgentOptions{Token: theirs.JoinToken(t, "acme")})
	ownID := own.AwaitEnrolled(t)
	foreignID := foreign.AwaitEnrolled(t)
	if foreignID.TrustDomain().Name() != "theirs.test" {
		t.Fatalf("foreign agent is %s, want one in theirs.test", foreignID.ID)
	}

	// Control: the probe works with an SVID of our own trust domain, so a
	// refusal below is about the foreign SVID, not the probe.
	if err := probeRenew(t, ours, ownID); err != nil {
		t.Fatalf("RenewSVID with our own agent's SVID failed, so the probe proves nothing: %v", err)
	}

	if err := tlsVerdict(t, ours, ownID); err != nil {
		t.Fatalf("TLS handshake with our own agent's SVID was rejected: %v", err)
	}
	if err := tlsVerdict(t, ours, foreignID); err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("TLS handshake with a theirs.test SVID: %v; want the server to reject the certificate", err)
	}
	if err := probeRenew(t, ours, foreignID); !refused(err) {
		t.Errorf("RenewSVID with a theirs.test SVID: %v; want a handshake failure, Unauthenticated or PermissionDenied", err)
	} else {
		t.Logf("RenewSVID with the foreign SVID refused: %v", err)
	}
	if err := probeSession(t, ours, foreignID); !refused(err) {
		t.Errorf("Session with a theirs.test SVID: %v; want a handshake failure, Unauthenticated or PermissionDenied", err)
	} else {
		t.Logf("Session with the foreign SVID refused: %v", err)
	}
	for _, a := range ours.Agents(t, "") {
		if strings.Contains(a.SPIFFEID, "theirs.test") {
			t.Errorf("our control plane lists a foreign agent: %s", a.SPIFFEID)
		}
	}
}

// refused reports whether err is what a peer outside the trust domain
// should get: the call refused (Unauthenticated, PermissionDenied) or the
// connection torn down in the TLS handshake (Unavailable: in TLS 1.3 the
// client sees the server's verdict on its certificate only when it reads or
// writes next, as "bad certificate", a broken pipe or a reset). The control
// probe with our own SVID and tlsVerdict show an Unavailable here is the
// certificate's doing.
func refused(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.Unavailable:
		return true
	}
	return false
}

// tlsVerdict completes a TLS handshake with cp's agent endpoint presenting
// the SVID in st, then reads, and returns the read error: the server's alert
// if it rejected the certificate, nil if it let the connection stand.
func tlsVerdict(t *testing.T, cp *harness.ControlPlane, st *svid.State) error {
	t.Helper()
	conn, err := tls.Dial("tcp", cp.AgentAddr, probeTLS(t, st))
	if err != nil {
		return err
	}
	defer conn.Close()
	// A server that accepts the client waits for the HTTP/2 preface, so a
	// short read deadline passing means "accepted".
	if err := conn.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Read(make([]byte, 1))
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

func probeTLS(t *testing.T, st *svid.State) *tls.Config {
	t.Helper()
	sv, err := st.Source.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: sv.PrivateKey, Leaf: sv.Certificates[0]}
	for _, c := range sv.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // this probe tests the server's check of the client only
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"},
	}
}

// probeConn dials cp's agent endpoint presenting the SVID in st. It skips
// server verification: only the server's verdict on the client matters.
func probeConn(t *testing.T, cp *harness.ControlPlane, st *svid.State) agentv1.AgentServiceClient {
	t.Helper()
	cfg := probeTLS(t, st)
	conn, err := grpc.NewClient(cp.AgentAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewAgentServiceClient(conn)
}

func probeRenew(t *testing.T, cp *harness.ControlPlane, st *svid.State) error {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err = probeConn(t, cp, st).RenewSVID(ctx, &agentv1.RenewSVIDRequest{Csr: csr})
	return err
}

func probeSession(t *testing.T, cp *harness.ControlPlane, st *svid.State) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	stream, err := probeConn(t, cp, st).Session(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{AgentVersion: "probe"}}}); err != nil {
		// The real status arrives on Recv.
		_, rerr := stream.Recv()
		if rerr != nil {
			return rerr
		}
		return err
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	t.Errorf("foreign agent got a session: %v", m)
	return nil
}

// enrollDirect calls EnrollmentService.Enroll on cp with raw as the join
// token, verifying the server against pin as a real agent does.
func enrollDirect(t *testing.T, cp *harness.ControlPlane, raw string, pin [32]byte) error {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(cp.TrustDomain)
	tlsConfig, _ := identity.EnrollTLSConfig(td, pin)
	conn, err := grpc.NewClient(cp.AgentAddr, grpcx.DialOptions(credentials.NewTLS(tlsConfig))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err = agentv1.NewEnrollmentServiceClient(conn).Enroll(ctx, &agentv1.EnrollRequest{JoinToken: raw, Csr: csr, AgentVersion: "e2e"})
	return err
}

func parseToken(t *testing.T, raw string) jointoken.Token {
	t.Helper()
	tok, err := jointoken.Parse(raw)
	if err != nil {
		t.Fatalf("parse join token: %v", err)
	}
	return tok
}

// waitPast waits until the wall clock is a second past deadline.
func waitPast(t *testing.T, deadline time.Time) {
	t.Helper()
	d := time.Until(deadline.Add(time.Second))
	if d > 5*time.Second {
		t.Fatalf("token expires at %s, too far away to wait for", deadline)
	}
	time.Sleep(max(d, 0))
}

// deniedEnroll matches a refused enrollment with the given token.
func deniedEnroll(tokenID string) func(auditlog.Record) bool {
	return func(r auditlog.Record) bool {
		return r.Action == "agent.enroll" && r.Outcome == auditlog.OutcomeDenied && mentionsToken(r, tokenID)
	}
}

// mentionsToken reports whether an audit record is about a join token.
func mentionsToken(r auditlog.Record, tokenID string) bool {
	if r.Target == tokenID {
		return true
	}
	var d struct {
		TokenID string `json:"token_id"`
	}
	return json.Unmarshal(r.Detail, &d) == nil && d.TokenID == tokenID
}
