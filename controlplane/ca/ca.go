// Package ca is the trust domain's certificate authority: it creates or loads
// the CA key (ECDSA P-256) in the control plane's data directory and issues
// X.509-SVIDs to agents from their CSRs and to the control plane itself.
//
// Only controlplane packages import ca.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/securefile"
)

// Files in the data directory.
const (
	KeyFile  = "ca.key"
	CertFile = "ca.crt"
)

// caLifetime is how long a newly created CA certificate is valid.
const caLifetime = 10 * 365 * 24 * time.Hour

// clockSkew backdates certificates so peers with slow clocks accept them.
const clockSkew = time.Minute

// CA issues certificates for one trust domain.
type CA struct {
	td   spiffeid.TrustDomain
	key  crypto.Signer
	cert *x509.Certificate
}

// LoadOrCreate loads the CA from dir or creates it on first start.
func LoadOrCreate(dir string, td spiffeid.TrustDomain, now time.Time) (*CA, error) {
	keyPath, certPath := filepath.Join(dir, KeyFile), filepath.Join(dir, CertFile)
	exists, err := securefile.Exists(keyPath)
	if err != nil {
		return nil, err
	}
	if !exists {
		return create(keyPath, certPath, td, now)
	}
	keyPEM, err := securefile.Read(keyPath)
	if err != nil {
		return nil, fmt.Errorf("ca key: %w", err)
	}
	certPEM, err := securefile.Read(certPath)
	if err != nil {
		return nil, fmt.Errorf("ca certificate: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca key %s: %w", keyPath, err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca certificate %s: %w", certPath, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("ca certificate %s does not match key %s", certPath, keyPath)
	}
	if got := caTrustDomain(cert); got != td.IDString() {
		return nil, fmt.Errorf("ca in %s is for %s, not trust domain %q: use the data directory of that trust domain", dir, got, td.Name())
	}
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("ca certificate %s expired at %s", certPath, cert.NotAfter.Format(time.RFC3339))
	}
	return &CA{td: td, key: key, cert: cert}, nil
}

func create(keyPath, certPath string, td spiffeid.TrustDomain, now time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tdURI, _ := url.Parse(td.IDString())
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Attaché"}, CommonName: "Attaché CA " + td.Name()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{tdURI},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := securefile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return nil, err
	}
	if err := securefile.Write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		return nil, err
	}
	return &CA{td: td, key: key, cert: cert}, nil
}

// TrustDomain is the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Certificate is the CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// Bundle is the trust bundle agents and the control plane verify against.
func (c *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.td, []*x509.Certificate{c.cert})
}

// KeySHA256 is the SHA-256 of the CA's SubjectPublicKeyInfo: the pin a join
// token carries (the same scheme as kubeadm's discovery hash), which survives
// re-issuing the CA certificate for the same key.
func (c *CA) KeySHA256() [32]byte { return KeyPin(c.cert) }

// KeyPin is the SHA-256 of cert's DER SubjectPublicKeyInfo.
func KeyPin(cert *x509.Certificate) [32]byte { return sha256.Sum256(cert.RawSubjectPublicKeyInfo) }

// IssueFromCSR issues an SVID for id to the key in csrDER, valid for ttl.
// Subject and SANs in the request are ignored. The chain is leaf then CA.
func (c *CA) IssueFromCSR(csrDER []byte, id spiffeid.ID, ttl time.Duration, now time.Time) ([]*x509.Certificate, error) {
	csr, err := identity.ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	return c.issue(csr.PublicKey, id, nil, ttl, now)
}

// IssueServer issues the control plane's own SVID with a fresh key; dnsNames
// and IPs in hosts are added so the ops API can use it as an HTTPS certificate.
func (c *CA) IssueServer(id spiffeid.ID, hosts []string, ttl time.Duration, now time.Time) (*x509svid.SVID, error) {
	key, err := identity.NewKey()
	if err != nil {
		return nil, err
	}
	chain, err := c.issue(key.Public(), id, hosts, ttl, now)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

func (c *CA) issue(pub crypto.PublicKey, id spiffeid.ID, hosts []string, ttl time.Duration, now time.Time) ([]*x509.Certificate, error) {
	if ttl <= 0 {
		return nil, errors.New("certificate lifetime must be positive")
	}
	if id.TrustDomain() != c.td {
		return nil, fmt.Errorf("cannot issue %s: not in trust domain %q", id, c.td.Name())
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	idURI, err := url.Parse(id.String())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"Attaché"}},
		// Backdate for peers with slow clocks, but by no more than a tenth of
		// the lifetime: agents renew at half of NotAfter−NotBefore, which a
		// full minute of backdating would put in the past for short TTLs.
		NotBefore:             now.Add(-min(clockSkew, ttl/10)),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{idURI},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, c.cert}, nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

func parseKey(pemBytes []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", k)
	}
	return s, nil
}

func parseCert(pemBytes []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return x509.ParseCertificate(b.Bytes)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

func caTrustDomain(cert *x509.Certificate) string {
	if len(cert.URIs) != 1 {
		return "(no trust domain URI)"
	}
	return cert.URIs[0].String()
}
