package svid

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/jointoken"
	"attache.dev/attache/internal/securefile"
	"attache.dev/attache/internal/version"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// Enroll exchanges a join token for an identity and saves it in dir. The
// control plane must present a CA whose key hash the token pins, or the
// token is never sent; the returned bundle must contain that CA and the trust
// root must hash to the token's trust-root hash, or nothing is saved.
func Enroll(ctx context.Context, dir, rawToken string) (*State, error) {
	if err := securefile.MkdirAll(dir); err != nil {
		return nil, err
	}
	hostname, _ := os.Hostname()
	st, err := EnrollInMemory(ctx, rawToken, hostname)
	if err != nil {
		return nil, err
	}
	st.Dir = dir
	if err := st.save(); err != nil {
		return nil, fmt.Errorf("enroll: save identity: %w", err)
	}
	return st, nil
}

// EnrollInMemory does everything Enroll does but save: the returned State
// has no Dir. The fleet benchmark uses it to enroll thousands of agents.
func EnrollInMemory(ctx context.Context, rawToken, hostname string) (*State, error) {
	tok, err := jointoken.Parse(rawToken)
	if err != nil {
		return nil, fmt.Errorf("join token: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(tok.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("join token: trust domain: %w", err)
	}
	if !tok.ExpiresAt.IsZero() && time.Now().After(tok.ExpiresAt) {
		return nil, fmt.Errorf("join token %s expired at %s: create a new one with `attache token create`", tok.ID, tok.ExpiresAt.Format(time.RFC3339))
	}
	key, err := identity.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := identity.NewCSR(key)
	if err != nil {
		return nil, err
	}
	tlsConfig, verified := identity.EnrollTLSConfig(td, tok.CAKeySHA256)
	conn, err := grpc.NewClient(tok.Addr, grpcx.DialOptions(credentials.NewTLS(tlsConfig))...)
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
		if errors.Is(verified(), identity.ErrPinMismatch) {
			return nil, fmt.Errorf("enroll with %s: refusing this control plane: %w (wrong address, or someone in the middle)", tok.Addr, identity.ErrPinMismatch)
		}
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
	if !hasPinnedCA(authorities, tok.CAKeySHA256) {
		return nil, fmt.Errorf("enroll: trust bundle: %w", identity.ErrPinMismatch)
	}
	bundle := x509bundle.FromX509Authorities(td, authorities)
	if _, _, err := x509svid.Verify(sv.Certificates, bundle); err != nil {
		return nil, fmt.Errorf("enroll: issued SVID does not verify against the trust bundle: %w", err)
	}
	if sv.ID.TrustDomain() != td {
		return nil, fmt.Errorf("enroll: issued SVID %s is outside trust domain %q", sv.ID, td.Name())
	}
	if sha256.Sum256(resp.GetTrustRoot()) != tok.TrustRootSHA256 {
		return nil, errors.New("enroll: the trust root the control plane sent does not match the join token's trust-root hash")
	}
	serverID, err := spiffeid.FromString(resp.GetControlPlaneId())
	if err != nil || serverID != identity.ControlPlaneID(td) {
		return nil, fmt.Errorf("enroll: unexpected control plane id %q", resp.GetControlPlaneId())
	}
	return &State{
		Meta: Meta{
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

func hasPinnedCA(certs []*x509.Certificate, pin [32]byte) bool {
	for _, c := range certs {
		if sha256.Sum256(c.RawSubjectPublicKeyInfo) == pin {
			return true
		}
	}
	return false
}
