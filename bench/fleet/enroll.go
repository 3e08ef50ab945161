package fleet

import (
	"context"
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/jointoken"
	"attache.dev/attache/internal/version"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// Enroll does what agent/svid.Enroll does — a fresh key and CSR, a new
// connection that verifies the control plane against the CA pinned in the
// token before the token is sent, the Enroll RPC, and the same checks on the
// answer — but keeps the identity in memory instead of writing a state
// directory. The returned State has no Dir and must not be saved.
func Enroll(ctx context.Context, rawToken, hostname string) (*svid.State, error) {
	tok, err := jointoken.Parse(rawToken)
	if err != nil {
		return nil, fmt.Errorf("join token: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(tok.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("join token: trust domain: %w", err)
	}
	key, err := identity.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := identity.NewCSR(key)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(tok.Addr, grpcx.DialOptions(credentials.NewTLS(identity.EnrollTLSConfig(td, tok.CAKeySHA256)))...)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := agentv1.NewEnrollmentServiceClient(conn).Enroll(ctx, &agentv1.EnrollRequest{
		JoinToken:    rawToken,
		Csr:          csr,
		AgentVersion: version.Version,
		Hostname:     hostname,
	})
	if err != nil {
		return nil, fmt.Errorf("enroll with %s: %w", tok.Addr, err)
	}
	sv, err := svidFrom(resp.GetSvidChain(), key)
	if err != nil {
		return nil, fmt.Errorf("enroll: control plane returned a bad SVID: %w", err)
	}
	authorities, err := identity.ParseChain(resp.GetTrustBundle())
	if err != nil {
		return nil, fmt.Errorf("enroll: trust bundle: %w", err)
	}
	pinned := false
	for _, c := range authorities {
		if sha256.Sum256(c.RawSubjectPublicKeyInfo) == tok.CAKeySHA256 {
			pinned = true
		}
	}
	if !pinned {
		return nil, fmt.Errorf("enroll: trust bundle: %w", identity.ErrPinMismatch)
	}
	bundle := x509bundle.FromX509Authorities(td, authorities)
	if _, _, err := x509svid.Verify(sv.Certificates, bundle); err != nil {
		return nil, fmt.Errorf("enroll: issued SVID does not verify against the trust bundle: %w", err)
	}
	if sha256.Sum256(resp.GetTrustRoot()) != tok.TrustRootSHA256 {
		return nil, errors.New("enroll: trust root does not match the join token's hash")
	}
	serverID, err := spiffeid.FromString(resp.GetControlPlaneId())
	if err != nil || serverID != identity.ControlPlaneID(td) {
		return nil, fmt.Errorf("enroll: unexpected control plane id %q", resp.GetControlPlaneId())
	}
	return &svid.State{
		Meta: svid.Meta{
			ControlPlaneAddr: tok.Addr,
			TrustDomain:      td.Name(),
			SPIFFEID:         sv.ID.String(),
			ControlPlaneID:   serverID.String(),
			EnrolledAt:       time.Now().UTC(),
		},
		ID:        sv.ID,
		ServerID:  serverID,
		Source:    identity.NewSource(sv, bundle),
		TrustRoot: resp.GetTrustRoot(),
	}, nil
}

// svidFrom is agent/svid's unexported check that the issued chain is for the
// agent's key.
func svidFrom(chainDER [][]byte, key crypto.Signer) (*x509svid.SVID, error) {
	chain, err := identity.ParseChain(chainDER)
	if err != nil {
		return nil, err
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return nil, err
	}
	if k, ok := chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(key.Public()) {
		return nil, errors.New("issued certificate is not for the agent's key")
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}
