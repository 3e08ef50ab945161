package identity

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerTLSConfig is the agent endpoint's TLS configuration: it presents the
// control plane's SVID and verifies client SVIDs against the bundle with
// go-spiffe. A client may also connect without a certificate — to enroll —
// and the gRPC interceptors then allow it nothing but enrollment.
// Session tickets are off so every connection is fully verified.
func ServerTLSConfig(src *Source, td spiffeid.TrustDomain) *tls.Config {
	cfg := tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeMemberOf(td))
	cfg.MinVersion = tls.VersionTLS13
	cfg.ClientAuth = tls.RequestClientCert
	cfg.SessionTicketsDisabled = true
	verify := cfg.VerifyPeerCertificate
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil // unauthenticated: enrollment only
		}
		return verify(raw, chains)
	}
	return cfg
}

// ClientTLSConfig is an enrolled agent's TLS configuration: it presents the
// agent's SVID and accepts only a server whose SVID verifies against the
// bundle and carries serverID.
func ClientTLSConfig(src *Source, serverID spiffeid.ID) *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(serverID))
	cfg.MinVersion = tls.VersionTLS13
	return cfg
}

// ErrPinMismatch means the control plane did not present the CA the join
// token pins.
var ErrPinMismatch = errors.New("control plane CA does not match the join token's CA hash")

// EnrollTLSConfig is the TLS configuration an agent enrolls with, before it
// has a bundle: the server must present a chain that includes a CA whose
// SubjectPublicKeyInfo hashes to caKeySHA256 (the pin in the join token), and
// its SVID must verify against that CA with the control plane's SPIFFE ID.
// The join token is sent only after this check passes.
//
// gRPC reports a failed handshake as a flattened Unavailable status, so the
// returned function gives the verification error itself (nil if the last
// handshake verified), for callers to branch on with errors.Is.
func EnrollTLSConfig(td spiffeid.TrustDomain, caKeySHA256 [32]byte) (*tls.Config, func() error) {
	want := ControlPlaneID(td)
	var (
		mu   sync.Mutex
		last error
	)
	record := func(err error) error {
		mu.Lock()
		last = err
		mu.Unlock()
		return err
	}
	verified := func() error {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below against the pinned CA, by SPIFFE ID
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return record(verifyPinned(raw, td, caKeySHA256, want))
		},
	}, verified
}

// verifyPinned checks a server chain against the pinned CA key and the
// control plane's SPIFFE ID.
func verifyPinned(raw [][]byte, td spiffeid.TrustDomain, caKeySHA256 [32]byte, want spiffeid.ID) error {
	var pinned *x509.Certificate
	for _, der := range raw[min(1, len(raw)):] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("control plane certificate: %w", err)
		}
		if c.IsCA && sha256.Sum256(c.RawSubjectPublicKeyInfo) == caKeySHA256 {
			pinned = c
			break
		}
	}
	if pinned == nil {
		return ErrPinMismatch
	}
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{pinned})
	id, _, err := x509svid.ParseAndVerify(raw, bundle)
	if err != nil {
		return fmt.Errorf("control plane certificate: %w", err)
	}
	if id != want {
		return fmt.Errorf("control plane presented %s, want %s", id, want)
	}
	return nil
}
