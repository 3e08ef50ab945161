package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// NewKey generates the ECDSA P-256 key an SVID is issued for.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// NewCSR makes a DER PKCS#10 request for key. The subject is informational:
// the control plane assigns the SPIFFE ID.
func NewCSR(key crypto.Signer) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{Organization: []string{"attache-agent"}},
	}, key)
}

// ParseCSR decodes and checks a request: signature valid, and a public key of
// a kind the CA issues for (ECDSA P-256/P-384 or Ed25519). At most 16 KiB.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, errors.New("csr: empty")
	}
	if len(der) > 16<<10 {
		return nil, fmt.Errorf("csr: %d bytes, more than 16 KiB", len(der))
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: signature: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("csr: ECDSA curve %s not accepted (use P-256 or P-384)", k.Curve.Params().Name)
		}
	default:
		if csr.PublicKeyAlgorithm != x509.Ed25519 {
			return nil, fmt.Errorf("csr: public key algorithm %s not accepted (use ECDSA P-256 or Ed25519)", csr.PublicKeyAlgorithm)
		}
	}
	return csr, nil
}

// ParseChain decodes DER certificates, leaf first.
func ParseChain(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("certificate chain is empty")
	}
	out := make([]*x509.Certificate, 0, len(ders))
	for i, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// CertsDER returns the DER encodings of certs.
func CertsDER(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

// Source is an x509svid.Source and x509bundle.Source whose SVID and bundle
// can be replaced while TLS configurations built on it stay in use: new
// handshakes see the new SVID, established connections carry on.
type Source struct {
	mu     sync.RWMutex
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

// NewSource returns a source holding svid and bundle.
func NewSource(svid *x509svid.SVID, bundle *x509bundle.Bundle) *Source {
	return &Source{svid: svid, bundle: bundle}
}

// Set replaces the SVID and, if non-nil, the bundle.
func (s *Source) Set(svid *x509svid.SVID, bundle *x509bundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.svid = svid
	if bundle != nil {
		s.bundle = bundle
	}
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, errors.New("no SVID yet")
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.bundle == nil || s.bundle.TrustDomain() != td {
		return nil, fmt.Errorf("no trust bundle for trust domain %q", td.Name())
	}
	return s.bundle, nil
}

// Bundle returns the current bundle.
func (s *Source) Bundle() *x509bundle.Bundle {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bundle
}
